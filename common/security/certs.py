"""A federation's certificates: one CA, a server certificate and one client certificate per client id.

ECDSA P-256 keys (fast to make, supported by gRPC's TLS). Client certificates carry the client id as common name
and, where it is a valid DNS name, as a subject alternative name too: the server binds the id a client claims to
it. An existing CA, server pair and client pairs in the output directory are kept, so clients can be added later
without re-issuing the rest.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

CLIENT_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
RESERVED = {"ca", "server"}
DNS_LABELS = re.compile(r"^(?!-)[A-Za-z0-9-]{1,63}(?<!-)(\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*$")


@dataclass
class Issued:
    """Paths written by `make_federation_certs`."""

    ca: Path
    server: tuple[Path, Path]
    clients: dict[str, tuple[Path, Path]]
    server_names: list[str]
    kept: list[Path]
    """Certificates that were already there and were left as they were."""


def check_client_id(client_id: str) -> str:
    if not CLIENT_ID.match(client_id):
        raise ValueError(f"client id {client_id!r} must be 1-128 characters of letters, digits, '.', '_' or '-', "
                         "starting with a letter or digit (it becomes a file name and a certificate name)")
    return client_id


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    data = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _names(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fedstream federation"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _alt_name(name: str) -> x509.GeneralName | None:
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name) if DNS_LABELS.match(name) else None


def _issue(subject: str, key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, ca_key: ec.EllipticCurvePrivateKey,
           alt_names: list[str], usage: x509.ObjectIdentifier, days: int) -> x509.Certificate:
    now = datetime.datetime.now(datetime.timezone.utc)
    sans = [n for n in (_alt_name(name) for name in alt_names) if n is not None]
    builder = (x509.CertificateBuilder().subject_name(_names(subject)).issuer_name(ca_cert.subject)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
               .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
               .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False, content_commitment=False,
                                            data_encipherment=False, key_agreement=True, key_cert_sign=False,
                                            crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False))
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(ca_key, hashes.SHA256())


def _make_ca(days: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    key = _new_key()
    now = datetime.datetime.now(datetime.timezone.utc)
    name = _names("fedstream federation CA")
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, key_encipherment=False, content_commitment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    return cert, key


def load_or_make_ca(out: Path, days: int) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """The CA in out/ca.pem + out/ca.key, created when absent."""
    ca_pem, ca_key_path = out / "ca.pem", out / "ca.key"
    if ca_pem.exists() and ca_key_path.exists():
        cert = x509.load_pem_x509_certificate(ca_pem.read_bytes())
        key = serialization.load_pem_private_key(ca_key_path.read_bytes(), password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{ca_key_path} is not an EC key written by fedstream certs")
        return cert, key
    if ca_pem.exists() or ca_key_path.exists():
        raise ValueError(f"{out} holds only one of ca.pem and ca.key; remove it or supply both")
    cert, key = _make_ca(days)
    _write_key(ca_key_path, key)
    _write_cert(ca_pem, cert)
    return cert, key


def certificate_names(cert: x509.Certificate) -> list[str]:
    """The host names and addresses a certificate is valid for (its subject alternative names)."""
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(name.value) for name in sans]


def _existing_pair(out: Path, stem: str, ca_cert: x509.Certificate) -> x509.Certificate | None:
    """out/stem.pem when it and its key exist and the CA signed it; None when neither exists."""
    cert_path, key_path = out / f"{stem}.pem", out / f"{stem}.key"
    if not cert_path.exists() and not key_path.exists():
        return None
    if cert_path.exists() != key_path.exists():
        raise ValueError(f"{out} holds only one of {cert_path.name} and {key_path.name}; remove it or supply both")
    cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
    return cert if cert.issuer == ca_cert.subject and _signed_by(cert, ca_cert) else None


def _signed_by(cert: x509.Certificate, ca_cert: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def make_federation_certs(out: Path, server_names: list[str], client_ids: list[str], days: int = 365) -> Issued:
    """Writes ca.pem (+ ca.key), server.pem/server.key for server_names, and ID.pem/ID.key per client id.

    Run again on the same directory it adds what is missing and keeps the rest: the CA, a server pair that
    already names server_names (or any server pair when server_names is empty), and existing clients' pairs.
    """
    for cid in client_ids:
        check_client_id(cid)
        if cid in RESERVED:
            raise ValueError(f"client id {cid!r} would overwrite the federation's own {cid}.pem; choose another id")
    if not server_names and not (out / "server.pem").exists():
        raise ValueError(f"{out} has no server certificate yet: give --server-name, the host name or IP address "
                         "clients dial (comma-separated for several)")
    out.mkdir(parents=True, exist_ok=True)
    ca_cert, ca_key = load_or_make_ca(out, days)
    kept: list[Path] = []
    server = _existing_pair(out, "server", ca_cert)
    if server is not None and (not server_names or set(server_names) == set(certificate_names(server))):
        kept.append(out / "server.pem")
        names = certificate_names(server)
    else:
        names = server_names or (certificate_names(server) if server is not None else [])
        if not names:
            raise ValueError(f"{out / 'server.pem'} was not signed by {out / 'ca.pem'}: give --server-name to "
                             "issue a new server certificate")
        server_key = _new_key()
        server_cert = _issue(names[0], server_key, ca_cert, ca_key, names, ExtendedKeyUsageOID.SERVER_AUTH, days)
        _write_key(out / "server.key", server_key)
        _write_cert(out / "server.pem", server_cert)
    clients = {}
    for cid in client_ids:
        if _existing_pair(out, cid, ca_cert) is not None:
            kept.append(out / f"{cid}.pem")
        else:
            key = _new_key()
            cert = _issue(cid, key, ca_cert, ca_key, [cid], ExtendedKeyUsageOID.CLIENT_AUTH, days)
            _write_key(out / f"{cid}.key", key)
            _write_cert(out / f"{cid}.pem", cert)
        clients[cid] = (out / f"{cid}.pem", out / f"{cid}.key")
    return Issued(out / "ca.pem", (out / "server.pem", out / "server.key"), clients, names, kept)
