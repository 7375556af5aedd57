"""The Lightning loggers a run feeds, one per name in ``logging.backends`` (rank 0 only).

==============  ===========================================================  ==========================
backend         logger                                                       writes
==============  ===========================================================  ==========================
``wandb``       :class:`~fedvlm.tracking.wandb_logger.FedvlmWandbLogger`      ``<run>/wandb/`` (offline)
``csv``         :class:`ScalarCSVLogger` (Lightning's ``CSVLogger``)           ``<run>/csv/metrics.csv``
``tensorboard`` :class:`ScalarTensorBoardLogger` (``TensorBoardLogger``)      ``<run>/tensorboard/``
==============  ===========================================================  ==========================

Each round the loop logs its metrics line with ``logger.log_metrics(line, step=round)``, what
``fabric.log_dict(line, step=round)`` does for the loggers a Fabric holds: the step of every row
or event is the round. The CSV and TensorBoard loggers take the finite scalars only: per-client
lists (histograms), tables and images go to W&B alone. ``metrics.jsonl`` stays the complete record;
a resumed run rebuilds ``csv/`` and ``tensorboard/`` from the checkpoint's lines (:func:`replay`),
so they hold the rounds ``metrics.jsonl`` holds.
"""

from __future__ import annotations

import importlib.util
import math
import shutil
from pathlib import Path
from typing import Any, Mapping

from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger

from fedvlm.errors import UserError
from fedvlm.tracking.wandb_logger import FedvlmWandbLogger



def scalars(metrics: Mapping[str, Any]) -> dict[str, float]:
    """The finite numbers of a metrics line (a CSV cell or TensorBoard scalar holds one number)."""
    return {key: value for key, value in metrics.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}


class ScalarCSVLogger(CSVLogger):
    """Lightning's CSV logger fed scalars only, written out every round (a killed run keeps the
    rounds it logged; Lightning's default buffers 100 steps)."""

    def __init__(self, run_dir: Path):
        super().__init__(save_dir=str(run_dir), name="csv", version="", flush_logs_every_n_steps=1)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        super().log_metrics(scalars(metrics), step)


class ScalarTensorBoardLogger(TensorBoardLogger):
    """Lightning's TensorBoard logger fed scalars only, flushed every round (the writer otherwise
    holds events for up to two minutes)."""

    def __init__(self, run_dir: Path):
        super().__init__(save_dir=str(run_dir), name="tensorboard", version="", default_hp_metric=False)

    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        super().log_metrics(scalars(metrics), step)
        self.experiment.flush()


def check_installed(backends: list[str]) -> None:
    """One line naming the extra to install when a backend's package is missing (checked before
    a run loads any data). wandb and csv need only core dependencies; Lightning's TensorBoard
    logger writes with tensorboard or tensorboardX."""
    if "tensorboard" in backends and not (importlib.util.find_spec("tensorboard")
                                          or importlib.util.find_spec("tensorboardX")):
        raise UserError("logging.backends: tensorboard needs the tensorboard package; "
                        "install fedvlm's [tensorboard] extra: pip install -e '.[tensorboard]'")


def build_loggers(backends: list[str], wandb_mode: str, run_dir: Path, *, project: str, entity: str | None,
                  group: str, name: str, run_id: str, tags: list[str], config: dict,
                  resumed: bool = False) -> list[Logger]:
    """The loggers of ``backends``, in that order, writing under ``run_dir``. ``wandb`` with
    ``wandb_mode == 'disabled'`` gives no W&B logger at all. A resumed run starts ``csv/`` and
    ``tensorboard/`` afresh; :func:`replay` refills them."""
    check_installed(backends)
    loggers: list[Logger] = []
    for backend in backends:
        if backend == "wandb" and wandb_mode != "disabled":
            loggers.append(FedvlmWandbLogger(wandb_mode, run_dir, project, entity, group=group, name=name,
                                             run_id=run_id, tags=tags, config=config))
        elif backend in ("csv", "tensorboard"):
            if resumed:
                shutil.rmtree(run_dir / backend, ignore_errors=True)
            loggers.append(ScalarCSVLogger(run_dir) if backend == "csv" else ScalarTensorBoardLogger(run_dir))
    return loggers


def log_round(loggers: list[Logger], line: Mapping[str, Any]) -> None:
    """One metrics line to every logger, its step the line's round."""
    for logger in loggers:
        logger.log_metrics(line, step=line["round"])


def replay(loggers: list[Logger], history: list[dict]) -> None:
    """A resumed run's checkpointed lines to its file loggers (W&B logs them to the first run)."""
    for logger in loggers:
        if not isinstance(logger, FedvlmWandbLogger):
            for line in history:
                logger.log_metrics(line, step=line["round"])


def finish(loggers: list[Logger], summary: dict) -> None:
    """End every logger: W&B gets the summary and the final table; the others flush and close."""
    for logger in loggers:
        if isinstance(logger, FedvlmWandbLogger):
            logger.finish(summary)
        else:
            logger.finalize("success")
