"""Magnitude pruning zeroes exactly the smallest weights, the schedule steps as written, and clients keep zeros."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from fedstream.client.masks import keep_pruned, masks_for
from fedstream.common.training.pruning import apply_masks, masks_of, prunable, prune, sparsity
from fedstream.server.publication.pruning_schedule import GlobalPruning, PruneSchedule


def naive_prune(values: list[float], amount: float) -> list[float]:
    """Reference: sort positions by |value|, zero the round(amount · n) first ones."""
    k = int(round(amount * len(values)))
    order = sorted(range(len(values)), key=lambda i: abs(values[i]))
    out = list(values)
    for i in order[:k]:
        out[i] = 0.0
    return out


def distinct(shape, gen: torch.Generator) -> torch.Tensor:
    n = torch.Size(shape).numel()
    return ((torch.randperm(n, generator=gen).double() + 1) / n * torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
            ).float().reshape(shape)


@pytest.mark.parametrize("amount", [0.0, 0.1, 0.5, 0.83, 0.99])
def test_layer_pruning_matches_the_naive_reference_and_does_not_rescale(amount: float) -> None:
    gen = torch.Generator().manual_seed(1)
    state = OrderedDict(w1=distinct((30, 17), gen), b1=distinct((17,), gen), w2=distinct((4, 5, 6), gen))
    original = {k: v.clone() for k, v in state.items()}
    masks = prune(state, amount)
    assert list(masks) == ["w1", "w2"]
    for name in ("w1", "w2"):
        expected = torch.tensor(naive_prune(original[name].reshape(-1).tolist(), amount)).reshape(original[name].shape)
        assert torch.equal(state[name], expected), name
        assert torch.equal(masks[name], expected != 0)
        assert int((state[name] == 0).sum()) == int(round(amount * state[name].numel()))
    assert torch.equal(state["b1"], original["b1"])


def test_global_pruning_ranks_all_tensors_together() -> None:
    gen = torch.Generator().manual_seed(2)
    small = distinct((20, 10), gen) * 0.001
    big = distinct((20, 10), gen)
    state = OrderedDict(small=small.clone(), big=big.clone())
    prune(state, 0.5, scope="global")
    flat = torch.cat([small.reshape(-1), big.reshape(-1)]).tolist()
    expected = naive_prune(flat, 0.5)
    assert torch.equal(torch.cat([state["small"].reshape(-1), state["big"].reshape(-1)]), torch.tensor(expected))
    assert sparsity(state) == 0.5 and bool((state["small"] == 0).all())


def test_pruning_a_module_edits_its_parameters_and_grows_monotonically() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))
    first = prune(model, 0.5)
    assert set(first) == {"0.weight", "2.weight"}
    assert abs(sparsity(model.state_dict()) - 0.5) < 1e-3
    second = prune(model, 0.8)
    for name in first:
        assert not bool((second[name] & ~first[name]).any()), "a pruned weight came back"
    assert masks_of(model.state_dict(), first).keys() == first.keys()
    with pytest.raises(ValueError, match=r"in \[0, 1\)"):
        prune(model, 1.0)
    with pytest.raises(KeyError, match="no such tensor"):
        prune(model, 0.5, names=["nope"])


def test_apply_masks_zeroes_even_nan_weights() -> None:
    w = torch.tensor([1.0, float("nan"), 3.0])
    apply_masks({"w": w}, {"w": torch.tensor([True, False, True])})
    assert w.tolist() == [1.0, 0.0, 3.0]


@pytest.mark.parametrize("text,rounds,steps", [
    ("", 10, ()),
    ("0.5,0.8,0.9", 10, ((2, 0.5), (5, 0.8), (7, 0.9))),
    ("0.5", 2, ((1, 0.5),)),
    ("2:0.5, 4:0.8", 6, ((2, 0.5), (4, 0.8))),
    ("0.3,0.5,0.7", 3, ((1, 0.5), (2, 0.7))),
])
def test_schedule_parsing(text: str, rounds: int, steps) -> None:
    schedule = PruneSchedule.parse(text, rounds)
    assert schedule.steps == steps
    if steps:
        assert schedule.target_after(steps[0][0]) == steps[0][1] and schedule.reached_by(rounds) == steps[-1][1]
        assert schedule.reached_by(steps[0][0] - 1) == 0.0


@pytest.mark.parametrize("text,message", [
    ("0.5,2:0.8", "mixes"), ("1.5", r"in \(0, 1\)"), ("0:0.5", "outside"), ("11:0.5", "outside"),
    ("2:0.8,4:0.5", "lowers"), ("half", "SPARSITY or ROUND:SPARSITY"),
])
def test_schedule_errors_say_what_to_write(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PruneSchedule.parse(text, 10)


def test_global_pruning_reapplies_masks_without_editing_old_tensors() -> None:
    gen = torch.Generator().manual_seed(3)
    state = OrderedDict(w=distinct((10, 10), gen), b=distinct((10,), gen))
    pruning = GlobalPruning(PruneSchedule.parse("1:0.5,3:0.7", 4), state)
    assert pruning.after_round(1, state) and pruning.masked == ["w"]
    assert sparsity(state) == 0.5
    pruned_w = state["w"]
    nxt = OrderedDict(w=pruned_w + 10.0, b=state["b"] + 10.0)
    assert not pruning.after_round(2, nxt)
    assert torch.equal(nxt["w"] == 0, pruned_w == 0) and sparsity(nxt) == 0.5
    assert pruning.after_round(3, nxt) and sparsity(nxt) == 0.7
    assert bool((nxt["w"][pruned_w == 0] == 0).all())
    assert pruning.metrics(nxt) == {"sparsity": 0.7}
    restored = GlobalPruning(PruneSchedule.parse("1:0.5,3:0.7", 4), nxt)
    restored.restore(nxt, 3)
    assert torch.equal(restored.masks["w"], nxt["w"] != 0)


def _train(model: nn.Module, steps: int = 20) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    x, y = torch.randn(64, 8), torch.randint(0, 3, (64,))
    for _ in range(steps):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def test_clients_keep_pruned_weights_at_zero_while_training() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    prune(model, 0.7)
    state = OrderedDict((k, v.clone()) for k, v in model.state_dict().items())
    masks = masks_for(state, prunable(state))
    with keep_pruned(model, masks):
        _train(model)
    after = model.state_dict()
    for name, mask in masks.items():
        assert bool((after[name][~mask] == 0).all()), name
        assert not torch.equal(after[name][mask], state[name][mask]), "survivors should still train"
    _train(model)
    assert any(bool((after[n][~m] != 0).any()) for n, m in masks.items()), "without the hook zeros move"


def test_keep_pruned_ignores_other_models_optimisers_and_refuses_unknown_names() -> None:
    torch.manual_seed(0)
    pruned, other = nn.Linear(4, 4), nn.Linear(4, 4)
    prune(pruned, 0.5)
    masks = masks_for(pruned.state_dict(), ["weight"])
    other_before = other.weight.detach().clone()
    with keep_pruned(pruned, masks):
        opt = torch.optim.SGD(other.parameters(), lr=0.1)
        other(torch.randn(2, 4)).sum().backward()
        opt.step()
    assert int((other.weight == 0).sum()) == int((other_before == 0).sum())
    with pytest.raises(ValueError, match="no such tensor"):
        masks_for(pruned.state_dict(), ["missing"])


def test_only_parameters_of_a_module_are_prunable() -> None:
    model = nn.Linear(4, 3)
    model.register_buffer("table", torch.randn(5, 5))
    assert prunable(model) == ["weight"]
    assert set(prunable(model.state_dict())) == {"weight", "table"}
    masks = prune(model, 0.5)
    assert list(masks) == ["weight"] and int((model.table == 0).sum()) == 0
