"""What a new user reads: one-line flag errors, help and a default for every flag, messages that say what is wrong."""

from __future__ import annotations

import argparse

import pytest

from fedstream.cli import build_parser, main
from fedstream.common.wording import plural


def _error_lines(capsys: pytest.CaptureFixture[str], argv: list[str]) -> list[str]:
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize("argv,words", [
    (["server", "--rounds", "zero"], ["--rounds", "positive integer", "see fedstream server --help"]),
    (["server", "--upload-codec", "gzip"], ["--upload-codec", "raw", "q8", "see fedstream server --help"]),
    (["client", "--partition-scheme", "zipf"], ["--partition-scheme", "iid", "dirichlet",
                                                 "see fedstream client --help"]),
    (["demo", "--clients", "-1"], ["--clients", "positive integer", "see fedstream demo --help"]),
    (["certs", "--days", "0"], ["--days", "see fedstream certs --help"]),
    (["server", "--roundz", "3"], ["--roundz", "did you mean --rounds?", "see fedstream server --help"]),
    (["nosuchcommand"], ["nosuchcommand", "server", "client", "see fedstream --help"]),
])
def test_a_bad_flag_prints_one_line_naming_it_and_where_help_is(capsys, argv: list[str], words: list[str]) -> None:
    lines = _error_lines(capsys, argv)
    assert len(lines) == 1, lines
    assert all(w in lines[0] for w in words), lines[0]


def test_a_port_out_of_range_is_named_as_such(capsys) -> None:
    line, = _error_lines(capsys, ["server", "--address", "127.0.0.1:99999"])
    assert "--address" in line and "port 99999" in line and "out of range" in line and "65535" in line, line
    line, = _error_lines(capsys, ["client", "--server", "127.0.0.1"])
    assert "expected HOST:PORT" in line, line


def test_central_dp_with_a_robust_strategy_says_it_once(capsys) -> None:
    line, = _error_lines(capsys, ["server", "--dp", "central", "--strategy", "median", "--insecure"])
    assert line.count("--dp central") == 1 and "median" in line and "--dp local" in line, line


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    return build_parser()[1]


def test_every_flag_of_every_subcommand_has_help() -> None:
    missing = [f"{name} {'/'.join(action.option_strings) or action.dest}"
               for name, parser in _subparsers().items() for action in parser._actions
               if not action.help]  # argparse.SUPPRESS (a deliberately hidden flag) is truthy and passes
    assert not missing, f"flags without help text: {missing}"


@pytest.mark.parametrize("command,flag,default", [
    ("server", "--address", "0.0.0.0:8080"), ("server", "--rounds", "10"), ("server", "--seed", "0"),
    ("client", "--server", "127.0.0.1:8080"), ("client", "--connect-timeout", "600.0"), ("demo", "--clients", "4"),
])
def test_help_shows_each_default(command: str, flag: str, default: str) -> None:
    text = " ".join(_subparsers()[command].format_help().split())
    after = text[text.index(f" {flag} "):]
    assert f"(default: {default})" in after[:400], after[:400]


@pytest.mark.parametrize("command", ["server", "client"])
def test_help_says_tls_dir_or_insecure_is_required(command: str) -> None:
    text = " ".join(_subparsers()[command].format_help().split())
    assert "one of --tls-dir or --insecure is required" in text


def test_help_shows_no_meaningless_defaults() -> None:
    text = _subparsers()["server"].format_help()
    assert "(default: None)" not in text and "(default: False)" not in text and "(default: [])" not in text


def test_counted_nouns_are_singular_for_one() -> None:
    assert [plural(n, "round") for n in (0, 1, 2)] == ["0 rounds", "1 round", "2 rounds"]
    assert plural(1, "client") == "1 client" and plural(1, "entry", "entries") == "1 entry"
    assert plural(3, "entry", "entries") == "3 entries"
