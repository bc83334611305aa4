"""A peer system's own virtualenv under benchmarks/.envs/NAME, created on first use (its pins stay apart from ours)."""

from __future__ import annotations

import subprocess
import venv
from pathlib import Path

HERE = Path(__file__).resolve().parent


def ensure_env(name: str, label: str, requirements: list[str], log=print) -> Path:
    """The env's bin directory, creating the env and installing the requirements when missing or changed."""
    env_dir = HERE / ".envs" / name
    marker = env_dir / ".installed"
    wanted = " ".join(requirements)
    if marker.exists() and marker.read_text().strip() == wanted:
        return env_dir / "bin"
    log(f"creating {label} env in {env_dir} ({wanted}); this happens once")
    venv.EnvBuilder(with_pip=True, clear=True).create(env_dir)
    pip = [str(env_dir / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    done = subprocess.run(pip + requirements, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"installing {wanted} into {env_dir} failed:\n{done.stderr[-3000:]}")
    marker.write_text(wanted)
    return env_dir / "bin"
