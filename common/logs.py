"""Structured log lines: time, level, component, then key=value fields (round=, client=) in the message."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: str = "INFO", stream=sys.stderr) -> None:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger("fedstream")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False


def printable(text: str, limit: int = 200) -> str:
    """Text from the other side, safe for one log line: control characters (a newline forging a line) escaped."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:limit])
