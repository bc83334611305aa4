"""The layer contracts in pyproject.toml ([tool.importlinter]), checked by import-linter on the source tree.

import-linter needs `fedstream` as one top-level package; the checkout maps it onto four folders, so the test
lays out a package of links to them and points the linter at it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_layer_contracts_hold(tmp_path: Path) -> None:
    package = tmp_path / "fedstream"
    package.mkdir()
    (package / "__init__.py").write_text("")
    for folder in ("cli", "common", "server", "client"):
        (package / folder).symlink_to(ROOT / folder, target_is_directory=True)
    lint = Path(sys.executable).with_name("lint-imports")
    result = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(tmp_path)})
    report = result.stdout + result.stderr
    assert result.returncode == 0, report[-4000:]
    assert "5 kept, 0 broken" in report, report[-4000:]
