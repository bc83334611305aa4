"""The Python standard library's own source, found through sysconfig: a corpus that ships with every machine.

Files are grouped by top-level package (`asyncio`, `email`, `json`, ...): a natural non-IID split, since the
packages differ in style and vocabulary. The loose top-level modules (`os.py`, `typing.py`, ...) are not a
client's group: they are the text the CI model is pretrained on (tiny_model.py).
"""

from __future__ import annotations

import sysconfig
from pathlib import Path

EXCLUDED = frozenset({"test", "idlelib", "turtledemo", "site-packages", "lib2to3", "__pycache__", "ensurepip",
                      "pydoc_data", "encodings"})  # tests, GUIs, vendored data and codec tables are not style
HELD_OUT = ("json", "http")  # evaluation packages: never trained on by any client


def stdlib_root() -> Path:
    root = Path(sysconfig.get_paths()["stdlib"])
    if not (root / "os.py").is_file():
        raise ValueError(f"data=stdlib: no Python sources under {root} (sysconfig's stdlib path); this Python "
                         "ships without them: pass data=PATH with your own text files")
    return root


def package_groups(root: Path | None = None) -> dict[str, list[Path]]:
    """Top-level package name -> its .py files in sorted order, for every package not excluded."""
    root = root or stdlib_root()
    groups = {}
    for package in sorted(p for p in root.iterdir() if p.is_dir() and (p / "__init__.py").is_file()):
        if package.name not in EXCLUDED:
            groups[package.name] = sorted(package.rglob("*.py"))
    return groups


def loose_modules(root: Path | None = None) -> list[Path]:
    """The top-level single-file modules (not in any package group)."""
    root = root or stdlib_root()
    return sorted(p for p in root.glob("*.py") if not p.name.startswith("_"))


def read_text(files: list[Path], limit_bytes: int) -> str:
    """The files' text joined by blank lines, stopping once `limit_bytes` are collected."""
    parts, size = [], 0
    for path in files:
        text = path.read_text(encoding="utf-8", errors="replace")
        parts.append(text)
        size += len(text)
        if size >= limit_bytes:
            break
    return "\n\n".join(parts)
