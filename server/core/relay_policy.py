"""Which relays a coordinator accepts: a session joining with the "relay" capability uploads partial sums of many
clients, exempt from the per-client weight cap, so only ids named by --relay-ids may, and only where a partial sum
means what a flat federation's updates would (docs/relays.md)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from fedstream.server.core import errors

if TYPE_CHECKING:
    from fedstream.server.aggregation.strategies import Strategy
    from fedstream.server.core.config import ServerConfig
    from fedstream.server.core.round_mode import RoundMode

RELAY = "relay"
ANY_RELAY = "*"


def check_relay_join(client_id: str, config: "ServerConfig", strategy: "Strategy", mode: "RoundMode") -> None:
    """Raises a Refusal naming why this server cannot take client_id as a relay, and what to change."""
    if ANY_RELAY not in config.relay_ids and client_id not in config.relay_ids:
        raise errors.denied(f"client {client_id} joined as a relay; this server accepts relays only from the ids in "
                            f"--relay-ids ({', '.join(sorted(config.relay_ids)) or 'none given'}): add {client_id}")
    if not mode.accepts_relays:
        raise errors.stale(f"relay {client_id} cannot join a --mode {mode.name} server: a relay answers a round with "
                           "its clients' partial sum; use --mode sync or over-selection")
    if not strategy.streaming:
        raise errors.stale(f"relay {client_id} cannot join a server running --strategy {strategy.name}: a relay "
                           "sends the mean of its clients, and a median or Krum over relays' means is not the "
                           "median or Krum over the clients; use a mean-based strategy (fedavg, fedavgm, fedprox, "
                           "fedadam, fedadagrad, fedyogi)")
    if config.federated_eval:
        raise errors.stale(f"relay {client_id} cannot join a server running --federated-eval: a relay holds no test "
                           "data of its own; connect evaluating clients directly or drop --federated-eval")
