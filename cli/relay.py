"""`fedstream relay`: a coordinator to its own clients, one client (a relay session) to its upstream."""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

from fedstream.cli.options import host_port, id_list, non_negative_float, positive_float, positive_int
from fedstream.server.core.join_limit import DEFAULT_RATE as DEFAULT_JOIN_RATE

CHOOSE_UPSTREAM = ("choose --upstream-tls-dir DIR (ca.pem and this relay's ID.pem/ID.key from `fedstream certs`) or "
                   "--upstream-insecure (plaintext to the upstream)")


def relay_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="TOML file with the same keys as these flags")
    p.add_argument("--upstream", type=host_port, required=True, help="the coordinator (or relay) above this one")
    p.add_argument("--address", type=host_port, required=True, help="where this relay's clients connect")
    p.add_argument("--tls-dir", type=Path, default=None,
                   help="serve clients with TLS: ca.pem, server.pem, server.key from this directory; clients present a "
                        "certificate signed by ca.pem naming their client id (mutual TLS)")
    p.add_argument("--insecure", action="store_true", help="serve clients plaintext gRPC, no client authentication")
    p.add_argument("--upstream-tls-dir", type=Path, default=None,
                   help="connect upstream with TLS: ca.pem (the upstream's CA) and CLIENT_ID.pem/.key (this relay)")
    p.add_argument("--upstream-insecure", action="store_true", help="connect upstream in plaintext")
    p.add_argument("--server-name", default=None, help="name in the upstream's certificate, when it differs from the "
                                                        "host in --upstream")
    p.add_argument("--client-id", default=None, help="this relay's id upstream (default relay-HOSTNAME); the upstream "
                                                     "must list it in --relay-ids")
    p.add_argument("--min-clients", type=positive_int, default=1,
                   help="updates this relay needs to answer a round; it opens each round once this many clients are "
                        "connected and trains all connected clients; with fewer it reports the round failed upstream")
    p.add_argument("--round-timeout", type=positive_float, default=120.0,
                   help="longest local round in seconds (the upstream's deadline, less time for the upload, may "
                        "shorten it)")
    p.add_argument("--run-dir", type=Path, default=None, help="spool and metrics.jsonl (default runs/relay-<timestamp>)")
    p.add_argument("--health-address", type=host_port, default=None,
                   help="also answer grpc.health.v1 Check here, in plaintext and nothing else, for probes that cannot "
                        "present a client certificate (Kubernetes' grpc probe); off by default")
    p.add_argument("--relay-ids", type=id_list, default=frozenset(), metavar="ID,ID,...|*",
                   help="client ids allowed to join this relay as relays (tiers nest)")
    p.add_argument("--join-rate", type=non_negative_float, default=DEFAULT_JOIN_RATE,
                   help="joins per second one host may make after its burst (0: no limit)")
    p.add_argument("--port-file", type=Path, default=None, help="write the bound port here (for --address HOST:0)")
    p.add_argument("--connect-timeout", type=positive_float, default=600.0,
                   help="how long to keep retrying an unreachable upstream")
    p.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"],
                   help="log threshold")
    p.add_argument("--upload-chunk-delay", type=non_negative_float, default=0.0, help=argparse.SUPPRESS)
    p.set_defaults(no_client_certs=False, token_secret_file=None)


def run_relay(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from fedstream.cli.commands import default_run_dir
    from fedstream.cli.security import server_security
    from fedstream.client.upstream import UpstreamLink, UpstreamRefused
    from fedstream.common.logs import setup_logging
    from fedstream.common.security.tls import client_credentials
    from fedstream.server.aggregation.strategies import make_strategy
    from fedstream.server.core.config import ServerConfig
    from fedstream.server.core.coordinator import Coordinator
    from fedstream.server.modes.relay import RelayRounds, upstream_model
    from fedstream.server.transport.server import serve

    setup_logging(args.log_level)
    if bool(args.upstream_tls_dir) == bool(args.upstream_insecure):
        parser.error(CHOOSE_UPSTREAM if not args.upstream_tls_dir else
                     "--upstream-tls-dir and --upstream-insecure exclude each other")
    security = server_security(args, parser)
    client_id = args.client_id or f"relay-{socket.gethostname()}"
    credentials = None
    if args.upstream_tls_dir:
        try:
            credentials = client_credentials(args.upstream_tls_dir, client_id)
        except ValueError as exc:
            parser.error(f"--upstream-tls-dir: {exc}")
    upstream = UpstreamLink(args.upstream, client_id, credentials, args.server_name, args.connect_timeout,
                            args.upload_chunk_delay)
    try:
        upstream.join()
        version = upstream.current_version()
        state, masked = upstream.download(version)
    except UpstreamRefused as exc:
        upstream.leave("relay could not start")
        print(f"fedstream relay: {exc}", file=sys.stderr)
        return 1
    run_dir = args.run_dir or default_run_dir().with_name(f"relay-{default_run_dir().name}")
    config = ServerConfig(rounds=sys.maxsize, min_clients=args.min_clients, round_timeout=args.round_timeout,
                          run_dir=run_dir, relay_ids=args.relay_ids, join_rate=args.join_rate)
    coordinator = Coordinator(upstream_model(state), make_strategy("fedavg"), config,
                              RelayRounds(upstream, refused=UpstreamRefused))
    coordinator.adopt(version, state, masked)
    serve(coordinator, args.address, credentials=security.credentials, port_file=args.port_file, auth=security.auth,
          health_address=args.health_address)
    return 0
