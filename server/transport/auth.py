"""Who a caller is: the client id its mTLS certificate proves, or a token derived from the federation secret.

With mutual TLS, gRPC has already checked that the peer's certificate chains to the federation's CA; this module
binds the *claimed* client id to that certificate (its common name or a subject alternative name), at Join and on
every call that names a session, so one client cannot join, poll or upload as another. Without mTLS, a per-client
token HMAC-SHA256(federation secret, client id) proves the id instead: the server keeps one secret, not a table.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from pathlib import Path

import grpc

from fedstream.server.core import errors

MIN_SECRET_CHARS = 32


def new_secret() -> str:
    """A fresh federation secret (64 hex characters) for `federation.secret`."""
    return secrets.token_hex(32)


def client_token(secret: bytes, client_id: str) -> str:
    """The token a client presents to prove client_id without a certificate."""
    return hmac.new(secret, client_id.encode(), hashlib.sha256).hexdigest()


def load_secret(path: Path) -> bytes:
    try:
        secret = Path(path).read_bytes().strip()
    except OSError as exc:
        raise ValueError(f"cannot read the federation secret {path}: {exc.strerror}") from None
    if len(secret) < MIN_SECRET_CHARS:
        raise ValueError(f"federation secret {path} has {len(secret)} characters; use at least {MIN_SECRET_CHARS} "
                         "(fedstream certs --tokens writes one)")
    return secret


def certificate_identities(context: grpc.ServicerContext) -> set[str]:
    """Common name and subject alternative names of the peer's verified certificate (empty without mTLS)."""
    auth = context.auth_context() or {}
    names = list(auth.get("x509_common_name", [])) + list(auth.get("x509_subject_alternative_name", []))
    return {n.decode(errors="replace") if isinstance(n, bytes) else str(n) for n in names}


class Authenticator:
    """Checks a Join's claimed client id, and that later calls come from the same certificate."""

    def __init__(self, require_certificate: bool = False, token_secret: bytes | None = None) -> None:
        self.require_certificate = require_certificate
        self.token_secret = token_secret

    @property
    def enabled(self) -> bool:
        return self.require_certificate or self.token_secret is not None

    def check_join(self, context: grpc.ServicerContext, client_id: str, token: str) -> None:
        if self.require_certificate:
            self.check_peer(context, client_id)
        if self.token_secret is not None:
            if not token:
                raise errors.unauthenticated(f"client {client_id} sent no token; this server requires one "
                                             "(fedstream client --token-file DIR/ID.token)")
            if not hmac.compare_digest(client_token(self.token_secret, client_id), token):
                raise errors.unauthenticated(f"the token client {client_id} sent is not valid for that id; "
                                             "use the ID.token written by fedstream certs for this federation")

    def check_peer(self, context: grpc.ServicerContext, client_id: str) -> None:
        """With mTLS, the caller's certificate must name client_id (CN or SAN)."""
        if not self.require_certificate:
            return
        proven = certificate_identities(context)
        if not proven:
            raise errors.unauthenticated(f"no verified client certificate on this connection; client {client_id} "
                                         "must connect with its ID.pem/ID.key from fedstream certs")
        if client_id not in proven:
            raise errors.denied(f"the certificate on this connection proves {', '.join(sorted(proven))}; "
                                f"it may not act as client {client_id}")
