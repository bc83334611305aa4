"""What the core hands back to the transport, as plain values: the transport turns each into its protobuf reply.

Requests reach the core as whatever object the transport has (the protobuf message itself): the core reads
their fields by name and never builds one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, Iterator


class TaskKind(IntEnum):
    """The same numbers as the protocol's Task.Kind."""

    WAIT = 0
    TRAIN = 1
    EVALUATE = 2
    FINISH = 3
    EXCHANGE = 4


@dataclass
class TrainConfig:
    local_epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 0.01
    proximal_mu: float = 0.0
    clip_norm: float = 0.0
    noise_multiplier: float = 0.0
    options: dict[str, str] = field(default_factory=dict)


@dataclass
class Assignment:
    """One answer to GetTask: train, evaluate, exchange a protocol message, wait, or finish."""

    kind: TaskKind
    round: int = 0
    version: int = 0
    config: TrainConfig | None = None
    retry_after_ms: int = 0
    message: str = ""
    phase: str = ""
    payload: bytes = b""


@dataclass
class JoinResult:
    session_id: str
    protocol_version: int
    upload_codec: str
    heartbeat_seconds: int
    run_id: str
    chunk_bytes: int
    upload_admission: bool


@dataclass
class Beat:
    version: int
    round: int
    finished: bool
    finish_message: str


@dataclass
class DownloadHeader:
    version: int
    manifest: Any
    incremental: bool = False
    base_version: int = 0
    masked: list[str] = field(default_factory=list)


@dataclass
class DownloadStream:
    header: DownloadHeader
    chunks: Iterator[memoryview | bytes]
    crc: Any
