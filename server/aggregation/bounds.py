"""How far one client can pull the aggregate: a cap on its claimed weight and a bound on its update's norm.

- Weight: a claim at Join above `--max-examples` is clipped to it; an update's weight is clipped to
  `--weight-cap-factor` × the median claim of the connected clients (a client claiming 10^15 examples counts
  as much as ten median clients, not as everyone else together). Each clip is logged and recorded. A relay's
  partial sum (a session that joined with the "relay" capability, allowed by --relay-ids) is exempt from the
  median cap: its weight is the sum of its clients' examples, already capped by the relay, and at most
  --max-examples.
- Norm: an update whose L2 norm exceeds the bound is scaled down to it (its direction is kept). The bound is
  `--max-update-norm` when set; otherwise `--norm-bound-factor` × the median norm of the updates the last
  round accepted, or, before any round closed, × max(‖global model‖, 1). Recorded per round as `norm_bound`.
- Overflow: the aggregator refuses an update whose weighted magnitude would push the running sum past
  float32's range (see StreamingAggregator.room_for), so one 1e38 update costs only itself.
"""

from __future__ import annotations

import logging
import math
import statistics
from typing import Any, Iterable, Mapping

import torch

from fedstream.server.intake.spool import UpdateInfo

log = logging.getLogger("fedstream.server")


class UpdateBounds:
    def __init__(self, config: Any) -> None:
        self.max_examples = int(config.max_examples)
        self.cap_factor = float(config.weight_cap_factor)
        self.fixed_norm = float(config.max_update_norm)
        self.norm_factor = float(config.norm_bound_factor)
        self.claims: dict[str, int] = {}
        self.median_norm: float | None = None
        self.model_norm = 1.0
        self._median_claim: float | None = None
        self.clipped_weights: list[str] = []
        self.clipped_norms: list[str] = []

    def joined_examples(self, client_id: str, claimed: int) -> int:
        """The claim a session keeps: at most --max-examples."""
        if claimed > self.max_examples:
            log.warning("client=%s claimed %d examples at join; clipped to --max-examples %d", client_id, claimed,
                        self.max_examples)
            claimed = self.max_examples
        self.claims[client_id] = claimed
        self._median_claim = None
        return claimed

    def set_model(self, state: Mapping[str, torch.Tensor]) -> None:
        """The fallback scale for the norm bound before any round closed: the global model's own norm."""
        sq = sum(float(t.double().pow(2).sum()) for t in state.values() if t.dtype.is_floating_point)
        self.model_norm = max(math.sqrt(sq), 1.0)

    def weight_cap(self) -> float:
        if self._median_claim is None:
            positive = [c for c in self.claims.values() if c > 0]
            self._median_claim = statistics.median(positive) if positive else float(self.max_examples)
        return max(1.0, self.cap_factor * self._median_claim)

    def norm_bound(self) -> float:
        if self.fixed_norm > 0:
            return self.fixed_norm
        scale = self.median_norm if self.median_norm else self.model_norm
        return self.norm_factor * scale

    def bound(self, info: UpdateInfo, weight: float, scale: float) -> tuple[float, float]:
        """The weight and scale an update folds with, after the cap and the norm bound."""
        cap = float(self.max_examples) if info.relay else self.weight_cap()
        if weight > cap:
            log.warning("client=%s update weight %g clipped to %g (%g × the median claim; --weight-cap-factor)",
                        info.client_id, weight, cap, self.cap_factor)
            self.clipped_weights.append(info.client_id)
            weight = cap
        norm, limit = math.sqrt(info.sq_norm), self.norm_bound()
        if norm > limit:
            log.warning("client=%s update norm %.4g scaled down to the bound %.4g (--max-update-norm / "
                        "--norm-bound-factor)", info.client_id, norm, limit)
            self.clipped_norms.append(info.client_id)
            scale *= limit / norm
        return weight, scale

    def round_closed(self, infos: Iterable[UpdateInfo]) -> None:
        norms = [math.sqrt(i.sq_norm) for i in infos if i.sq_norm > 0]
        if norms:
            self.median_norm = statistics.median(norms)

    def forget(self, client_id: str) -> None:
        if self.claims.pop(client_id, None) is not None:
            self._median_claim = None

    def metrics(self) -> dict[str, Any]:
        """For the round's record; resets the clip lists."""
        out = {"norm_bound": self.norm_bound(), "weight_cap": self.weight_cap(),
               "clipped_weight": sorted(self.clipped_weights), "clipped_norm": sorted(self.clipped_norms)}
        self.clipped_weights, self.clipped_norms = [], []
        return out

    def state(self) -> dict[str, Any]:
        return {"median_norm": self.median_norm}

    def restore(self, state: Mapping[str, Any]) -> None:
        self.median_norm = state.get("median_norm")
