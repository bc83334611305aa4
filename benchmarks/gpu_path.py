"""The GPU client's path to and from the wire, and mixed-precision training speed, on a CUDA machine.

What a CUDA client does around each upload and download, with fedstream's own functions:
- host→device: `load_state` copies the downloaded model (one host buffer) into the model on the GPU;
- device→host: `delta_into` computes local − global on the GPU and copies it into the host buffer the upload
  streams from.
Each runs from a pinned (page-locked) buffer, which the client uses, and from an ordinary pageable one, side
by side; the CPU client's `delta_into` is the reference row. The training table times local SGD steps on
the synthetic MLP with `--amp off`, `bf16` and `fp16`.

Run: `python benchmarks/gpu_path.py --params 25M,650M --out gpu_path.json` (needs CUDA; medians of --reps).
The end-to-end round with GPU clients is `python benchmarks/round_bench.py --systems grpc,fedstream
--client-device cuda`.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from fedstream.client.device_copy import delta_into, host_buffer, load_state
from fedstream.common.tasks.synthetic import make_task, parse_count


def _synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _median_seconds(action: Callable[[], None], reps: int) -> float:
    action()
    _synchronize()
    times = []
    for _ in range(reps):
        started = time.perf_counter()
        action()
        _synchronize()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _host_state(model: torch.nn.Module, pinned: bool) -> dict[str, torch.Tensor]:
    """The model's tensors as views into one host buffer, the way a download lands."""
    state = model.state_dict()
    nbytes = sum(t.numel() * t.element_size() for t in state.values())
    buffer = host_buffer(nbytes, pin=pinned)
    if pinned and not buffer.is_pinned():
        raise RuntimeError("could not pin host memory; the pinned rows would measure pageable copies")
    out, offset = {}, 0
    for name, t in state.items():
        size = t.numel() * t.element_size()
        view = buffer[offset : offset + size].view(t.dtype).view(t.shape)
        view.copy_(t.detach().cpu())
        out[name] = view
        offset += size
    return out


def transfer_rows(params: str, reps: int, device: torch.device) -> list[dict]:
    task = make_task({"params": params, "steps": "0"})
    model = task.make_model()
    nbytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    cpu_local = {k: v.detach().clone() for k, v in model.state_dict().items()}
    gpu_model = task.make_model().to(device)
    rows = []
    for pinned in (True, False) if device.type == "cuda" else (False,):
        host = _host_state(model, pinned)
        kind = "pinned" if pinned else "pageable"
        h2d = _median_seconds(lambda: load_state(gpu_model, host), reps)
        local = gpu_model.state_dict()
        d2h = _median_seconds(lambda: delta_into(host, local), reps)
        rows += [{"params": params, "bytes": nbytes, "step": f"host→GPU load_state, {kind}", "seconds": h2d},
                 {"params": params, "bytes": nbytes, "step": f"GPU→host delta_into, {kind}", "seconds": d2h}]
        del host
    host = _host_state(model, False)
    rows.append({"params": params, "bytes": nbytes, "step": "CPU client delta_into (reference)",
                 "seconds": _median_seconds(lambda: delta_into(host, cpu_local), reps)})
    del gpu_model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def training_rows(params: str, batch: int, steps: int, reps: int, device: torch.device) -> list[dict]:
    rows = []
    task = make_task({"params": params, "steps": str(steps), "samples": str(batch * steps)})
    model = task.make_model().to(device)
    for amp in ("off", "bf16", "fp16"):
        settings = dataclasses.replace(task.defaults, batch_size=batch, amp=amp)
        seconds = _median_seconds(lambda: task.train(model, task.train_data, settings, device,
                                                     torch.Generator().manual_seed(0)), reps)
        rows.append({"params": params, "batch": batch, "amp": amp, "steps": steps, "seconds": seconds,
                     "ms_per_step": 1000 * seconds / steps})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="25M,650M", help="model sizes for the transfer table")
    parser.add_argument("--train-params", default="400M", help="model size for the training table")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None, help="also write the rows here as JSON")
    parser.add_argument("--device", default="cuda", help="cpu runs the pageable and CPU rows only (a dry run)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_path.py needs a CUDA device (or --device cpu for a dry run)", file=sys.stderr)
        return 2
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"device: {name}, torch {torch.__version__}", flush=True)
    transfers = [row for p in args.params.split(",") for row in transfer_rows(p.strip(), args.reps, device)]
    print(f"\n| model | step | ms (median of {args.reps}) | GB/s |\n|---|---|---|---|")
    for r in transfers:
        print(f"| {r['bytes'] / 1e6:,.0f} MB | {r['step']} | {1000 * r['seconds']:.1f} | "
              f"{r['bytes'] / r['seconds'] / 1e9:.1f} |")
    training = training_rows(args.train_params, args.batch, args.steps, args.reps, device)
    print(f"\n| model | batch | amp | ms per step (median of {args.reps} rounds of {args.steps}) | vs off |"
          "\n|---|---|---|---|---|")
    base = training[0]["ms_per_step"]
    for r in training:
        print(f"| {parse_count(r['params']) / 1e6:.0f}M params | {r['batch']} | {r['amp']} | {r['ms_per_step']:.2f} | "
              f"{base / r['ms_per_step']:.2f}× |")
    if args.out:
        args.out.write_text(json.dumps({"device": name, "torch": torch.__version__,
                                        "transfers": transfers, "training": training}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
