"""Markdown tables of finished ``fedvlm patch`` runs over seeds: the PAINT end points and the
alignment variants, mean ± sample standard deviation (ddof = 1, as ``fedvlm report``) in %.

    python scripts/patching_tables.py results/issue6/synthetic_alignment_variants

Reads every run folder's results.json (written by the pipeline) and its config.yaml (the seed).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import numpy as np
import yaml


def load_runs(folder: Path) -> list[dict]:
    runs = []
    for results_file in sorted(folder.glob("*/results.json")):
        config = yaml.safe_load((results_file.parent / "config.yaml").read_text())
        runs.append({"seed": config["seed"], **json.loads(results_file.read_text())})
    return runs


def cell(values: list[float]) -> str:
    values = 100 * np.asarray(values, dtype=float)
    spread = f" ± {values.std(ddof=1):.2f}" if len(values) > 1 else ""
    return f"{values.mean():.2f}{spread}"


def paint_table(runs: list[dict]) -> str:
    lines = ["| model | alpha | patching test mAP | supported test accuracy |", "|---|---|---|---|"]
    for label, key in [("zero-shot CLIP", "zero_shot"), ("patched (alpha chosen on validation)", "patched"),
                       ("fine-tuned", "fine_tuned")]:
        alphas = ", ".join(f"{run[key]['alpha']:.1f}" for run in runs)
        lines.append(f"| {label} | {alphas} | {cell([run[key]['patch/test/mAP'] for run in runs])} | "
                     f"{cell([run[key]['supported/test/accuracy'] for run in runs])} |")
    return "\n".join(lines)


def alignment_table(runs: list[dict]) -> str:
    rows: dict = defaultdict(list)
    for run in runs:
        for entry in run.get("alignment", []):
            rows[entry["teacher"], entry["loss"]].append(entry)
    lines = ["| teacher | loss | student zero-shot mAP | teacher (RGB) mAP | RGB->MS R@1 / 10 | MS->RGB R@1 / 10 | mR "
             "| seeds |", "|---|---|---|---|---|---|---|---|"]
    for (teacher, loss), entries in rows.items():
        retrieval = lambda key: [e["retrieval"][key] for e in entries]  # noqa: E731
        lines.append(f"| {teacher} | {loss} | {cell([e['student']['mAP'] for e in entries])} | "
                     f"{cell([e['teacher_rgb']['mAP'] for e in entries])} | "
                     f"{cell(retrieval('rgb_to_ms_R@1'))} / {cell(retrieval('rgb_to_ms_R@10'))} | "
                     f"{cell(retrieval('ms_to_rgb_R@1'))} / {cell(retrieval('ms_to_rgb_R@10'))} | "
                     f"{cell(retrieval('mR'))} | {len(entries)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path, help="results/<experiment name> of fedvlm patch runs")
    args = parser.parse_args(argv)
    runs = load_runs(args.folder)
    if not runs:
        raise SystemExit(f"error: {args.folder}: no run folder with a results.json")
    print(f"seeds: {', '.join(str(run['seed']) for run in runs)}\n")
    print(paint_table(runs), "\n")
    print(alignment_table(runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
