"""Flower's own virtualenv, created on first use: flwr 1.42 needs protobuf < 7, fedstream needs protobuf >= 7."""

from __future__ import annotations

import sys

from peer_env import ensure_env

REQUIREMENTS = ["flwr==1.42.0", "torch==2.13.0"]


def ensure_flower_env(log=print):
    return ensure_env("flower", "Flower", REQUIREMENTS, log)


if __name__ == "__main__":
    print(ensure_flower_env())
    sys.exit(0)
