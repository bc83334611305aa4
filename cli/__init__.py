"""`fedstream` command line: server, client, relay, demo, certs, simulate."""

from __future__ import annotations

import argparse
import sys

from fedstream.cli import certs, commands, relay, simulate, status
from fedstream.cli.options import parse_with_config
from fedstream.cli.parser import DefaultsHelpFormatter, OneLineErrorParser
from fedstream.cli.security import REQUIRED
from fedstream.common.allocator import tune_malloc

SUBCOMMANDS = {
    "server": (commands.server_parser, commands.run_server, f"run the coordinator ({REQUIRED})"),
    "client": (commands.client_parser, commands.run_client, f"run a training client ({REQUIRED})"),
    "demo": (commands.demo_parser, commands.run_demo, "server + clients on 127.0.0.1 in one command"),
    "relay": (relay.relay_parser, relay.run_relay, "relay between clients and a coordinator: aggregates its clients "
                                                    "and sends their partial sum upstream"),
    "certs": (certs.certs_parser, certs.run_certs, "create the federation's CA, server and client certificates"),
    "simulate": (simulate.simulate_parser, simulate.run_simulate, "many clients in Ray actors against a server"),
    "status": (status.status_parser, status.run_status, "print the state of a running server from its dashboard"),
}


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    parser = OneLineErrorParser(prog="fedstream", description="Federated learning that streams deltas over gRPC.")
    sub = parser.add_subparsers(dest="command", required=True)
    children = {}
    for name, (build, _run, help_text) in SUBCOMMANDS.items():
        child = sub.add_parser(name, help=help_text, description=help_text, formatter_class=DefaultsHelpFormatter)
        build(child)
        children[name] = child
    return parser, children


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    tune_malloc()
    parser, children = build_parser()
    if not argv or argv[0] not in children:
        parser.parse_args(argv)
        return 2
    child = children[argv[0]]
    args = parse_with_config(child, argv[1:])
    return SUBCOMMANDS[argv[0]][1](args, child)
