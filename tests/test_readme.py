"""Every command the README shows parses with the real CLI, and its Python examples run."""

from __future__ import annotations

import re
import shlex
import sys
import textwrap
from pathlib import Path

import torch
from torch import nn

from fedstream.cli import build_parser

README = Path(__file__).resolve().parent.parent / "README.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def _fedstream_commands() -> list[list[str]]:
    commands = []
    for block in _blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("fedstream "):
                commands.append(shlex.split(line)[1:])
    return commands


def test_every_fedstream_command_in_the_readme_parses() -> None:
    commands = _fedstream_commands()
    assert len(commands) >= 3
    _, children = build_parser()
    for argv in commands:
        children[argv[0]].parse_args(argv[1:])


def test_make_targets_in_the_readme_exist() -> None:
    makefile = (README.parent / "Makefile").read_text()
    for block in _blocks("bash"):
        for target in re.findall(r"^make (\w+)", block, flags=re.M):
            assert re.search(rf"^{target}:", makefile, flags=re.M), target
    test_command = next(line.split("#", 1)[0].strip() for block in _blocks("bash") for line in block.splitlines()
                        if "pytest" in line)
    assert test_command in (README.parent / ".ci" / "run").read_text().splitlines()


def test_the_user_task_example_loads_by_import_path(tmp_path: Path, monkeypatch) -> None:
    example = next(b for b in _blocks("python") if "def make_task" in b)
    package = tmp_path / "mypackage"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "mytask.py").write_text(textwrap.dedent(example))
    monkeypatch.syspath_prepend(str(tmp_path))
    from fedstream.common.tasks import load_task

    task = load_task("mypackage.mytask:make_task", {"epochs": "2"})
    assert task.defaults.local_epochs == 2 and len(task.train_data) == 800
    sys.modules.pop("mypackage.mytask", None)
    sys.modules.pop("mypackage", None)


def test_the_python_api_example_runs() -> None:
    example = next(b for b in _blocks("python") if "federated_average" in b)
    model_a, model_b = nn.Linear(8, 4), nn.Linear(8, 4)
    expected = (120 * model_a.weight.detach().clone() + 80 * model_b.weight.detach().clone()) / 200
    scope = {"model_a": model_a, "model_b": model_b}
    exec(example, scope)
    assert torch.allclose(scope["avg"]["weight"], expected, atol=1e-6)
    assert float((model_a.weight == 0).float().mean()) >= 0.8 - 1e-6


DOCS = [README, *sorted((README.parent / "docs").glob("*.md"))]


def test_every_script_path_in_the_readme_and_docs_exists() -> None:
    root = README.parent
    for doc in DOCS:
        text = doc.read_text()
        for path in set(re.findall(r"\b((?:benchmarks|experiments|tests|docs)/[\w./-]+\.(?:py|md|sh))\b", text)):
            assert (root / path).exists(), f"{doc.name} names {path}, which does not exist"
        absolute = re.findall(r"(?<![\w.])/(?:work|home|root|tmp)/[\w./-]+", text)
        assert not absolute, f"{doc.name} names a path on one machine: {absolute}"


def test_the_across_machines_section_says_how_to_get_the_command_and_when_to_use_server_name() -> None:
    section = README.read_text().split("## Running a federation across machines", 1)[1].split("\n## ", 1)[0]
    assert "pip install ." in section and ".venv/bin/fedstream" in section
    client_lines = [line for line in section.replace("\\\n", " ").splitlines() if line.startswith("fedstream client")]
    assert any("--server-name" in line for line in client_lines), client_lines
    assert "fedstream certs --out certs --clients" in section, "adding a client later is shown"
