import math

import pytest

from fedstream.common.secagg.errors import SecAggError
from fedstream.common.secagg.graph import _binomial_cdf, default_neighbours, default_threshold, harary_graph

SEED = bytes(range(32))


@pytest.mark.parametrize("n,k", [(5, 2), (10, 4), (51, 10), (200, 34), (7, 6), (8, 7)])
def test_graph_is_k_regular_and_symmetric(n: int, k: int) -> None:
    graph = harary_graph(SEED, n, k)
    for i in range(1, n + 1):
        mine = graph.of(i)
        assert len(mine) == min(k, n - 1)
        assert i not in mine
        assert all(i in graph.of(j) for j in mine)


def test_graph_is_fixed_by_the_seed_alone() -> None:
    assert harary_graph(SEED, 100, 10) == harary_graph(SEED, 100, 10)
    other = harary_graph(bytes(32), 100, 10)
    assert other.neighbours != harary_graph(SEED, 100, 10).neighbours


def test_neighbours_are_not_the_index_ring() -> None:
    """The permutation hides index order: client 1's neighbours are not simply 2, 3, n, n-1."""
    graph = harary_graph(SEED, 100, 4)
    rings = sum(graph.of(i) == frozenset({(i % 100) + 1, ((i + 1) % 100) + 1, ((i - 2) % 100) + 1, ((i - 3) % 100) + 1}) for i in range(1, 101))
    assert rings < 5


@pytest.mark.parametrize("seed,n,k", [(b"short", 10, 4), (SEED, 10, 3), (SEED, 1, 2), (SEED, 10, 0)])
def test_bad_graph_parameters_are_refused(seed: bytes, n: int, k: int) -> None:
    with pytest.raises(SecAggError):
        harary_graph(seed, n, k)


def test_unknown_index_is_refused() -> None:
    with pytest.raises(SecAggError, match="not in this round"):
        harary_graph(SEED, 10, 4).of(11)


def test_default_k_meets_its_failure_bound_and_grows_like_log_n() -> None:
    for n in (50, 200, 10_000, 1_000_000):
        k = default_neighbours(n)
        assert k % 2 == 0 and k < n - 1
        t = default_threshold(k)
        assert n * _binomial_cdf(t - 1, k, 0.9) <= 1e-6
        assert n * _binomial_cdf(default_threshold(k - 2) - 1, k - 2, 0.9) > 1e-6  # the smallest such K
    ratio = default_neighbours(1_000_000) / default_neighbours(1_000)
    assert ratio < 1.5 < math.log(1_000_000) / math.log(1_000) + 0.1


def test_small_rounds_use_the_complete_graph() -> None:
    assert default_neighbours(10) == 9
    assert default_threshold(9) == 5
