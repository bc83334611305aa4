"""The load benchmark's clients, run as their own processes by load.py: many coroutine clients, or one probe.

`worker`: a few thousand lightweight clients as grpc.aio coroutines (no torch): each joins, waits at the barrier,
then long-polls for tasks, downloads the global model, uploads a small finite delta in the same manifest and
leaves when told to finish. Like the real client, a coroutine client retries with backoff what a busy server sheds
(CANCELLED, UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED, UNKNOWN, INTERNAL: counted as retries) and records anything else as
an error. `probe`: one client that does the same work synchronously while a thread of its own
sends Heartbeat every 100 ms from its join to the end of the run and times each answer.

While it runs, a worker rewrites <out>.progress every few seconds: how many of its clients are in each phase and
the first errors, so a stalled run shows where its clients wait.

The barrier: once every client of a process has joined, the process writes <out>.joined; no client asks for a
task before the driver writes the go file, so the driver can read the server's RSS with every client joined and
idle. Each process raises its own open-file limit (one TCP connection per client: a client is its own channel,
with a local subchannel pool, as separate devices would be).
"""

from __future__ import annotations

import argparse
import array
import asyncio
import json
import resource
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

HEARTBEAT_EVERY = 0.1
PROGRESS_EVERY = 5.0
JOIN_ATTEMPTS = 8
RPC_TIMEOUT = 120.0
OWN_CONNECTION = [("grpc.use_local_subchannel_pool", 1)]


def raise_open_files(wanted: int) -> int:
    """Raises this process's open-file limit towards wanted (root may raise the hard limit too); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= wanted:
        return soft
    for limits in ((wanted, max(hard, wanted)), (min(wanted, hard), hard)):
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, limits)
            return limits[0]
        except (ValueError, OSError):
            continue
    return soft


_DELTAS: dict[tuple, bytes] = {}


def delta_bytes(manifest) -> bytes:
    """A small finite delta in the manifest's own layout (float32 tensors only), built once per layout."""
    key = tuple((spec.name, spec.dtype, tuple(spec.shape)) for spec in manifest.tensors)
    if key not in _DELTAS:
        out = bytearray()
        for name, dtype, shape in key:
            if dtype != "float32":
                raise SystemExit(f"load clients only build float32 deltas; {name} is {dtype}: use a float32 task")
            numel = 1
            for s in shape:
                numel *= s
            out += array.array("f", [1e-4]) * numel
        _DELTAS[key] = bytes(out)
    return _DELTAS[key]


def upload_messages(session: str, task, manifest, chunk_bytes: int) -> list:
    """Header, chunks and trailer of one upload of delta_bytes(manifest) for task."""
    from fedstream.common.proto import coordinator_pb2 as pb
    from fedstream.common.wire.framing import Crc32, DataChunk

    payload = delta_bytes(manifest)
    crc = Crc32()
    crc.update(payload)
    header = pb.UpdateHeader(session_id=session, round=task.round, base_version=task.version, num_examples=10,
                             manifest=manifest, upload_id=uuid.uuid4().hex)
    step = max(1, chunk_bytes or (1 << 20))
    view = memoryview(payload)
    return ([pb.UpdateChunk(header=header)] + [DataChunk(view[i:i + step]) for i in range(0, len(payload), step)]
            + [pb.UpdateChunk(trailer=pb.Trailer(crc32=crc.value, total_bytes=crc.nbytes))])


def manifest_of(messages) -> object:
    """The manifest from a download's header; the data chunks are counted, not kept."""
    from fedstream.common.wire.framing import DataChunk

    manifest = None
    for message in messages:
        if not isinstance(message, DataChunk) and message.WhichOneof("part") == "header":
            manifest = message.header.manifest
    return manifest


def join_request(client_id: str):
    from fedstream.common.proto import coordinator_pb2 as pb
    from fedstream.common.wire.protocol import PROTOCOL_VERSION

    return pb.JoinRequest(client_id=client_id, protocol_version=PROTOCOL_VERSION, device="load", codecs=["raw"],
                          num_examples=10)


# ----- worker: many clients as coroutines ----------------------------------------------------------------------

class Stubs:
    """The coordinator's methods on one channel, with fedstream's own framing for data chunks."""

    def __init__(self, channel) -> None:
        from fedstream.client.connection import SERVICE
        from fedstream.common.proto import coordinator_pb2 as pb
        from fedstream.common.wire.framing import deserializer, serializer

        self.join = channel.unary_unary(SERVICE + "Join", pb.JoinRequest.SerializeToString, pb.JoinReply.FromString)
        self.get_task = channel.unary_unary(SERVICE + "GetTask", pb.TaskRequest.SerializeToString, pb.Task.FromString)
        self.download = channel.unary_stream(SERVICE + "DownloadModel", pb.DownloadRequest.SerializeToString,
                                             deserializer(pb.ModelChunk))
        self.upload = channel.stream_unary(SERVICE + "UploadUpdate", serializer, pb.UploadReply.FromString)
        self.heartbeat = channel.unary_unary(SERVICE + "Heartbeat", pb.HeartbeatRequest.SerializeToString,
                                             pb.HeartbeatReply.FromString)
        self.leave = channel.unary_unary(SERVICE + "Leave", pb.LeaveRequest.SerializeToString, pb.LeaveReply.FromString)


def kind_of(failure: str) -> str:
    """'round 2: CANCELLED details...' -> 'round 2: CANCELLED' (what failed and its status), to count them."""
    what, _, rest = failure.partition(": ")
    return f"{what}: {(rest.split() or ['?'])[0]}"


def transient_codes() -> frozenset:
    """The statuses a real client retries (client/connection.py LOST_SERVER, and RESOURCE_EXHAUSTED: busy)."""
    import grpc

    from fedstream.client.connection import LOST_SERVER

    return LOST_SERVER | {grpc.StatusCode.RESOURCE_EXHAUSTED}


def failure(what: str, exc) -> str:
    """'round 2: CANCELLED details': what failed, its status and its details (kind_of reads it back)."""
    return f"{what}: {exc.code().name} {exc.details()}"


async def _client(client_id: str, address: str, start_at: float, joined: asyncio.Queue, go: asyncio.Event,
                  result: dict) -> None:
    import grpc

    from fedstream.client.connection import Backoff
    from fedstream.common.proto import coordinator_pb2 as pb
    from fedstream.common.wire.protocol import LONG_POLL_MS

    transient = transient_codes()
    result["rounds"], result["errors"], result["retries"], result["phase"] = [], [], [], "connecting"

    def failed(what: str, exc: grpc.aio.AioRpcError) -> bool:
        """Notes a failed call; True when it is one a real client retries (the server shed load or went away)."""
        retry = exc.code() in transient
        result["retries" if retry else "errors"].append(failure(what, exc))
        return retry

    async with grpc.aio.insecure_channel(address, options=OWN_CONNECTION) as channel:
        rpc = Stubs(channel)
        await asyncio.sleep(max(0.0, start_at - time.time()))
        started = time.perf_counter()
        reply = None
        backoff = Backoff()  # the real client's: 0.5 s doubling to 10 s, jittered; a success resets it
        result["phase"] = "joining"
        for _ in range(JOIN_ATTEMPTS):  # as a real client does: thousands connecting at once may be refused
            try:
                reply = await rpc.join(join_request(client_id), timeout=RPC_TIMEOUT)
                break
            except grpc.aio.AioRpcError as exc:
                if not failed("join", exc):
                    break
                await asyncio.sleep(backoff.next_delay())
        if reply is None:
            result["phase"] = "gave up joining"
            result["errors"].append("join: gave up")
            await joined.put(False)
            return
        result["join_s"] = time.perf_counter() - started
        result["phase"] = "at the barrier"
        await joined.put(True)
        await go.wait()
        session = reply.session_id
        backoff.reset()  # like the real client, a load client never gives up on a server that sheds its calls
        while True:
            result["phase"] = "polling for a task"
            try:
                task = await rpc.get_task(pb.TaskRequest(session_id=session, wait_ms=LONG_POLL_MS), timeout=RPC_TIMEOUT)
            except grpc.aio.AioRpcError as exc:
                if not failed("get task", exc):
                    result["phase"] = "gave up polling"
                    return
                await asyncio.sleep(backoff.next_delay())
                continue
            if task.kind == pb.Task.FINISH:
                result["phase"] = "leaving"
                try:  # best effort, as the real client's: the server forgets a silent session anyway
                    await rpc.leave(pb.LeaveRequest(session_id=session, reason="finished"), timeout=RPC_TIMEOUT)
                except grpc.aio.AioRpcError as exc:
                    failed("leave", exc)
                result["phase"] = "finished"
                return
            if task.kind != pb.Task.TRAIN:
                backoff.reset()
                continue
            try:
                result["phase"] = f"downloading (round {task.round})"
                chunks = [m async for m in rpc.download(pb.DownloadRequest(session_id=session, version=task.version),
                                                         timeout=RPC_TIMEOUT)]
                messages = upload_messages(session, task, manifest_of(chunks), reply.chunk_bytes)
                del chunks
                result["phase"] = f"uploading (round {task.round})"
                answer = await rpc.upload(iter(messages), timeout=RPC_TIMEOUT)
                result["rounds"].append(task.round if answer.accepted else -task.round)
                backoff.reset()
            except grpc.aio.AioRpcError as exc:
                if failed(f"round {task.round}", exc):
                    await asyncio.sleep(backoff.next_delay())


async def _barrier(count: int, joined: asyncio.Queue, go: asyncio.Event, joined_file: Path, go_file: Path) -> None:
    for _ in range(count):
        await joined.get()
    joined_file.write_text(str(count))
    while not go_file.exists():
        await asyncio.sleep(0.05)
    go.set()


async def _progress(results: list[dict], path: Path) -> None:
    """Rewrites path every PROGRESS_EVERY seconds: clients per phase, rounds delivered, the first errors."""
    while True:
        phases = Counter(r.get("phase", "starting") for r in results)
        delivered = Counter(k for r in results for k in r.get("rounds", []))
        errors = [e for r in results for e in r.get("errors", [])]
        retries = [e for r in results for e in r.get("retries", [])]
        kinds = Counter(kind_of(e) for e in errors + retries)
        path.write_text(json.dumps({"time": time.time(), "phases": phases, "delivered": delivered,
                                    "errors": len(errors), "retries": len(retries), "error_kinds": kinds,
                                    "first_errors": errors[:5]}))
        await asyncio.sleep(PROGRESS_EVERY)


async def _worker(ids: list[str], address: str, start_at: float, out: Path, go_file: Path) -> list[dict]:
    results = [{"client": cid} for cid in ids]
    joined: asyncio.Queue = asyncio.Queue()
    go = asyncio.Event()
    barrier = asyncio.create_task(_barrier(len(ids), joined, go, out.with_suffix(".joined"), go_file))
    progress = asyncio.create_task(_progress(results, out.with_suffix(".progress")))
    await asyncio.gather(*(_client(cid, address, start_at, joined, go, r) for cid, r in zip(ids, results)))
    await barrier
    progress.cancel()
    return results


def worker_main(args: argparse.Namespace) -> int:
    raise_open_files(args.count + 256)
    ids = [f"load-{i}" for i in range(args.first, args.first + args.count)]
    out = Path(args.out)
    results = asyncio.run(_worker(ids, args.server, args.start_at, out, Path(args.go_file)))
    out.write_text(json.dumps(results))
    return 0


# ----- probe: one client that times heartbeats throughout --------------------------------------------------------

class HeartbeatTimer(threading.Thread):
    """Sends Heartbeat every HEARTBEAT_EVERY seconds on its own channel and records (time, seconds, error)."""

    def __init__(self, address: str, session: str) -> None:
        super().__init__(daemon=True, name="heartbeat-timer")
        self.address, self.session = address, session
        self.samples: list[tuple[float, float, str]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        import grpc

        from fedstream.common.proto import coordinator_pb2 as pb

        with grpc.insecure_channel(self.address, options=OWN_CONNECTION) as channel:
            rpc = Stubs(channel)
            request = pb.HeartbeatRequest(session_id=self.session)
            next_at = time.monotonic()
            while not self.halt.is_set():
                sent = time.perf_counter()
                error = ""
                try:
                    rpc.heartbeat(request, timeout=10)
                except grpc.RpcError as exc:
                    error = f"{exc.code().name} {exc.details()}"
                self.samples.append((time.time(), time.perf_counter() - sent, error))
                next_at = max(next_at + HEARTBEAT_EVERY, time.monotonic())
                self.halt.wait(max(0.0, next_at - time.monotonic()))


def probe_main(args: argparse.Namespace) -> int:
    import grpc

    from fedstream.client.connection import Backoff
    from fedstream.common.proto import coordinator_pb2 as pb
    from fedstream.common.wire.protocol import LONG_POLL_MS

    out, go_file = Path(args.out), Path(args.go_file)
    result: dict = {"client": args.client_id, "rounds": [], "errors": [], "retries": []}
    with grpc.insecure_channel(args.server, options=OWN_CONNECTION) as channel:
        rpc = Stubs(channel)
        started = time.perf_counter()
        reply = rpc.join(join_request(args.client_id), timeout=RPC_TIMEOUT)
        result["join_s"] = time.perf_counter() - started
        timer = HeartbeatTimer(args.server, reply.session_id)
        timer.start()
        out.with_suffix(".joined").write_text("1")
        while not go_file.exists():
            time.sleep(0.05)
        session = reply.session_id
        backoff = Backoff()
        try:
            while True:
                try:
                    task = rpc.get_task(pb.TaskRequest(session_id=session, wait_ms=LONG_POLL_MS), timeout=RPC_TIMEOUT)
                    if task.kind == pb.Task.FINISH:
                        timer.halt.set()
                        timer.join(timeout=15)  # its last heartbeat before Leave, so none meets a closed session
                        try:
                            rpc.leave(pb.LeaveRequest(session_id=session, reason="finished"), timeout=RPC_TIMEOUT)
                        except grpc.RpcError as exc:
                            result["retries"].append(failure("leave", exc))
                        break
                    if task.kind != pb.Task.TRAIN:
                        continue
                    chunks = rpc.download(pb.DownloadRequest(session_id=session, version=task.version),
                                          timeout=RPC_TIMEOUT)
                    messages = upload_messages(session, task, manifest_of(chunks), reply.chunk_bytes)
                    answer = rpc.upload(iter(messages), timeout=RPC_TIMEOUT)
                    result["rounds"].append(task.round if answer.accepted else -task.round)
                    backoff.reset()
                except grpc.RpcError as exc:
                    if exc.code() not in transient_codes():
                        raise
                    result["retries"].append(failure("probe", exc))
                    time.sleep(backoff.next_delay())
        except grpc.RpcError as exc:
            result["errors"].append(failure("probe", exc))
        finally:
            timer.halt.set()
            timer.join(timeout=15)
    result["heartbeats"] = timer.samples
    out.write_text(json.dumps(result))
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("role", choices=["worker", "probe"])
    p.add_argument("--server", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--go-file", required=True)
    p.add_argument("--first", type=int, default=0)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--start-at", type=float, default=0.0)
    p.add_argument("--client-id", default="probe")
    args = p.parse_args()
    return worker_main(args) if args.role == "worker" else probe_main(args)


if __name__ == "__main__":
    sys.exit(main())
