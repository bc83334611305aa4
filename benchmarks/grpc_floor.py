"""The raw gRPC floor: the fastest a bare grpcio stream moves the same bytes between two processes here.

A sink server runs in a child process; the parent streams a model-sized buffer to it in chunk-sized messages
(client streaming, like an upload) and reads it back (server streaming, like a download). Both processes apply
the same malloc tuning as fedstream's entry points, so the floor is what gRPC itself allows, not an allocator
artefact. `bytes(slice)` per chunk is the one copy grpcio's Python API forces on any sender; the
`transport` variant resends one prepared message to show gRPC's own cost without that copy.

Run alone: `python benchmarks/grpc_floor.py --bytes 100802600 --chunk 1048576`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent import futures
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import psutil

from fedstream.common.allocator import tune_malloc

SERVICE = "bench.Floor"
OPTIONS = [("grpc.max_receive_message_length", 128 << 20), ("grpc.max_send_message_length", 128 << 20)]


def _identity(data: bytes) -> bytes:
    return data


def _serve(port_file: Path) -> None:
    tune_malloc()
    payloads: dict[int, bytes] = {}

    def upload(requests, _context) -> bytes:
        total = 0
        for chunk in requests:
            total += len(chunk)
        return total.to_bytes(8, "little")

    def download(request: bytes, _context):
        total, chunk = int.from_bytes(request[:8], "little"), int.from_bytes(request[8:16], "little")
        source = payloads.setdefault(total, bytes(total))
        view = memoryview(source)
        for start in range(0, total, chunk):
            yield bytes(view[start : start + chunk])

    handlers = {
        "Upload": grpc.stream_unary_rpc_method_handler(upload, _identity, _identity),
        "Download": grpc.unary_stream_rpc_method_handler(download, _identity, _identity),
    }
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4), options=OPTIONS)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    port_file.write_text(str(port))
    server.wait_for_termination()


def _cpu(other: psutil.Process) -> float:
    """CPU seconds used so far by this process and the other one."""
    mine, theirs = psutil.Process().cpu_times(), other.cpu_times()
    return mine.user + mine.system + theirs.user + theirs.system


@dataclass
class Floor:
    """Median GB/s of each direction over reps, for one payload and chunk size."""

    nbytes: int
    chunk_bytes: int
    upload: float
    upload_transport: float
    download: float
    cpu_seconds_per_gb: float

    def row(self) -> str:
        return (f"{self.chunk_bytes >> 10} KiB chunks, {self.nbytes / 1e6:.1f} MB: upload {self.upload:.2f} GB/s "
                f"(transport only {self.upload_transport:.2f}), download {self.download:.2f} GB/s; "
                f"{self.cpu_seconds_per_gb:.2f} CPU-s per GB moved (both processes)")


def measure(nbytes: int, chunk_bytes: int, reps: int = 5, workdir: Path = Path("/tmp")) -> Floor:
    """Starts a sink process, streams nbytes up and down reps times, returns median rates."""
    tune_malloc()
    port_file = workdir / f"grpc-floor-{time.monotonic_ns()}.port"
    server = subprocess.Popen([sys.executable, __file__, "--serve", str(port_file)])
    try:
        deadline = time.monotonic() + 60
        while not (port_file.exists() and port_file.read_text().strip()):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("the gRPC floor sink did not start")
            time.sleep(0.02)
        channel = grpc.insecure_channel(f"127.0.0.1:{port_file.read_text().strip()}", options=OPTIONS)
        up = channel.stream_unary(f"/{SERVICE}/Upload", request_serializer=_identity, response_deserializer=_identity)
        down = channel.unary_stream(f"/{SERVICE}/Download", request_serializer=_identity,
                                    response_deserializer=_identity)
        source = bytearray(nbytes)
        source[::4096] = b"\x01" * len(source[::4096])
        view = memoryview(source)
        prepared = bytes(chunk_bytes)

        def sliced():
            for start in range(0, nbytes, chunk_bytes):
                yield bytes(view[start : start + chunk_bytes])

        def repeated():
            for start in range(0, nbytes, chunk_bytes):
                yield prepared if start + chunk_bytes <= nbytes else prepared[: nbytes - start]

        def timed(fn) -> float:
            started = time.perf_counter()
            fn()
            return nbytes / (time.perf_counter() - started) / 1e9

        def get() -> None:
            got = sum(len(c) for c in down(nbytes.to_bytes(8, "little") + chunk_bytes.to_bytes(8, "little")))
            if got != nbytes:
                raise RuntimeError(f"floor download returned {got} bytes, expected {nbytes}")

        timed(lambda: up(sliced()))
        timed(get)
        rates = {"up": [], "transport": [], "down": []}
        sink = psutil.Process(server.pid)
        cpu_before = _cpu(sink)
        for _ in range(reps):
            rates["up"].append(timed(lambda: up(sliced())))
            rates["down"].append(timed(get))
        cpu_per_gb = (_cpu(sink) - cpu_before) / (2 * reps * nbytes / 1e9)
        for _ in range(reps):
            rates["transport"].append(timed(lambda: up(repeated())))
        channel.close()
        return Floor(nbytes, chunk_bytes, statistics.median(rates["up"]), statistics.median(rates["transport"]),
                     statistics.median(rates["down"]), cpu_per_gb)
    finally:
        server.kill()
        server.wait()
        port_file.unlink(missing_ok=True)


def measure_elsewhere(nbytes: int, chunk_bytes: int, reps: int = 5, env: dict[str, str] | None = None) -> Floor:
    """measure() run in a child process, so that the caller's own peak RSS stays small (a child's rusage
    maxrss includes its parent's peak at the time of the fork)."""
    done = subprocess.run([sys.executable, __file__, "--bytes", str(nbytes), "--chunk", str(chunk_bytes),
                           "--reps", str(reps), "--json"], capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"the gRPC floor measurement failed:\n{done.stderr[-3000:]}")
    return Floor(**json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--bytes", type=int, default=100_802_600)
    parser.add_argument("--chunk", type=int, default=1 << 20)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    args = parser.parse_args()
    if args.serve:
        _serve(args.serve)
        return 0
    floor = measure(args.bytes, args.chunk, args.reps)
    print(json.dumps(asdict(floor)) if args.json else floor.row())
    return 0


if __name__ == "__main__":
    sys.exit(main())
