"""Weights & Biases logging as a Lightning logger (rank 0 only). Offline by default: runs land in
the run folder and can be uploaded later with ``wandb sync <run folder>/wandb/offline-run-*``.

:class:`FedvlmWandbLogger` is a ``lightning.pytorch.loggers.WandbLogger``, so one object serves
the Fabric round loop (``Fabric(loggers=[logger])`` then ``fabric.log_dict(metrics, step=round)``,
or ``logger.log_metrics(metrics, step=round)``) and a ``lightning.Trainer(logger=logger)``. What it
changes in Lightning's logger, and why:

* the step metric is ``round`` (``define_metric("*", step_metric="round")``) instead of
  ``trainer/global_step``: W&B charts then plot every metric against the round, and the value
  Fabric or the Trainer passes as ``step`` is logged under that name;
* per-client lists (``clients/<metric>``, one value per client) become one histogram per round
  (thousands of per-client scalars do not scale), non-finite and non-numeric values are left out;
* runs are grouped by experiment name and tagged with method, algorithm, dataset, partition, seed
  and the swept values (``num_clients=10``), so ``fedvlm dashboard`` (docs/WANDB.md) can group and
  filter baselines;
* :meth:`finish` writes the summary and ``final/results``, a one-row table of the run's final
  metrics: a table panel over a group concatenates those rows into the experiment's comparison
  table.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Literal, Mapping

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only

from fedvlm.paths import cache_root


class FedvlmWandbLogger(WandbLogger):
    """``mode``: ``offline`` or ``online`` (``logging.wandb: disabled`` means no W&B logger at all,
    :func:`fedvlm.tracking.loggers.build_loggers`). ``step_metric`` names the x axis of every chart:
    ``round`` in the federated loop; a Trainer passes its global step as ``step``."""

    def __init__(self, mode: Literal["offline", "online"], run_dir: Path, project: str, entity: str | None,
                 group: str, name: str, run_id: str, tags: list[str], config: dict, step_metric: str = "round"):
        _keep_wandb_files_in(run_dir)
        self.sweep_values = dict(config.get("sweep_values") or {})
        self.step_metric = step_metric
        tags = list(dict.fromkeys([*tags, *sweep_tags(self.sweep_values)]))
        # mode= rather than Lightning's offline=True, which sets WANDB_MODE for the whole process
        super().__init__(name=name, save_dir=str(run_dir), id=run_id, project=project, entity=entity, group=group,
                         tags=tags, config=config, mode=mode, reinit="finish_previous")
        self._wandb_init.pop("anonymous")  # Lightning always passes it; W&B warns that it has no effect

    @property
    @rank_zero_experiment
    def experiment(self):
        """The W&B run, started on first use. Lightning's own property would reuse any run already
        open in the process and define ``trainer/global_step`` as every chart's x axis; this one
        starts this logger's run and makes ``step_metric`` the x axis."""
        if self._experiment is None:
            import wandb

            attach_id = getattr(self, "_attach_id", None)  # set when a spawn launcher pickled the logger
            if attach_id is not None and hasattr(wandb, "_attach"):
                self._experiment = wandb._attach(attach_id)  # its metrics were defined by the parent
            else:
                self._experiment = wandb.init(**self._wandb_init)
                self._experiment.define_metric(self.step_metric)
                self._experiment.define_metric("*", step_metric=self.step_metric)
        return self._experiment

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        import wandb

        record = {}
        for key, value in metrics.items():
            if isinstance(value, (list, tuple)) and key.startswith("clients/"):
                present = [v for v in value if _is_finite_number(v)]
                if present:
                    record[key] = wandb.Histogram(present)
            elif _is_finite_number(value) or _is_media(value):
                record[key] = value
        if step is not None:
            record[self.step_metric] = step
        self.experiment.log(record)

    @property
    def directory(self) -> str:
        return self.experiment.dir

    @rank_zero_only
    def finish(self, summary: dict) -> None:
        """End the run: the summary's scalars, ``parameters/*`` and the ``final/results`` row."""
        run = self.experiment
        for key, value in summary.items():
            if isinstance(value, (int, float, str)):
                run.summary[key] = value
        for key, value in (summary.get("parameters") or {}).items():
            run.summary[f"parameters/{key}"] = value
        columns, row = final_row(summary, self.sweep_values)
        self.log_table("final/results", columns, [row])
        run.finish()


def _is_media(value: Any) -> bool:
    """A W&B object (table, histogram, image) or a list of them (Lightning's ``log_image`` logs one)."""
    from wandb.data_types import WBValue

    items = value if isinstance(value, (list, tuple)) else [value]
    return bool(items) and all(isinstance(item, WBValue) for item in items)


def _is_finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _keep_wandb_files_in(run_dir: Path) -> None:
    """W&B's own caches and settings under fedvlm's cache, its run files under the run folder."""
    os.environ.setdefault("WANDB_SILENT", "true")
    os.environ["WANDB_DIR"] = str(run_dir)
    cache = cache_root() / "wandb"
    os.environ.setdefault("WANDB_CACHE_DIR", str(cache))
    os.environ.setdefault("WANDB_CONFIG_DIR", str(cache / "config"))
    os.environ.setdefault("WANDB_DATA_DIR", str(cache / "data"))


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
