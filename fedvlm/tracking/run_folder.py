"""The run folder every run writes, whatever else is configured::

    results/<experiment>/<run-id>/
        config.yaml          the full validated config
        metrics.jsonl        one JSON line per round
        summary.json         final metrics, communication, parameter counts, wall time
        partition.csv/.png   client x class image counts (train split)
        checkpoints/last.pt  everything needed to resume (written atomically)
        wandb/               the W&B run (offline by default)
"""

from __future__ import annotations

import json
import math
import os
import secrets
import time
from pathlib import Path

import torch
import yaml

from fedvlm.errors import ConfigError


def new_run_id(seed: int) -> str:
    """Timestamp, seed and a random tag: runs started in the same second by one process (a sweep) stay apart.

    The tag comes from the OS entropy pool, never from the seeded generators, so it changes no result.
    """
    return time.strftime("%Y%m%d-%H%M%S") + f"-s{seed}-{secrets.token_hex(3)}"


def _json_safe(value):
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


class RunFolder:
    def __init__(self, path: Path):
        self.path = Path(path)

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoints" / "last.pt"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @classmethod
    def create(cls, results_dir: str | Path, experiment: str, run_id: str) -> "RunFolder":
        folder = cls(Path(results_dir) / experiment / run_id)
        folder.path.mkdir(parents=True, exist_ok=False)  # never write into another run's folder
        (folder.path / "checkpoints").mkdir()
        return folder

    @classmethod
    def for_resume(cls, results_dir: str | Path, experiment: str, resume: bool | str) -> "RunFolder":
        """The run to continue: the given folder, or the newest unfinished run of the experiment."""
        if isinstance(resume, str):
            folder = cls(Path(resume))
            if not folder.checkpoint_path.exists():
                raise ConfigError(f"resume: {folder.path} has no checkpoint ({folder.checkpoint_path}); expected a "
                                  "run folder written by fedvlm run")
            return folder
        runs = sorted((p for p in (Path(results_dir) / experiment).glob("*") if (p / "checkpoints" / "last.pt").exists()),
                      key=lambda p: p.stat().st_mtime)
        unfinished = [p for p in runs if not (p / "summary.json").exists()]
        if not unfinished:
            raise ConfigError(f"resume: no unfinished run of {experiment} with a checkpoint under "
                              f"{Path(results_dir) / experiment}; expected a run killed before its last round")
        return cls(unfinished[-1])

    # ---------------------------------------------------------------------------- files

    def write_config(self, config: dict) -> None:
        (self.path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))

    def read_config(self) -> dict:
        return yaml.safe_load((self.path / "config.yaml").read_text())

    def append_metrics(self, metrics: dict) -> None:
        with self.metrics_path.open("a") as stream:
            stream.write(json.dumps(_json_safe(metrics)) + "\n")

    def read_metrics(self) -> list[dict]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

    def keep_metrics_through(self, completed_rounds: int) -> None:
        """Drop lines of rounds a resumed run will redo (written after the last checkpoint).
        A line's ``round`` counts the rounds completed when it was written."""
        kept = [m for m in self.read_metrics() if m.get("round", -1) <= completed_rounds]
        self.metrics_path.write_text("".join(json.dumps(m) + "\n" for m in kept))

    def write_summary(self, summary: dict) -> None:
        self.summary_path.write_text(json.dumps(_json_safe(summary), indent=2) + "\n")

    def save_checkpoint(self, state: dict) -> None:
        """Write to a temporary file and rename: a kill mid-write leaves the previous checkpoint."""
        self.checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.checkpoint_path.with_suffix(".tmp")
        torch.save(state, temporary)
        os.replace(temporary, self.checkpoint_path)

    def load_checkpoint(self) -> dict:
        return torch.load(self.checkpoint_path, map_location="cpu", weights_only=False)
