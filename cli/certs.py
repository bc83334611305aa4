"""`fedstream certs`: the federation's CA, server certificate, client certificates and (optionally) tokens."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from fedstream.cli.options import positive_int

if TYPE_CHECKING:
    from fedstream.common.security.certs import Issued


def certs_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=Path, required=True,
                   help="directory to write into; run again on it to add clients: the CA, the server pair and "
                        "existing clients' pairs there are kept")
    p.add_argument("--server-name", default="",
                   help="host name or IP clients dial (comma-separated for several, e.g. fedstream-server,127.0.0.1); "
                        "needed the first time, or to reissue the server certificate for other names")
    p.add_argument("--clients", default="", help="client ids, comma-separated: writes ID.pem and ID.key for each")
    p.add_argument("--days", type=positive_int, default=365, help="validity of the certificates")
    p.add_argument("--tokens", action="store_true",
                   help="also write federation.secret (server) and ID.token (clients) for token authentication")


def _kept(issued: "Issued", cert: Path) -> str:
    return "  (kept: it was already there)" if cert in issued.kept else ""


def run_certs(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from fedstream.common.security.certs import make_federation_certs
    from fedstream.server.transport.auth import client_token, new_secret

    names = [n.strip() for n in args.server_name.split(",") if n.strip()]
    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    if len(set(clients)) != len(clients):
        parser.error(f"--clients lists an id twice: {args.clients}")
    try:
        issued = make_federation_certs(args.out, names, clients, args.days)
    except ValueError as exc:
        parser.error(str(exc))
    print(f"CA          {issued.ca}  (keep {args.out / 'ca.key'} private: it signs new members)")
    names = ", ".join(issued.server_names)
    print(f"server      {issued.server[0]}  {issued.server[1]}  for {names}{_kept(issued, issued.server[0])}")
    for cid, (cert, key) in issued.clients.items():
        print(f"client      {cert}  {key}{_kept(issued, cert)}")
    if args.tokens:
        secret_path = args.out / "federation.secret"
        if not secret_path.exists():
            fd = os.open(secret_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(new_secret() + "\n")
        secret = secret_path.read_bytes().strip()
        for cid in clients:
            token_path = args.out / f"{cid}.token"
            fd = os.open(token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(client_token(secret, cid) + "\n")
        print(f"tokens      {secret_path} (server: --token-secret-file) and ID.token per client (--token-file)")
    print("each client needs only ca.pem and its own ID.pem/ID.key (and ID.token with --tokens)")
    return 0
