"""Clip, weight, quantise and wrap an update into the ring; decode the ring sum back to Σ nᵢΔᵢ.

Client i encodes coordinate x of its update as z = SR(nᵢ · clip(x, ±C) / step) with step = C·W / (2^(B-1) - 1),
W the bound on any client's example weight and SR stochastic rounding (floor(v + U), U uniform in [0, 1):
E[z] = v, |z - v| < 1). So |z| <= 2^(B-1) - 1 and z is stored as a two's-complement word of Z_2^32 or Z_2^64.
The vector's last coordinate carries nᵢ itself (an integer, exact), so the server learns Σ nᵢ and never nᵢ.

Error bound (stated and tested): for a sum over S clients, every decoded coordinate differs from
Σ nᵢ·clip(Δᵢ, ±C) by less than S · step, and its expected error is 0 (the rounding is unbiased; its standard
deviation is at most sqrt(S) · step / 2).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from fedstream.common.secagg.errors import SecAggError
from fedstream.common.secagg.masks import ring_dtype

MAX_BITS = 48  # v = n·x/step must stay exact in float64 (53-bit mantissa) before rounding


@dataclass(frozen=True)
class EncodingParams:
    """C (clip), B (bits per client coordinate), W (largest example weight) and the ring that holds the sum."""

    clip: float
    bits: int
    weight_bound: int
    ring_bits: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise SecAggError(f"clip C={self.clip}; expected a finite value > 0")
        if not 2 <= self.bits <= MAX_BITS:
            raise SecAggError(f"B={self.bits} bits; expected 2..{MAX_BITS}")
        if self.weight_bound < 1:
            raise SecAggError(f"weight bound W={self.weight_bound}; expected an integer >= 1")
        ring_dtype(self.ring_bits)

    @property
    def levels(self) -> int:
        return 2 ** (self.bits - 1) - 1

    @property
    def step(self) -> float:
        """The value of one quantisation level of a weighted coordinate nᵢ·x."""
        return self.clip * self.weight_bound / self.levels

    def error_bound(self, clients: int) -> float:
        """Every decoded coordinate of a sum over `clients` is within this of Σ nᵢ·clip(Δᵢ)."""
        return clients * self.step

    def max_clients(self) -> int:
        """The most clients whose sum cannot wrap: N · max(2^(B-1) - 1, W) <= 2^(R-1) - 1."""
        return (2 ** (self.ring_bits - 1) - 1) // max(self.levels, self.weight_bound)


def choose_ring(clients: int, bits: int, weight_bound: int) -> tuple[int, str]:
    """Z_2^32 when N · max(2^(B-1) - 1, W) fits in a signed 32-bit sum, else Z_2^64; the reason is returned too."""
    peak = clients * max(2 ** (bits - 1) - 1, weight_bound)
    for ring in (32, 64):
        if peak <= 2 ** (ring - 1) - 1:
            return ring, (
                f"Z_2^{ring}: {clients} clients x max(2^{bits - 1} - 1 levels, weight bound {weight_bound}) = {peak} "
                f"fits in a signed {ring}-bit sum without wrapping"
            )
    raise SecAggError(
        f"{clients} clients at B={bits} bits with weight bound {weight_bound} can reach {peak}, beyond a signed "
        "64-bit sum; lower --secagg-bits or the weight bound"
    )


def check_weight(weight: float, params: EncodingParams) -> int:
    """The example weight as the integer the vector carries; refuses one outside 0..W."""
    if not (math.isfinite(weight) and weight == int(weight) and 0 <= weight <= params.weight_bound):
        raise SecAggError(f"example weight {weight}; expected an integer in 0..{params.weight_bound} (the weight bound W)")
    return int(weight)


def encode_window(values: np.ndarray, weight: int, params: EncodingParams, rng: np.random.Generator) -> np.ndarray:
    """One window of an update (float, flat) as ring words: clip to ±C, times weight/step, stochastic rounding."""
    data = np.asarray(values, dtype=np.float64)
    if not np.isfinite(data).all():
        raise SecAggError("update window holds NaN or Inf; secure aggregation encodes finite values only")
    scaled = np.clip(data, -params.clip, params.clip)
    scaled *= weight / params.step
    scaled += rng.random(scaled.shape)
    np.floor(scaled, out=scaled)
    np.clip(scaled, -params.levels, params.levels, out=scaled)
    signed = scaled.astype(np.int64)
    return signed.astype(ring_dtype(params.ring_bits))


def encode_weight(weight: int, params: EncodingParams) -> np.ndarray:
    """The vector's last coordinate: the example weight as an exact integer word."""
    return np.array([check_weight(weight, params)], dtype=ring_dtype(params.ring_bits))


def to_signed(words: np.ndarray) -> np.ndarray:
    """Two's-complement reading of ring words (int32 or int64 view)."""
    return words.view(np.int32 if words.dtype.itemsize == 4 else np.int64)


def decode_window(words: np.ndarray, params: EncodingParams) -> np.ndarray:
    """A window of the unmasked ring sum as float64 Σ nᵢΔᵢ (the weight coordinate excluded)."""
    return to_signed(words).astype(np.float64) * params.step


def decode_weight(word: np.ndarray) -> int:
    """Σ nᵢ from the sum's last coordinate."""
    return int(to_signed(word.reshape(-1)[-1:])[0])
