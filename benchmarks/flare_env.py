"""NVIDIA FLARE's own virtualenv, created on first use: nvflare pins its own grpcio and protobuf, apart from ours."""

from __future__ import annotations

import sys

from peer_env import ensure_env

REQUIREMENTS = ["nvflare==2.9.0", "torch==2.13.0"]


def ensure_flare_env(log=print):
    return ensure_env("flare", "FLARE", REQUIREMENTS, log)


if __name__ == "__main__":
    print(ensure_flare_env())
    sys.exit(0)
