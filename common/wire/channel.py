"""gRPC channel and server options shared by both ends (message caps sized for chunked streams)."""

from __future__ import annotations

from fedstream.common.wire.framing import DEFAULT_CHUNK_BYTES, MAX_CHUNK_BYTES

MAX_MESSAGE_BYTES = MAX_CHUNK_BYTES + (1 << 20)
# Flow-control window per stream: two default chunks (one being consumed while the next arrives). gRPC's
# bandwidth-delay probing would otherwise grow each window to several MiB on loopback, and a server receiving
# N uploads would hold N such windows: peak RSS grew with the client count (benchmarks/RESULTS.md).
STREAM_WINDOW_BYTES = 2 * DEFAULT_CHUNK_BYTES

GRPC_OPTIONS: list[tuple[str, int]] = [
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.http2.bdp_probe", 0),
    ("grpc.http2.lookahead_bytes", STREAM_WINDOW_BYTES),
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
]
