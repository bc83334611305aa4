"""Refusals the core raises, by status name; the transport maps each name to a gRPC status in one table."""

from __future__ import annotations

INVALID_ARGUMENT = "INVALID_ARGUMENT"
FAILED_PRECONDITION = "FAILED_PRECONDITION"
UNAUTHENTICATED = "UNAUTHENTICATED"
PERMISSION_DENIED = "PERMISSION_DENIED"
RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"
DATA_LOSS = "DATA_LOSS"
ALREADY_EXISTS = "ALREADY_EXISTS"
ABORTED = "ABORTED"
DEADLINE_EXCEEDED = "DEADLINE_EXCEEDED"


class Refusal(Exception):
    """A request the server will not carry out; `code` is a gRPC status name, `message` says why and what to do."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def invalid(message: str) -> Refusal:
    return Refusal(INVALID_ARGUMENT, message)


def stale(message: str) -> Refusal:
    return Refusal(FAILED_PRECONDITION, message)


def unauthenticated(message: str) -> Refusal:
    return Refusal(UNAUTHENTICATED, message)


def denied(message: str) -> Refusal:
    return Refusal(PERMISSION_DENIED, message)


def exhausted(message: str) -> Refusal:
    return Refusal(RESOURCE_EXHAUSTED, message)


def data_loss(message: str) -> Refusal:
    return Refusal(DATA_LOSS, message)


def already_exists(message: str) -> Refusal:
    return Refusal(ALREADY_EXISTS, message)


def aborted(message: str) -> Refusal:
    return Refusal(ABORTED, message)


def deadline(message: str) -> Refusal:
    return Refusal(DEADLINE_EXCEEDED, message)


class Duplicate(Exception):
    """An upload whose upload_id was already accepted: answered as a success, counted once."""
