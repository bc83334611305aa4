"""What a client accepts from its server: every value of a JoinReply, a Task and a download's header is checked
against the client's own model and bounds before it is used.

A value that fails ends the attempt with one log line naming the field (BadAnswer); out-of-range pacing values
(heartbeat, chunk size) are clamped instead, with a log line. After `max_bad_answers` bad answers in a row the
client gives up (ServerUntrusted) and exits non-zero with the reason. Defaults: docs/security.md.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Mapping

import torch

from fedstream.client.connection import Backoff
from fedstream.common.codecs.plan import TOPK_FRACTION
from fedstream.common.proto import coordinator_pb2 as pb
from fedstream.common.wire.framing import MAX_CHUNK_BYTES, MIN_CHUNK_BYTES
from fedstream.common.wire.manifest import ManifestError, check_manifest
from fedstream.common.wire.protocol import PROTOCOL_VERSION

log = logging.getLogger("fedstream.client")

MIB = 1 << 20
MIN_HEARTBEAT_SECONDS = 1
MAX_HEARTBEAT_SECONDS = 600
MAX_BATCH_SIZE = 1 << 20
MAX_TEXT = 256  # run and session ids: they reach this client's log lines and requests
SEED_RANGE = (-(1 << 63), 1 << 63)  # what an int64 holds; the server derives seeds from its own int --seed
MAX_EXCHANGE_BYTES = 16 << 20  # a phase message: keys or shares for at most a few hundred neighbours
KNOWN_KINDS = {pb.Task.WAIT, pb.Task.TRAIN, pb.Task.EVALUATE, pb.Task.FINISH, pb.Task.EXCHANGE}


class BadAnswer(ValueError):
    """A value from the server that this client refuses to use; names the field, the value and the bound."""

    def __init__(self, field: str, value: object | None, expected: str) -> None:
        shown = "" if value is None else f" = {value!r}" if isinstance(value, str) else f" = {value}"
        super().__init__(f"{field}{shown}: {expected}")
        self.field = field


class ServerUntrusted(RuntimeError):
    """Too many bad answers in a row: the client stops trusting the server and exits non-zero."""


@dataclass(frozen=True)
class ClientLimits:
    """The client's own bounds on what a server may ask of it (flags of `fedstream client`)."""

    max_model_bytes: int | None = None  # None: 2 × this client's raw model size + 1 MiB
    max_local_epochs: int = 100
    max_slowdown: float = 100.0
    min_download_rate: float = 1e6  # bytes per second
    download_grace: float = 30.0  # seconds every download gets on top of its size-scaled share
    max_bad_answers: int = 5
    retry_backoff: float = 0.5  # first backoff after a bad answer, seconds (doubles up to 20×, jittered)

    def model_bytes_for(self, own_raw_bytes: int) -> int:
        """The largest download this client allocates a buffer for."""
        return self.max_model_bytes if self.max_model_bytes is not None else 2 * own_raw_bytes + MIB

    def download_seconds(self, nbytes: int) -> float:
        """Deadline of a download of nbytes: the grace plus the time at the minimum rate."""
        return self.download_grace + nbytes / self.min_download_rate


def check_join_reply(reply: pb.JoinReply, codecs: list[str]) -> pb.JoinReply:
    """The reply with its pacing values clamped into bounds (each clamp logged); BadAnswer for what cannot be used."""
    if reply.protocol_version != PROTOCOL_VERSION:
        raise BadAnswer("JoinReply.protocol_version", reply.protocol_version, f"this client speaks {PROTOCOL_VERSION}")
    for name in ("session_id", "run_id"):
        text = getattr(reply, name)
        if not text or len(text) > MAX_TEXT or not text.isprintable():
            raise BadAnswer(f"JoinReply.{name}", text[:MAX_TEXT], f"expected 1 to {MAX_TEXT} printable characters")
    if reply.upload_codec not in codecs:
        raise BadAnswer("JoinReply.upload_codec", reply.upload_codec[:MAX_TEXT],
                        f"this client encodes {', '.join(codecs)}")
    checked = pb.JoinReply()
    checked.CopyFrom(reply)
    checked.heartbeat_seconds = _clamped("JoinReply.heartbeat_seconds", reply.heartbeat_seconds,
                                         MIN_HEARTBEAT_SECONDS, MAX_HEARTBEAT_SECONDS, "s")
    checked.chunk_bytes = _clamped("JoinReply.chunk_bytes", reply.chunk_bytes, MIN_CHUNK_BYTES, MAX_CHUNK_BYTES,
                                   " bytes")
    return checked


def _clamped(field: str, value: int, low: int, high: int, unit: str) -> int:
    bounded = min(max(value, low), high)
    if bounded != value:
        log.warning("the server sent %s = %d; using %d%s (bounds [%d, %d])", field, value, bounded, unit, low, high)
    return bounded


def check_task(task: pb.Task, limits: ClientLimits, own_epochs: int | None) -> None:
    """BadAnswer unless every value of a task lies within this client's bounds (own_epochs: --local-epochs)."""
    if task.kind not in KNOWN_KINDS:
        raise BadAnswer("Task.kind", task.kind, "expected WAIT, TRAIN, EVALUATE, EXCHANGE or FINISH")
    if task.kind == pb.Task.EXCHANGE:
        if len(task.phase) > 64 or len(task.payload) > MAX_EXCHANGE_BYTES:
            raise BadAnswer("Task.phase/payload", f"{len(task.phase)} chars/{len(task.payload)} bytes",
                            f"at most 64 chars and {MAX_EXCHANGE_BYTES} bytes")
        return
    if task.kind not in (pb.Task.TRAIN, pb.Task.EVALUATE):
        return
    config = task.config
    if own_epochs is None and config.local_epochs > limits.max_local_epochs:
        raise BadAnswer("Task.config.local_epochs", config.local_epochs,
                        f"more than --max-local-epochs {limits.max_local_epochs}")
    if config.batch_size > MAX_BATCH_SIZE:
        raise BadAnswer("Task.config.batch_size", config.batch_size, f"more than {MAX_BATCH_SIZE}")
    _finite_at_least_zero("Task.config.learning_rate", config.learning_rate, "0 means the task's default")
    for name in ("proximal_mu", "clip_norm", "noise_multiplier"):
        _finite_at_least_zero(f"Task.config.{name}", getattr(config, name), "0 turns it off")
    options = config.options
    if "slowdown" in options:
        slowdown = _number("Task.config.options[slowdown]", options["slowdown"])
        if not 0 < slowdown <= limits.max_slowdown:
            raise BadAnswer("Task.config.options[slowdown]", options["slowdown"],
                            f"expected a factor in (0, {limits.max_slowdown:g}] (--max-slowdown)")
    if "seed" in options:
        seed_of(options)
    if TOPK_FRACTION in options:
        fraction = _number(f"Task.config.options[{TOPK_FRACTION}]", options[TOPK_FRACTION])
        if not 0 < fraction <= 1:
            raise BadAnswer(f"Task.config.options[{TOPK_FRACTION}]", options[TOPK_FRACTION], "expected (0, 1]")


def _finite_at_least_zero(field: str, value: float, note: str) -> None:
    if not (math.isfinite(value) and value >= 0):
        raise BadAnswer(field, value, f"expected a finite number >= 0 ({note})")


def _number(field: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise BadAnswer(field, text[:MAX_TEXT], "expected a number") from None
    if not math.isfinite(value):
        raise BadAnswer(field, text[:MAX_TEXT], "expected a finite number")
    return value


def seed_of(options: Mapping[str, str]) -> int:
    """The round's seed option as an integer (0 when absent); BadAnswer unless it is an int64."""
    text = options.get("seed", "0")
    try:
        value = int(text) if len(text) <= 24 else None
    except ValueError:
        value = None
    if value is None or not SEED_RANGE[0] <= value < SEED_RANGE[1]:
        raise BadAnswer("Task.config.options[seed]", text[:MAX_TEXT], "expected an integer that fits in 64 bits")
    return value


def torch_seed(seed: int, partition_index: int) -> int:
    """The client's training seed: distinct per partition, folded into the range torch.manual_seed accepts."""
    value = seed * 7919 + partition_index
    return value if -(1 << 63) <= value < (1 << 64) else value % (1 << 64)


@dataclass(frozen=True)
class ModelExpectation:
    """What a download must describe: this client's own model, in codecs it decodes, within its byte bound."""

    reference: Mapping[str, tuple[torch.dtype, tuple[int, ...]]]
    codecs: list[str]
    max_bytes: int

    def check_header(self, header: pb.ModelHeader, version: int, have_version: int) -> None:
        """BadAnswer unless the header describes the version asked for, as a model shaped like this client's."""
        if header.version != version:
            raise BadAnswer("ModelHeader.version", header.version, f"this client asked for version {version}")
        if header.incremental and (have_version == 0 or header.base_version != have_version):
            raise BadAnswer("ModelHeader.base_version", header.base_version,
                            f"a difference must be to the version this client holds ({have_version or 'none'})")
        unknown = [name for name in header.masked if name not in self.reference]
        if unknown:
            raise BadAnswer("ModelHeader.masked", unknown[0][:MAX_TEXT], "this client's model has no such tensor")
        try:
            check_manifest(header.manifest, self.reference, self.codecs, "the server", self.max_bytes,
                           holder="this client's model", receiver="this client (--max-model-bytes)", what="model")
        except ManifestError as exc:
            raise BadAnswer("ModelHeader.manifest", None, str(exc)) from None


def loggable(text: str, limit: int = 600) -> str:
    """Text from the server made safe for one log line: control characters escaped, length bounded."""
    escaped = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:limit])
    return escaped + ("…" if len(text) > limit else "")


class BadAnswerCounter:
    """Counts bad answers in a row: each is logged once and waited out with backoff; too many raise."""

    def __init__(self, client_id: str, limit: int, backoff_base: float,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.client_id = client_id
        self.limit = limit
        self.count = 0
        self.backoff = Backoff(base=backoff_base, cap=20 * backoff_base)
        self.sleep = sleep

    def record(self, problem: Exception | str) -> None:
        """Logs one line naming the problem, then backs off; raises ServerUntrusted at the limit."""
        problem = loggable(str(problem))
        self.count += 1
        if self.count >= self.limit:
            log.error("client=%s bad answer from the server (%d of %d): %s; giving up", self.client_id, self.count,
                      self.limit, problem)
            raise ServerUntrusted(f"{self.count} bad answers in a row from the server (--max-bad-answers "
                                  f"{self.limit}); the last: {problem}")
        delay = self.backoff.next_delay()
        log.warning("client=%s bad answer from the server (%d of %d): %s; retrying in %.2f s", self.client_id,
                    self.count, self.limit, problem, delay)
        self.sleep(delay)

    def reset(self) -> None:
        """A task completed: the server answered well."""
        self.count = 0
        self.backoff.reset()
