"""A round with a model larger than protobuf's 2 GiB message limit: one server and 2 clients on this machine.

    python benchmarks/big_model.py --params 650M --clients 2 --rounds 1

The model (fedstream's `synthetic` task, float32, no-op training) never travels as one message: it streams in
1 MiB chunks both ways. Reports the round time and the peak RSS of the server and of each client. Heavy (about
4 model copies in the clients and 2 in the server), so it is not a test: it checks free memory before it starts.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from datetime import datetime
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from fedstream_run import run_fedstream  # noqa: E402
from procstats import machine_summary  # noqa: E402
from round_bench import synthetic_model_bytes  # noqa: E402

PROTOBUF_LIMIT = 2**31


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="650M")
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=HERE / "out")
    parser.add_argument("--force", action="store_true", help="run even when free memory looks too small")
    args = parser.parse_args(argv)
    size = synthetic_model_bytes(args.params)
    need = (2 + 2 * args.clients) * size + (1 + args.clients) * 400e6
    available = psutil.virtual_memory().available
    print(f"machine: {machine_summary()}")
    print(f"model: {args.params} parameters = {size / 1e9:.2f} GB ({size / 2**30:.2f} GiB; protobuf's message limit "
          f"is 2 GiB: {'above' if size > PROTOBUF_LIMIT else 'NOT above'} it)")
    if available < need and not args.force:
        print(f"needs about {need / 1e9:.1f} GB of free memory, {available / 1e9:.1f} GB available; "
              "run it when the machine is quieter (or --force)")
        return 2
    workdir = args.workdir / f"big-model-{datetime.now().strftime('%Y%m%d-%H%M%S')}"
    r = run_fedstream(workdir, args.clients, args.params, args.rounds, timeout=3600.0)
    print(f"rounds completed: {len(r.rounds)} of {args.rounds}; updates accepted per round: "
          f"{[rec['clients'] for rec in r.rounds]}")
    print(f"round seconds: {[round(s, 2) for s in r.round_seconds]} (median {statistics.median(r.round_seconds):.2f})")
    print(f"model data per round: {r.model_bytes / 1e9:.2f} GB; bytes on the wire per round: "
          f"{r.wire_total / max(args.rounds, 1) / 1e9:.2f} GB")
    print(f"server peak RSS: {r.server_peak / 1e9:.2f} GB = {r.server_peak / size:.2f} x model")
    print("client peak RSS: " + ", ".join(f"{p / 1e9:.2f} GB ({p / size:.2f} x model)" for p in r.client_peaks))
    print(f"raw output: {workdir}")
    return 0 if len(r.rounds) == args.rounds else 1


if __name__ == "__main__":
    sys.exit(main())
