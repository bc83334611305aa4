"""Chunk-size sweep: the raw gRPC floor and a fedstream round at each chunk size, to justify the default.

    python benchmarks/chunk_sweep.py --chunks 64K,256K,1M,4M,16M --clients 4 --params 25M --rounds 3

Each chunk size runs with the malloc settings fedstream's entry points derive from it (common/allocator.py),
in the sink, the server and the clients alike.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from datetime import datetime
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from fedstream_run import run_fedstream  # noqa: E402
from grpc_floor import measure_elsewhere  # noqa: E402
from procstats import machine_summary  # noqa: E402
from round_bench import synthetic_model_bytes  # noqa: E402

from fedstream.common.allocator import M_MMAP_THRESHOLD, M_TRIM_THRESHOLD, settings  # noqa: E402


def malloc_env(chunk: int) -> dict[str, str]:
    values = settings(chunk)
    return {"MALLOC_MMAP_THRESHOLD_": str(values[M_MMAP_THRESHOLD]),
            "MALLOC_TRIM_THRESHOLD_": str(values[M_TRIM_THRESHOLD])}


def parse_bytes(text: str) -> int:
    """'64K' -> 65536, '1M' -> 1048576 (binary units, as chunk sizes are)."""
    units = {"k": 1 << 10, "m": 1 << 20}
    text = text.strip().lower().removesuffix("ib").removesuffix("b")
    return int(float(text[:-1]) * units[text[-1]]) if text[-1:] in units else int(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", default="64K,256K,1M,4M,16M")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--params", default="25M")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=HERE / "out")
    args = parser.parse_args(argv)
    chunks = [parse_bytes(c) for c in args.chunks.split(",")]
    model_bytes = synthetic_model_bytes(args.params)
    workdir = args.workdir / f"chunk-sweep-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    workdir.mkdir(parents=True)
    print(f"command: python benchmarks/chunk_sweep.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(f"machine: {machine_summary()}")
    rows = ["| chunk | floor upload GB/s | floor download GB/s | floor CPU-s/GB | fedstream round s (median) | "
            "fedstream GB/s model data | CPU s/round | server peak RSS | client peak RSS |", "|---|---|---|---|---|---|---|---|---|"]
    for chunk in chunks:
        env = malloc_env(chunk)
        floor = measure_elsewhere(model_bytes, chunk, args.reps, env)
        run = run_fedstream(workdir / f"chunk-{chunk}", args.clients, args.params, args.rounds,
                            extra_server=["--chunk-bytes", str(chunk)], env=env)
        sec = statistics.median(run.round_seconds)
        cpu = statistics.median(sum(c) for c in run.cpu_per_round) if run.cpu_per_round else float("nan")
        rows.append(f"| {chunk >> 10} KiB | {floor.upload:.2f} | {floor.download:.2f} | {floor.cpu_seconds_per_gb:.2f} | "
                    f"{sec:.2f} | {run.model_bytes / sec / 1e9:.2f} | {cpu:.2f} | {run.server_peak / 1e6:,.0f} MB | "
                    f"{max(run.client_peaks) / 1e6:,.0f} MB |")
        print(rows[-1], flush=True)
    print("\n" + "\n".join(rows))
    (workdir / "report.md").write_text("\n".join(rows) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
