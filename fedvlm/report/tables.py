"""Comparison tables in the layout of the papers' tables: one row per method, one column per
swept setting (number of clients, t, Mask, alpha, ...), each cell the mean ± std over seeds of the
*final* metric (the last round's, never the best round's).

Conventions (also in docs/REPORT.md):

- values are percentages (metrics in [0, 1] are multiplied by 100), two decimals;
- std is the sample standard deviation over seeds (``ddof=1``); with one seed there is no
  spread: the cell shows the mean alone and the CSV's ``std`` is empty;
- when one setting of one method was run twice with the same seed, the newest run counts.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from fedvlm.report.runs import format_value, short_key


def latest_runs(frame: pd.DataFrame) -> pd.DataFrame:
    """Finished runs, one per (experiment, method, setting, seed): the newest (run ids start
    with their start time) when a setting was repeated."""
    finished = frame[frame["finished"]] if "finished" in frame else frame
    return finished.sort_values("run_id").drop_duplicates(["experiment", "method", "setting", "seed"], keep="last")


def table_metrics(frame: pd.DataFrame) -> list[str]:
    """The metrics a table reports, primary first, global before personalized:
    ``global/<m>`` and ``personalized/mean_<m>`` columns holding at least one value."""
    present = [c for c in frame.columns if (c.startswith("global/") or c.startswith("personalized/mean_"))
               and frame[c].notna().any()]
    primaries = list(dict.fromkeys(frame["primary_metric"].dropna())) if "primary_metric" in frame else []

    def order(column: str):
        name = column.split("/", 1)[1].removeprefix("mean_")
        rank = primaries.index(name) if name in primaries else len(primaries)
        return (rank, name, 0 if column.startswith("global/") else 1)

    return sorted(present, key=order)


def metric_title(column: str) -> str:
    """``personalized/mean_accuracy`` -> ``personalized accuracy`` (mean over clients)."""
    scope, name = column.split("/", 1)
    return f"{scope} {name.removeprefix('mean_')}"


def as_percent(values: pd.Series) -> bool:
    finite = values.dropna()
    return bool(len(finite)) and bool(((finite >= 0) & (finite <= 1)).all())


def _sort_key(value):
    """Numbers in numeric order, then everything else by its text."""
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return (0, float(value), "")
    return (1, 0.0, format_value(value))


def setting_order(frame: pd.DataFrame) -> list[str]:
    pairs = frame[["setting", "setting_values"]].drop_duplicates("setting")
    return [s for s, _ in sorted(zip(pairs["setting"], pairs["setting_values"]),
                                 key=lambda p: tuple(_sort_key(v) for v in p[1]))]


def method_order(frame: pd.DataFrame) -> list[str]:
    """Methods in the order they first ran (the order the sweep lists them)."""
    return list(dict.fromkeys(frame.sort_values("run_id")["method"]))


def seed_statistics(frame: pd.DataFrame, metric: str, by=("method", "setting")) -> pd.DataFrame:
    """Mean, std (ddof=1; NaN for one seed), number of seeds and the seeds of ``metric`` per
    group of ``by`` (finished runs, newest per seed). Values stay in the metric's own units."""
    runs = latest_runs(frame)
    runs = runs[runs[metric].notna()] if metric in runs else runs.iloc[0:0]
    rows = []
    for key, group in runs.groupby(list(by), sort=False):
        values = group[metric].to_numpy(dtype=float)
        rows.append({**dict(zip(by, key if isinstance(key, tuple) else (key,))), "metric": metric,
                     "mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else np.nan,
                     "n_seeds": len(values), "seeds": " ".join(str(s) for s in sorted(group["seed"]))})
    return pd.DataFrame(rows, columns=[*by, "metric", "mean", "std", "n_seeds", "seeds"])


def comparison_table(frame: pd.DataFrame, metrics: list[str] | None = None) -> pd.DataFrame:
    """Long table of one experiment (or any group of runs sharing ``method``/``setting``
    meanings): one row per (metric, method, setting) with ``mean``, ``std``, ``n_seeds``,
    ``seeds``, the setting's key values, and ``scale`` (100 when shown as a percentage)."""
    metrics = table_metrics(frame) if metrics is None else metrics
    keys = list(frame["setting_keys"].iloc[0]) if len(frame) else []
    parts = []
    for metric in metrics:
        stats = seed_statistics(frame, metric)
        if stats.empty:
            continue
        scale = 100.0 if as_percent(frame[metric]) else 1.0
        stats["mean"] *= scale
        stats["std"] *= scale
        stats["scale"] = scale
        parts.append(stats)
    if not parts:
        return pd.DataFrame(columns=["metric", "method", "setting", *keys, "mean", "std", "n_seeds", "seeds", "scale"])
    table = pd.concat(parts, ignore_index=True)
    values = frame.drop_duplicates("setting").set_index("setting")["setting_values"]
    for i, key in enumerate(keys):
        table[key] = [values[s][i] for s in table["setting"]]
    return table[["metric", "method", "setting", *keys, "mean", "std", "n_seeds", "seeds", "scale"]]


def format_cell(mean: float, std: float, decimals: int = 2) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if std is None or (isinstance(std, float) and math.isnan(std)):
        return f"{mean:.{decimals}f}"
    return f"{mean:.{decimals}f} ± {std:.{decimals}f}"


def wide_table(table: pd.DataFrame, metric: str, methods: list[str] | None = None,
               settings: list[str] | None = None) -> pd.DataFrame:
    """The paper layout of one metric: index = method, columns = settings, cells "mean ± std"."""
    part = table[table["metric"] == metric]
    present = set(part["method"])
    methods = [m for m in (methods or dict.fromkeys(part["method"])) if m in present]  # rows without a value go
    settings = settings or list(dict.fromkeys(part["setting"]))
    cells = {(r.method, r.setting): format_cell(r.mean, r.std) for r in part.itertuples()}
    wide = pd.DataFrame([[cells.get((m, s), "–") for s in settings] for m in methods], index=methods,
                        columns=settings)
    wide.index.name = "method"
    return wide


def metrics_table(table: pd.DataFrame, methods: list[str] | None = None) -> pd.DataFrame:
    """For experiments without a swept setting: index = method, one column per metric (the
    layout of an ablation table)."""
    metrics = list(dict.fromkeys(table["metric"]))
    methods = methods or list(dict.fromkeys(table["method"]))
    cells = {(r.method, r.metric): format_cell(r.mean, r.std) for r in table.itertuples()}
    wide = pd.DataFrame([[cells.get((m, k), "–") for k in metrics] for m in methods], index=methods,
                        columns=[metric_title(k) for k in metrics])
    wide.index.name = "method"
    return wide


def column_headers(table: pd.DataFrame, keys: list[str]) -> dict[str, str]:
    """Setting label -> column header: the bare value when one key is swept (``num_clients=5``
    -> ``5``, the key goes in the table's corner), else the label itself."""
    if len(keys) != 1:
        return {}
    return {s: format_value(v) for s, v in zip(table["setting"], table[keys[0]])}


def _markdown(wide: pd.DataFrame, corner: str, bold_best: bool = True) -> str:
    """A GitHub markdown table; the best mean of each column in bold (higher is better)."""
    header = [corner, *[str(c) for c in wide.columns]]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + [":-:"] * len(wide.columns)) + "|"]
    best = {}
    if bold_best:
        for column in wide.columns:
            means = [float(cell.split(" ")[0]) if cell not in ("–", "") else -math.inf for cell in wide[column]]
            if means and max(means) > -math.inf and len(wide) > 1:
                best[column] = max(means)
    for method, row in wide.iterrows():
        cells = []
        for column, cell in row.items():
            is_best = column in best and cell not in ("–", "") and float(cell.split(" ")[0]) == best[column]
            cells.append(f"**{cell}**" if is_best else cell)
        lines.append("| " + " | ".join([str(method), *cells]) + " |")
    return "\n".join(lines)


def seeds_note(table: pd.DataFrame) -> str:
    counts = sorted(set(table["n_seeds"]))
    seeds = sorted({int(s) for text in table["seeds"] for s in str(text).split()})
    if counts == [1]:
        return f"one seed ({', '.join(map(str, seeds))}): no spread to show"
    if len(counts) == 1:
        return f"mean ± std over {counts[0]} seeds ({', '.join(map(str, seeds))})"
    return (f"mean ± std over seeds ({', '.join(map(str, seeds))}); cells differ in their number of seeds "
            f"({'/'.join(map(str, counts))}): see n_seeds in the CSV")


def markdown_tables(table: pd.DataFrame, experiment: str, methods: list[str], settings: list[str]) -> str:
    """Every metric's table of one experiment as markdown (a title and a note per table)."""
    if table.empty:
        return f"## {experiment}\n\nNo finished run reports a metric.\n"
    keys = [c for c in table.columns if c not in ("metric", "method", "setting", "mean", "std", "n_seeds", "seeds",
                                                  "scale")]
    unit = lambda metric: " (%)" if table[table["metric"] == metric]["scale"].iloc[0] == 100 else ""  # noqa: E731
    parts = [f"## {experiment}", ""]
    note = f"Final round, {seeds_note(table)}; best mean per column in bold."
    if settings == ["final"]:
        wide = metrics_table(table, methods)
        wide.columns = [metric_title(m) + unit(m) for m in dict.fromkeys(table["metric"])]
        parts += [note, "", _markdown(wide, "method"), ""]
        return "\n".join(parts)
    corner = "method \\ " + ", ".join(short_key(k) for k in keys) if keys else "method"
    parts += [note, ""]
    headers = column_headers(table, keys)
    for metric in dict.fromkeys(table["metric"]):
        wide = wide_table(table, metric, methods, settings).rename(columns=headers)
        parts += [f"### {metric_title(metric)}{unit(metric)}", "", _markdown(wide, corner), ""]
    return "\n".join(parts)
