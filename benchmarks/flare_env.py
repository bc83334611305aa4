"""NVIDIA FLARE's own virtualenv, created on first use: nvflare pins its own grpcio and protobuf, apart from ours."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

HERE = Path(__file__).resolve().parent
ENV_DIR = HERE / ".envs" / "flare"
REQUIREMENTS = ["nvflare==2.9.0", "torch==2.13.0"]
MARKER = ENV_DIR / ".installed"


def flare_bin(name: str) -> Path:
    return ENV_DIR / "bin" / name


def ensure_flare_env(log=print) -> Path:
    """Returns the env's bin directory, creating the env and installing nvflare and torch when missing."""
    wanted = " ".join(REQUIREMENTS)
    if MARKER.exists() and MARKER.read_text().strip() == wanted:
        return ENV_DIR / "bin"
    log(f"creating FLARE env in {ENV_DIR} ({wanted}); this happens once")
    venv.EnvBuilder(with_pip=True, clear=True).create(ENV_DIR)
    pip = [str(flare_bin("python")), "-m", "pip", "install", "--quiet"]
    done = subprocess.run(pip + REQUIREMENTS, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"installing {wanted} into {ENV_DIR} failed:\n{done.stderr[-3000:]}")
    MARKER.write_text(wanted)
    return ENV_DIR / "bin"


if __name__ == "__main__":
    print(ensure_flare_env())
    sys.exit(0)
