"""gRPC channel and server options shared by both ends (message caps sized for chunked streams)."""

from __future__ import annotations

from fedstream.common.wire import MAX_CHUNK_BYTES

MAX_MESSAGE_BYTES = MAX_CHUNK_BYTES + (1 << 20)

GRPC_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
]

import os as _os  # EXPERIMENT (to be removed)
for _kv in filter(None, _os.environ.get("FEDSTREAM_GRPC_EXTRA", "").split(",")):
    _k, _v = _kv.split("=")
    GRPC_OPTIONS.append((_k, int(_v)))
