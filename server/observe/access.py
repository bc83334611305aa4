"""Who may read the dashboard: the loopback rule, the bearer token, and TLS contexts from a `fedstream certs` dir.

On a loopback address the dashboard is open to local users; on any other address it needs a token, read from
`--dashboard-token-file` or generated once and printed with the link. With `--tls-dir` it serves HTTPS with the
server's certificate (server.pem/server.key), and `fedstream status` verifies it against ca.pem.
"""

from __future__ import annotations

import ipaddress
import secrets
import ssl
from pathlib import Path

MIN_TOKEN_CHARS = 16
HINT = "create them with: fedstream certs --out DIR --server-name HOST --clients ID,..."


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_token(path: Path) -> str:
    try:
        token = Path(path).read_text().strip()
    except OSError as exc:
        raise ValueError(f"--dashboard-token-file {path}: cannot read it ({exc.strerror}); write a random token "
                         "into it, e.g. python -c 'import secrets; print(secrets.token_urlsafe(32))' > FILE") from None
    if len(token) < MIN_TOKEN_CHARS or any(c.isspace() for c in token):
        raise ValueError(f"--dashboard-token-file {path}: the token has {len(token)} characters or contains spaces; "
                         f"expected at least {MIN_TOKEN_CHARS} without spaces, e.g. secrets.token_urlsafe(32)")
    return token


def dashboard_token(host: str, token_file: Path | None) -> tuple[str | None, bool]:
    """(token, generated): the file's token, a new one for a non-loopback host, or None on loopback."""
    if token_file is not None:
        return read_token(token_file), False
    if is_loopback(host):
        return None, False
    return secrets.token_urlsafe(32), True


def dashboard_url(host: str, port: int, tls: bool, token: str | None = None) -> str:
    shown = f"[{host}]" if ":" in host and not host.startswith("[") else host
    query = f"/?token={token}" if token else "/"
    return f"{'https' if tls else 'http'}://{shown}:{port}{query}"


def _existing(directory: Path, name: str) -> str:
    path = Path(directory) / name
    if not path.is_file():
        raise ValueError(f"--tls-dir {directory}: {name} is missing; {HINT}")
    return str(path)


def server_ssl_context(tls_dir: Path) -> ssl.SSLContext:
    """HTTPS with the federation's server certificate; browsers present no client certificate."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(_existing(tls_dir, "server.pem"), _existing(tls_dir, "server.key"))
    return context


def client_ssl_context(tls_dir: Path) -> ssl.SSLContext:
    """Verifies the dashboard's certificate against the federation's ca.pem (and its host name)."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=_existing(tls_dir, "ca.pem"))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    return context
