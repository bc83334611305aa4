"""glibc malloc tuning for chunked streams, applied by our entry points at start-up.

By default glibc serves allocations above a dynamic threshold with their own mmap and returns them with munmap,
so each 1 MiB chunk can cost page faults; keeping chunk-sized buffers on the heap measured 2.7x faster
streaming (shared/reference/figures.md). Tensors are another matter: a model-sized state is made of
multi-MiB tensors that come and go every round, and on the heap their freed space stays resident (and, with
many threads, is spread over many arenas), so peak RSS would grow with the number of clients. So the mmap
threshold sits just above two chunks: chunks stay on the heap, tensors get their own mappings and go back to
the OS when freed; the heap keeps only a few chunks' worth of free memory at its top, and the number of
arenas is bounded. Settings given in the environment (MALLOC_MMAP_THRESHOLD_, MALLOC_TRIM_THRESHOLD_,
MALLOC_ARENA_MAX) win over these.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8
DEFAULT_CHUNK = 1 << 20
MAX_MMAP_THRESHOLD = 32 << 20
ARENA_MAX = 2


def settings(chunk_bytes: int = DEFAULT_CHUNK) -> dict[int, int]:
    """mallopt parameter -> value for streams of chunk_bytes chunks."""
    mmap_threshold = min(MAX_MMAP_THRESHOLD, 2 * chunk_bytes + (64 << 10))
    return {M_MMAP_THRESHOLD: mmap_threshold, M_TRIM_THRESHOLD: 8 * mmap_threshold, M_ARENA_MAX: ARENA_MAX}


_ENV = {M_MMAP_THRESHOLD: "MALLOC_MMAP_THRESHOLD_", M_TRIM_THRESHOLD: "MALLOC_TRIM_THRESHOLD_",
        M_ARENA_MAX: "MALLOC_ARENA_MAX"}


def tune_malloc(chunk_bytes: int = DEFAULT_CHUNK) -> bool:
    """Returns True when the settings took effect (glibc only; a no-op elsewhere or with FEDSTREAM_MALLOC=off)."""
    if not sys.platform.startswith("linux") or os.environ.get("FEDSTREAM_MALLOC", "").lower() == "off":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = True
    for param, value in settings(chunk_bytes).items():
        if _ENV[param] not in os.environ:
            ok = mallopt(param, value) == 1 and ok
    return ok
