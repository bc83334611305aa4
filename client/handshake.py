"""TLS handshake failures that retrying cannot fix, told apart from a server that is not up yet.

gRPC reports both as UNAVAILABLE; only the details say which. A client that retried a certificate mismatch would
look like one waiting for an unreachable server until --connect-timeout, so these end the client at once.
"""

from __future__ import annotations

HOSTNAME_MISMATCH = "Hostname Verification Check failed"
UNTRUSTED = "CERTIFICATE_VERIFY_FAILED"
NOT_TLS = "WRONG_VERSION_NUMBER"


class HandshakeFailed(ConnectionError):
    """The server was reached but the TLS handshake failed for a reason that stays true on every retry."""


def diagnose_handshake(details: str, target: str, server_name: str | None) -> str | None:
    """What went wrong and the fix, for a handshake failure in gRPC's error details; None for anything else."""
    host = target.rpartition(":")[0].strip("[]")
    if HOSTNAME_MISMATCH in details:
        dialled = server_name or host
        return (f"TLS: the certificate of the server at {target} does not name {dialled!r}; pass --server-name with "
                f"a name it holds (one given to `fedstream certs --server-name`), or reissue the server certificate "
                f"with {dialled} among its names: fedstream certs --out DIR --server-name {dialled},...")
    if UNTRUSTED in details:
        reason = details.split(UNTRUSTED, 1)[1].strip(": ").removesuffix(": OK") or "not signed by ca.pem"
        return (f"TLS: the server at {target} presents a certificate that ca.pem in --tls-dir does not vouch for "
                f"({reason}); copy ca.pem from the directory `fedstream certs` wrote on the coordinator")
    if NOT_TLS in details:
        return (f"TLS: the server at {target} does not speak TLS (was it started with --insecure?); start it with "
                "--tls-dir, or connect with --insecure on a network you trust")
    return None
