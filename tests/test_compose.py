"""No Docker engine runs here: check that the compose file and Dockerfile agree with the real CLI."""

from __future__ import annotations

import re
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
