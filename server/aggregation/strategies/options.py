"""Reading strategy options, which arrive as strings from `--strategy-option KEY=VALUE` or the config file."""

from __future__ import annotations

import math


def number(strategy: str, key: str, value: float | int | str, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False) -> float:
    """A finite float within [low, high] (open ends on request), or a ValueError that says what was expected."""
    bounds = f"{'(' if low_open else '['}{low if low is not None else '-inf'}, " \
             f"{high if high is not None else 'inf'}{')' if high_open else ']'}"
    try:
        out = float(value)
    except (TypeError, ValueError):
        out = math.nan
    ok = math.isfinite(out)
    if ok and low is not None:
        ok = out > low if low_open else out >= low
    if ok and high is not None:
        ok = out < high if high_open else out <= high
    if not ok:
        raise ValueError(f"strategy {strategy}: option {key} must be a number in {bounds}, got {value!r}; "
                         f"pass it as --strategy-option {key}=VALUE")
    return out


def count(strategy: str, key: str, value: int | str | None, low: int = 0) -> int | None:
    """A whole number >= low, or None when the option was left unset."""
    if value is None or value == "":
        return None
    try:
        out = int(str(value))
    except ValueError:
        out = low - 1
    if out < low:
        raise ValueError(f"strategy {strategy}: option {key} must be a whole number >= {low}, got {value!r}")
    return out
