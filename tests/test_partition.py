import pytest
import torch

from fedstream.common.training.partition import dirichlet_indices, iid_indices, parse_partition, partition_indices


def _check_disjoint_cover(parts: list[torch.Tensor], n: int) -> None:
    joined = torch.cat(parts)
    assert len(joined) == n
    assert torch.equal(joined.sort().values, torch.arange(n))


def test_iid_is_deterministic_disjoint_and_balanced() -> None:
    a, b = iid_indices(1437, 4, seed=3), iid_indices(1437, 4, seed=3)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    _check_disjoint_cover(a, 1437)
    assert max(map(len, a)) - min(map(len, a)) <= 1
    assert not all(torch.equal(x, y) for x, y in zip(a, iid_indices(1437, 4, seed=4)))


def test_dirichlet_is_deterministic_disjoint_and_skewed() -> None:
    labels = torch.arange(1000) % 10
    a, b = dirichlet_indices(labels, 10, 0.1, seed=1), dirichlet_indices(labels, 10, 0.1, seed=1)
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    _check_disjoint_cover(a, 1000)
    dominant = [torch.bincount(labels[p], minlength=10).max() / max(len(p), 1) for p in a if len(p)]
    assert sum(d > 0.5 for d in dominant) >= len(dominant) // 2


def test_partition_flags_are_checked() -> None:
    assert parse_partition("2/4") == (2, 4)
    for bad in ["4/4", "-1/3", "x", "1/0"]:
        with pytest.raises(ValueError, match="partition"):
            parse_partition(bad)
    with pytest.raises(ValueError, match="iid or dirichlet"):
        partition_indices(torch.zeros(10), 0, 2, "nope")
