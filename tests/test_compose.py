"""No Docker engine runs here: check that the compose file and Dockerfile agree with the real CLI."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
import yaml

from fedstream.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent


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


def test_every_service_command_parses_with_the_real_cli(compose: dict) -> None:
    parser, children = build_parser()
    for name, service in compose["services"].items():
        command = service["command"]
        assert command[0] in children, f"{name}: unknown subcommand {command[0]}"
        children[command[0]].parse_args(command[1:])


def test_dockerfile_entry_point_is_the_installed_console_command() -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["fedstream"]' in dockerfile
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["fedstream"] == "fedstream.cli:main"
    for folder in ("protos", "cli", "common", "server", "client"):
        assert f"COPY {folder} " in dockerfile and (ROOT / folder).is_dir()
