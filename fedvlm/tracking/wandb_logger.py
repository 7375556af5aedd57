"""Weights & Biases logging (rank 0 only). Offline by default: runs land in the run folder and can
be uploaded later with ``wandb sync <run folder>/wandb/offline-run-*``.

Runs are grouped by experiment name and tagged with method, algorithm, dataset, partition, seed
and the swept values (``num_clients=10``), so a dashboard can group and filter baselines (recipe:
docs/WANDB.md). Per-round scalars use ``round`` as their step; per-client results go in as
histograms and tables (thousands of per-client scalars do not scale). At the end every run logs
``final/results``, a one-row table of its final metrics: a table panel over a group concatenates
those rows into the comparison table of that experiment.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from fedvlm.paths import cache_root


class WandbLogger:
    def __init__(self, mode: str, run_dir: Path, project: str, entity: str | None, group: str, name: str,
                 run_id: str, tags: list[str], config: dict):
        self.run = None
        if mode == "disabled":
            return
        os.environ["WANDB_MODE"] = mode
        os.environ.setdefault("WANDB_SILENT", "true")
        os.environ["WANDB_DIR"] = str(run_dir)
        cache = cache_root() / "wandb"
        os.environ.setdefault("WANDB_CACHE_DIR", str(cache))
        os.environ.setdefault("WANDB_CONFIG_DIR", str(cache / "config"))
        os.environ.setdefault("WANDB_DATA_DIR", str(cache / "data"))
        import wandb

        self.wandb = wandb
        self.sweep_values = dict(config.get("sweep_values") or {})
        tags = list(dict.fromkeys([*tags, *sweep_tags(self.sweep_values)]))
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
        for key, value in (summary.get("parameters") or {}).items():
            self.run.summary[f"parameters/{key}"] = value
        columns, row = final_row(summary, self.sweep_values)
        self.log_table("final/results", columns, [row])
        self.run.finish()


def sweep_tags(sweep_values: dict) -> list[str]:
    """``{'partition.num_clients': 10}`` -> ``['num_clients=10']`` (W&B tags are at most 64 characters)."""
    tags = []
    for key, value in sweep_values.items():
        text = "+".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)
        tags.append(f"{key.rsplit('.', 1)[-1]}={text}"[:64])
    return tags


def final_row(summary: dict, sweep_values: dict) -> tuple[list[str], list]:
    """The columns and the one row of ``final/results``: identity, swept values, every final
    global and personalized scalar, the bytes moved."""
    identity = ["experiment", "run_id", "method", "algorithm", "dataset", "num_clients", "seed"]
    metrics = [k for k, v in summary.items() if k.startswith(("global/", "personalized/"))
               and isinstance(v, (int, float)) and not isinstance(v, bool)]
    columns = [*identity, *sweep_values, *metrics, "uploaded_bytes", "downloaded_bytes"]
    row = [summary.get(k) for k in identity]
    row += ["+".join(map(str, v)) if isinstance(v, (list, tuple)) else v for v in sweep_values.values()]
    row += [summary.get(k) for k in metrics] + [summary.get("uploaded_bytes", 0), summary.get("downloaded_bytes", 0)]
    return columns, row
