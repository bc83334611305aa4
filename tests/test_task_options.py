"""`--task-option` keys: unknown ones are refused with the known ones listed, and every built-in's are documented."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from fedstream.cli import main
from fedstream.common.tasks import check_task_options, load_task
from fedstream.common.tasks import digits, synthetic

DOCS = Path(__file__).resolve().parent.parent / "docs" / "tasks.md"


def test_known_options_pass_and_an_unknown_one_is_refused_with_the_known_ones_listed() -> None:
    known = {"epochs": "local epochs", "lr": "learning rate"}
    check_task_options("mine", {"epochs": "2"}, known)
    check_task_options("mine", {}, known)
    with pytest.raises(ValueError) as info:
        check_task_options("mine", {"epoch": "2", "lr": "0.1", "zz": "1"}, known)
    message = str(info.value)
    assert "task mine" in message and "'epoch', 'zz'" in message and "'lr'" not in message
    assert "epochs: local epochs" in message and "lr: learning rate" in message


@pytest.mark.parametrize("task,options", [("digits", {"hidden": "8", "epochs": "1", "batch_size": "16", "lr": "0.1"}),
                                          ("synthetic", {"params": "10K", "steps": "0", "width": "16",
                                                         "samples": "8", "data_seed": "1"})])
def test_every_builtin_task_accepts_each_of_its_options_and_refuses_a_typo(task: str, options: dict) -> None:
    assert load_task(task, options).name == task
    with pytest.raises(ValueError, match=f"task {task} has no option 'hiden'"):
        load_task(task, {**options, "hiden": "8"})


def test_the_digits_options_take_effect() -> None:
    task = load_task("digits", {"hidden": "8", "epochs": "2", "batch_size": "16", "lr": "0.1"})
    assert task.make_model()[1].out_features == 8
    assert (task.defaults.local_epochs, task.defaults.batch_size, task.defaults.learning_rate) == (2, 16, 0.1)


def test_the_server_refuses_an_unknown_task_option_in_one_line(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["server", "--insecure", "--task-option", "hiden=8"])
    line, = capsys.readouterr().err.strip().splitlines()
    assert "--task" in line and "'hiden'" in line and "hidden:" in line and "lr:" in line, line


@pytest.mark.parametrize("module", [digits, synthetic])
def test_docs_list_every_option_of_every_builtin_task(module) -> None:
    text = DOCS.read_text()
    section = text.split(f"## {module.__name__.rsplit('.', 1)[1]}\n", 1)[1].split("\n## ", 1)[0]
    documented = set(re.findall(r"^\| `(\w+)` \|", section, flags=re.M))
    assert documented == set(module.OPTIONS), (documented, set(module.OPTIONS))


def test_the_paced_experiment_task_knows_digits_options_and_its_own() -> None:
    from experiments.paced_task import make_task

    assert make_task({"hidden": "8", "step_ms": "0"}).name == "digits-paced"
    with pytest.raises(ValueError, match="step_ms"):
        make_task({"stepms": "1"})
