"""Counted nouns in messages: "1 round", "2 rounds"."""

from __future__ import annotations


def plural(count: int, noun: str, many: str | None = None) -> str:
    """`count` and the noun, singular for exactly one ("1 client", "0 clients", "3 clients")."""
    return f"{count} {noun if count == 1 else (many or noun + 's')}"
