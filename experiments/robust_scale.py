"""How large a round the robust strategies handle in O(model) RAM: N spooled updates of a P-parameter model.

Each update is written to the disk spool the way an upload is (SpoolWriter, chunk by chunk, CRC trailer), one
at a time, so generating them never holds more than one in memory. Then each robust strategy aggregates the
round while a sampler records the process's resident memory; the table gives the peak above the level before
aggregation and the process's absolute peak (which includes the freed buffers the allocator kept from spooling),
next to what holding every update in RAM would take (the spool size). Runs single-threaded.

    python -m experiments.robust_scale --params 25M --updates 20
"""

from __future__ import annotations

import argparse
import gc
import tempfile
import threading
import time
from collections import OrderedDict
from pathlib import Path

import psutil
import torch

from experiments.report import markdown_table
from fedstream.common.wire.manifest import encode_state, layout_of
from fedstream.common.tasks.synthetic import parse_count
from fedstream.common.wire.framing import Crc32, iter_chunks
from fedstream.server.aggregation.aggregator import inspect_update
from fedstream.server.intake.spool import SpoolPool, SpoolWriter, UpdateInfo
from fedstream.server.aggregation.strategies import RoundUpdates, make_strategy

TENSORS = 4


class PeakRss:
    """Samples this process's RSS every few milliseconds while active."""

    def __init__(self) -> None:
        self.process = psutil.Process()
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.005)

    def __enter__(self) -> "PeakRss":
        self.peak = self.process.memory_info().rss
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def spool_round(directory: Path, reference: "OrderedDict[str, torch.Tensor]", n: int) -> list:
    updates = []
    gen = torch.Generator().manual_seed(0)
    for i in range(n):
        delta = OrderedDict((k, torch.randn(v.shape, generator=gen)) for k, v in reference.items())
        manifest, buffers = encode_state(delta, "raw")
        writer = SpoolWriter(SpoolPool(directory, idle_bytes=0), layout_of(manifest), manifest.total_bytes)
        crc = Crc32()
        for piece in iter_chunks(buffers, 1 << 20):
            crc.update(piece)
            writer.write(piece)
        update = writer.finish(crc.value, crc.nbytes)
        del delta, buffers
        update.info = UpdateInfo(f"client-{i:03d}", 1, 0, 1, sq_norm=inspect_update(update))
        updates.append(update)
    return updates


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", default="25M")
    p.add_argument("--updates", type=int, default=20)
    p.add_argument("--strategies", nargs="+", default=["median", "trimmed-mean", "krum", "multi-krum"])
    p.add_argument("--spool-dir", type=Path, default=None, help="where the spool goes (default: a temp dir)")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    params = parse_count(args.params)
    reference = OrderedDict((f"layer{i}.weight", torch.zeros(params // TENSORS)) for i in range(TENSORS))
    model_mb = sum(t.numel() * 4 for t in reference.values()) / 1e6
    rows = []
    with tempfile.TemporaryDirectory(dir=args.spool_dir) as tmp:
        started = time.perf_counter()
        updates = spool_round(Path(tmp), reference, args.updates)
        print(f"spooled {args.updates} × {model_mb:.0f} MB in {time.perf_counter() - started:.1f} s", flush=True)
        for name in args.strategies:
            strategy = make_strategy(name, {"f": "2"} if "krum" in name else {})
            gc.collect()
            with PeakRss() as rss:
                base = rss.peak
                started = time.perf_counter()
                out = strategy.aggregate(RoundUpdates(reference, updates, None))
                seconds = time.perf_counter() - started
            del out
            rows.append([name, f"{args.updates}", f"{params / 1e6:.0f}M", f"{args.updates * model_mb:.0f} MB",
                         f"{(rss.peak - base) / 1e6:.0f} MB", f"{rss.peak / 1e6:.0f} MB", f"{model_mb:.0f} MB",
                         f"{seconds:.1f}"])
            print(rows[-1], flush=True)
    table = markdown_table(["strategy", "updates", "parameters", "spool (all updates)",
                            "peak RSS above start", "peak RSS of the process", "one model (output)", "seconds"], rows)
    print(f"\n{table}\n\nReproduce: `python -m experiments.robust_scale --params {args.params} --updates {args.updates}`")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
