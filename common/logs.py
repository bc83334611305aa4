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
