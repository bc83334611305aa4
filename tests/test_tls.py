"""TLS, mutual TLS and tokens: only holders of the federation's credentials join, and only as themselves."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import grpc
import pytest

from fedstream.common.security.certs import make_federation_certs
from fedstream.common.proto import coordinator_pb2 as pb
from fedstream.common.security.tls import client_credentials, server_credentials
from fedstream.server.transport.auth import Authenticator, client_token
from tests.harness import FEDSTREAM, env, start_client, start_server
from tests.inprocess import random_delta, send, start_federation, upload_stream

Code = grpc.StatusCode


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("pki")
    make_federation_certs(out, ["localhost", "127.0.0.1"], ["client-0", "client-1"])
    return out


@pytest.fixture(scope="module")
def other_pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second federation: its certificates must mean nothing to the first one."""
    out = tmp_path_factory.mktemp("other")
    make_federation_certs(out, ["localhost", "127.0.0.1"], ["client-0"])
    return out


@pytest.fixture
def mtls(tmp_path: Path, pki: Path):
    fed = start_federation(tmp_path / "run", credentials=server_credentials(pki), auth=Authenticator(True),
                           min_clients=2)
    yield fed
    fed.close()


def _code(call) -> tuple[Code, str]:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def test_client_with_its_certificate_joins_and_one_without_a_valid_certificate_is_refused(
        mtls, pki: Path, other_pki: Path, tmp_path: Path) -> None:
    member = mtls.join("client-0", credentials=client_credentials(pki, "client-0"))
    assert member.session_id
    ca_only = tmp_path / "ca-only"
    ca_only.mkdir()
    shutil.copy(pki / "ca.pem", ca_only / "ca.pem")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    shutil.copy(pki / "ca.pem", foreign / "ca.pem")
    for name in ("client-0.pem", "client-0.key"):
        shutil.copy(other_pki / name, foreign / name)
    refused = {
        "no certificate": client_credentials(ca_only, "client-0", require_certificate=False),
        "certificate from another CA": client_credentials(foreign, "client-0"),
    }
    for what, credentials in refused.items():
        code, details = _code(lambda: mtls.join("client-0", credentials=credentials))
        assert code == Code.UNAVAILABLE, (what, code, details)
    code, _ = _code(lambda: mtls.join("client-0"))
    assert code == Code.UNAVAILABLE, "a plaintext client must not reach a TLS server"
    code, _ = _code(lambda: mtls.join("client-0", credentials=client_credentials(other_pki, "client-0")))
    assert code == Code.UNAVAILABLE, "a client must not trust a server its CA did not sign"
    assert mtls.coordinator.sessions.client_ids() == ["client-0"]


def test_a_certificate_proves_one_id_only_at_join_and_on_every_session_call(mtls, pki: Path) -> None:
    code, details = _code(lambda: mtls.join("client-1", credentials=client_credentials(pki, "client-0")))
    assert code == Code.PERMISSION_DENIED and "proves client-0" in details and "client-1" in details
    victim = mtls.join("client-1", credentials=client_credentials(pki, "client-1"))
    thief = mtls.member("client-0", credentials=client_credentials(pki, "client-0"))
    thief.session = victim.session
    code, details = _code(lambda: thief.stub.Heartbeat(pb.HeartbeatRequest(session_id=victim.session_id), timeout=10))
    assert code == Code.PERMISSION_DENIED and "may not act as client client-1" in details
    mtls.join("client-0", credentials=client_credentials(pki, "client-0"))
    mtls.wait_round(1, 2)
    code, details = _code(lambda: send(thief, upload_stream(thief, 1, 0, random_delta(mtls.initial, 1))))
    assert code == Code.PERMISSION_DENIED, details
    assert not mtls.coordinator.mode.round.accepted, "an upload under a stolen session must not count"
    assert send(victim, upload_stream(victim, 1, 0, random_delta(mtls.initial, 1))).accepted


def test_tokens_prove_the_client_id_without_certificates(tmp_path: Path) -> None:
    secret = b"s" * 64
    fed = start_federation(tmp_path / "run", auth=Authenticator(False, secret))
    try:
        assert fed.join("site-a", token=client_token(secret, "site-a")).session_id
        for what, token, words in [("no token", "", "sent no token"),
                                   ("another client's token", client_token(secret, "site-a"), "not valid"),
                                   ("token of another federation", client_token(b"t" * 64, "site-b"), "not valid")]:
            code, details = _code(lambda: fed.join("site-b", token=token))
            assert code == Code.UNAUTHENTICATED and words in details, (what, details)
    finally:
        fed.close()


def test_cli_certs_then_mtls_federation_trains_and_refuses_impostors(tmp_path: Path) -> None:
    certs = tmp_path / "certs"
    made = subprocess.run(FEDSTREAM + ["certs", "--out", str(certs), "--server-name", "localhost,127.0.0.1",
                                       "--clients", "client-0,client-1", "--tokens"],
                          capture_output=True, text=True, timeout=60, env=env())
    assert made.returncode == 0, made.stderr
    assert {p.name for p in certs.iterdir()} >= {"ca.pem", "ca.key", "server.pem", "server.key", "client-0.pem",
                                                 "client-0.key", "client-1.pem", "client-1.key", "federation.secret",
                                                 "client-0.token", "client-1.token"}
    assert oct((certs / "client-0.key").stat().st_mode & 0o777) == "0o600"
    plain = subprocess.run(FEDSTREAM + ["server", "--rounds", "1"], capture_output=True, text=True, timeout=60, env=env())
    assert plain.returncode == 2 and "--insecure" in plain.stderr and "--tls-dir" in plain.stderr

    impostor_dir = tmp_path / "impostor"
    impostor_dir.mkdir()
    shutil.copy(certs / "ca.pem", impostor_dir / "ca.pem")
    shutil.copy(certs / "client-0.pem", impostor_dir / "client-1.pem")
    shutil.copy(certs / "client-0.key", impostor_dir / "client-1.key")
    run_dir = tmp_path / "run"
    server = start_server(run_dir, "--tls-dir", str(certs), "--token-secret-file", str(certs / "federation.secret"),
                          "--rounds", "1", "--min-clients", "1", "--round-timeout", "60", "--task-option", "hidden=16",
                          "--local-epochs", "1")
    try:
        common = ("--tls-dir", str(certs), "--device", "cpu", "--task-option", "hidden=16")
        honest = start_client(server, *common, "--client-id", "client-0", "--partition", "0/2",
                              "--token-file", str(certs / "client-0.token"))
        impostor = start_client(server, "--tls-dir", str(impostor_dir), "--client-id", "client-1", "--partition", "1/2",
                                "--token-file", str(certs / "client-1.token"), "--task-option", "hidden=16",
                                log_name="impostor")
        assert impostor.wait(timeout=60) == 1
        impostor_log = (run_dir.parent / f"{run_dir.name}.impostor.log").read_text()
        assert "PERMISSION_DENIED" in impostor_log and "proves client-0" in impostor_log
        assert server.wait(timeout=120) == 0, server.log()[-3000:]
        assert honest.wait(timeout=60) == 0
    finally:
        server.stop()
    record = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["accepted"] == ["client-0"]
    assert "--insecure" not in server.log()
    assert "after 1 round (" in server.log(), "one round is singular in the final line"
