"""The plaintext health-only port: what Kubernetes' grpc probe reaches when the service port requires mTLS."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from fedstream.common.security.certs import make_federation_certs
from fedstream.server.transport.health_port import serve_health
from fedstream.server.transport.servicer import SERVICE
from tests.harness import start_server

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def check(address: str, service: str) -> int:
    with grpc.insecure_channel(address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        return stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5).status


def test_health_port_answers_check_from_the_shared_status_and_nothing_else() -> None:
    async def scenario() -> None:
        source = health.aio.HealthServicer()
        await source.set("", SERVING)
        await source.set(SERVICE, SERVING)
        server, port = await serve_health(source, "127.0.0.1:0")
        address = f"127.0.0.1:{port}"
        try:
            assert await asyncio.to_thread(check, address, "") == SERVING
            assert await asyncio.to_thread(check, address, SERVICE) == SERVING
            await source.enter_graceful_shutdown()
            assert await asyncio.to_thread(check, address, SERVICE) == NOT_SERVING
            with pytest.raises(grpc.RpcError) as unknown:
                await asyncio.to_thread(check, address, "no.such.Service")
            assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.RpcError) as watched:
                await asyncio.to_thread(watch_once, address)
            assert watched.value.code() == grpc.StatusCode.UNIMPLEMENTED
        finally:
            await server.stop(None)

    asyncio.run(scenario())


def watch_once(address: str) -> None:
    with grpc.insecure_channel(address) as channel:
        next(health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=5))


def test_health_port_refuses_an_address_it_cannot_bind() -> None:
    async def scenario() -> None:
        source = health.aio.HealthServicer()
        server, port = await serve_health(source, "127.0.0.1:0")
        try:
            with pytest.raises(OSError, match=f"--health-address 127.0.0.1:{port}"):
                await serve_health(source, f"127.0.0.1:{port}")
        finally:
            await server.stop(None)

    asyncio.run(scenario())


@pytest.mark.slow
def test_mtls_server_is_probed_in_plaintext_on_its_health_address(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    make_federation_certs(certs, ["127.0.0.1"], ["client-0"])
    server = start_server(tmp_path / "run", "--tls-dir", str(certs), "--task", "digits", "--rounds", "1",
                          "--min-clients", "1", "--wait-for-clients", "60", "--health-address", "127.0.0.1:0")
    try:
        deadline = time.monotonic() + 30
        match = None
        while match is None and time.monotonic() < deadline:
            match = re.search(r"health checks .* on 127\.0\.0\.1:(\d+)", server.log_path.read_text())
            time.sleep(0.05)
        assert match, f"no health address logged: {server.log_path.read_text()[-2000:]}"
        health_address = f"127.0.0.1:{match.group(1)}"
        assert check(health_address, SERVICE) == SERVING and check(health_address, "") == SERVING
        with pytest.raises(grpc.RpcError) as plaintext_on_service_port:
            check(server.address, "")
        assert plaintext_on_service_port.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        server.process.terminate()
        server.process.wait(timeout=30)
