"""Client-level differential privacy for a federation: central DP-FedAvg, local DP, and the privacy accountant.

Central (McMahan et al. 2018, https://arxiv.org/abs/1710.06963): each client's delta is scaled to L2 norm at
most C as it is folded (`scale`, from UpdateInfo.sq_norm), clients weigh equally, and Gaussian noise of
standard deviation σ·C is added to the sum before it is divided by the number of clients. The norm is known
before folding because the coordinator's validation pass (`inspect_update`) reads the spooled update once
after its trailer arrived; the fold is a second read of the spool, so no update is held whole in RAM.

Adaptive clipping (Andrew et al. 2021, https://arxiv.org/abs/1905.03871): C follows a target quantile γ of
the update norms, C ← C·exp(−η·(b̄ − γ)), where b̄ is the noised fraction of updates that were not clipped;
the delta noise is raised to σ_Δ = (σ⁻² − (2σ_b)⁻²)^(−1/2) so the pair of releases costs exactly σ.

Local: clients clip and noise their own delta (client/privacy.py) with the C and σ sent in TrainConfig.

ε comes from Opacus's RDP accountant. Central DP counts one step per round at sampling rate
q = sampled / connected clients (the accountant assumes Poisson sampling; the coordinator samples a fixed
number, the usual approximation). Local DP counts one step at q = 1 per update a client sends, and reports
the client that sent the most (LocalDP says how sync and async mode count).
"""

from __future__ import annotations

import functools
import math
import secrets
from collections import Counter, OrderedDict
from typing import Mapping

import torch

from fedstream.server.intake.spool import UpdateInfo
from fedstream.server.aggregation.strategies.base import RoundUpdates, Strategy

DP_MODES = ("central", "local")


@functools.lru_cache(maxsize=64)
def _rdp_epsilon(history: tuple[tuple[float, float, int], ...], delta: float) -> float:
    """Opacus's RDP ε for a (σ, q, steps) history (cached: the stop check and the metrics ask the same)."""
    if not history:
        return 0.0
    if any(sigma <= 0 for sigma, _, _ in history):
        return math.inf
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = list(history)
    return float(accountant.get_epsilon(delta))


class PrivacyAccountant:
    """ε spent so far at δ, from Opacus's RDPAccountant; its (σ, q, steps) history is checkpointable."""

    def __init__(self, delta: float) -> None:
        if not 0 < delta < 1:
            raise ValueError(f"--delta must be in (0, 1), got {delta}; 1e-5 or 1/(number of clients) are usual")
        self.delta = delta
        self.history: list[tuple[float, float, int]] = []

    @staticmethod
    def _epsilon(history: list[tuple[float, float, int]], delta: float) -> float:
        return _rdp_epsilon(tuple(history), delta)

    def step(self, noise_multiplier: float, sample_rate: float) -> None:
        if self.history and self.history[-1][:2] == (noise_multiplier, sample_rate):
            sigma, q, steps = self.history[-1]
            self.history[-1] = (sigma, q, steps + 1)
        else:
            self.history.append((noise_multiplier, sample_rate, 1))

    def epsilon(self) -> float:
        return self._epsilon(self.history, self.delta)

    def epsilon_after(self, noise_multiplier: float, sample_rate: float) -> float:
        """ε if one more round with these settings ran (the run stops before a round that would pass the target)."""
        return self._epsilon(self.history + [(noise_multiplier, sample_rate, 1)], self.delta)

    def to_tensor(self) -> torch.Tensor:
        return torch.tensor(self.history, dtype=torch.float64).reshape(-1, 3)

    def load_tensor(self, tensor: torch.Tensor) -> None:
        if tensor.dim() != 2 or tensor.shape[1] != 3:
            raise ValueError(f"checkpointed accountant history has shape {list(tensor.shape)}, expected [k, 3]")
        self.history = [(float(s), float(q), int(n)) for s, q, n in tensor.tolist()]


class DelegatingStrategy(Strategy):
    """Passes every call to an inner strategy; the DP wrappers override what they change."""

    def __init__(self, inner: Strategy) -> None:
        self.inner = inner
        self.streaming = inner.streaming

    def weight(self, info: UpdateInfo) -> float:
        return self.inner.weight(info)

    def scale(self, info: UpdateInfo) -> float:
        return self.inner.scale(info)

    def begin_round(self, number: int, sampled: int, population: int) -> str | None:
        return self.inner.begin_round(number, sampled, population)

    def begin_task(self, client_id: str) -> str | None:
        return self.inner.begin_task(client_id)

    def configure_client(self, config: dict[str, float]) -> dict[str, float]:
        return self.inner.configure_client(config)

    def aggregate(self, updates: RoundUpdates) -> "OrderedDict[str, torch.Tensor]":
        return self.inner.aggregate(updates)

    def apply(self, global_state: Mapping[str, torch.Tensor], delta: "OrderedDict[str, torch.Tensor]") -> "OrderedDict[str, torch.Tensor]":
        return self.inner.apply(global_state, delta)

    def round_metrics(self) -> dict[str, float]:
        return self.inner.round_metrics()

    def own_state(self) -> dict[str, torch.Tensor]:
        return {}

    def load_own_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Restores what own_state wrote."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {**{f"dp.{k}": v for k, v in self.own_state().items()},
                **{f"inner.{k}": v for k, v in self.inner.state_dict().items()}}

    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None:
        own = {k[3:]: v for k, v in state.items() if k.startswith("dp.")}
        inner = {k[6:]: v for k, v in state.items() if k.startswith("inner.")}
        other = sorted(set(state) - {f"dp.{k}" for k in own} - {f"inner.{k}" for k in inner})
        if other:
            raise ValueError(f"strategy {self.name}: the checkpoint holds {other[:3]}, which a DP run does not "
                             "write; was this run directory started without --dp?")
        self.load_own_state(own)
        self.inner.load_state_dict(inner)


class PrivacyBudget:
    """Shared by both modes: σ, δ, the accountant and the optional target ε."""

    def __init__(self, noise_multiplier: float, delta: float, target_epsilon: float | None) -> None:
        if not (noise_multiplier >= 0 and math.isfinite(noise_multiplier)):
            raise ValueError(f"--noise-multiplier must be a finite number >= 0, got {noise_multiplier}")
        if target_epsilon is not None and not target_epsilon > 0:
            raise ValueError(f"--target-epsilon must be > 0, got {target_epsilon}")
        if target_epsilon is not None and noise_multiplier == 0:
            raise ValueError("--target-epsilon needs --noise-multiplier > 0: without noise ε is infinite after one round")
        self.noise_multiplier = noise_multiplier
        self.target_epsilon = target_epsilon
        self.accountant = PrivacyAccountant(delta)

    def stop_reason(self, number: int, sample_rate: float) -> str | None:
        if self.target_epsilon is None:
            return None
        after = self.accountant.epsilon_after(self.noise_multiplier, sample_rate)
        if after > self.target_epsilon:
            return (f"round {number} would raise ε to {after:.3f} (δ={self.accountant.delta:g}), past "
                    f"--target-epsilon {self.target_epsilon:g}; ε spent is {self.accountant.epsilon():.3f}")
        return None

    def metrics(self) -> dict[str, float]:
        """ε and σ for metrics.jsonl; ε is left out without noise (it is infinite: no guarantee)."""
        eps = self.accountant.epsilon()
        return {"noise_multiplier": self.noise_multiplier, **({"epsilon": eps} if math.isfinite(eps) else {})}


class CentralDP(DelegatingStrategy):
    """DP-FedAvg around a mean-based strategy (fedavg, fedavgm, fedprox, fedadagrad, fedadam, fedyogi)."""

    def __init__(self, inner: Strategy, clip: float | None, noise_multiplier: float, delta: float = 1e-5,
                 target_epsilon: float | None = None, initial_clip: float = 0.1, target_quantile: float = 0.5,
                 clip_lr: float = 0.2, count_stddev: float | None = None, sample_rate: float | None = None,
                 noise_seed: int | None = None) -> None:
        if not inner.streaming:
            raise ValueError(f"--dp central averages clipped updates, but strategy {inner.name} reads every update "
                             "(robust aggregation); use it with --dp local, or pick fedavg, fedavgm, fedprox, "
                             "fedadagrad, fedadam or fedyogi")
        super().__init__(inner)
        self.name = f"{inner.name}+dp-central"
        self.budget = PrivacyBudget(noise_multiplier, delta, target_epsilon)
        self.adaptive = clip is None
        self.clip = float(initial_clip if clip is None else clip)
        if not self.clip > 0:
            raise ValueError(f"--clip must be a positive L2 norm or 'adaptive', got {self.clip}")
        if not 0 < target_quantile < 1:
            raise ValueError(f"adaptive clipping target_quantile must be in (0, 1), got {target_quantile}")
        if count_stddev is not None and count_stddev < 0:
            raise ValueError(f"adaptive clipping count_stddev must be >= 0, got {count_stddev}")
        if count_stddev is not None and noise_multiplier > 0 and not 2 * count_stddev > noise_multiplier:
            raise ValueError(f"adaptive clipping with --noise-multiplier {noise_multiplier} needs count_stddev > "
                             f"{noise_multiplier / 2:g}, got {count_stddev:g}; raise --dp-option count_stddev")
        if not clip_lr > 0:
            raise ValueError(f"adaptive clipping clip_lr must be > 0, got {clip_lr}")
        if sample_rate is not None and not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate}")
        self.target_quantile = target_quantile
        self.clip_lr = clip_lr
        self.count_stddev = count_stddev
        self.fixed_sample_rate = sample_rate
        self.sample_rate = sample_rate or 1.0
        self.generator = torch.Generator().manual_seed(secrets.randbits(63) if noise_seed is None else int(noise_seed))
        self.last: dict[str, float] = {}

    def weight(self, info: UpdateInfo) -> float:
        return 1.0

    def scale(self, info: UpdateInfo) -> float:
        inner = self.inner.scale(info)
        norm = math.sqrt(max(info.sq_norm, 0.0)) * abs(inner)
        return inner * (min(1.0, self.clip / norm) if norm > 0 else 1.0)

    def begin_round(self, number: int, sampled: int, population: int) -> str | None:
        if self.fixed_sample_rate is None and population > 0:
            self.sample_rate = min(1.0, sampled / population)
        return self.budget.stop_reason(number, self.sample_rate) or self.inner.begin_round(number, sampled, population)

    def noise_split(self, n: int) -> tuple[float, float]:
        """(σ_Δ for the delta sum, σ_b for the unclipped count) whose joint cost is the configured σ."""
        z = self.budget.noise_multiplier
        if not self.adaptive or z == 0:
            return z, 0.0
        sigma_b = self.count_stddev if self.count_stddev is not None else max(n / 20, z)
        return (z ** -2 - (2 * sigma_b) ** -2) ** -0.5, sigma_b

    def aggregate(self, updates: RoundUpdates) -> "OrderedDict[str, torch.Tensor]":
        mean = updates.mean()
        n = updates.aggregator.count
        z_delta, sigma_b = self.noise_split(n)
        if z_delta > 0:
            std = z_delta * self.clip / n
            for name, tensor in mean.items():
                if updates.reference[name].dtype.is_floating_point:
                    tensor.add_(torch.randn(tensor.shape, generator=self.generator, dtype=tensor.dtype), alpha=std)
        norms = [math.sqrt(max(i.sq_norm, 0.0)) for i in updates.infos]
        unclipped = sum(1 for x in norms if x <= self.clip)
        self.last = {"clip_norm": self.clip, "clipped_fraction": 1 - unclipped / len(norms) if norms else 0.0,
                     "sample_rate": self.sample_rate}
        if self.adaptive:
            noisy = unclipped + (float(torch.randn((), generator=self.generator, dtype=torch.float64)) * sigma_b
                                 if sigma_b else 0.0)
            self.clip *= math.exp(-self.clip_lr * (noisy / n - self.target_quantile))
        self.budget.accountant.step(self.budget.noise_multiplier, self.sample_rate)
        return mean

    def round_metrics(self) -> dict[str, float]:
        return {**self.inner.round_metrics(), **self.last, **self.budget.metrics()}

    def own_state(self) -> dict[str, torch.Tensor]:
        return {"clip": torch.tensor([self.clip], dtype=torch.float64),
                "accountant": self.budget.accountant.to_tensor()}

    def load_own_state(self, state: Mapping[str, torch.Tensor]) -> None:
        if "clip" in state:
            self.clip = float(state["clip"].reshape(-1)[0])
        if "accountant" in state:
            self.budget.accountant.load_tensor(state["accountant"])


class LocalDP(DelegatingStrategy):
    """Asks clients to clip to C and add N(0, (σC)²) themselves; aggregation is the inner strategy's.

    Each update is one Gaussian release of its client's data (q = 1), so a client's ε follows the number of
    updates it sends; ε is reported, and checked against the target, for the client with the most. Sync mode
    counts the updates of each applied round (at most one per client); async mode counts every task handed out,
    since each can produce one update whether or not the server later folds it. The history in a checkpoint is
    kept as a prefix that every client is assumed to have spent after a restart (an upper bound, whatever σ was).
    """

    def __init__(self, inner: Strategy, clip: float, noise_multiplier: float, delta: float = 1e-5,
                 target_epsilon: float | None = None) -> None:
        super().__init__(inner)
        self.name = f"{inner.name}+dp-local"
        if not clip > 0:
            raise ValueError(f"--dp local needs a fixed positive --clip, got {clip}")
        self.clip = float(clip)
        self.budget = PrivacyBudget(noise_multiplier, delta, target_epsilon)
        self.releases: Counter[str] = Counter()
        self.past: tuple[tuple[float, float, int], ...] = ()
        self.counts_tasks = False  # set by the first begin_task: only the async coordinator calls it

    def configure_client(self, config: dict[str, float]) -> dict[str, float]:
        return {**self.inner.configure_client(config), "clip_norm": self.clip,
                "noise_multiplier": self.budget.noise_multiplier}

    def begin_round(self, number: int, sampled: int, population: int) -> str | None:
        return self.budget.stop_reason(number, 1.0) or self.inner.begin_round(number, sampled, population)

    def begin_task(self, client_id: str) -> str | None:
        self.counts_tasks = True
        budget = self.budget
        if budget.target_epsilon is not None:
            after = _rdp_epsilon(self._history(self.releases[client_id] + 1), budget.accountant.delta)
            if after > budget.target_epsilon:
                return (f"client {client_id}'s next update would raise its ε to {after:.3f} "
                        f"(δ={budget.accountant.delta:g}), past --target-epsilon {budget.target_epsilon:g}")
        reason = self.inner.begin_task(client_id)
        if reason is None:
            self.releases[client_id] += 1
            self._account()
        return reason

    def aggregate(self, updates: RoundUpdates) -> "OrderedDict[str, torch.Tensor]":
        if not self.counts_tasks:
            self.releases.update(info.client_id for info in updates.infos)
            self._account()
        return self.inner.aggregate(updates)

    def _history(self, releases: int) -> tuple[tuple[float, float, int], ...]:
        return self.past + (((self.budget.noise_multiplier, 1.0, releases),) if releases else ())

    def _account(self) -> None:
        self.budget.accountant.history = list(self._history(max(self.releases.values(), default=0)))

    def round_metrics(self) -> dict[str, float]:
        return {**self.inner.round_metrics(), "clip_norm": self.clip, **self.budget.metrics()}

    def own_state(self) -> dict[str, torch.Tensor]:
        return {"accountant": self.budget.accountant.to_tensor()}

    def load_own_state(self, state: Mapping[str, torch.Tensor]) -> None:
        if "accountant" in state:
            self.budget.accountant.load_tensor(state["accountant"])
            self.past = tuple(self.budget.accountant.history)
            self.releases.clear()


def parse_clip(text: str | float) -> float | None:
    """'--clip 1.5' -> 1.5, '--clip adaptive' -> None (a config file may give a number)."""
    text = str(text)
    if text.strip().lower() == "adaptive":
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (value > 0 and math.isfinite(value)):
        raise ValueError(f"--clip must be a positive L2 norm or 'adaptive', got {text!r}")
    return value


CENTRAL_OPTIONS = {"initial_clip": float, "target_quantile": float, "clip_lr": float, "count_stddev": float,
                    "sample_rate": float, "noise_seed": int}


def make_dp_strategy(inner: Strategy, mode: str, clip: str | float = "1.0", noise_multiplier: float = 1.0,
                     delta: float = 1e-5, target_epsilon: float | None = None,
                     options: Mapping[str, str] | None = None) -> Strategy:
    """Wraps `inner` for `--dp central|local`; options are --dp-option KEY=VALUE (central only)."""
    if mode not in DP_MODES:
        raise ValueError(f"--dp must be one of {', '.join(DP_MODES)}, got {mode!r}")
    clip_norm = parse_clip(clip)
    options = dict(options or {})
    if mode == "local":
        if clip_norm is None:
            raise ValueError("--clip adaptive needs --dp central: with local DP each client clips to a fixed C")
        if options:
            raise ValueError(f"--dp-option {', '.join(sorted(options))} only applies to --dp central")
        return LocalDP(inner, clip_norm, noise_multiplier, delta, target_epsilon)
    parsed: dict[str, float | int] = {}
    for key, value in options.items():
        if key not in CENTRAL_OPTIONS:
            raise ValueError(f"unknown --dp-option {key!r}; known: {', '.join(CENTRAL_OPTIONS)}")
        try:
            parsed[key] = CENTRAL_OPTIONS[key](value)
        except ValueError:
            raise ValueError(f"--dp-option {key} expects a number, got {value!r}") from None
    return CentralDP(inner, clip_norm, noise_multiplier, delta, target_epsilon, **parsed)
