import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedstream.common.secagg.encoding import (
    EncodingParams,
    choose_ring,
    decode_weight,
    decode_window,
    encode_weight,
    encode_window,
)
from fedstream.common.secagg.errors import SecAggError
from fedstream.common.secagg.masks import ring_dtype


def test_ring_is_32_bits_until_the_sum_could_wrap() -> None:
    assert choose_ring(200, 16, 1000)[0] == 32
    assert choose_ring(256, 24, 1000)[0] == 32  # 256 * (2^23 - 1) < 2^31 - 1
    assert choose_ring(257, 24, 1000)[0] == 64  # 257 * (2^23 - 1) > 2^31 - 1
    assert choose_ring(65_538, 16, 1)[0] == 32  # 65538 * 32767 = 2^31 - 2
    assert choose_ring(65_539, 16, 1)[0] == 64
    ring, reason = choose_ring(10, 8, 1 << 20)
    assert ring == 32 and "fits" in reason
    with pytest.raises(SecAggError, match="lower --secagg-bits"):
        choose_ring(2**20, 48, 1)


def _sum(updates: list[np.ndarray], weights: list[int], params: EncodingParams, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    total = np.zeros(updates[0].size, dtype=ring_dtype(params.ring_bits))
    for update, weight in zip(updates, weights):
        total += encode_window(update, weight, params, rng)
    return decode_window(total, params)


@settings(max_examples=40, deadline=None)
@given(
    clients=st.integers(1, 20),
    bits=st.integers(4, 24),
    clip=st.floats(1e-3, 10),
    seed=st.integers(0, 2**32 - 1),
)
def test_decoded_sum_is_within_the_stated_bound(clients: int, bits: int, clip: float, seed: int) -> None:
    ring, _ = choose_ring(clients, bits, 100)
    params = EncodingParams(clip, bits, 100, ring)
    rng = np.random.default_rng(seed)
    updates = [rng.normal(0, clip, 300) for _ in range(clients)]
    weights = [int(w) for w in rng.integers(0, 101, clients)]
    decoded = _sum(updates, weights, params, seed)
    exact = sum(w * np.clip(u, -clip, clip) for u, w in zip(updates, weights))
    assert np.abs(decoded - exact).max() < params.error_bound(clients)


def test_rounding_is_unbiased() -> None:
    params = EncodingParams(1.0, 4, 1, 32)  # a coarse grid: step 1/7
    value = np.full(200_000, 0.05)
    decoded = decode_window(encode_window(value, 1, params, np.random.default_rng(1)), params)
    assert set(np.round(decoded / params.step).astype(int)) == {0, 1}
    assert abs(decoded.mean() - 0.05) < 4 * params.step / np.sqrt(value.size)


def test_negative_sums_and_the_weight_word_decode() -> None:
    params = EncodingParams(1.0, 16, 10, 32)
    rng = np.random.default_rng(0)
    words = encode_window(np.array([-1.0, -0.5, 2.0]), 10, params, rng) + encode_window(np.array([-1.0, 0.0, 0.0]), 3, params, rng)
    assert np.allclose(decode_window(words, params), [-13.0, -5.0, 10.0], atol=2 * params.step)
    assert decode_weight(encode_weight(10, params) + encode_weight(3, params)) == 13


@pytest.mark.parametrize("weight", [-1, 11, 2.5, float("nan")])
def test_weights_outside_the_bound_are_refused(weight: float) -> None:
    with pytest.raises(SecAggError, match="weight"):
        encode_weight(weight, EncodingParams(1.0, 16, 10, 32))


def test_nan_updates_and_bad_parameters_are_refused() -> None:
    params = EncodingParams(1.0, 16, 10, 32)
    with pytest.raises(SecAggError, match="NaN"):
        encode_window(np.array([0.0, np.nan]), 1, params, np.random.default_rng())
    for bad in [dict(clip=0.0), dict(clip=float("inf")), dict(bits=1), dict(bits=60), dict(weight_bound=0), dict(ring_bits=16)]:
        with pytest.raises(SecAggError):
            EncodingParams(**{**dict(clip=1.0, bits=16, weight_bound=10, ring_bits=32), **bad})
