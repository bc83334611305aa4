"""Over-selection (Bonawitz et al. 2019, https://arxiv.org/abs/1902.01046, §2.1): sample more clients than a
round needs and close it as soon as --min-clients updates arrived; the stragglers' work is not waited for.

`--mode over-selection --clients-per-round 13 --min-clients 10` samples 13 and closes at the first 10.
The uploads still in flight when the round closes are refused as stale (their clients get the next task).
"""

from __future__ import annotations

import logging

from fedstream.server.core.config import ServerConfig
from fedstream.server.aggregation.strategies import Strategy
from fedstream.server.modes.round_state import RoundState
from fedstream.server.modes.sync_rounds import SyncRounds

log = logging.getLogger("fedstream.server")


class OverSelection(SyncRounds):
    name = "over-selection"

    def check(self, config: ServerConfig, strategy: Strategy) -> None:
        super().check(config, strategy)
        if config.reproducible:
            raise ValueError("--reproducible folds every sampled client's update in order; over-selection closes "
                             "a round before the stragglers deliver (use --mode sync)")

    def round_done(self, rnd: RoundState) -> bool:
        enough = len(rnd.accepted) >= self.core.config.min_clients
        if enough and rnd.outstanding():
            log.info("round=%d closes with the first %d update(s); %d straggler(s) not waited for", rnd.number,
                     len(rnd.accepted), len(rnd.outstanding()))
        return enough or rnd.complete()
