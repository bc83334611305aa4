"""Load: N lightweight clients join one real server on loopback at once and run R rounds of a small model.

The clients are grpc.aio coroutines in a few worker processes (no torch in them): each joins, long-polls for tasks,
downloads the global model, uploads a fixed small delta of the same manifest and leaves when told to finish. The
server is the real `fedstream server` process. Reported: join latency percentiles, per-round time, the server's
peak RSS (from the kernel at exit), and whether every client delivered in every round (nothing lost, no client
starved). Bounded by --timeout (everything is killed then).

    python benchmarks/load.py --clients 200 --rounds 3
"""

from __future__ import annotations

import argparse
import array
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from procstats import wait_peak

FEDSTREAM = [sys.executable, "-m", "fedstream.cli"]


# ----- worker process: many clients as coroutines ------------------------------------------------------------

async def _client(client_id: str, address: str, start_at: float, result: dict) -> None:
    import grpc

    from fedstream.client.connection import SERVICE
    from fedstream.common.proto import coordinator_pb2 as pb
    from fedstream.common.wire.protocol import PROTOCOL_VERSION
    from fedstream.common.wire.framing import Crc32, DataChunk, deserializer, serializer

    async with grpc.aio.insecure_channel(address) as channel:
        join = channel.unary_unary(SERVICE + "Join", pb.JoinRequest.SerializeToString, pb.JoinReply.FromString)
        get_task = channel.unary_unary(SERVICE + "GetTask", pb.TaskRequest.SerializeToString, pb.Task.FromString)
        download = channel.unary_stream(SERVICE + "DownloadModel", pb.DownloadRequest.SerializeToString,
                                        deserializer(pb.ModelChunk))
        upload = channel.stream_unary(SERVICE + "UploadUpdate", serializer, pb.UploadReply.FromString)
        leave = channel.unary_unary(SERVICE + "Leave", pb.LeaveRequest.SerializeToString, pb.LeaveReply.FromString)
        await asyncio.sleep(max(0.0, start_at - time.time()))
        started = time.perf_counter()
        reply = await join(pb.JoinRequest(client_id=client_id, protocol_version=PROTOCOL_VERSION, device="load",
                                          codecs=["raw"], num_examples=10), timeout=120)
        result["join_s"] = time.perf_counter() - started
        session = reply.session_id
        result["rounds"], result["errors"] = [], []
        while True:
            task = await get_task(pb.TaskRequest(session_id=session, wait_ms=5000), timeout=60)
            if task.kind == pb.Task.FINISH:
                await leave(pb.LeaveRequest(session_id=session, reason="finished"), timeout=30)
                return
            if task.kind != pb.Task.TRAIN:
                continue
            manifest, received = None, 0
            async for message in download(pb.DownloadRequest(session_id=session, version=task.version), timeout=60):
                if isinstance(message, DataChunk):
                    received += len(message.data)
                elif message.WhichOneof("part") == "header":
                    manifest = message.header.manifest
            payload = _delta_bytes(manifest)
            crc = Crc32()
            crc.update(payload)
            header = pb.UpdateHeader(session_id=session, round=task.round, base_version=task.version, num_examples=10,
                                     manifest=manifest, upload_id=uuid.uuid4().hex)
            step = max(1, reply.chunk_bytes or (1 << 20))
            messages = [pb.UpdateChunk(header=header)]
            messages += [DataChunk(memoryview(payload)[i:i + step]) for i in range(0, len(payload), step)]
            messages.append(pb.UpdateChunk(trailer=pb.Trailer(crc32=crc.value, total_bytes=crc.nbytes)))
            try:
                answer = await upload(iter(messages), timeout=60)
                result["rounds"].append(task.round if answer.accepted else -task.round)
            except grpc.aio.AioRpcError as exc:
                result["errors"].append(f"round {task.round}: {exc.code().name} {exc.details()}")


def _delta_bytes(manifest) -> bytes:
    """A small, finite delta in the manifest's own layout (float32 tensors only: the load task's MLP)."""
    out = bytearray()
    for spec in manifest.tensors:
        numel = 1
        for s in spec.shape:
            numel *= s
        if spec.dtype != "float32":
            raise SystemExit(f"load clients only build float32 deltas; {spec.name} is {spec.dtype}")
        out += array.array("f", [1e-4]) * numel
    return bytes(out)


async def _worker(ids: list[str], address: str, start_at: float) -> list[dict]:
    results = [{"client": cid} for cid in ids]
    await asyncio.gather(*(_client(cid, address, start_at, r) for cid, r in zip(ids, results)), return_exceptions=False)
    return results


def worker_main(args: argparse.Namespace) -> int:
    ids = [f"load-{i}" for i in range(args.first, args.first + args.count)]
    results = asyncio.run(_worker(ids, args.server, args.start_at))
    Path(args.out).write_text(json.dumps(results))
    return 0


# ----- driver ------------------------------------------------------------------------------------------------

def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def driver_main(args: argparse.Namespace) -> int:
    work = Path(tempfile.mkdtemp(prefix="fedstream-load-"))
    run_dir, port_file = work / "run", work / "server.port"
    deadline = time.monotonic() + args.timeout
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(work / "server.log", "w") as log:
        server = subprocess.Popen(FEDSTREAM + [
            "server", "--insecure", "--join-rate", "0", "--address", "127.0.0.1:0", "--port-file", str(port_file), "--run-dir", str(run_dir),
            "--rounds", str(args.rounds), "--min-clients", str(args.clients), "--round-timeout", str(args.round_timeout),
            "--wait-for-clients", str(args.timeout), "--task", "digits", "--task-option", f"hidden={args.hidden}",
            "--max-workers", str(args.max_workers), "--session-timeout", "60", "--log-level", "WARNING"],
            stdout=log, stderr=subprocess.STDOUT, env=env)
    workers = []
    try:
        while not (port_file.exists() and port_file.read_text().strip()):
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"server did not start:\n{(work / 'server.log').read_text()[-2000:]}")
            time.sleep(0.05)
        address = f"127.0.0.1:{port_file.read_text().strip()}"
        start_at = time.time() + args.warmup
        per = -(-args.clients // args.processes)
        for p in range(args.processes):
            first, count = p * per, min(per, args.clients - p * per)
            if count <= 0:
                break
            workers.append((subprocess.Popen([sys.executable, __file__, "--worker", "--server", address, "--first",
                                              str(first), "--count", str(count), "--start-at", str(start_at), "--out",
                                              str(work / f"worker{p}.json")], env=env), work / f"worker{p}.json"))
        ended = wait_peak(server, max(1.0, deadline - time.monotonic()))
        for process, _ in workers:
            process.wait(timeout=max(1.0, deadline - time.monotonic()))
    finally:
        for process in [server, *(w for w, _ in workers)]:
            if process.poll() is None:
                process.kill()
                process.wait()
    results = [r for _, path in workers if path.exists() for r in json.loads(path.read_text())]
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    joins = [r["join_s"] for r in results if "join_s" in r]
    complete = [r for r in results if sorted(r.get("rounds", [])) == list(range(1, args.rounds + 1))]
    errors = [e for r in results for e in r.get("errors", [])]
    lost = [r["round"] for r in records if r["clients"] != args.clients]
    print(f"load: {args.clients} clients in {len(workers)} worker process(es), {args.rounds} rounds, digits MLP "
          f"hidden={args.hidden}, server exit {ended.code}; work dir {work}")
    print(f"| clients joined | join p50 | join p90 | join p99 | join max | rounds with all {args.clients} | "
          f"clients served every round | upload errors | server peak RSS |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| {len(joins)} | {_percentile(joins, 50) * 1e3:.0f} ms | {_percentile(joins, 90) * 1e3:.0f} ms | "
          f"{_percentile(joins, 99) * 1e3:.0f} ms | {max(joins) * 1e3:.0f} ms | {len(records) - len(lost)}/{len(records)} | "
          f"{len(complete)}/{args.clients} | {len(errors)} | {ended.peak_rss / 2**20:.0f} MiB |")
    print()
    print("| round | clients | round time (start to close) | bytes up | bytes down |")
    print("|---:|---:|---:|---:|---:|")
    for r in records:
        print(f"| {r['round']} | {r['clients']}/{r['selected']} | {r['seconds']:.2f} s | {r['bytes_up'] / 1e6:.1f} MB | "
              f"{r['bytes_down'] / 1e6:.1f} MB |")
    if errors:
        print("first errors:", *errors[:5], sep="\n  ")
    ok = ended.code == 0 and len(joins) == args.clients and len(complete) == args.clients and not lost and not errors
    print("result:", "nothing lost, no client starved" if ok else f"FAILED: see the table and the logs in {work}")
    if ok and not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0 if ok else 1


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--processes", type=int, default=2, help="worker processes the clients are spread over")
    p.add_argument("--hidden", type=int, default=16, help="hidden width of the digits MLP (the model's size)")
    p.add_argument("--max-workers", type=int, default=256, help="the server's gRPC worker threads")
    p.add_argument("--round-timeout", type=float, default=120.0)
    p.add_argument("--warmup", type=float, default=5.0, help="seconds for workers to connect before joining at once")
    p.add_argument("--timeout", type=float, default=300.0, help="hard bound on the whole run")
    p.add_argument("--keep", action="store_true", help="keep the work directory (server log, run dir) after success")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--server", help=argparse.SUPPRESS)
    p.add_argument("--first", type=int, help=argparse.SUPPRESS)
    p.add_argument("--count", type=int, help=argparse.SUPPRESS)
    p.add_argument("--start-at", type=float, help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args()
    return worker_main(args) if args.worker else driver_main(args)


if __name__ == "__main__":
    sys.exit(main())
