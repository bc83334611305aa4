"""Staleness functions for asynchronous aggregation: how much an update trained on an old version still counts.

s is the staleness of an update: the current global version minus the version it was trained on. FedBuff
(Nguyen et al. 2022, https://arxiv.org/abs/2106.06639) scales each update by one of these before averaging.
"""

from __future__ import annotations

import math
from typing import ClassVar


class Staleness:
    """s ↦ a factor in (0, 1]; 1 at s = 0 and non-increasing in s."""

    name: ClassVar[str] = "base"

    def __call__(self, staleness: int) -> float:
        if staleness < 0:
            raise ValueError(f"staleness must be >= 0, got {staleness}; an update cannot be newer than the model")
        return self.factor(staleness)

    def factor(self, staleness: int) -> float:
        raise NotImplementedError

    def describe(self) -> str:
        return self.name


class Constant(Staleness):
    """Every admitted update counts fully, however old (plain FedBuff without discounting)."""

    name = "constant"

    def factor(self, staleness: int) -> float:
        return 1.0


class InverseSqrt(Staleness):
    """1/√(1+s): the FedBuff paper's default."""

    name = "sqrt"

    def factor(self, staleness: int) -> float:
        return 1.0 / math.sqrt(1.0 + staleness)


class Polynomial(Staleness):
    """(1+s)^(−a): a = 0.5 is `sqrt`, larger a discounts old updates harder (FedAsync's polynomial)."""

    name = "poly"

    def __init__(self, exponent: float = 0.5) -> None:
        if not exponent >= 0 or not math.isfinite(exponent):
            raise ValueError(f"--staleness-exponent must be a finite number >= 0, got {exponent}")
        self.exponent = exponent

    def factor(self, staleness: int) -> float:
        return (1.0 + staleness) ** (-self.exponent)

    def describe(self) -> str:
        return f"poly(a={self.exponent:g})"


STALENESS: dict[str, type[Staleness]] = {cls.name: cls for cls in (Constant, InverseSqrt, Polynomial)}


def make_staleness(name: str, exponent: float = 0.5) -> Staleness:
    """The staleness function called `name`; `exponent` is used by poly only."""
    try:
        cls = STALENESS[name]
    except KeyError:
        raise ValueError(f"unknown staleness function {name!r}; available: {', '.join(STALENESS)}") from None
    return Polynomial(exponent) if cls is Polynomial else cls()
