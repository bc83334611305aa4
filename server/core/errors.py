"""Refusals the coordinator raises; the servicer turns each into a gRPC status with the same message."""

from __future__ import annotations

import grpc


class Refusal(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> Refusal:
    return Refusal(grpc.StatusCode.INVALID_ARGUMENT, message)


def stale(message: str) -> Refusal:
    return Refusal(grpc.StatusCode.FAILED_PRECONDITION, message)


def unauthenticated(message: str) -> Refusal:
    return Refusal(grpc.StatusCode.UNAUTHENTICATED, message)


def denied(message: str) -> Refusal:
    return Refusal(grpc.StatusCode.PERMISSION_DENIED, message)


def exhausted(message: str) -> Refusal:
    return Refusal(grpc.StatusCode.RESOURCE_EXHAUSTED, message)


def data_loss(message: str) -> Refusal:
    return Refusal(grpc.StatusCode.DATA_LOSS, message)


def already_exists(message: str) -> Refusal:
    return Refusal(grpc.StatusCode.ALREADY_EXISTS, message)


def aborted(message: str) -> Refusal:
    return Refusal(grpc.StatusCode.ABORTED, message)
