"""TLS mistakes a new federation makes fail at once and name the fix, instead of looking like a server that is down."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes

from fedstream.cli import main
from fedstream.client.connection import CoordinatorStub, open_channel, with_retry
from fedstream.client.handshake import HandshakeFailed, diagnose_handshake
from fedstream.common.proto import coordinator_pb2 as pb
from fedstream.common.security.tls import client_credentials, server_credentials
from fedstream.server.transport.auth import Authenticator
from tests.harness import FEDSTREAM, env
from tests.inprocess import start_federation


def _fingerprint(path: Path) -> str:
    return x509.load_pem_x509_certificate(path.read_bytes()).fingerprint(hashes.SHA256()).hex()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`fedstream certs` for a server known only as localhost, as the README's across-machines example does."""
    out = tmp_path_factory.mktemp("certs")
    assert main(["certs", "--out", str(out), "--server-name", "localhost", "--clients", "site-a,site-b"]) == 0
    return out


@pytest.fixture(scope="module")
def other_certs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("other")
    assert main(["certs", "--out", str(out), "--server-name", "localhost", "--clients", "site-a"]) == 0
    return out


@pytest.fixture(scope="module")
def federation(tmp_path_factory: pytest.TempPathFactory, certs: Path):
    fed = start_federation(tmp_path_factory.mktemp("run"), credentials=server_credentials(certs),
                           auth=Authenticator(True))
    yield fed
    fed.close()


def test_certs_run_again_adds_a_client_and_keeps_the_ca_server_and_other_clients(tmp_path: Path, capsys) -> None:
    out = tmp_path / "certs"
    assert main(["certs", "--out", str(out), "--server-name", "localhost,10.0.0.5", "--clients", "site-a,site-b"]) == 0
    kept = ["ca.pem", "ca.key", "server.pem", "server.key", "site-a.pem", "site-a.key", "site-b.pem", "site-b.key"]
    before = {name: (out / name).read_bytes() for name in kept}
    fingerprints = {name: _fingerprint(out / name) for name in kept if name.endswith(".pem")}
    capsys.readouterr()

    assert main(["certs", "--out", str(out), "--clients", "site-c,site-a"]) == 0

    printed = capsys.readouterr().out
    assert {name: (out / name).read_bytes() for name in kept} == before, "adding a client rewrote existing files"
    assert {name: _fingerprint(out / name) for name in fingerprints} == fingerprints
    assert "localhost, 10.0.0.5  (kept" in printed and "site-a.key  (kept" in printed
    ca = x509.load_pem_x509_certificate((out / "ca.pem").read_bytes())
    x509.load_pem_x509_certificate((out / "site-c.pem").read_bytes()).verify_directly_issued_by(ca)

    assert main(["certs", "--out", str(out), "--server-name", "coordinator.example", "--clients", ""]) == 0
    assert _fingerprint(out / "server.pem") != fingerprints["server.pem"], "other names must reissue the server pair"
    assert _fingerprint(out / "ca.pem") == fingerprints["ca.pem"]


def test_certs_in_a_new_directory_needs_a_server_name(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit):
        main(["certs", "--out", str(tmp_path / "fresh"), "--clients", "site-a"])
    assert "--server-name" in capsys.readouterr().err and not (tmp_path / "fresh").exists()


def test_a_client_without_its_certificate_refuses_to_start_naming_the_path(certs: Path, capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["client", "--tls-dir", str(certs), "--client-id", "site-z", "--server", "localhost:1",
              "--task-option", "hidden=16", "--device", "cpu"])
    assert info.value.code == 2
    line, = capsys.readouterr().err.strip().splitlines()
    assert str(certs / "site-z.pem") in line and "--clients site-z" in line, line


def test_a_hostname_mismatch_ends_the_client_at_once_naming_server_name(federation, certs: Path) -> None:
    started = time.monotonic()
    result = subprocess.run(FEDSTREAM + ["client", "--server", federation.address, "--tls-dir", str(certs),
                                         "--client-id", "site-a", "--task-option", "hidden=16", "--device", "cpu",
                                         "--connect-timeout", "120"],
                            capture_output=True, text=True, timeout=100, env=env())
    elapsed = time.monotonic() - started
    assert result.returncode == 1, result.stderr[-2000:]
    assert elapsed < 60, f"took {elapsed:.0f} s: the mismatch was retried like an unreachable server"
    last = result.stderr.strip().splitlines()[-1]
    assert "does not name '127.0.0.1'" in last and "--server-name" in last, last
    assert "server not reachable" not in result.stderr


def test_server_name_is_the_fix_for_a_mismatch(federation, certs: Path) -> None:
    member = federation.join("site-b", credentials=client_credentials(certs, "site-b"), server_name="localhost")
    assert member.session_id


def _join_with_diagnosis(address: str, credentials: grpc.ChannelCredentials, server_name: str | None) -> None:
    channel = open_channel(address, credentials, server_name)
    try:
        stub = CoordinatorStub(channel)
        request = pb.JoinRequest(client_id="site-a", protocol_version=1, device="cpu", codecs=["raw"])
        with_retry(lambda: stub.Join(request, timeout=5), "join", give_up_after=60,
                   diagnose=lambda details: diagnose_handshake(details, address, server_name))
    finally:
        channel.close()


def test_a_server_from_another_federation_is_named_untrusted_at_once(federation, other_certs: Path) -> None:
    started = time.monotonic()
    with pytest.raises(HandshakeFailed, match="ca.pem in --tls-dir does not vouch for"):
        _join_with_diagnosis(federation.address, client_credentials(other_certs, "site-a"), "localhost")
    assert time.monotonic() - started < 10


def test_a_tls_client_of_a_plaintext_server_is_told_so(tmp_path: Path, certs: Path) -> None:
    plain = start_federation(tmp_path / "plain")
    try:
        with pytest.raises(HandshakeFailed, match="does not speak TLS"):
            _join_with_diagnosis(plain.address, client_credentials(certs, "site-a"), "localhost")
    finally:
        plain.close()


def test_unrelated_unavailability_is_not_mistaken_for_a_tls_problem() -> None:
    assert diagnose_handshake("failed to connect to all addresses; last error: UNAVAILABLE: ipv4:127.0.0.1:1: "
                              "Connection refused", "127.0.0.1:1", None) is None
    assert diagnose_handshake("... Socket closed", "127.0.0.1:1", None) is None
