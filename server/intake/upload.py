"""One upload's intake: its header checked once (fields, manifest), then its bytes spooled until the trailer.

Every round mode admits uploads through `check_header`, so the header rules live here alone.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

import torch

from fedstream.common.wire.manifest import ManifestError, TensorLayout, check_manifest
from fedstream.server.core import errors
from fedstream.server.intake.spool import SpoolError, SpoolPool, SpoolWriter, UpdateInfo

MAX_METRICS = 64
MAX_LABEL_CHARS = 128
MAX_AGGREGATED_CLIENTS = 10_000_000


def check_fields(client: str, header: Any, joined_examples: int, relay: bool = False) -> None:
    """Bounds on the header's free-form fields, so a client cannot bloat the run log or poison its numbers.

    A relay's joined_examples is the server's --max-examples: it learns its partial sum's weight only when its
    own clients have delivered."""
    if not 0 <= header.num_examples <= joined_examples:
        most = "the server's --max-examples, the most a relay's partial sum may claim" if relay else \
            "the most an update may claim"
        raise errors.invalid(f"client {client} reported num_examples={header.num_examples} in its update; "
                             f"it joined with {joined_examples}, {most}")
    aggregated = int(getattr(header, "aggregated_clients", 0))
    if aggregated > 1 and not relay:
        raise errors.invalid(f"client {client} sent aggregated_clients={aggregated}; only a session that joined "
                             "with the \"relay\" capability may upload a partial sum of several clients")
    if relay and not 1 <= aggregated <= MAX_AGGREGATED_CLIENTS:
        raise errors.invalid(f"relay {client} sent aggregated_clients={aggregated}; a relay's partial sum counts "
                             f"1 to {MAX_AGGREGATED_CLIENTS} leaf clients")
    if len(header.upload_id) > MAX_LABEL_CHARS:
        raise errors.invalid(f"client {client} sent a {len(header.upload_id)}-char upload_id; at most {MAX_LABEL_CHARS}")
    check_metrics(client, header.metrics)


def check_metrics(client: str, metrics: Mapping[str, float]) -> None:
    if len(metrics) > MAX_METRICS:
        raise errors.invalid(f"client {client} sent {len(metrics)} metrics; at most {MAX_METRICS}")
    for key, value in metrics.items():
        if len(key) > MAX_LABEL_CHARS or not math.isfinite(value):
            raise errors.invalid(f"client {client} sent metric {key[:40]!r}={value}; names are at most "
                                 f"{MAX_LABEL_CHARS} chars and values must be finite")


def check_header(client: str, header: Any, joined_examples: int,
                 reference: Mapping[str, tuple[torch.dtype, tuple[int, ...]]], allowed_codecs: Iterable[str],
                 max_bytes: int, relay: bool = False) -> list[TensorLayout]:
    """The header's fields and manifest against the global model; the stream's layout, or a Refusal."""
    check_fields(client, header, joined_examples, relay)
    try:
        return check_manifest(header.manifest, reference, allowed_codecs, f"client {client}", max_bytes)
    except ManifestError as exc:
        code = errors.exhausted if "at most" in str(exc) else errors.invalid
        raise code(str(exc)) from None


def update_info(client: str, header: Any, relay: bool = False) -> UpdateInfo:
    metrics = {k: float(v) for k, v in header.metrics.items()}
    aggregated = int(getattr(header, "aggregated_clients", 0)) if relay else 1
    return UpdateInfo(client, int(header.round), int(header.base_version), int(header.num_examples), metrics,
                      header.upload_id, aggregated_clients=aggregated, relay=relay)


class UploadSink:
    """One in-flight upload whose header passed: data goes to the spool until the trailer arrives.

    `ticket` is the round mode's own handle for the work this upload answers (a round, a task number)."""

    def __init__(self, client_id: str, info: UpdateInfo, writer: SpoolWriter, ticket: object) -> None:
        self.client_id = client_id
        self.info = info
        self.writer = writer
        self.ticket = ticket

    @classmethod
    def open(cls, pool: SpoolPool, client: str, header: Any, layout: list[TensorLayout],
             ticket: object, relay: bool = False) -> "UploadSink":
        writer = SpoolWriter(pool, layout, int(header.manifest.total_bytes))
        return cls(client, update_info(client, header, relay), writer, ticket)

    def write(self, data: memoryview | bytes) -> None:
        try:
            self.writer.write(data)
        except SpoolError as exc:
            raise errors.invalid(f"client {self.client_id}: {exc}; the upload was dropped") from None
