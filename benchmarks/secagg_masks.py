"""Mask expansion speed per core: ChaCha20 keystream into a window, and expand-and-add into a ring window.

python benchmarks/secagg_masks.py [--mib 256] [--window-words 262144]
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np

from fedstream.common.secagg.masks import MaskExpander, ring_dtype


def measure(ring_bits: int, total_bytes: int, window: int) -> tuple[float, float]:
    """GB/s of expand() alone and of add() (expand + modular add into the target window)."""
    expander = MaskExpander(ring_bits, window)
    seed = os.urandom(32)
    words = total_bytes // (ring_bits // 8)
    start = time.perf_counter()
    for offset in range(0, words, window):
        expander.expand(seed, offset, min(window, words - offset))
    expand_s = time.perf_counter() - start
    target = np.zeros(window, dtype=ring_dtype(ring_bits))
    start = time.perf_counter()
    for offset in range(0, words, window):
        count = min(window, words - offset)
        expander.add(target[:count], seed, offset, +1)
    add_s = time.perf_counter() - start
    return total_bytes / expand_s / 1e9, total_bytes / add_s / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256, help="mask bytes expanded per measurement")
    parser.add_argument("--window-words", type=int, default=1 << 18)
    args = parser.parse_args()
    for ring_bits in (32, 64):
        expand, add = measure(ring_bits, args.mib << 20, args.window_words)
        print(f"Z_2^{ring_bits}  window {args.window_words} words  expand {expand:.2f} GB/s  expand+add {add:.2f} GB/s (one core)")


if __name__ == "__main__":
    main()
