"""Loading gRPC TLS credentials from a directory written by `fedstream certs`.

The server reads ca.pem, server.pem and server.key; a client reads ca.pem and its own ID.pem/ID.key only
(a client without them refuses to start, unless it proves its id with a token instead).
"""

from __future__ import annotations

from pathlib import Path

import grpc

HINT = "create them with: fedstream certs --out DIR --server-name HOST --clients ID,..."


def _read(directory: Path, name: str) -> bytes:
    path = Path(directory) / name
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ValueError(f"--tls-dir {directory}: cannot read {name} ({exc.strerror}); {HINT}") from None


def server_credentials(directory: Path, require_client_certificates: bool = True) -> grpc.ServerCredentials:
    """TLS with the server's pair; with require_client_certificates, only clients signed by ca.pem connect."""
    return grpc.ssl_server_credentials([(_read(directory, "server.key"), _read(directory, "server.pem"))],
                                       root_certificates=_read(directory, "ca.pem"),
                                       require_client_auth=require_client_certificates)


def client_credentials(directory: Path, client_id: str, require_certificate: bool = True) -> grpc.ChannelCredentials:
    """Verifies the server against ca.pem and presents ID.pem/ID.key. Without require_certificate (a client that
    proves its id with a token instead) a directory holding neither connects with ca.pem alone."""
    ca = _read(directory, "ca.pem")
    cert_path, key_path = Path(directory) / f"{client_id}.pem", Path(directory) / f"{client_id}.key"
    if cert_path.exists() != key_path.exists():
        raise ValueError(f"--tls-dir {directory}: found only one of {cert_path.name} and {key_path.name}; {HINT}")
    if not cert_path.exists():
        if require_certificate:
            raise ValueError(f"--tls-dir {directory}: no certificate for client {client_id}: looked for {cert_path} "
                             f"and {key_path}; check --client-id (default client-I from --partition), or issue one "
                             f"where ca.key is: fedstream certs --out DIR --clients {client_id}")
        return grpc.ssl_channel_credentials(root_certificates=ca)
    return grpc.ssl_channel_credentials(root_certificates=ca, private_key=_read(directory, key_path.name),
                                        certificate_chain=_read(directory, cert_path.name))
