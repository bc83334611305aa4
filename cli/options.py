"""Parsing shared by the subcommands: KEY=VALUE options, HOST:PORT, config files that mirror the flags."""

from __future__ import annotations

import argparse
import tomllib
from pathlib import Path
from typing import Any

from fedstream.cli.parser import OneLineErrorParser


def key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()


def naming_flag(flag: str, exc: Exception) -> str:
    """The error's text led by the flag it is about, unless the text already starts with a flag."""
    text = str(exc)
    return text if text.startswith("--") else f"{flag}: {text}"


def host_port(text: str) -> str:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT (e.g. 127.0.0.1:8080), got {text!r}")
    if int(port) > 65535:
        raise argparse.ArgumentTypeError(f"port {port} in {text!r} is out of range; ports go from 1 to 65535 "
                                         "(0 lets the server pick a free one)")
    return text


def id_list(text: str) -> frozenset[str]:
    """ID,ID,... (or * for any) as a set of ids."""
    ids = frozenset(part.strip() for part in text.split(",") if part.strip())
    if not ids:
        raise argparse.ArgumentTypeError(f"expected ID,ID,... or *, got {text!r}")
    return ids


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {value}")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {value}")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {value}")
    return value


def load_config(parser: argparse.ArgumentParser, path: Path) -> dict[str, Any]:
    """A TOML file whose keys are the subcommand's flags (dashes or underscores); unknown keys are errors."""
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        parser.error(f"--config {path}: {exc}")
    known = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
    out: dict[str, Any] = {}
    for key, value in data.items():
        dest = key.replace("-", "_")
        if dest not in known:
            parser.error(f"--config {path}: unknown key {key!r}; keys are the flags of this command")
        action = known[dest]
        if isinstance(value, dict):
            value = [(str(k), str(v)) for k, v in value.items()]
        elif action.type is not None and not isinstance(value, list):
            try:
                value = action.type(str(value))
            except (argparse.ArgumentTypeError, ValueError) as exc:
                parser.error(f"--config {path}: {key}: {exc}")
        if action.choices is not None and value not in action.choices:
            parser.error(f"--config {path}: {key} must be one of {', '.join(map(str, action.choices))}, got {value!r}")
        out[dest] = value
    return out


def parse_with_config(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Flags override the config file, which overrides the defaults."""
    pre = OneLineErrorParser(prog=parser.prog, add_help=False)
    pre.add_argument("--config", type=Path)
    known, _ = pre.parse_known_args(argv)
    if known.config is not None:
        parser.set_defaults(**load_config(parser, known.config))
    return parser.parse_args(argv)
