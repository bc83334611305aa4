import numpy as np
import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from hypothesis import given, settings
from hypothesis import strategies as st

from fedstream.common.secagg.errors import SecAggError
from fedstream.common.secagg.masks import MaskExpander, ring_dtype

SEED = bytes(range(32))


def _reference(seed: bytes, words: int, ring_bits: int) -> np.ndarray:
    """The whole mask at once: the ChaCha20 keystream (counter 0, nonce 0) read as little-endian words."""
    width = ring_bits // 8
    stream = Cipher(algorithms.ChaCha20(seed, bytes(16)), None).encryptor().update(bytes(words * width))
    return np.frombuffer(stream, dtype=ring_dtype(ring_bits))


@settings(max_examples=40, deadline=None)
@given(ring_bits=st.sampled_from([32, 64]), start=st.integers(0, 3000), count=st.integers(0, 700), window=st.integers(1, 300))
def test_any_window_equals_the_same_slice_of_the_whole_stream(ring_bits: int, start: int, count: int, window: int) -> None:
    reference = _reference(SEED, start + count, ring_bits)
    target = np.zeros(count, dtype=ring_dtype(ring_bits))
    MaskExpander(ring_bits, window).add(target, SEED, start, +1)
    assert np.array_equal(target, reference[start:])


@pytest.mark.parametrize("ring_bits", [32, 64])
def test_adding_then_subtracting_restores_the_window_modulo_the_ring(ring_bits: int) -> None:
    rng = np.random.default_rng(0)
    dtype = ring_dtype(ring_bits)
    original = rng.integers(0, np.iinfo(dtype).max, 1000, dtype=dtype, endpoint=True)
    window = original.copy()
    expander = MaskExpander(ring_bits, 128)
    expander.add(window, SEED, 77, +1)
    assert not np.array_equal(window, original)
    expander.add(window, SEED, 77, -1)
    assert np.array_equal(window, original)


def test_different_seeds_give_different_masks() -> None:
    expander = MaskExpander(32, 64)
    first = expander.expand(SEED, 0, 64).copy()
    assert not np.array_equal(first, expander.expand(bytes(32), 0, 64))


def test_bad_requests_are_refused() -> None:
    expander = MaskExpander(32, 16)
    with pytest.raises(SecAggError, match="32"):
        expander.expand(b"short", 0, 4)
    with pytest.raises(SecAggError, match="at most 16"):
        expander.expand(SEED, 0, 17)
    with pytest.raises(SecAggError, match="256 GiB"):
        expander.expand(SEED, 2**36, 16)
    with pytest.raises(SecAggError, match="dtype"):
        expander.add(np.zeros(4, np.uint64), SEED, 0)
    with pytest.raises(SecAggError, match="16"):
        ring_dtype(16)
