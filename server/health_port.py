"""A plaintext port that answers only grpc.health.v1 Check, for probes that cannot speak mTLS (the kubelet's).

The status comes from the main server's HealthServicer, so graceful shutdown shows here too. Watch is not served:
each Watch would hold a worker thread for as long as the caller likes, and probes only need Check.
"""

from __future__ import annotations

from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

WORKERS = 4


class CheckOnlyHealth(health_pb2_grpc.HealthServicer):
    """Answers Check from the shared servicer; Watch keeps the base class's UNIMPLEMENTED."""

    def __init__(self, source: health.HealthServicer) -> None:
        self.source = source

    def Check(self, request: health_pb2.HealthCheckRequest,
              context: grpc.ServicerContext) -> health_pb2.HealthCheckResponse:
        return self.source.Check(request, context)


def serve_health(source: health.HealthServicer, address: str) -> tuple[grpc.Server, int]:
    """Starts the health-only server on address (HOST:PORT, port 0 picks one) and returns it with the bound port."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="health"),
                         maximum_concurrent_rpcs=WORKERS * 4,
                         options=[("grpc.so_reuseport", 0)])  # a second process on the port is an error, not a share
    health_pb2_grpc.add_HealthServicer_to_server(CheckOnlyHealth(source), server)
    try:
        port = server.add_insecure_port(address)
    except RuntimeError:  # grpcio raises where older releases returned 0
        port = 0
    if port == 0:
        raise OSError(f"--health-address {address}: cannot listen there (address in use or not resolvable); "
                      "pick another port")
    server.start()
    return server, port
