"""Per-client training settings: the server gives chosen clients other local epochs, batch size or options.

Written `CLIENT_ID:KEY=VALUE[,KEY=VALUE...]` (`--client-setting client-7:local_epochs=1,batch_size=16`).
local_epochs, batch_size and learning_rate replace the TrainConfig fields; any other key is passed to the
client in TrainConfig.options (e.g. `slowdown=5`, which clients read as their slowdown factor).
"""

from __future__ import annotations

import math
from typing import Iterable, Mapping

from fedstream.server.core.messages import TrainConfig

FIELDS = {"local_epochs": int, "batch_size": int, "learning_rate": float}


def _check(client: str, key: str, value: str) -> None:
    kind = FIELDS.get(key)
    if kind is None:
        return
    try:
        number = kind(value)
    except ValueError:
        expected = "an integer" if kind is int else "a number"
        raise ValueError(f"client {client}: {key}={value!r} is not {expected}") from None
    low_ok = number >= 0 if key == "local_epochs" else number > 0
    if not low_ok or (kind is float and not math.isfinite(number)):
        bound = ">= 0" if key == "local_epochs" else "> 0"
        raise ValueError(f"client {client}: {key} must be {bound}, got {value}")


def parse_client_setting(item: str | tuple[str, str]) -> tuple[str, dict[str, str]]:
    """'client-3:local_epochs=1,batch_size=16' (or the TOML pair ('client-3', 'local_epochs=1,...'))."""
    if isinstance(item, tuple):
        client, body = item
    else:
        client, sep, body = item.rpartition(":")
        if not sep:
            raise ValueError(f"expected CLIENT_ID:KEY=VALUE[,KEY=VALUE], got {item!r}")
    client = client.strip()
    if not client:
        raise ValueError(f"no client id before ':' in {item!r}")
    settings: dict[str, str] = {}
    for pair in filter(None, (p.strip() for p in body.split(","))):
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"client {client}: expected KEY=VALUE, got {pair!r}")
        key, value = key.strip(), value.strip()
        _check(client, key, value)
        settings[key] = value
    if not settings:
        raise ValueError(f"client {client}: no KEY=VALUE setting given")
    return client, settings


def parse_client_settings(items: Iterable[str | tuple[str, str]]) -> dict[str, dict[str, str]]:
    """Every --client-setting merged per client (later keys win)."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        client, settings = parse_client_setting(item)
        out.setdefault(client, {}).update(settings)
    return out


def apply_client_settings(config: TrainConfig, settings: Mapping[str, str] | None) -> TrainConfig:
    """The task's TrainConfig with this client's overrides written in (returned for chaining)."""
    for key, value in (settings or {}).items():
        kind = FIELDS.get(key)
        if kind is None:
            config.options[key] = value
        else:
            setattr(config, key, kind(value))
    return config
