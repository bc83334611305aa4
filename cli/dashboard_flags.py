"""The dashboard flags of `fedstream server` (and `demo`): where it listens, its token, turning it off."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedstream.server.observe.address import DEFAULT_ADDRESS, split_address


def dashboard_address(text: str) -> str:
    try:
        split_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def add_dashboard_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("dashboard")
    g.add_argument("--dashboard", type=dashboard_address, default=DEFAULT_ADDRESS, metavar="HOST:PORT",
                   help="serve the live dashboard, /api/run and /metrics here (default %(default)s: loopback, a "
                        "free port, printed at start); another address than loopback needs a token, and uses HTTPS "
                        "with the server certificate when --tls-dir is set")
    g.add_argument("--no-dashboard", action="store_true", help="do not serve the dashboard")
    g.add_argument("--dashboard-token-file", type=Path, default=None,
                   help="the dashboard's bearer token (default on a non-loopback address: a new one, printed once "
                        "in the link)")
