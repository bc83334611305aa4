"""Every strategy against a naive reference computation, fed through the same spool path the server uses."""

from __future__ import annotations

import itertools
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch

from fedstream.common.wire.manifest import encode_state, layout_of
from fedstream.common.wire.framing import Crc32, iter_chunks
from fedstream.server.aggregation.aggregator import StreamingAggregator, inspect_update
from fedstream.server.publication.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from fedstream.server.intake.spool import SpoolPool, SpoolWriter, UpdateInfo
from fedstream.server.aggregation.strategies import STRATEGIES, RoundUpdates, Strategy, make_strategy

NAMES = ["fedavg", "fedavgm", "fedprox", "fedadagrad", "fedadam", "fedyogi", "median", "trimmed-mean", "krum",
         "multi-krum"]
_counter = itertools.count()


def model(gen: torch.Generator) -> "OrderedDict[str, torch.Tensor]":
    return OrderedDict([("fc.weight", torch.randn(7, 5, generator=gen)), ("fc.bias", torch.randn(7, generator=gen)),
                        ("emb", torch.randn(40, 3, generator=gen)), ("steps", torch.tensor([3], dtype=torch.int64))])


def random_delta(gen: torch.Generator, spread: float = 1.0) -> "OrderedDict[str, torch.Tensor]":
    out = OrderedDict((k, torch.randn(v.shape, generator=gen) * spread) for k, v in model(gen).items() if k != "steps")
    out["steps"] = torch.randint(0, 4, (1,), generator=gen)
    return out


def round_updates(tmp: Path, strategy: Strategy, reference, deltas, examples, codec: str = "raw") -> RoundUpdates:
    """What the coordinator does with each upload: spool it, inspect it, fold it (streaming strategies)."""
    aggregator = StreamingAggregator(reference) if strategy.streaming else None
    spooled = []
    for i, (delta, n) in enumerate(zip(deltas, examples)):
        manifest, buffers = encode_state(delta, codec)
        writer = SpoolWriter(SpoolPool(tmp / f"r{next(_counter)}", idle_bytes=0), layout_of(manifest), manifest.total_bytes)
        crc = Crc32()
        for piece in iter_chunks(buffers, 97):
            crc.update(piece)
            writer.write(piece)
        update = writer.finish(crc.value, crc.nbytes)
        update.info = UpdateInfo(f"client-{i:02d}", 1, 0, n, sq_norm=inspect_update(update))
        if aggregator is not None:
            aggregator.add(update, strategy.weight(update.info), strategy.scale(update.info))
        spooled.append(update)
    return RoundUpdates(reference, spooled, aggregator)


def run_round(tmp, strategy, state, deltas, examples, codec="raw"):
    updates = round_updates(tmp, strategy, state, deltas, examples, codec)
    return strategy.apply(state, strategy.aggregate(updates))


def flat(delta) -> np.ndarray:
    """The floating parameters (not the integer `steps` counter) as one vector."""
    return np.concatenate([delta[k].double().numpy().ravel() for k in delta if k != "steps"])


def weighted_mean(deltas, examples) -> dict[str, np.ndarray]:
    total = sum(examples)
    return {k: sum(d[k].double().numpy() * n for d, n in zip(deltas, examples)) / total for k in deltas[0]}


def assert_state_close(actual, expected: dict[str, np.ndarray], atol: float = 1e-5) -> None:
    for name, value in expected.items():
        got = actual[name]
        if not got.dtype.is_floating_point:
            value = np.round(value)
        np.testing.assert_allclose(got.double().numpy(), value, atol=atol, rtol=1e-5, err_msg=name)


def test_every_cli_name_is_registered_and_rejects_unknown_or_bad_options() -> None:
    assert sorted(STRATEGIES) == sorted(NAMES)
    for name in NAMES:
        assert make_strategy(name).name == name
        with pytest.raises(ValueError, match=f"strategy {name} (has|takes) no option.*bogus"):
            make_strategy(name, {"bogus": "1"})
    with pytest.raises(ValueError, match="momentum must be a number in \\[0.0, 1.0\\)"):
        make_strategy("fedavgm", {"momentum": "1.5"})
    with pytest.raises(ValueError, match="beta must be a number"):
        make_strategy("trimmed-mean", {"beta": "0.5"})
    with pytest.raises(ValueError, match="option f must be a whole number"):
        make_strategy("krum", {"f": "-1"})
    with pytest.raises(ValueError, match="unknown strategy 'fedsgd'"):
        make_strategy("fedsgd")
    assert make_strategy("fedadam", {"eta": "0.5", "tau": "1e-4"}).eta == 0.5


@pytest.mark.parametrize("name", ["fedavg", "fedprox"])
def test_fedavg_and_fedprox_aggregate_the_example_weighted_mean(tmp_path: Path, name: str) -> None:
    gen = torch.Generator().manual_seed(1)
    state = model(gen)
    deltas, examples = [random_delta(gen) for _ in range(5)], [10, 1, 300, 42, 7]
    new = run_round(tmp_path, make_strategy(name), state, deltas, examples)
    mean = weighted_mean(deltas, examples)
    assert_state_close(new, {k: state[k].double().numpy() + mean[k] for k in state})


def test_fedprox_sends_mu_to_clients_and_fedavg_does_not() -> None:
    base = {"local_epochs": 1.0, "proximal_mu": 0.0, "clip_norm": 0.0}
    assert make_strategy("fedprox", {"mu": "0.3"}).configure_client(dict(base))["proximal_mu"] == 0.3
    assert make_strategy("fedprox").configure_client(dict(base))["proximal_mu"] == 0.01
    assert make_strategy("fedavg").configure_client(dict(base))["proximal_mu"] == 0.0


def reference_server_optimizer(name: str, rounds_of_deltas, examples, state, opts):
    """Textbook FedAvgM / Reddi et al. Algorithm 2 in float64 numpy, tensor by tensor."""
    x = {k: v.double().numpy().copy() for k, v in state.items()}
    m = {k: np.zeros_like(v) for k, v in x.items()}
    v = {k: np.full_like(val, opts.get("tau", 1e-3) ** 2) for k, val in x.items()}
    for deltas in rounds_of_deltas:
        mean = weighted_mean(deltas, examples)
        for k in x:
            d = mean[k]
            if not state[k].dtype.is_floating_point:
                x[k] = x[k] + np.round(d)
                continue
            if name == "fedavgm":
                m[k] = opts["momentum"] * m[k] + d
                x[k] = x[k] + opts["server_lr"] * m[k]
                continue
            b1, b2, tau, eta = opts["beta1"], opts["beta2"], opts["tau"], opts["eta"]
            m[k] = b1 * m[k] + (1 - b1) * d
            if name == "fedadagrad":
                v[k] = v[k] + d * d
            elif name == "fedadam":
                v[k] = b2 * v[k] + (1 - b2) * d * d
            else:
                v[k] = v[k] - (1 - b2) * d * d * np.sign(v[k] - d * d)
            x[k] = x[k] + eta * m[k] / (np.sqrt(v[k]) + tau)
    return x


SERVER_OPTIMIZERS = {
    "fedavgm": {"momentum": 0.7, "server_lr": 0.5},
    "fedadagrad": {"eta": 0.1, "beta1": 0.9, "beta2": 0.99, "tau": 1e-2},
    "fedadam": {"eta": 0.05, "beta1": 0.8, "beta2": 0.95, "tau": 1e-3},
    "fedyogi": {"eta": 0.05, "beta1": 0.9, "beta2": 0.9, "tau": 1e-3},
}


@pytest.mark.parametrize("name", list(SERVER_OPTIMIZERS))
def test_server_optimizers_match_the_textbook_update_over_rounds(tmp_path: Path, name: str) -> None:
    gen = torch.Generator().manual_seed(2)
    state = model(gen)
    opts = SERVER_OPTIMIZERS[name]
    strategy = make_strategy(name, {k: str(v) for k, v in opts.items()})
    examples = [5, 50, 20]
    rounds = [[random_delta(gen, spread=0.1 * (r + 1)) for _ in examples] for r in range(4)]
    current = state
    for deltas in rounds:
        current = run_round(tmp_path, strategy, current, deltas, examples)
    expected = reference_server_optimizer(name, rounds, examples, state, opts)
    assert_state_close(current, expected, atol=1e-5)
    assert all(current[k].dtype == state[k].dtype for k in state)


@pytest.mark.parametrize("name", list(SERVER_OPTIMIZERS))
def test_server_optimizer_state_survives_a_checkpoint(tmp_path: Path, name: str) -> None:
    gen = torch.Generator().manual_seed(3)
    state = model(gen)
    opts = {k: str(v) for k, v in SERVER_OPTIMIZERS[name].items()}
    rounds = [[random_delta(gen) for _ in range(3)] for _ in range(3)]
    straight = make_strategy(name, opts)
    current = state
    for deltas in rounds:
        current = run_round(tmp_path, straight, current, deltas, [1, 2, 3])

    first = make_strategy(name, opts)
    resumed_state = state
    for deltas in rounds[:2]:
        resumed_state = run_round(tmp_path, first, resumed_state, deltas, [1, 2, 3])
    save_checkpoint(tmp_path / "run", Checkpoint(resumed_state, 2, 2, first.state_dict()))
    checkpoint = load_checkpoint(tmp_path / "run")
    second = make_strategy(name, opts)
    second.load_state_dict(checkpoint.strategy_state)
    resumed = run_round(tmp_path, second, checkpoint.global_state, rounds[2], [1, 2, 3])
    for k in current:
        assert torch.equal(current[k], resumed[k]), k
    with pytest.raises(ValueError, match="the checkpoint holds 'clip'"):
        make_strategy(name, opts).load_state_dict({"clip": torch.zeros(1)})


def with_outliers(gen, honest: int, byzantine: int):
    """Honest deltas near +1 everywhere; Byzantine ones sign-flipped and scaled by 10."""
    deltas = []
    for i in range(honest + byzantine):
        d = random_delta(gen, spread=0.1)
        for k in d:
            if d[k].dtype.is_floating_point:
                d[k] += 1.0
                if i >= honest:
                    d[k] *= -10.0
        deltas.append(d)
    return deltas


@pytest.mark.parametrize("n", [1, 2, 5, 6])
@pytest.mark.parametrize("codec", ["raw", "fp16"])
def test_median_matches_numpy_across_windows(tmp_path: Path, n: int, codec: str) -> None:
    gen = torch.Generator().manual_seed(4 + n)
    state = model(gen)
    deltas = [random_delta(gen) for _ in range(n)]
    strategy = make_strategy("median")
    strategy.stack_budget = 1
    got = strategy.aggregate(round_updates(tmp_path, strategy, state, deltas, [1] * n, codec))
    decoded = [{k: (v.half().float() if codec == "fp16" and v.dtype.is_floating_point else v) for k, v in d.items()}
               for d in deltas]
    expected = {k: np.median(np.stack([d[k].double().numpy() for d in decoded]), axis=0) for k in state}
    for k in state:
        np.testing.assert_allclose(got[k].double().numpy(), expected[k], atol=1e-6, err_msg=k)


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.2, 0.34, 0.49])
def test_trimmed_mean_matches_scipy(tmp_path: Path, beta: float) -> None:
    gen = torch.Generator().manual_seed(5)
    state = model(gen)
    deltas = with_outliers(gen, 7, 3)
    strategy = make_strategy("trimmed-mean", {"beta": str(beta)})
    strategy.stack_budget = 25
    got = strategy.aggregate(round_updates(tmp_path, strategy, state, deltas, [1] * 10))
    for k in state:
        stacked = np.stack([d[k].double().numpy() for d in deltas])
        expected = scipy.stats.trim_mean(stacked, proportiontocut=beta, axis=0)
        np.testing.assert_allclose(got[k].double().numpy(), expected, atol=1e-5, err_msg=k)


def naive_krum(deltas, f: int, m: int) -> tuple[list[int], dict[str, np.ndarray]]:
    vectors = [np.concatenate([d[k].double().numpy().ravel() for k in d]) for d in deltas]
    n = len(vectors)
    scores = []
    for i in range(n):
        dists = sorted(float(np.sum((vectors[i] - vectors[j]) ** 2)) for j in range(n) if j != i)
        scores.append(sum(dists[: max(n - f - 2, 1)]))
    chosen = sorted(sorted(range(n), key=lambda i: (scores[i], i))[:m])
    return chosen, {k: np.mean([deltas[i][k].double().numpy() for i in chosen], axis=0) for k in deltas[0]}


@pytest.mark.parametrize("name,options,m", [("krum", {"f": "2"}, 1), ("multi-krum", {"f": "2"}, 7),
                                            ("multi-krum", {"f": "1", "m": "3"}, 3), ("krum", {}, 1)])
def test_krum_and_multi_krum_match_the_naive_selection(tmp_path: Path, name: str, options, m: int) -> None:
    gen = torch.Generator().manual_seed(6)
    state = model(gen)
    deltas = with_outliers(gen, 7, 2)
    strategy = make_strategy(name, options)
    strategy.stack_budget = 40
    got = strategy.aggregate(round_updates(tmp_path, strategy, state, deltas, [1] * 9))
    chosen, expected = naive_krum(deltas, int(options.get("f", 0)), m)
    assert strategy.selected == [f"client-{i:02d}" for i in chosen]
    assert all(i < 7 for i in chosen)
    for k in state:
        np.testing.assert_allclose(got[k].double().numpy(), expected[k], atol=1e-5, err_msg=k)


@pytest.mark.parametrize("name", ["median", "trimmed-mean", "krum", "multi-krum"])
def test_robust_strategies_resist_scaled_sign_flips_where_fedavg_does_not(tmp_path: Path, name: str) -> None:
    gen = torch.Generator().manual_seed(7)
    state = model(gen)
    deltas = with_outliers(gen, 8, 2)
    robust = make_strategy(name, {"f": "2"} if "krum" in name else {})
    got = flat(robust.aggregate(round_updates(tmp_path, robust, state, deltas, [1] * 10)))
    plain = flat(make_strategy("fedavg").aggregate(round_updates(tmp_path, make_strategy("fedavg"), state, deltas,
                                                                  [1] * 10)))
    assert np.abs(got - 1.0).max() < 0.5
    assert np.abs(plain - 1.0).min() > 1.0


class CountingUpdates(RoundUpdates):
    """Records the largest [N, w] slice a strategy asked for."""

    largest = 0

    def stack(self, name: str, start: int, stop: int) -> torch.Tensor:
        out = super().stack(name, start, stop)
        CountingUpdates.largest = max(CountingUpdates.largest, out.numel())
        return out


@pytest.mark.parametrize("name", ["median", "trimmed-mean", "multi-krum"])
def test_robust_strategies_read_the_spool_in_bounded_windows(tmp_path: Path, name: str) -> None:
    gen = torch.Generator().manual_seed(8)
    state = OrderedDict([("big", torch.zeros(50_000)), ("small", torch.zeros(3))])
    deltas = [OrderedDict([("big", torch.randn(50_000, generator=gen)), ("small", torch.randn(3, generator=gen))])
              for _ in range(6)]
    strategy = make_strategy(name)
    strategy.stack_budget = 6 * 2048
    spooled = round_updates(tmp_path, strategy, state, deltas, [1] * 6)
    CountingUpdates.largest = 0
    out = strategy.aggregate(CountingUpdates(spooled.reference, spooled.updates, None))
    assert 0 < CountingUpdates.largest <= 6 * 2048
    assert out["big"].shape == (50_000,) and torch.isfinite(out["big"]).all()


def test_a_server_optimizer_step_that_is_not_finite_keeps_the_previous_state(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(9)
    state = model(gen)
    strategy = make_strategy("fedavgm", {"momentum": "0.9"})
    run_round(tmp_path, strategy, state, [random_delta(gen)], [1])
    before = {k: v.clone() for k, v in strategy.buffers["momentum"].items()}
    delta = OrderedDict((k, v.float()) for k, v in random_delta(gen).items())
    delta["emb"][3, 1] = float("inf")
    with pytest.raises(ValueError, match="step for emb is not finite"):
        strategy.apply(state, delta)
    assert all(torch.equal(strategy.buffers["momentum"][k], before[k]) for k in before)


def test_users_name_their_own_strategy_by_import_path() -> None:
    assert type(make_strategy("fedstream.server.aggregation.strategies.median:Median")).__name__ == "Median"
    with pytest.raises(ValueError, match="is not a subclass"):
        make_strategy("os.path:join")
    with pytest.raises(ValueError, match="cannot load strategy"):
        make_strategy("fedstream.server.aggregation.strategies:Nope")


def documented_example() -> type[Strategy]:
    """The NormBoundedMean class exactly as docs/strategies.md shows it."""
    text = (Path(__file__).parent.parent / "docs" / "strategies.md").read_text()
    section = text[text.index("### Writing your own strategy"):]
    code = section[section.index("```python\n") + len("```python\n"):]
    namespace: dict = {}
    exec(compile(code[: code.index("```")], "docs/strategies.md", "exec"), namespace)
    return namespace["NormBoundedMean"]


def test_the_documented_user_strategy_is_the_norm_bounded_weighted_mean(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(10)
    state = model(gen)
    deltas, examples = [random_delta(gen, spread=s) for s in (0.01, 1.0, 5.0)], [30, 10, 60]
    strategy = documented_example()(bound="2.0", server_lr="0.5")
    new = run_round(tmp_path, strategy, state, deltas, examples)
    floats = [k for k in state if state[k].dtype.is_floating_point]
    factors = [min(1.0, 2.0 / float(np.linalg.norm(np.concatenate([d[k].double().numpy().ravel() for k in floats]))))
               for d in deltas]
    for k in floats:
        mean = sum(d[k].double().numpy() * f * n for d, f, n in zip(deltas, factors, examples)) / sum(examples)
        np.testing.assert_allclose(new[k].double().numpy(), state[k].double().numpy() + 0.5 * mean, atol=1e-5)
    assert strategy.round_metrics() == {"clipped": float(sum(f < 1.0 for f in factors))}
