"""The run directory: metrics.jsonl (one object per round), model.safetensors and accuracy.png."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Mapping

import torch
from safetensors.torch import save_file

from fedstream.server.publication.record import to_json_line

log = logging.getLogger("fedstream.server")
PLOT_TIMEOUT_SECONDS = 120


class RunLog:
    def __init__(self, run_dir: Path) -> None:
        self.run_dir = Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.run_dir / "metrics.jsonl"

    def append(self, record: Mapping) -> None:
        with open(self.metrics_path, "a") as f:
            f.write(to_json_line(dict(record)))
            f.flush()
            os.fsync(f.fileno())

    def records(self) -> list[dict]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

    def truncate(self, completed_rounds: int) -> int:
        """Drops records of rounds after the checkpoint (a crash between the record and the checkpoint leaves
        one behind; the resumed run redoes that round and logs it again). Returns how many were dropped."""
        records = self.records()
        keep = [r for r in records if int(r.get("round", 0)) <= completed_rounds]
        if len(keep) == len(records):
            return 0
        tmp = self.metrics_path.with_name(".metrics.jsonl.tmp")
        tmp.write_text("".join(to_json_line(r) for r in keep))
        os.replace(tmp, self.metrics_path)
        return len(records) - len(keep)

    def write_model(self, state: Mapping[str, torch.Tensor]) -> Path:
        path = self.run_dir / "model.safetensors"
        tmp = path.with_name(".model.safetensors.tmp")
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp))
        os.replace(tmp, path)
        return path

    def plot(self) -> Path | None:
        """accuracy.png: eval accuracy and loss per round (None when no round completed)."""
        from fedstream.server.publication.accuracy_plot import plot_run

        return plot_run(self.run_dir)

    def plot_in_child(self) -> Path | None:
        """plot() in a short-lived child process: the server never imports matplotlib (+36 MB peak RSS)."""
        if not self.records():
            return None
        try:
            subprocess.run([sys.executable, "-m", "fedstream.server.publication.accuracy_plot", str(self.run_dir)], check=True,
                           timeout=PLOT_TIMEOUT_SECONDS, capture_output=True, text=True)
        except (OSError, subprocess.SubprocessError) as exc:
            detail = getattr(exc, "stderr", "") or ""
            log.warning("could not draw %s: %s %s", self.run_dir / "accuracy.png", exc, detail[-500:])
            return None
        return self.run_dir / "accuracy.png"
