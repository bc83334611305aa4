"""Builds and runs a coordinator server: the grpc.aio service, health checks, the round thread, the run directory."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Awaitable, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fedstream.common.wire.channel import GRPC_OPTIONS
from fedstream.server.core.coordinator import Coordinator, NotEnoughClients
from fedstream.server.transport.auth import Authenticator
from fedstream.server.transport.call_limits import CallLimits
from fedstream.server.transport.health_port import serve_health
from fedstream.server.transport.servicer import SERVICE, CoordinatorServicer, generic_handler

log = logging.getLogger("fedstream.server")

# Only the identity encoding: a compressed request could inflate far past what it cost to send, and our clients
# never compress (their chunks are already dense tensor bytes). Compressed calls are refused by gRPC itself.
SERVER_OPTIONS = GRPC_OPTIONS + [("grpc.compression_enabled_algorithms_bitset", 1)]


def default_byte_workers() -> int:
    """Threads for byte work: two per CPU, at least 4 (CRC, spool writes and folds release the GIL)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 2
    return max(4, 2 * cpus)


@dataclass
class Served:
    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    servicer: CoordinatorServicer


async def build_server(coordinator: Coordinator, address: str, credentials: grpc.ServerCredentials | None = None,
                       auth: Authenticator | None = None, byte_workers: int | None = None,
                       limits: CallLimits | None = None) -> Served:
    """The aio server, bound and started on the running loop."""
    server = grpc.aio.server(options=SERVER_OPTIONS)
    pool = ThreadPoolExecutor(max_workers=byte_workers or default_byte_workers(), thread_name_prefix="bytes")
    servicer = CoordinatorServicer(coordinator, auth, pool, limits)
    servicer.attach(asyncio.get_running_loop())
    server.add_generic_rpc_handlers((generic_handler(servicer),))
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    try:
        port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    except RuntimeError:
        port = 0
    if port == 0:
        raise OSError(f"cannot listen on {address}: address in use or not resolvable")
    await server.start()
    await health_servicer.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return Served(server, port, health_servicer, servicer)


async def stop_server(served: Served, grace: float) -> None:
    await served.health.enter_graceful_shutdown()
    await served.server.stop(grace)
    served.servicer.pool.shutdown(wait=False, cancel_futures=True)


def serve(coordinator: Coordinator, address: str, credentials: grpc.ServerCredentials | None = None,
          port_file: Path | None = None, auth: Authenticator | None = None,
          on_start: Callable[[Served], Awaitable[Callable[[], Awaitable[None]] | None]] | None = None,
          byte_workers: int | None = None, health_address: str | None = None) -> Coordinator:
    """Runs the whole federation and returns when the last round is done (or SIGTERM/SIGINT arrives).

    on_start(served) runs on the server's loop once it listens (the dashboard starts there) and may return a
    coroutine function called at shutdown. Raises NotEnoughClients when the federation never gathered.
    """
    return asyncio.run(_serve(coordinator, address, credentials, port_file, auth, on_start, byte_workers,
                              health_address))


async def _serve(coordinator: Coordinator, address: str, credentials: grpc.ServerCredentials | None,
                 port_file: Path | None, auth: Authenticator | None,
                 on_start: Callable[[Served], Awaitable[Callable[[], Awaitable[None]] | None]] | None,
                 byte_workers: int | None, health_address: str | None = None) -> Coordinator:
    loop = asyncio.get_running_loop()
    served = await build_server(coordinator, address, credentials, auth, byte_workers)
    host = address.rsplit(":", 1)[0]
    log.info("listening on %s:%d, run directory %s", host, served.port, coordinator.config.run_dir)
    health_server = None
    if health_address is not None:
        health_server, health_port = await serve_health(served.health, health_address)
        log.info("health checks (plaintext, grpc.health.v1 Check only) on %s:%d", health_address.rsplit(":", 1)[0],
                 health_port)
    if port_file is not None:
        port_file.write_text(str(served.port))
    on_stop = await on_start(served) if on_start is not None else None
    stopping = threading.Event()

    def on_signal(signum: int) -> None:
        if stopping.is_set():
            return
        stopping.set()
        reason = (f"server stopped by {signal.Signals(signum).name} after round {coordinator.completed_rounds}; "
                  "restarting it with the same run directory resumes the run")
        threading.Thread(target=coordinator.stop, args=(reason,), name="shutdown", daemon=True).start()

    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
    round_thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rounds")
    try:
        await loop.run_in_executor(round_thread, coordinator.run)
        # After a signal, clients still training learn of the end from their next heartbeat, then leave.
        await loop.run_in_executor(round_thread, coordinator.wait_clients_gone,
                                   max(10.0, coordinator.config.heartbeat_seconds + 3.0))
    finally:
        if on_stop is not None:
            await on_stop()
        await stop_server(served, grace=2.0)
        if health_server is not None:
            await health_server.stop(None)
        round_thread.shutdown(wait=False)
        coordinator.runlog.plot_in_child()
    return coordinator


class ServerThread:
    """A coordinator's aio server on its own loop thread, for tests and embedding: start, then stop()."""

    def __init__(self, coordinator: Coordinator, address: str = "127.0.0.1:0",
                 credentials: grpc.ServerCredentials | None = None, auth: Authenticator | None = None,
                 limits: CallLimits | None = None) -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="grpc-aio", daemon=True)
        self._thread.start()
        self.served: Served = asyncio.run_coroutine_threadsafe(
            build_server(coordinator, address, credentials, auth, limits=limits), self.loop).result(timeout=30)
        self.port = self.served.port

    def stop(self, grace: float = 0.0) -> None:
        asyncio.run_coroutine_threadsafe(stop_server(self.served, grace), self.loop).result(timeout=30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)


__all__ = ["NotEnoughClients", "ServerThread", "Served", "build_server", "serve"]
