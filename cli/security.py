"""Transport security flags shared by `fedstream server` and `fedstream client`: TLS, mTLS, tokens, --insecure."""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path

from fedstream.cli.options import non_negative_float, non_negative_int, positive_float, positive_int
from fedstream.server.core.admission import DEFAULT_LIMIT as DEFAULT_TRANSFER_LIMIT
from fedstream.server.core.join_limit import DEFAULT_BURST as DEFAULT_JOIN_BURST
from fedstream.server.core.join_limit import DEFAULT_RATE as DEFAULT_JOIN_RATE

CHOOSE = ("choose --tls-dir DIR (certificates from `fedstream certs`) or --insecure (plaintext, for loopback or a "
          "network you trust)")
REQUIRED = "one of --tls-dir or --insecure is required"


def add_server_security_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("security and limits", REQUIRED)
    g.add_argument("--tls-dir", type=Path, default=None,
                   help="serve TLS with ca.pem, server.pem, server.key from this directory; clients must present a "
                        "certificate signed by ca.pem naming their client id (mutual TLS)")
    g.add_argument("--no-client-certs", action="store_true",
                   help="with --tls-dir: do not require client certificates (then use --token-secret-file)")
    g.add_argument("--token-secret-file", type=Path, default=None,
                   help="require per-client tokens HMAC(secret, client id); fedstream certs --tokens writes the secret")
    g.add_argument("--insecure", action="store_true", help="serve plaintext gRPC with no client authentication")
    g.add_argument("--max-sessions", type=positive_int, default=20_000,
                   help="most clients connected at once (each idle session costs the server about 30 KB)")
    g.add_argument("--join-rate", type=non_negative_float, default=DEFAULT_JOIN_RATE,
                   help="joins per second one host may make after its burst (0: no limit; simulations of many "
                        "clients on one host need 0 or a high value)")
    g.add_argument("--join-burst", type=positive_int, default=DEFAULT_JOIN_BURST,
                   help="joins one host may make at once before --join-rate applies")
    g.add_argument("--max-transfers", type=non_negative_int, default=DEFAULT_TRANSFER_LIMIT,
                   help="most model downloads and uploads streaming at once (others wait their turn, so server memory "
                        "does not grow with the number of clients; a transfer that moves no chunk for 1 s, being slow or stalled, stops counting); "
                        "0: no limit")
    g.add_argument("--session-timeout", type=positive_float, default=30.0,
                   help="seconds without contact before a client's session expires")
    g.add_argument("--heartbeat-seconds", type=positive_int, default=5, help="how often clients send heartbeats")


def add_client_security_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("security", REQUIRED)
    g.add_argument("--tls-dir", type=Path, default=None,
                   help="connect with TLS: reads ca.pem and this client's ID.pem/ID.key from this directory")
    g.add_argument("--server-name", default=None,
                   help="name in the server certificate, when it differs from the host in --server")
    g.add_argument("--token", default="", help="this client's token (see fedstream certs --tokens)")
    g.add_argument("--token-file", type=Path, default=None, help="read the token from this file (ID.token)")
    g.add_argument("--insecure", action="store_true", help="connect in plaintext (no TLS)")
    g.add_argument("--upload-chunk-delay", type=non_negative_float, default=0.0, help=argparse.SUPPRESS)


@dataclass
class ServerSecurity:
    credentials: object | None
    auth: object


def server_security(args: argparse.Namespace, parser: argparse.ArgumentParser) -> ServerSecurity:
    """Credentials and the authenticator for the flags; exits with a usage error when they do not fit together."""
    from fedstream.common.security.tls import server_credentials
    from fedstream.server.transport.auth import Authenticator, load_secret

    if bool(args.tls_dir) == bool(args.insecure):
        parser.error(CHOOSE if not args.tls_dir else "--tls-dir and --insecure exclude each other")
    if args.no_client_certs and not args.tls_dir:
        parser.error("--no-client-certs only applies with --tls-dir")
    secret = None
    if args.token_secret_file is not None:
        try:
            secret = load_secret(args.token_secret_file)
        except ValueError as exc:
            parser.error(f"--token-secret-file: {exc}")
    log = logging.getLogger("fedstream.server")
    if args.insecure:
        log.warning("--insecure: serving plaintext gRPC; %s", "clients must present tokens, which travel unencrypted"
                    if secret else "any process that can reach the port can join as any client id")
        return ServerSecurity(None, Authenticator(False, secret))
    try:
        credentials = server_credentials(args.tls_dir, require_client_certificates=not args.no_client_certs)
    except ValueError as exc:
        parser.error(str(exc))
    if args.no_client_certs and secret is None:
        log.warning("--no-client-certs without --token-secret-file: the channel is encrypted but any client id is "
                    "accepted")
    return ServerSecurity(credentials, Authenticator(not args.no_client_certs, secret))


@dataclass
class ClientSecurity:
    credentials: object | None
    server_name: str | None
    token: str


def client_security(args: argparse.Namespace, parser: argparse.ArgumentParser, client_id: str) -> ClientSecurity:
    from fedstream.common.security.tls import client_credentials

    if bool(args.tls_dir) == bool(args.insecure):
        parser.error(CHOOSE if not args.tls_dir else "--tls-dir and --insecure exclude each other")
    token = args.token
    if args.token_file is not None:
        if token:
            parser.error("give --token or --token-file, not both")
        try:
            token = args.token_file.read_text().strip()
        except OSError as exc:
            parser.error(f"--token-file {args.token_file}: {exc.strerror}")
    if args.insecure:
        logging.getLogger("fedstream.client").warning("client=%s --insecure: connecting in plaintext; the server is "
                                                      "not verified%s", client_id,
                                                      " and the token travels unencrypted" if token else "")
        return ClientSecurity(None, None, token)
    try:
        credentials = client_credentials(args.tls_dir, client_id, require_certificate=not token)
    except ValueError as exc:
        parser.error(str(exc))
    return ClientSecurity(credentials, args.server_name, token)
