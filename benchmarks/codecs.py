"""Compression and pruning, measured: bytes per round and accuracy after N rounds, each against uncompressed.

Every configuration is a real federation (one server process, N client processes on 127.0.0.1, real training)
run one after the other on the same machine; bytes are the payload bytes the server counted in its metrics
(manifests and framing excluded). `throughput` times each codec's encode and decode of one large tensor in this
process (medians). Prints Markdown tables; `--write docs/compression.md` replaces, for each part run, the text
between that file's `<!-- PART:begin -->` and `<!-- PART:end -->` markers.

    python benchmarks/codecs.py                       # all parts: digits, pruning, synthetic, throughput
    python benchmarks/codecs.py --only pruning --rounds 6
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

FEDSTREAM = [sys.executable, "-m", "fedstream.cli"]
PARTS = ["digits", "pruning", "synthetic", "throughput"]


@dataclass(frozen=True)
class Config:
    label: str
    flags: tuple[str, ...] = ()


CODECS = [
    Config("raw (uncompressed)"),
    Config("fp16", ("--upload-codec", "fp16", "--download-codec", "fp16")),
    Config("bf16", ("--upload-codec", "bf16", "--download-codec", "bf16")),
    Config("q8", ("--upload-codec", "q8", "--download-codec", "q8")),
    Config("q8, incremental download", ("--upload-codec", "q8", "--download-codec", "q8", "--incremental-download")),
    Config("topk 10% + EF up, raw down", ("--upload-codec", "topk", "--topk-fraction", "0.1")),
    Config("topk 10%, no EF, raw down", ("--upload-codec", "topk", "--topk-fraction", "0.1", "--error-feedback", "off")),
    Config("topk 1% + EF up, raw down", ("--upload-codec", "topk", "--topk-fraction", "0.01")),
    Config("topk 1%, no EF, raw down", ("--upload-codec", "topk", "--topk-fraction", "0.01", "--error-feedback", "off")),
    Config("topk 10% + EF up, q8 incremental down",
           ("--upload-codec", "topk", "--topk-fraction", "0.1", "--download-codec", "q8", "--incremental-download")),
    Config("topk 10% both ways (+EF), incremental",
           ("--upload-codec", "topk", "--topk-fraction", "0.1", "--download-codec", "topk", "--incremental-download")),
    Config("raw, incremental download (lossless diff)", ("--incremental-download",)),
    Config("zstd", ("--upload-codec", "zstd", "--download-codec", "zstd")),
    Config("lz4", ("--upload-codec", "lz4", "--download-codec", "lz4")),
]

SYNTHETIC_CODECS = [c for c in CODECS if c.label in {
    "raw (uncompressed)", "fp16", "bf16", "q8", "q8, incremental download", "topk 1% + EF up, raw down",
    "topk 10% + EF up, q8 incremental down", "zstd", "lz4"}]


def pruning_configs(rounds: int) -> list[Config]:
    out = [Config("no pruning")]
    for schedule in ["0.5", "0.5,0.8", "0.5,0.8,0.9", "0.5,0.8,0.9,0.95"]:
        out.append(Config(f"prune {schedule}", ("--prune-schedule", schedule)))
    out.append(Config("prune 0.5,0.8,0.9 + q8 incremental down",
                      ("--prune-schedule", "0.5,0.8,0.9", "--upload-codec", "q8", "--download-codec", "q8",
                       "--incremental-download")))
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def federate(workdir: Path, name: str, task_flags: list[str], clients: int, rounds: int, flags: tuple[str, ...],
             seed: int, timeout: float) -> list[dict]:
    """Runs one federation to the end; returns its metrics records."""
    run_dir = workdir / name
    address = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    log = open(workdir / f"{name}.log", "w")
    server = subprocess.Popen(FEDSTREAM + ["server", "--address", address, "--insecure", "--run-dir", str(run_dir),
                                           "--rounds", str(rounds), "--min-clients", str(clients), "--seed", str(seed),
                                           "--round-timeout", "300", "--log-level", "WARNING", *task_flags, *flags],
                              stdout=log, stderr=subprocess.STDOUT, env=env)
    procs = [subprocess.Popen(FEDSTREAM + ["client", "--server", address, "--insecure", "--partition", f"{i}/{clients}",
                                           "--device", "cpu", "--connect-timeout", "120", "--log-level", "WARNING",
                                           *task_flags], stdout=log, stderr=subprocess.STDOUT, env=env)
             for i in range(clients)]
    try:
        code = server.wait(timeout=timeout)
        for p in procs:
            p.wait(timeout=60)
    finally:
        for p in [server, *procs]:
            if p.poll() is None:
                p.kill()
        log.close()
    if code != 0:
        raise RuntimeError(f"{name}: server exited {code}; see {workdir / f'{name}.log'}")
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def kb(n: float) -> str:
    return f"{n / 1e3:,.1f}"


def codec_table(results: list[tuple[Config, list[dict]]], metric: str) -> str:
    base = results[0][1]
    base_total = sum(r["bytes_up"] + r["bytes_down"] for r in base)
    lines = [f"| configuration | up KB/round | down KB/round | total bytes vs raw | {metric} after {len(base)} rounds "
             f"| eval loss | round s (median) |", "|---|---:|---:|---:|---:|---:|---:|"]
    for config, records in results:
        up = statistics.mean(r["bytes_up"] for r in records)
        down = statistics.mean(r["bytes_down"] for r in records)
        total = sum(r["bytes_up"] + r["bytes_down"] for r in records)
        last = records[-1]
        lines.append(f"| {config.label} | {kb(up)} | {kb(down)} | {total / base_total:.3f} | "
                     f"{last['eval_accuracy']:.4f} | {last['eval_loss']:.4f} | "
                     f"{statistics.median(r['seconds'] for r in records):.2f} |")
    return "\n".join(lines)


def pruning_table(results: list[tuple[Config, list[dict]]]) -> str:
    base = results[0][1]
    base_total = sum(r["bytes_up"] + r["bytes_down"] for r in base)
    lines = [f"| configuration | final sparsity | accuracy after {len(base)} rounds | last round up KB | "
             f"last round down KB | total bytes vs unpruned |", "|---|---:|---:|---:|---:|---:|"]
    for config, records in results:
        last = records[-1]
        total = sum(r["bytes_up"] + r["bytes_down"] for r in records)
        lines.append(f"| {config.label} | {last.get('sparsity', 0.0):.3f} | {last['eval_accuracy']:.4f} | "
                     f"{kb(last['bytes_up'])} | {kb(last['bytes_down'])} | {total / base_total:.3f} |")
    return "\n".join(lines)


def run_suite(workdir: Path, prefix: str, configs: list[Config], task_flags: list[str], clients: int, rounds: int,
              seed: int, timeout: float) -> list[tuple[Config, list[dict]]]:
    results = []
    for i, config in enumerate(configs):
        started = time.monotonic()
        records = federate(workdir, f"{prefix}-{i}", task_flags, clients, rounds, config.flags, seed, timeout)
        results.append((config, records))
        print(f"  {prefix}: {config.label}: accuracy {records[-1]['eval_accuracy']:.4f} "
              f"({time.monotonic() - started:.0f} s)", file=sys.stderr, flush=True)
    return results


def throughput_table(numel: int, repeats: int) -> str:
    """Encode and decode MB/s (of float32 input) per codec on one thread, medians of `repeats` runs."""
    from fedstream.common.codecs.registry import available_codecs, get_codec

    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    dense = torch.randn(numel, generator=gen)
    sparse = dense * (torch.rand(numel, generator=gen) < 0.1)
    lines = ["| codec | input | encode MB/s | decode MB/s | encoded / raw |", "|---|---|---:|---:|---:|"]
    for name in available_codecs():
        codec = get_codec(name)
        for label, tensor in (("dense", dense), ("10% nonzero", sparse)):
            if label == "10% nonzero" and not (name.startswith("sparse") or name in ("zstd", "lz4")):
                continue
            enc, dec = [], []
            for _ in range(repeats):
                started = time.perf_counter()
                data = codec.encode(tensor)
                enc.append(time.perf_counter() - started)
                buffer = bytearray(data)
                started = time.perf_counter()
                codec.decode(buffer, torch.float32, (numel,))
                dec.append(time.perf_counter() - started)
            mb = numel * 4 / 1e6
            lines.append(f"| {name} | {label} | {mb / statistics.median(enc):,.0f} | {mb / statistics.median(dec):,.0f} "
                         f"| {len(buffer) / (numel * 4):.3f} |")
    return "\n".join(lines)


def write_results(path: Path, sections: dict[str, str]) -> None:
    doc = path.read_text()
    for part, text in sections.items():
        begin, end = f"<!-- {part}:begin -->", f"<!-- {part}:end -->"
        if begin not in doc or end not in doc:
            raise SystemExit(f"{path} has no {begin} ... {end} section to replace")
        head, rest = doc.split(begin, 1)
        _, tail = rest.split(end, 1)
        doc = f"{head}{begin}\n{text}\n{end}{tail}"
    path.write_text(doc)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=PARTS, action="append")
    parser.add_argument("--rounds", type=int, default=10, help="digits rounds (codecs and pruning)")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--synthetic-params", default="2M")
    parser.add_argument("--synthetic-rounds", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds one federation may take")
    parser.add_argument("--throughput-numel", type=int, default=1 << 24, help="values in the throughput tensor")
    parser.add_argument("--write", type=Path, default=None, help="replace the results section of this Markdown file")
    args = parser.parse_args()
    parts = args.only or PARTS
    command = "python benchmarks/codecs.py " + " ".join(sys.argv[1:])
    where = (f"Measured with `{command.strip()}` on {platform.node() or 'this machine'} ({os.cpu_count()} CPUs, "
             f"{platform.platform()}, Python {platform.python_version()}, torch {torch.__version__}), "
             f"{time.strftime('%Y-%m-%d')}.")
    sections: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="fedstream-codecs-") as tmp:
        workdir = Path(tmp)
        digits = ["--task", "digits"]
        if "digits" in parts:
            results = run_suite(workdir, "digits", CODECS, digits, args.clients, args.rounds, args.seed, args.timeout)
            sections["digits"] = (f"### Codecs on digits ({args.clients} clients, {args.rounds} rounds, 3 local epochs)"
                                  f"\n\n{where} Bytes are payload bytes per round, summed over clients.\n\n"
                                  + codec_table(results, "accuracy"))
        if "pruning" in parts:
            results = run_suite(workdir, "pruning", pruning_configs(args.rounds), digits, args.clients, args.rounds,
                                args.seed, args.timeout)
            sections["pruning"] = (f"### Pruning on digits ({args.clients} clients, {args.rounds} rounds)\n\n"
                                   f"{where}\n\n" + pruning_table(results))
        if "synthetic" in parts:
            synthetic = ["--task", "synthetic", "--task-option", f"params={args.synthetic_params}",
                         "--task-option", "steps=5"]
            results = run_suite(workdir, "synthetic", SYNTHETIC_CODECS, synthetic, 2, args.synthetic_rounds,
                                args.seed, args.timeout)
            sections["synthetic"] = (f"### Codecs on the synthetic model ({args.synthetic_params} parameters, 2 clients, "
                                     f"{args.synthetic_rounds} rounds, 5 SGD steps; random labels, so accuracy is "
                                     f"chance and eval loss is the signal)\n\n{where}\n\n"
                                     + codec_table(results, "accuracy"))
    if "throughput" in parts:
        sections["throughput"] = (f"### Codec throughput ({args.throughput_numel:,} float32 values, one thread, "
                                  f"median of 5)\n\n{where}\n\n" + throughput_table(args.throughput_numel, 5))
    print("\n\n".join(sections.values()))
    if args.write is not None:
        write_results(args.write, sections)
    return 0


if __name__ == "__main__":
    sys.exit(main())
