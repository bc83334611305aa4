"""t-of-n Shamir sharing of 32-byte secrets over GF(2^521 - 1).

Our own ~60 lines rather than pycryptodome's `Crypto.Protocol.SecretSharing`, which shares 16-byte secrets in
GF(2^128) only: our secrets (the self-mask seed, the X25519 masking key) are 32 bytes, and splitting each into
two halves doubles the shares and the code around them. The Mersenne prime 2^521 - 1 holds any 32-byte
secret as one field element; x-coordinates are the clients' round indices 1..N.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping, Sequence

from fedstream.common.secagg.errors import SecAggError

PRIME = 2**521 - 1
SECRET_BYTES = 32
SHARE_BYTES = 66  # ceil(521 / 8)


def evaluate(coefficients: Sequence[int], x: int) -> int:
    """f(x) mod PRIME for f = coefficients[0] + coefficients[1]·x + ... (Horner)."""
    y = 0
    for c in reversed(coefficients):
        y = (y * x + c) % PRIME
    return y


def _check_x(xs: Sequence[int]) -> None:
    if len(set(xs)) != len(xs):
        raise SecAggError(f"share x-coordinates {sorted(xs)} repeat; each holder needs its own index")
    for x in xs:
        if not 0 < x < PRIME:
            raise SecAggError(f"share x-coordinate {x} must be in 1..2^521-2 (0 would reveal the secret)")


def split(secret: bytes, threshold: int, xs: Sequence[int]) -> dict[int, int]:
    """Shares f(x) for each x in xs of a random degree-(threshold-1) polynomial with f(0) = secret."""
    if len(secret) != SECRET_BYTES:
        raise SecAggError(f"secret has {len(secret)} bytes; expected {SECRET_BYTES}")
    if not 1 <= threshold <= len(xs):
        raise SecAggError(f"threshold {threshold} must be in 1..{len(xs)} (the number of holders)")
    _check_x(xs)
    coefficients = [int.from_bytes(secret, "big")] + [secrets.randbelow(PRIME) for _ in range(threshold - 1)]
    return {x: evaluate(coefficients, x) for x in xs}


def _interpolate_at(points: Sequence[tuple[int, int]], at: int) -> int:
    """The value at `at` of the unique polynomial of degree < len(points) through points (Lagrange)."""
    total = 0
    for i, (xi, yi) in enumerate(points):
        num, den = 1, 1
        for j, (xj, _) in enumerate(points):
            if i != j:
                num = num * (at - xj) % PRIME
                den = den * (xi - xj) % PRIME
        total = (total + yi * num * pow(den, -1, PRIME)) % PRIME
    return total


def combine(shares: Mapping[int, int], threshold: int) -> bytes:
    """The secret from at least `threshold` shares; shares beyond the threshold must lie on the same polynomial."""
    if len(shares) < threshold:
        raise SecAggError(f"{len(shares)} shares cannot reconstruct a {threshold}-of-n secret; need {threshold}")
    _check_x(list(shares))
    for x, y in shares.items():
        if not 0 <= y < PRIME:
            raise SecAggError(f"share of holder {x} is not a field element (>= 2^521 - 1)")
    points = sorted(shares.items())
    basis = points[:threshold]
    for x, y in points[threshold:]:
        if _interpolate_at(basis, x) != y:
            raise SecAggError(f"share of holder {x} is inconsistent with the others; a holder sent a corrupted share")
    value = _interpolate_at(basis, 0)
    if value >= 2 ** (8 * SECRET_BYTES):
        raise SecAggError("reconstructed value exceeds 32 bytes; the shares are corrupted or from different secrets")
    return value.to_bytes(SECRET_BYTES, "big")


def share_to_bytes(y: int) -> bytes:
    return y.to_bytes(SHARE_BYTES, "big")


def share_from_bytes(data: bytes) -> int:
    """A share from the wire, checked to be a field element."""
    if len(data) != SHARE_BYTES:
        raise SecAggError(f"share has {len(data)} bytes; expected {SHARE_BYTES}")
    y = int.from_bytes(data, "big")
    if y >= PRIME:
        raise SecAggError("share is not a field element (>= 2^521 - 1)")
    return y
