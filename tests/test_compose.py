"""No Docker engine runs here: check that the compose file and Dockerfile agree with the real CLI."""

from __future__ import annotations

import hashlib
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from fedstream.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_SERVICES = {"certs", "server", "client-0", "client-1", "client-2"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_compose_builds_our_dockerfile_and_has_server_and_distinct_clients(compose: dict) -> None:
    services = compose["services"]
    assert "server" in services
    clients = [s for name, s in services.items() if name.startswith("client-")]
    assert len(clients) >= 2
    partitions = [c["command"][c["command"].index("--partition") + 1] for c in clients]
    assert len(set(partitions)) == len(partitions)
    for service in services.values():
        assert service.get("build") == "." and (ROOT / "Dockerfile").exists()
        assert "federation" in service.get("networks", ["federation"])
    assert any(v.startswith("runs:") for v in services["server"]["volumes"])


def fedstream_commands(service: dict) -> list[list[str]]:
    """The fedstream argument lists a service runs: its command, or each `fedstream ...` line of an sh -c script."""
    if service.get("entrypoint") == ["sh", "-c"]:
        lines = [shlex.split(line) for line in service["command"][0].splitlines()]
        return [line[1:] for line in lines if line and line[0] == "fedstream"]
    return [service["command"]]


@pytest.mark.parametrize("profile", ["default", "relay"])
def test_every_service_command_parses_with_the_real_cli(compose: dict, profile: str) -> None:
    """The relay profile's `fedstream relay` fails this until the relay command exists, by design."""
    parser, children = build_parser()
    for name, service in compose["services"].items():
        if service.get("profiles", ["default"]) != [profile]:
            continue
        commands = fedstream_commands(service)
        assert commands, f"{name} runs no fedstream command"
        for command in commands:
            assert command[0] in children, f"{name}: unknown subcommand {command[0]}"
            args = children[command[0]].parse_args(command[1:])
            if command[0] in ("server", "client", "relay"):
                assert bool(args.tls_dir) != bool(args.insecure), f"{name}: give --tls-dir or --insecure"


def flag(command: list[str], name: str) -> str:
    assert name in command, f"{command[0]} has no {name}"
    return command[command.index(name) + 1]


def test_default_profile_is_unchanged_by_the_relay_profile(compose: dict) -> None:
    services = compose["services"]
    assert {name for name, s in services.items() if "profiles" not in s} == DEFAULT_SERVICES
    for name in set(services) - DEFAULT_SERVICES:
        assert services[name]["profiles"] == ["relay"], name
    for name in DEFAULT_SERVICES:
        assert set(services[name].get("depends_on", {})) <= DEFAULT_SERVICES, f"{name} waits for a relay service"


def test_relay_sits_between_the_server_and_its_own_clients(compose: dict) -> None:
    services = compose["services"]
    server, relay = services["server"]["command"], services["relay"]["command"]
    assert flag(relay, "--upstream") == f"server:{flag(server, '--address').rsplit(':', 1)[1]}"
    assert float(flag(relay, "--round-timeout")) < float(flag(server, "--round-timeout"))
    leaves = [s["command"] for name, s in services.items() if name.startswith("relay-client-")]
    assert len(leaves) >= int(flag(relay, "--min-clients")) >= 1
    relay_port = flag(relay, "--address").rsplit(":", 1)[1]
    for leaf in leaves:
        assert flag(leaf, "--server") == f"relay:{relay_port}"
        assert flag(leaf, "--tls-dir") == flag(relay, "--tls-dir")
    assert len({(flag(c, "--partition"), flag(c, "--partition-seed")) for c in leaves}) == len(leaves)
    assert all(flag(services[n]["command"], "--client-id") != flag(relay, "--client-id") for n in DEFAULT_SERVICES
               if services[n]["command"][0] == "client")


@pytest.mark.slow
def test_relay_certs_script_issues_what_the_relay_reads_from_the_servers_ca_without_touching_its_pair(
        compose: dict, tmp_path: Path) -> None:
    """Runs the default certs command and then the relay-certs script, with the volumes as folders under tmp_path."""
    services = compose["services"]
    volumes = {"/certs": tmp_path / "certs", "/relay-certs": tmp_path / "relay-certs", "/tmp/top": tmp_path / "top"}
    volumes["/relay-certs"].mkdir()

    def local(text: str) -> str:
        return re.sub(r"(?<![\w-])(/certs|/relay-certs|/tmp/top)(?=/|\s|$)", lambda m: str(volumes[m.group(1)]), text)

    fedstream = [sys.executable, "-m", "fedstream.cli"]
    subprocess.run(fedstream + [local(a) for a in services["certs"]["command"]], check=True, capture_output=True,
                   timeout=60)
    server_pair = hashlib.sha256((volumes["/certs"] / "server.key").read_bytes()).hexdigest()
    script = "\n".join(local(line) for line in services["relay-certs"]["command"][0].splitlines())
    script = script.replace("fedstream certs", shlex.join(fedstream) + " certs")
    run = subprocess.run(["sh", "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert hashlib.sha256((volumes["/certs"] / "server.key").read_bytes()).hexdigest() == server_pair
    assert not volumes["/tmp/top"].exists()

    from cryptography import x509

    relay = services["relay"]["command"]
    upstream = Path(local(flag(relay, "--upstream-tls-dir")))
    tier = Path(local(flag(relay, "--tls-dir")))
    client_id = flag(relay, "--client-id")
    assert {p.name for p in upstream.iterdir()} == {"ca.pem", f"{client_id}.pem", f"{client_id}.key"}
    assert (upstream / "ca.pem").read_bytes() == (volumes["/certs"] / "ca.pem").read_bytes()
    top_ca = x509.load_pem_x509_certificate((volumes["/certs"] / "ca.pem").read_bytes())
    relay_cert = x509.load_pem_x509_certificate((upstream / f"{client_id}.pem").read_bytes())
    relay_cert.verify_directly_issued_by(top_ca)
    assert {"ca.pem", "server.pem", "server.key"} <= {p.name for p in tier.iterdir()}
    tier_ca = x509.load_pem_x509_certificate((tier / "ca.pem").read_bytes())
    assert tier_ca.subject != top_ca.subject or tier_ca.public_key() != top_ca.public_key()
    for name, service in services.items():
        if name.startswith("relay-client-"):
            leaf_id = flag(service["command"], "--client-id")
            leaf = x509.load_pem_x509_certificate((tier / f"{leaf_id}.pem").read_bytes())
            leaf.verify_directly_issued_by(tier_ca)


def test_dockerfile_entry_point_is_the_installed_console_command() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["fedstream"]' in dockerfile
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["fedstream"] == "fedstream.cli:main"
    for folder in ("protos", "cli", "common", "server", "client"):
        assert f"COPY {folder} " in dockerfile and (ROOT / folder).is_dir()
    assert "chown fed /runs /certs /relay-certs" in dockerfile, "named volumes' mount points must belong to fed"


def test_the_image_installs_the_cpu_torch_it_promises_before_fedstream() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    args = dict(re.findall(r'^ARG (\w+)="([^"]*)"', dockerfile, flags=re.M))
    assert args["TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu", "PyPI's Linux torch wheel is the CUDA build"
    assert re.fullmatch(r"torch==[\d.]+", args["TORCH_SPEC"])
    torch_line = next(line for line in dockerfile.splitlines() if "${TORCH_SPEC}" in line and line.startswith("RUN"))
    assert '--index-url "${TORCH_INDEX}"' in torch_line
    assert dockerfile.index(torch_line) < dockerfile.index("RUN pip install ."), \
        "torch first, so `pip install .` finds it satisfied instead of fetching the CUDA wheel"
    makefile_torch = re.search(r"^TORCH \?= (\S+)", (ROOT / "Makefile").read_text(), flags=re.M).group(1)
    assert makefile_torch == args["TORCH_SPEC"], "the image and `make env` test the same torch"


def test_the_build_context_leaves_out_environments_runs_and_history() -> None:
    ignored = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")}
    assert {".git", ".venv", "runs", "benchmarks/.envs", "**/__pycache__"} <= ignored, ignored
    copied = set(re.findall(r"^COPY (\S+)", (ROOT / "Dockerfile").read_text(), flags=re.M))
    assert not copied & ignored, f"the Dockerfile copies what .dockerignore leaves out: {copied & ignored}"
