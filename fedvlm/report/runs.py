"""Finished runs as tables: what every report, plot and notebook reads.

A run folder (``results/<experiment>/<run-id>/``, written by ``fedvlm run``) holds everything
needed: ``config.yaml`` (with ``sweep_values``, the keys its sweep set), ``metrics.jsonl`` (one line
per round), ``summary.json`` (the last round's metrics; only present once the run finished) and
``partition.csv`` (client x class image counts). Nothing here knows a method: rows, columns and
metrics all come from those files, so new heads, algorithms and datasets need no change.

Three frames, all plain pandas::

    runs_frame(runs)     one row per run: identity, final metrics, bytes, every config key
    history_frame(runs)  one row per (run, round): every scalar of metrics.jsonl
    client_frame(runs)   one row per (run, client): the final per-client primary metric

Each row carries ``method`` (the table row: ``<head>/<algorithm>``, plus any other swept
``head.*``/``algorithm.*`` key) and ``setting`` (the table column: the other swept keys), so a
table is a groupby away.
"""

from __future__ import annotations

import json
import math
import sys
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from fedvlm.errors import UserError

# Swept keys under these sections say *which method* a run is (table rows); all others say
# *under which setting* it ran (table columns).
METHOD_SECTIONS = ("head.", "algorithm.")
# When an experiment records no sweep, the columns are the keys of these sections that differ
# between its runs (e.g. `fedvlm run ... partition.num_clients=40` by hand).
SETTING_SECTIONS = ("partition.", "data.", "federation.")
_NOT_SETTINGS = ("data.root", "data.template")


@dataclass
class Run:
    """One run, as read from its folder (or from W&B, see :mod:`fedvlm.report.wandb_runs`)."""

    path: Path | None
    config: dict
    history: list[dict]
    summary: dict = field(default_factory=dict)
    partition: pd.DataFrame | None = None  # clients x classes image counts (train split)
    source: str = "folder"

    @property
    def experiment(self) -> str:
        return str(self.summary.get("experiment") or self.config.get("name") or "unnamed")

    @property
    def run_id(self) -> str:
        return str(self.summary.get("run_id") or (self.path.name if self.path else "?"))

    @property
    def seed(self) -> int:
        return int(self.summary.get("seed", self.config.get("seed", 0)))

    @property
    def finished(self) -> bool:
        """A run is finished when it wrote its summary (after the last round)."""
        return bool(self.summary)

    @property
    def final(self) -> dict:
        """The final metrics: the summary (the last round), else the last metrics line."""
        return self.summary or (self.history[-1] if self.history else {})

    @property
    def primary_metric(self) -> str:
        if self.summary.get("primary_metric"):
            return str(self.summary["primary_metric"])
        for key in self.final:
            if key.startswith("clients/"):
                return key.split("/", 1)[1]
        return "accuracy"

    @property
    def sweep_values(self) -> dict:
        return dict(self.config.get("sweep_values") or {})


# ------------------------------------------------------------------------------ reading


def is_run_folder(path: Path) -> bool:
    written = any((path / name).is_file() for name in ("metrics.jsonl", "summary.json"))
    return (path / "config.yaml").is_file() and written


def find_run_folders(results_dirs) -> list[Path]:
    """Every run folder under the given directories (or the folders themselves), sorted by path.
    W&B's own files (``wandb/.../files/config.yaml``) are not run folders."""
    folders: set[Path] = set()
    for directory in map(Path, results_dirs):
        if not directory.exists():
            raise UserError(f"report: results directory {directory} does not exist; expected the "
                            "logging.results_dir of your runs, e.g. results/")
        if is_run_folder(directory):
            folders.add(directory)
            continue
        for config in directory.rglob("config.yaml"):
            if "wandb" not in config.relative_to(directory).parts and is_run_folder(config.parent):
                folders.add(config.parent)
    return sorted(folders)


def _read_partition(path: Path) -> pd.DataFrame | None:
    """The client x class count table, or None (with a warning) when it is not one: a table
    written by an older fedvlm with unquoted class names containing commas, or cut short."""
    try:
        partition = pd.read_csv(path)
    except (pd.errors.ParserError, UnicodeDecodeError) as error:
        partition, problem = None, str(error).splitlines()[0]
    else:
        numeric = partition.apply(pd.to_numeric, errors="coerce")
        problem = None if not numeric.isna().to_numpy().any() else "cells that are not image counts"
        partition = numeric if problem is None else None
    if problem is not None:
        print(f"warning: {path}: {problem}; expected client x class image counts, the run is reported "
              "without its partition statistics", file=sys.stderr)
        return None
    partition.index.name = "client"
    return partition


def read_run(folder: Path) -> Run:
    folder = Path(folder)
    config = yaml.safe_load((folder / "config.yaml").read_text()) or {}
    history = []
    metrics_path = folder / "metrics.jsonl"
    if metrics_path.exists():
        for line in metrics_path.read_text().splitlines():
            if line.strip():
                try:
                    history.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut short by a kill mid-write
                    break
    summary_path = folder / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
    partition = None
    if (folder / "partition.csv").exists():
        partition = _read_partition(folder / "partition.csv")
    return Run(folder, config, history, summary, partition)


def load_runs(*results_dirs, include_unfinished: bool = True) -> list[Run]:
    """Read every run folder under ``results_dirs`` (run folders or directories holding them).
    Unreadable folders are skipped with a warning; unfinished runs (no summary.json) are kept
    unless ``include_unfinished=False`` (tables and plots of finals use finished runs only)."""
    if len(results_dirs) == 1 and isinstance(results_dirs[0], (list, tuple)):
        results_dirs = tuple(results_dirs[0])
    folders = find_run_folders(results_dirs)
    runs = []
    for folder in folders:
        try:
            run = read_run(folder)
        except (OSError, ValueError, yaml.YAMLError) as error:
            warnings.warn(f"skipping {folder}: {error}", stacklevel=2)
            continue
        if include_unfinished or run.finished:
            runs.append(run)
    return runs


# ------------------------------------------------------------------------------ identity


def flatten(config: dict, prefix: str = "") -> dict:
    """``{'partition': {'alpha': 0.5}}`` -> ``{'partition.alpha': 0.5}``; lists become tuples
    (hashable, so they can be grouped on)."""
    flat = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and key != "sweep_values":
            flat.update(flatten(value, name + "."))
        elif isinstance(value, list):
            flat[name] = tuple(value)
        elif key != "sweep_values":
            flat[name] = value
    return flat


def format_value(value) -> str:
    if isinstance(value, (list, tuple)):
        return "+".join(format_value(v) for v in value)
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return f"{value:g}"
    return str(value)


def short_key(key: str) -> str:
    """``partition.num_clients`` -> ``num_clients`` (the last part of a dotted key)."""
    return key.rsplit(".", 1)[-1]


def method_label(run: Run) -> str:
    """The table row of a run: ``<head>/<algorithm>`` and any other swept head/algorithm key."""
    head = (run.config.get("head") or {}).get("name") or run.summary.get("method", "?")
    algorithm = (run.config.get("algorithm") or {}).get("name") or run.summary.get("algorithm", "?")
    extra = [f"{short_key(k)}={format_value(v)}" for k, v in run.sweep_values.items()
             if k.startswith(METHOD_SECTIONS) and k not in ("head.name", "algorithm.name")]
    return " ".join([f"{head}/{algorithm}", *extra])


def setting_keys(runs: list[Run]) -> list[str]:
    """The keys that make the table's columns: the swept keys that are not part of the method;
    if nothing was swept, the partition/data/federation keys that differ between runs."""
    keys: list[str] = []
    for run in runs:
        for key in run.sweep_values:
            if not key.startswith(METHOD_SECTIONS) and key not in keys:
                keys.append(key)
    if keys:
        return keys
    flats = [flatten(r.config) for r in runs]
    candidates = sorted({k for f in flats for k in f if k.startswith(SETTING_SECTIONS) and k not in _NOT_SETTINGS})
    return [k for k in candidates if len({repr(f.get(k)) for f in flats}) > 1]


def setting_label(values: dict) -> str:
    """``{'partition.num_clients': 5}`` -> ``num_clients=5``; ``{}`` -> ``final``."""
    if not values:
        return "final"
    return ", ".join(f"{short_key(k)}={format_value(v)}" for k, v in values.items())


# ------------------------------------------------------------------------------ frames


def _finite(value) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        return float("nan")
    return value if math.isfinite(value) else float("nan")


def metric_names(final: dict) -> list[str]:
    """The reported metric keys of a run: ``global/<m>`` and ``personalized/mean_<m>``."""
    return [k for k in final if (k.startswith("global/") or k.startswith("personalized/mean_"))
            and not isinstance(final[k], (list, dict))]


def runs_frame(runs: list[Run], settings: list[str] | None = None) -> pd.DataFrame:
    """One row per run: identity, ``method`` and ``setting`` (row and column of the tables),
    final metrics (``global/<m>``, ``personalized/mean_<m>``, ``personalized/{min,max,std}_<m>``),
    communication (``uploaded_bytes``, ``downloaded_bytes``, ``total_bytes``), parameter counts,
    and every config key as a dotted column (``partition.alpha``, ``head.n_ctx``, ...).

    ``settings`` (default: :func:`setting_keys` of each experiment's runs) are the column keys.
    """
    by_experiment: dict[str, list[Run]] = {}
    for run in runs:
        by_experiment.setdefault(run.experiment, []).append(run)
    rows = []
    for experiment, members in by_experiment.items():
        keys = settings if settings is not None else setting_keys(members)
        for run in members:
            flat = flatten(run.config)
            final = run.final
            values = {k: flat.get(k, run.sweep_values.get(k)) for k in keys}
            parameters = run.summary.get("parameters") or {}
            row = {
                "experiment": experiment, "run_id": run.run_id, "seed": run.seed,
                "dataset": (run.config.get("data") or {}).get("dataset", run.summary.get("dataset")),
                "head": (run.config.get("head") or {}).get("name", run.summary.get("method")),
                "algorithm": (run.config.get("algorithm") or {}).get("name", run.summary.get("algorithm")),
                "method": method_label(run), "setting": setting_label(values),
                "setting_keys": tuple(keys), "setting_values": tuple(values[k] for k in keys),
                "finished": run.finished, "rounds_done": int(final.get("round", len(run.history)) or 0),
                "primary_metric": run.primary_metric,
                "num_clients": run.summary.get("num_clients", flat.get("partition.num_clients")),
                "partition": (run.config.get("partition") or {}).get("name"),
                "uploaded_bytes": _finite(final.get("uploaded_bytes", 0)),
                "downloaded_bytes": _finite(final.get("downloaded_bytes", 0)),
                "shared_per_client": parameters.get("shared_per_client"),
                "trainable_per_client": parameters.get("trainable_per_client"),
                "wall_time_s": run.summary.get("wall_time_s"),
                "run_dir": str(run.path) if run.path else None, "source": run.source,
            }
            row["total_bytes"] = row["uploaded_bytes"] + row["downloaded_bytes"]
            for key in final:
                if key.startswith(("global/", "personalized/")) and not isinstance(final[key], (list, dict)):
                    row[key] = _finite(final[key])
            for key, value in flat.items():
                row.setdefault(key, value)
            rows.append(row)
    return pd.DataFrame(rows)


def history_frame(runs: list[Run], frame: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (run, round): identity columns of :func:`runs_frame` plus every scalar of
    that round's metrics line (metrics a round did not evaluate are NaN)."""
    frame = runs_frame(runs) if frame is None else frame
    identity = frame.set_index("run_id")[["experiment", "seed", "method", "setting", "dataset"]].to_dict("index")
    rows = []
    for run in runs:
        if run.run_id not in identity:
            continue
        for line in run.history:
            row = {"run_id": run.run_id, **identity[run.run_id]}
            row.update({k: _finite(v) for k, v in line.items() if not isinstance(v, (list, dict))})
            rows.append(row)
    history = pd.DataFrame(rows)
    if not history.empty:
        history["total_bytes"] = history.get("uploaded_bytes", 0) + history.get("downloaded_bytes", 0)
    return history


def client_frame(runs: list[Run], frame: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per (run, client): the final per-client value of the primary metric
    (``clients/<primary>``) and the client's training images from partition.csv when known
    (for multi-label data, the sum of its per-class counts: labels rather than images)."""
    frame = runs_frame(runs) if frame is None else frame
    identity = frame.set_index("run_id")[["experiment", "seed", "method", "setting"]].to_dict("index")
    rows = []
    for run in runs:
        values = run.final.get(f"clients/{run.primary_metric}")
        if run.run_id not in identity or not isinstance(values, list):
            continue
        sizes = run.partition.sum(axis=1).to_numpy() if run.partition is not None else None
        ids = run.final.get("eval/clients") or range(len(values))  # eval.clients: a sample, not every client
        for client, value in zip(ids, values):
            rows.append({"run_id": run.run_id, **identity[run.run_id], "client": client,
                         "metric": run.primary_metric, "value": _finite(value),
                         "train_images": int(sizes[client]) if sizes is not None and client < len(sizes) else np.nan})
    return pd.DataFrame(rows, columns=["run_id", "experiment", "seed", "method", "setting", "client", "metric",
                                       "value", "train_images"])
