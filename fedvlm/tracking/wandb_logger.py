"""Weights & Biases logging (rank 0 only). Offline by default: runs land in the run folder and can
be uploaded later with ``wandb sync <run folder>/wandb/offline-run-*``.

Runs are grouped by experiment name and tagged with method, dataset, partition and seed, so a
dashboard can group and filter baselines. Per-round scalars use ``round`` as their step; per-client
results go in as histograms and tables (thousands of per-client scalars do not scale).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


class WandbLogger:
    def __init__(self, mode: str, run_dir: Path, project: str, entity: str | None, group: str, name: str,
                 run_id: str, tags: list[str], config: dict):
        self.run = None
        if mode == "disabled":
            return
        os.environ["WANDB_MODE"] = mode
        os.environ.setdefault("WANDB_SILENT", "true")
        os.environ["WANDB_DIR"] = str(run_dir)
        cache = Path(os.environ.get("FEDVLM_CACHE") or Path.home() / ".cache" / "fedvlm") / "wandb"
        os.environ.setdefault("WANDB_CACHE_DIR", str(cache))
        os.environ.setdefault("WANDB_CONFIG_DIR", str(cache / "config"))
        os.environ.setdefault("WANDB_DATA_DIR", str(cache / "data"))
        import wandb

        self.wandb = wandb
        self.run = wandb.init(project=project, entity=entity, group=group, name=name, id=run_id, tags=tags,
                              config=config, dir=str(run_dir), resume="allow", reinit="finish_previous")
        self.run.define_metric("round")
        self.run.define_metric("*", step_metric="round")

    @property
    def directory(self) -> str | None:
        return self.run.dir if self.run is not None else None

    def log(self, metrics: dict) -> None:
        if self.run is not None:
            self.run.log({k: v for k, v in metrics.items() if isinstance(v, (int, float)) and v == v})

    def log_histogram(self, round_index: int, key: str, values: np.ndarray) -> None:
        """Per-client values (one per client) as a histogram at this round."""
        if self.run is None:
            return
        valid = values[~np.isnan(values)]
        if valid.size:
            self.run.log({"round": round_index, key: self.wandb.Histogram(valid)})

    def log_table(self, key: str, columns: list[str], rows: list[list]) -> None:
        if self.run is not None:
            self.run.log({key: self.wandb.Table(columns=columns, data=rows)})

    def log_image(self, key: str, path: Path) -> None:
        if self.run is not None:
            self.run.log({key: self.wandb.Image(str(path))})

    def finish(self, summary: dict) -> None:
        if self.run is None:
            return
        for key, value in summary.items():
            if isinstance(value, (int, float, str)):
                self.run.summary[key] = value
        self.run.finish()
