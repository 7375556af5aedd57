"""One markdown row per experiment: the last-round metrics of its runs, mean ± sample std over seeds.

    python scripts/seed_table.py RESULTS_DIR [METRIC ...]
    (default metrics: personalized/mean_accuracy global/accuracy; e.g. global/mAP, global/mR)

Reads every ``RESULTS_DIR/<experiment>/<run>/summary.json``; a metric in [0, 1] is shown in %. The
experiment's runs are grouped by its name and, for sweeps, by its swept values.
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import yaml


def cell(values: list[float]) -> str:
    scale = 100 if all(0 <= v <= 1 for v in values) else 1
    values = [scale * v for v in values]
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def main(argv: list[str]) -> int:
    root, metrics = Path(argv[0]), argv[1:] or ["personalized/mean_accuracy", "global/accuracy"]
    groups: dict[str, list[dict]] = {}
    for path in sorted(root.glob("*/*/summary.json")):
        summary = json.loads(path.read_text())
        config = yaml.safe_load((path.parent / "config.yaml").read_text()) if (path.parent / "config.yaml").is_file() else {}
        swept = config.get("sweep_values") or {}
        key = summary["experiment"] + "".join(f" {k}={v}" for k, v in sorted(swept.items()))
        groups.setdefault(key, []).append(summary)
    print("| experiment | seeds | " + " | ".join(metrics) + " |")
    print("|---|---|" + "---|" * len(metrics))
    for key, runs in sorted(groups.items()):
        seeds = ",".join(str(r["seed"]) for r in sorted(runs, key=lambda r: r["seed"]))
        cells = [cell([r[m] for r in runs if m in r]) if any(m in r for r in runs) else "-" for m in metrics]
        print(f"| `{key}` | {seeds} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
