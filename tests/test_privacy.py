"""Central and local DP: clipping, noise, adaptive clipping, the Opacus accountant, the target ε, the CLI."""

from __future__ import annotations

import math
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant
from opacus.accountants.utils import get_noise_multiplier

from fedstream.cli import main
from fedstream.client.privacy import delta_norm, privatize_delta
from fedstream.common.proto import coordinator_pb2 as pb
from fedstream.common.wire.protocol import PROTOCOL_VERSION
from fedstream.common.tasks import load_task
from fedstream.server.core.config import ServerConfig
from fedstream.server.core.coordinator import Coordinator
from fedstream.server.modes import SyncRounds
from fedstream.server.publication.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from fedstream.server.aggregation.privacy import CentralDP, LocalDP, make_dp_strategy, parse_clip
from fedstream.server.aggregation.strategies import make_strategy
from tests.test_strategies import model, random_delta, round_updates


def clipped(delta, clip: float):
    norm = math.sqrt(sum(float(v.double().square().sum()) for v in delta.values() if v.dtype.is_floating_point))
    factor = min(1.0, clip / norm)
    return {k: v.double().numpy() * (factor if v.dtype.is_floating_point else 1.0) for k, v in delta.items()}


def test_central_dp_without_noise_is_the_uniform_mean_of_clipped_deltas(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(0)
    state = model(gen)
    deltas = [random_delta(gen, spread=s) for s in (0.01, 0.5, 3.0, 10.0)]
    strategy = CentralDP(make_strategy("fedavg"), clip=2.0, noise_multiplier=0.0)
    new = strategy.apply(state, strategy.aggregate(round_updates(tmp_path, strategy, state, deltas, [1, 50, 7, 300])))
    expected = [clipped(d, 2.0) for d in deltas]
    for k in state:
        if state[k].dtype.is_floating_point:
            want = state[k].double().numpy() + np.mean([e[k] for e in expected], axis=0)
            np.testing.assert_allclose(new[k].double().numpy(), want, atol=1e-5, err_msg=k)
    norms = [delta_norm({k: v for k, v in d.items() if v.dtype.is_floating_point}) for d in deltas]
    metrics = strategy.round_metrics()
    assert metrics["clip_norm"] == 2.0 and metrics["clipped_fraction"] == sum(n > 2.0 for n in norms) / 4
    assert "epsilon" not in metrics


def test_central_dp_noise_on_the_sum_has_std_sigma_clip(tmp_path: Path) -> None:
    state = OrderedDict([("w", torch.zeros(400, 500)), ("count", torch.tensor([5], dtype=torch.int64))])
    zero = OrderedDict([("w", torch.zeros(400, 500)), ("count", torch.tensor([0], dtype=torch.int64))])
    strategy = CentralDP(make_strategy("fedavg"), clip=0.5, noise_multiplier=1.3, noise_seed=11)
    delta = strategy.aggregate(round_updates(tmp_path, strategy, state, [zero] * 4, [1] * 4))
    noise = delta["w"].double()
    assert abs(float(noise.std()) - 1.3 * 0.5 / 4) < 0.01 * 1.3 * 0.5 / 4
    assert abs(float(noise.mean())) < 1e-3
    assert float(delta["count"]) == 0.0
    again = CentralDP(make_strategy("fedavg"), clip=0.5, noise_multiplier=1.3, noise_seed=11)
    assert torch.equal(again.aggregate(round_updates(tmp_path, again, state, [zero] * 4, [1] * 4))["w"], delta["w"])


def test_adaptive_clipping_follows_the_geometric_update(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(1)
    state = model(gen)
    strategy = CentralDP(make_strategy("fedavg"), clip=None, noise_multiplier=0.0, initial_clip=1.0,
                         target_quantile=0.5, clip_lr=0.2)
    clip = 1.0
    for spread in (0.01, 0.01, 5.0):
        deltas = [random_delta(gen, spread=spread * (i + 1)) for i in range(5)]
        norms = [delta_norm({k: v for k, v in d.items() if v.dtype.is_floating_point}) for d in deltas]
        new = strategy.aggregate(round_updates(tmp_path, strategy, state, deltas, [1] * 5))
        expected = np.mean([clipped(d, clip)["emb"] for d in deltas], axis=0)
        np.testing.assert_allclose(new["emb"].double().numpy(), expected, atol=1e-5)
        unclipped = sum(n <= clip for n in norms) / 5
        clip *= math.exp(-0.2 * (unclipped - 0.5))
        assert strategy.clip == pytest.approx(clip, rel=1e-12)
    noisy = CentralDP(make_strategy("fedavg"), clip=None, noise_multiplier=2.0)
    z_delta, sigma_b = noisy.noise_split(100)
    assert sigma_b == 5.0 and z_delta == pytest.approx((2.0 ** -2 - 10.0 ** -2) ** -0.5)
    assert noisy.noise_split(10) == (pytest.approx(2.0 / math.sqrt(0.75)), 2.0)
    with pytest.raises(ValueError, match="count_stddev > 1"):
        CentralDP(make_strategy("fedavg"), clip=None, noise_multiplier=2.0, count_stddev=0.9)


def test_epsilon_per_round_is_opacus_rdp_at_the_sampling_rate(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(2)
    state = model(gen)
    strategy = CentralDP(make_strategy("fedavg"), clip=1.0, noise_multiplier=1.1, delta=1e-5)
    reference = RDPAccountant()
    epsilons = []
    for number in range(1, 4):
        assert strategy.begin_round(number, 3, 30) is None
        strategy.aggregate(round_updates(tmp_path, strategy, state, [random_delta(gen) for _ in range(3)], [1] * 3))
        reference.step(noise_multiplier=1.1, sample_rate=0.1)
        epsilons.append(strategy.round_metrics()["epsilon"])
        assert epsilons[-1] == pytest.approx(reference.get_epsilon(1e-5), rel=1e-12)
        assert strategy.round_metrics()["sample_rate"] == 0.1
    assert epsilons[0] < epsilons[1] < epsilons[2]


def test_calibrated_noise_reaches_the_target_epsilon_after_the_planned_rounds() -> None:
    sigma = get_noise_multiplier(target_epsilon=3.0, target_delta=1e-5, sample_rate=0.25, steps=8)
    strategy = CentralDP(make_strategy("fedavg"), clip=1.0, noise_multiplier=sigma, delta=1e-5, target_epsilon=3.0)
    rounds = 0
    while strategy.begin_round(rounds + 1, 5, 20) is None:
        strategy.budget.accountant.step(sigma, 0.25)
        rounds += 1
        assert rounds < 100
    assert rounds == 8
    assert 2.9 < strategy.budget.accountant.epsilon() <= 3.0
    reason = strategy.begin_round(9, 5, 20)
    assert "past --target-epsilon 3" in reason and "round 9" in reason


def test_dp_state_survives_a_checkpoint_with_the_inner_optimiser(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(3)
    state = model(gen)
    strategy = CentralDP(make_strategy("fedadam"), clip=None, noise_multiplier=0.8, initial_clip=0.3, noise_seed=1)
    strategy.begin_round(1, 4, 8)
    new = strategy.apply(state, strategy.aggregate(round_updates(tmp_path, strategy, state,
                                                                 [random_delta(gen) for _ in range(4)], [1] * 4)))
    save_checkpoint(tmp_path / "run", Checkpoint(new, 1, 1, strategy.state_dict()))
    restored = CentralDP(make_strategy("fedadam"), clip=None, noise_multiplier=0.8, initial_clip=0.3)
    restored.load_state_dict(load_checkpoint(tmp_path / "run").strategy_state)
    assert restored.clip == strategy.clip != 0.3
    assert restored.budget.accountant.history == [(0.8, 0.5, 1)]
    assert restored.budget.accountant.epsilon() == strategy.budget.accountant.epsilon() > 0
    assert set(restored.inner.buffers["m"]) == {"fc.weight", "fc.bias", "emb"}
    assert torch.equal(restored.inner.buffers["v"]["emb"], strategy.inner.buffers["v"]["emb"])
    with pytest.raises(ValueError, match="started without --dp"):
        restored.load_state_dict({"m.emb": torch.zeros(3)})


def test_local_dp_asks_clients_to_clip_and_counts_every_round_at_rate_one(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(4)
    state = model(gen)
    strategy = make_dp_strategy(make_strategy("median"), "local", "0.7", 1.5, 1e-5, target_epsilon=50)
    assert isinstance(strategy, LocalDP) and not strategy.streaming
    config = strategy.configure_client({"proximal_mu": 0.0, "clip_norm": 0.0, "noise_multiplier": 0.0})
    assert config["clip_norm"] == 0.7 and config["noise_multiplier"] == 1.5
    assert strategy.begin_round(1, 2, 100) is None
    strategy.aggregate(round_updates(tmp_path, strategy, state, [random_delta(gen) for _ in range(3)], [1] * 3))
    reference = RDPAccountant()
    reference.step(noise_multiplier=1.5, sample_rate=1.0)
    assert strategy.round_metrics()["epsilon"] == pytest.approx(reference.get_epsilon(1e-5))


def test_dp_settings_that_cannot_work_are_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="strategy median reads every update"):
        make_dp_strategy(make_strategy("median"), "central", "1.0", 1.0)
    with pytest.raises(ValueError, match="--clip adaptive needs --dp central"):
        make_dp_strategy(make_strategy("fedavg"), "local", "adaptive", 1.0)
    with pytest.raises(ValueError, match="needs --noise-multiplier > 0"):
        make_dp_strategy(make_strategy("fedavg"), "central", "1.0", 0.0, target_epsilon=3.0)
    with pytest.raises(ValueError, match="--delta must be in"):
        make_dp_strategy(make_strategy("fedavg"), "central", "1.0", 1.0, delta=1.5)
    with pytest.raises(ValueError, match="unknown --dp-option 'quantile'"):
        make_dp_strategy(make_strategy("fedavg"), "central", "adaptive", 1.0, options={"quantile": "0.5"})
    assert parse_clip("adaptive") is None and parse_clip(2) == 2.0
    with pytest.raises(ValueError, match="positive L2 norm"):
        parse_clip("-1")


@pytest.mark.parametrize("argv,message", [
    (["--dp", "local", "--clip", "adaptive"], "--clip adaptive needs --dp central"),
    (["--clip", "1.0"], "need --dp central or --dp local"),
    (["--dp", "central", "--strategy", "krum"], "strategy krum reads every update"),
])
def test_server_cli_checks_dp_flags_before_starting(capsys, argv: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["server", "--insecure", "--address", "127.0.0.1:0", *argv])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_client_clipping_bounds_the_norm_and_leaves_small_deltas_alone() -> None:
    gen = torch.Generator().manual_seed(5)
    big = random_delta(gen, spread=4.0)
    steps = big["steps"].clone()
    before = privatize_delta(big, clip_norm=1.5)
    assert before > 1.5
    assert delta_norm(big) == pytest.approx(1.5, rel=1e-6)
    assert torch.equal(big["steps"], steps)
    small = random_delta(gen, spread=0.001)
    copy = {k: v.clone() for k, v in small.items()}
    privatize_delta(small, clip_norm=1.5)
    assert all(torch.equal(small[k], copy[k]) for k in small)
    privatize_delta(small, clip_norm=0.0)
    assert all(torch.equal(small[k], copy[k]) for k in small)


def test_client_noise_has_std_sigma_clip_and_is_fresh_every_time() -> None:
    first = OrderedDict([("w", torch.zeros(300, 400))])
    second = OrderedDict([("w", torch.zeros(300, 400))])
    privatize_delta(first, clip_norm=0.2, noise_multiplier=2.0)
    privatize_delta(second, clip_norm=0.2, noise_multiplier=2.0)
    assert abs(float(first["w"].std()) - 0.4) < 0.004
    assert not torch.equal(first["w"], second["w"])
    with pytest.raises(ValueError, match="without a clip norm"):
        privatize_delta(first, clip_norm=0.0, noise_multiplier=1.0)


def test_coordinator_ends_the_run_before_a_round_that_would_pass_the_target(tmp_path: Path) -> None:
    strategy = make_dp_strategy(make_strategy("fedavg"), "central", "1.0", 0.5, 1e-5, target_epsilon=1.0)
    coordinator = Coordinator(load_task("digits", {"hidden": "8"}), strategy,
                              ServerConfig(rounds=5, run_dir=tmp_path, wait_for_clients=5.0), SyncRounds())
    reply = coordinator.join(pb.JoinRequest(client_id="solo", protocol_version=PROTOCOL_VERSION, codecs=["raw"],
                                            num_examples=10))
    coordinator.run()
    assert coordinator.completed_rounds == 0
    assert "round 1 would raise ε to" in coordinator.strategy_stop
    assert "past --target-epsilon 1" in coordinator.strategy_stop
    assert coordinator.next_task(reply.session_id, 0.0).kind == pb.Task.FINISH


def test_local_dp_counts_each_clients_own_updates_and_stops_the_one_that_would_pass_the_target(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(5)
    state = model(gen)
    sync = make_dp_strategy(make_strategy("fedavg"), "local", "1.0", 1.0, 1e-5, target_epsilon=8.0)
    sync.aggregate(round_updates(tmp_path, sync, state, [random_delta(gen) for _ in range(2)], [1, 1]))
    sync.aggregate(round_updates(tmp_path, sync, state, [random_delta(gen)], [1]))  # client-00 again
    two = RDPAccountant()
    for _ in range(2):
        two.step(noise_multiplier=1.0, sample_rate=1.0)
    assert sync.round_metrics()["epsilon"] == pytest.approx(two.get_epsilon(1e-5))  # the busiest client's ε
    assert "round 3 would raise ε to 9.0" in sync.begin_round(3, 2, 2)

    asynchronous = make_dp_strategy(make_strategy("fedavg"), "local", "1.0", 1.0, 1e-5, target_epsilon=8.0)
    assert asynchronous.begin_task("a") is None and asynchronous.begin_task("a") is None  # ε 4.73, then 7.08
    assert asynchronous.begin_task("b") is None
    assert "client a's next update would raise its ε to 9.0" in asynchronous.begin_task("a")
    asynchronous.aggregate(round_updates(tmp_path, asynchronous, state, [random_delta(gen)], [1]))
    assert asynchronous.round_metrics()["epsilon"] == pytest.approx(two.get_epsilon(1e-5)), \
        "tasks handed out count, not the updates that happened to be folded"

    restored = make_dp_strategy(make_strategy("fedavg"), "local", "1.0", 2.0, 1e-5, target_epsilon=8.0)
    restored.load_state_dict(asynchronous.state_dict())
    assert restored.round_metrics()["epsilon"] == pytest.approx(two.get_epsilon(1e-5)), "a larger σ later"
    assert restored.begin_task("b") is None, "every client starts from the busiest one's past spend"
    assert restored.round_metrics()["epsilon"] > two.get_epsilon(1e-5), "the past stays in the history"
