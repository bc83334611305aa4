"""The one table from the core's refusal names to gRPC status codes."""

from __future__ import annotations

import grpc

STATUS = {code.name: code for code in grpc.StatusCode}


def status_of(name: str) -> grpc.StatusCode:
    return STATUS.get(name, grpc.StatusCode.INTERNAL)
