"""A plaintext port that answers only grpc.health.v1 Check, for probes that cannot speak mTLS (the kubelet's).

The status comes from the main server's HealthServicer, so graceful shutdown shows here too. Watch is not served:
probes only need Check, and a Watch would be a call a stranger could hold open for as long as it likes.
"""

from __future__ import annotations

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc


class CheckOnlyHealth(health_pb2_grpc.HealthServicer):
    """Answers Check from the shared servicer; Watch keeps the base class's UNIMPLEMENTED."""

    def __init__(self, source: health.aio.HealthServicer) -> None:
        self.source = source

    async def Check(self, request: health_pb2.HealthCheckRequest,
                    context: grpc.aio.ServicerContext) -> health_pb2.HealthCheckResponse:
        return await self.source.Check(request, context)


async def serve_health(source: health.aio.HealthServicer, address: str) -> tuple[grpc.aio.Server, int]:
    """Starts the health-only server on address (HOST:PORT, port 0 picks one) on the running loop."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])  # a second process on the port is an error
    health_pb2_grpc.add_HealthServicer_to_server(CheckOnlyHealth(source), server)
    try:
        port = server.add_insecure_port(address)
    except RuntimeError:  # grpcio raises where older releases returned 0
        port = 0
    if port == 0:
        raise OSError(f"--health-address {address}: cannot listen there (address in use or not resolvable); "
                      "pick another port")
    await server.start()
    return server, port
