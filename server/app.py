"""Builds and runs a coordinator server: gRPC service, health checks, the round loop, the run directory."""

from __future__ import annotations

import logging
import signal
import threading
from concurrent import futures
from pathlib import Path
from typing import Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fedstream.common.channel import GRPC_OPTIONS
from fedstream.common.tasks import Task
from fedstream.server.auth import Authenticator
from fedstream.server.coordinator import Coordinator, ServerConfig
from fedstream.server.health_port import serve_health
from fedstream.server.progress import RoundProgress
from fedstream.server.servicer import SERVICE, CoordinatorServicer, generic_handler
from fedstream.server.strategies import Strategy

log = logging.getLogger("fedstream.server")


def build_server(coordinator: Coordinator, address: str, max_workers: int = 256,
                 credentials: grpc.ServerCredentials | None = None,
                 auth: Authenticator | None = None) -> tuple[grpc.Server, int, health.HealthServicer]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=max_workers, thread_name_prefix="rpc"),
                         options=GRPC_OPTIONS, maximum_concurrent_rpcs=max_workers * 4)
    server.add_generic_rpc_handlers((generic_handler(CoordinatorServicer(coordinator, auth)),))
    health_servicer = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    port = server.add_secure_port(address, credentials) if credentials else server.add_insecure_port(address)
    if port == 0:
        raise OSError(f"cannot listen on {address}: address in use or not resolvable")
    health_servicer.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    return server, port, health_servicer


def serve(task: Task, strategy: Strategy, config: ServerConfig, address: str,
          credentials: grpc.ServerCredentials | None = None, max_workers: int = 256,
          port_file: Path | None = None,
          coordinator_factory: Callable[..., Coordinator] = Coordinator,
          auth: Authenticator | None = None, health_address: str | None = None) -> Coordinator:
    """Runs the whole federation and returns when the last round is done (or SIGTERM/SIGINT arrives).

    coordinator_factory(task, strategy, config, on_round=...) builds the coordinator: Coordinator for
    synchronous rounds, server.fedbuff.async_coordinator(settings) for asynchronous mode. health_address, when
    given, also serves the health status in plaintext there (server.health_port).
    """
    progress = RoundProgress(config.rounds)
    coordinator = coordinator_factory(task, strategy, config, on_round=progress.round_done)
    server, port, health_servicer = build_server(coordinator, address, max_workers, credentials, auth)
    server.start()
    host = address.rsplit(":", 1)[0]
    log.info("listening on %s:%d, run directory %s", host, port, config.run_dir)
    health_server = None
    if health_address is not None:
        health_server, health_port = serve_health(health_servicer, health_address)
        log.info("health checks (plaintext, grpc.health.v1 Check only) on %s:%d",
                 health_address.rsplit(":", 1)[0], health_port)
    if port_file is not None:
        port_file.write_text(str(port))

    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        if stop.is_set():
            return
        stop.set()
        reason = (f"server stopped by {signal.Signals(signum).name} after round {coordinator.completed_rounds}; "
                  "restarting it with the same run directory resumes the run")
        # The handler runs on the main thread, possibly inside the coordinator's lock: stop from another thread.
        threading.Thread(target=coordinator.stop, args=(reason,), name="shutdown", daemon=True).start()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_signal)
        signal.signal(signal.SIGINT, on_signal)
    try:
        with progress:
            coordinator.run()
        # After a signal, clients still training learn of the end from their next heartbeat, then leave.
        coordinator.wait_clients_gone(timeout=max(10.0, config.heartbeat_seconds + 3.0))
    finally:
        health_servicer.enter_graceful_shutdown()
        server.stop(grace=2.0).wait()
        if health_server is not None:
            health_server.stop(grace=None)
        coordinator.runlog.plot_in_child()
    return coordinator
