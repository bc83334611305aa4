"""The server's settings, shared by the core and every round mode."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from fedstream.common.wire.framing import DEFAULT_CHUNK_BYTES
from fedstream.server.core.admission import DEFAULT_LIMIT as DEFAULT_TRANSFER_LIMIT
from fedstream.server.core.join_limit import DEFAULT_BURST as DEFAULT_JOIN_BURST
from fedstream.server.core.join_limit import DEFAULT_RATE as DEFAULT_JOIN_RATE


@dataclass
class ServerConfig:
    rounds: int = 10
    clients_per_round: int = 0
    min_clients: int = 1
    round_timeout: float = 120.0
    seed: int = 0
    run_dir: Path = Path("runs/latest")
    chunk_bytes: int = DEFAULT_CHUNK_BYTES
    upload_codec: str = "raw"
    download_codec: str = "raw"
    topk_fraction: float = 0.01
    error_feedback: bool = True
    incremental_download: bool = False
    prune_schedule: str = ""
    heartbeat_seconds: int = 5
    session_timeout: float = 30.0
    max_update_bytes: int = 0
    federated_eval: bool = False
    eval_every: int = 1
    reproducible: bool = False
    max_sessions: int = 20_000
    join_rate: float = DEFAULT_JOIN_RATE
    join_burst: int = DEFAULT_JOIN_BURST
    max_transfers: int = DEFAULT_TRANSFER_LIMIT
    wait_for_clients: float = 600.0
    sample_grace: float = 5.0
    max_examples: int = 1_000_000_000
    weight_cap_factor: float = 10.0
    max_update_norm: float = 0.0
    norm_bound_factor: float = 10.0
    local_epochs: int | None = None
    batch_size: int | None = None
    learning_rate: float | None = None
    train_options: dict[str, str] = field(default_factory=dict)
    client_settings: dict[str, dict[str, str]] = field(default_factory=dict)
    relay_ids: frozenset[str] = frozenset()  # client ids allowed to join as relays ("*": any)
