"""Markdown tables of finished multi-label runs: one row per method (or per swept value), one
column group per swept value, mAP / CF1 / OF1 of the global model (in %), mean over seeds.

    python scripts/multilabel_tables.py results/synthetic_multilabel_heterogeneity \\
        --rows head.name --columns partition.num_clients

Reads every run folder's config.yaml (its sweep values and seed) and summary.json (final metrics).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import yaml

METRICS = ("mAP", "CF1", "OF1")


def load_runs(folder: Path) -> list[dict]:
    runs = []
    for summary_file in sorted(folder.glob("*/summary.json")):
        config = yaml.safe_load((summary_file.parent / "config.yaml").read_text())
        summary = json.loads(summary_file.read_text())
        runs.append({"sweep": {k: json.dumps(v) if isinstance(v, list) else v
                               for k, v in flatten(config.get("sweep_values", {})).items()},
                     "seed": config["seed"], **{m: summary.get(f"global/{m}") for m in METRICS}})
    return runs


def flatten(values: dict, prefix: str = "") -> dict:
    """``{"head": {"name": "maple"}}`` (a swept section) -> ``{"head.name": "maple"}``."""
    flat = {}
    for key, value in values.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def table(runs: list[dict], rows: str, columns: str | None) -> str:
    cells: dict = defaultdict(list)
    row_keys, column_keys = [], []
    for run in runs:
        row, column = run["sweep"].get(rows), run["sweep"].get(columns) if columns else ""
        row_keys += [row] if row not in row_keys else []
        column_keys += [column] if column not in column_keys else []
        cells[row, column].append([run[m] for m in METRICS])
    average = columns is not None and len(column_keys) > 1
    header = f"| {rows} | " + " | ".join(f"{columns}={c} mAP / CF1 / OF1" if columns else "mAP / CF1 / OF1"
                                         for c in column_keys) + (" | Avg |" if average else " |") + " seeds |"
    lines = [header, "|---" * (len(column_keys) + 2 + average) + "|"]
    for row in row_keys:
        values, means, seeds = [], [], set()
        for column in column_keys:
            found = cells.get((row, column))
            if not found:
                values.append("-")
                continue
            mean = 100 * np.nanmean(np.asarray(found, dtype=float), axis=0)
            means.append(mean)
            values.append(" / ".join(f"{v:.1f}" for v in mean))
            seeds.add(len(found))
        if average:  # the mean over the swept values (the papers' "Avg" column)
            values.append(" / ".join(f"{v:.1f}" for v in np.mean(means, axis=0)) if len(means) == len(column_keys)
                          else "-")
        lines.append(f"| {row} | " + " | ".join(values) + f" | {','.join(map(str, sorted(seeds)))} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path, help="results/<experiment name>")
    parser.add_argument("--rows", default="head.name")
    parser.add_argument("--columns", default=None)
    args = parser.parse_args(argv)
    print(table(load_runs(args.folder), args.rows, args.columns))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
