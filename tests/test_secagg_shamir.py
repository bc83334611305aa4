import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedstream.common.secagg import shamir
from fedstream.common.secagg.errors import SecAggError

# Wikipedia's worked example: f(x) = 1234 + 166x + 94x^2, no reduction needed below 2^521 - 1.
KNOWN = {1: 1494, 2: 1942, 3: 2578, 4: 3402, 5: 4414, 6: 5614}


def test_known_vector_evaluates_and_any_three_shares_reconstruct() -> None:
    assert {x: shamir.evaluate([1234, 166, 94], x) for x in KNOWN} == KNOWN
    for xs in itertools.combinations(KNOWN, 3):
        assert shamir.combine({x: KNOWN[x] for x in xs}, 3) == (1234).to_bytes(32, "big")


def test_known_vector_with_modular_reduction() -> None:
    p = shamir.PRIME
    coefficients = [2**256 - 1, p - 1, p - 2]  # f(1) = 2^256 - 1 - 1 - 2 mod p, f(2) = 2^256 - 1 - 2 - 8 mod p
    assert shamir.evaluate(coefficients, 1) == 2**256 - 4
    assert shamir.evaluate(coefficients, 2) == 2**256 - 11
    shares = {x: shamir.evaluate(coefficients, x) for x in (1, 2, 3)}
    assert shamir.combine(shares, 3) == (2**256 - 1).to_bytes(32, "big")


@settings(max_examples=40, deadline=None)
@given(secret=st.binary(min_size=32, max_size=32), n=st.integers(2, 12), data=st.data())
def test_any_t_shares_reconstruct(secret: bytes, n: int, data: st.DataObject) -> None:
    t = data.draw(st.integers(1, n))
    xs = data.draw(st.lists(st.integers(1, 10_000), min_size=n, max_size=n, unique=True))
    shares = shamir.split(secret, t, xs)
    chosen = data.draw(st.lists(st.sampled_from(xs), min_size=t, max_size=n, unique=True))
    assert shamir.combine({x: shares[x] for x in chosen}, t) == secret
    assert all(shamir.share_from_bytes(shamir.share_to_bytes(y)) == y for y in shares.values())


@settings(max_examples=30, deadline=None)
@given(secret=st.binary(min_size=32, max_size=32), t=st.integers(2, 6))
def test_fewer_than_t_shares_do_not_determine_the_secret(secret: bytes, t: int) -> None:
    """t-1 shares interpolate to a value unrelated to the secret (not the secret, except with negligible odds)."""
    shares = shamir.split(secret, t, list(range(1, t + 2)))
    partial = dict(list(shares.items())[: t - 1])
    with pytest.raises(SecAggError, match="need"):
        shamir.combine(partial, t)
    guess = shamir._interpolate_at(sorted(partial.items()), 0) if partial else 0
    assert guess != int.from_bytes(secret, "big") or secret == bytes(32)


def test_a_corrupted_extra_share_is_detected() -> None:
    shares = shamir.split(bytes(range(32)), 3, [1, 2, 3, 4, 5])
    shares[4] = (shares[4] + 1) % shamir.PRIME
    with pytest.raises(SecAggError, match="holder 4 is inconsistent"):
        shamir.combine(shares, 3)


@pytest.mark.parametrize(
    "call",
    [
        lambda: shamir.split(b"short", 2, [1, 2]),
        lambda: shamir.split(bytes(32), 3, [1, 2]),
        lambda: shamir.split(bytes(32), 2, [1, 1]),
        lambda: shamir.split(bytes(32), 2, [0, 1]),
        lambda: shamir.share_from_bytes(b"\xff" * 66),
        lambda: shamir.share_from_bytes(b"\x00" * 65),
        lambda: shamir.combine({1: shamir.PRIME, 2: 1}, 2),
    ],
)
def test_bad_inputs_are_refused(call) -> None:
    with pytest.raises(SecAggError):
        call()
