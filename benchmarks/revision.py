"""A git revision of fedstream, unpacked beside the benchmarks and importable through a PYTHONPATH shim.

`prepare_revision("HEAD~1")` exports that commit's tree with `git archive` into
benchmarks/.envs/rev-<sha>/src and builds benchmarks/.envs/rev-<sha>/shim/fedstream, whose subpackages are
symlinks into src following the revision's own pyproject `package-dir`. A process started with
PYTHONPATH=<shim> runs that revision's code on this interpreter's packages (torch, grpcio, ...), so the
baseline and the working tree differ only in fedstream's own code.
"""

from __future__ import annotations

import shutil
import subprocess
import tomllib
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ENVS = HERE / ".envs"
SUBJECT_CHARS = 60


@dataclass(frozen=True)
class Revision:
    """One prepared revision: what to call it in a table and the PYTHONPATH that imports it."""

    rev: str
    sha: str
    subject: str
    pythonpath: Path

    @property
    def label(self) -> str:
        return f"fedstream@{self.rev}"


def _git(*args: str) -> str:
    done = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise ValueError(f"git {' '.join(args)} failed in {REPO}: {done.stderr.strip()}")
    return done.stdout.strip()


def resolve(rev: str) -> str:
    """The full commit id of rev; raises ValueError naming rev when git does not know it."""
    try:
        return _git("rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}")
    except ValueError:
        raise ValueError(f"--baseline {rev!r} is not a commit in {REPO}; give a commit id, branch or HEAD~N") from None


def subpackage_dirs(pyproject: Path) -> dict[str, str]:
    """fedstream's direct subpackages and their folders, from the revision's [tool.setuptools] package-dir."""
    mapping = tomllib.loads(pyproject.read_text()).get("tool", {}).get("setuptools", {}).get("package-dir", {})
    out = {name.split(".", 1)[1]: folder for name, folder in mapping.items()
           if name.startswith("fedstream.") and name.count(".") == 1}
    if not out:
        raise ValueError(f"{pyproject} maps no fedstream.* package in [tool.setuptools] package-dir; "
                         "cannot build an import shim for this revision")
    return out


def prepare_revision(rev: str) -> Revision:
    """Exports rev (once per commit) and returns how to run it."""
    sha = resolve(rev)
    home = ENVS / f"rev-{sha[:12]}"
    src, shim = home / "src", home / "shim"
    marker = home / ".exported"
    if not (marker.exists() and marker.read_text().strip() == sha):
        shutil.rmtree(home, ignore_errors=True)
        src.mkdir(parents=True)
        archive = subprocess.Popen(["git", "-C", str(REPO), "archive", "--format=tar", sha], stdout=subprocess.PIPE)
        untar = subprocess.run(["tar", "-x", "-C", str(src)], stdin=archive.stdout, capture_output=True, text=True)
        archive.stdout.close()
        if archive.wait() != 0 or untar.returncode != 0:
            raise RuntimeError(f"exporting {rev} ({sha}) into {src} failed: {untar.stderr.strip()}")
        package = shim / "fedstream"
        package.mkdir(parents=True)
        (package / "__init__.py").write_text("")
        for name, folder in subpackage_dirs(src / "pyproject.toml").items():
            (package / name).symlink_to(src / folder, target_is_directory=True)
        marker.write_text(sha)
    return Revision(rev, sha, _git("log", "-1", "--format=%s", sha)[:SUBJECT_CHARS], shim)
