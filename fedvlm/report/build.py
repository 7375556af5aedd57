"""``fedvlm report``: every table and plot of a results directory, in one folder.

Layout of the output folder (default ``<first results dir>/report``)::

    README.md                 every table (markdown) with its plots, one section per experiment
    runs.csv                  one row per run (runs_frame): final metrics, bytes, config keys
    tables.csv                every table cell: experiment, metric, method, setting, mean, std, n_seeds
    partition_stats.csv       heterogeneity of every run's partition
    <experiment>/
        table.md              the experiment's tables (one per metric, methods x settings)
        table.csv             its cells, long form (numbers)
        table_<metric>.csv    one metric in the paper layout ("mean ± std" strings)
        rounds_<metric>.png   metric vs round per method, one panel per setting
        sweep_<metric>.png    final metric vs the swept setting (when there is one)
        clients.png           per-client spread of the final primary metric
        communication.png     final metric vs bytes moved; communication_rounds.png per round
        partitions.png        client x class heatmaps of the partitions
    <dataset>-by-<keys>/      the same across experiments on the same data sweeping the same keys
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from fedvlm.errors import UserError
from fedvlm.report import plots
from fedvlm.report.partitions import partition_statistics
from fedvlm.report.runs import Run, client_frame, history_frame, load_runs, runs_frame, setting_keys, short_key
from fedvlm.report.tables import (comparison_table, latest_runs, markdown_tables, method_order, setting_order,
                                  table_metrics, wide_table, column_headers)


@dataclass
class Comparison:
    """One table's worth of runs: an experiment, or every experiment on one dataset."""

    name: str
    runs: list[Run]
    frame: pd.DataFrame  # runs_frame rows of these runs, method/setting as the table reads them
    experiments: list[str] = field(default_factory=list)  # for a comparison across experiments

    @property
    def methods(self) -> list[str]:
        return method_order(latest_runs(self.frame))

    @property
    def settings(self) -> list[str]:
        return setting_order(latest_runs(self.frame))

    def table(self) -> pd.DataFrame:
        return comparison_table(self.frame)


@dataclass
class Report:
    out: Path
    comparisons: list[Comparison]
    files: list[Path] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)

    @property
    def index(self) -> Path:
        return self.out / "README.md"


def slug(text: str) -> str:
    """``text`` as one safe file-name component. Output names come from run folders' contents
    (experiment, dataset and metric names), which anyone can write: the result has no separator,
    never starts with '.' (so never '.' or '..') and is never empty."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", str(text)).lstrip("._-").rstrip("_")
    return name[:120] or "unnamed"


def output_folder(out: Path, name: str) -> Path:
    """The folder ``out/<slug(name)>``, refused when it would lie outside ``out`` (a symlink
    planted where it goes): the report writes only below the folder it was given."""
    folder = out / slug(name)
    if folder.is_symlink() or not folder.resolve().is_relative_to(out.resolve()):
        raise UserError(f"report: {folder} points outside the output folder {out}; remove it or choose another --out")
    return folder


def comparisons(runs: list[Run], by_dataset: bool = True) -> list[Comparison]:
    """One comparison per experiment, plus one across the experiments that share their data and
    backbone and sweep the same setting keys (rows ``<experiment>: <method>`` where a method
    appears in more than one of them), named ``<dataset>-by-<keys>`` (``<dataset>-final`` when
    nothing is swept; ``<N>-datasets-by-dataset`` for files that each sweep ``data.dataset``)."""
    result = []
    by_experiment: dict[str, list[Run]] = {}
    for run in runs:
        by_experiment.setdefault(run.experiment, []).append(run)
    for name, members in by_experiment.items():
        result.append(Comparison(name, members, runs_frame(members)))
    if not by_dataset:
        return result
    # Experiments on the same data and backbone that sweep the same setting keys (or none) share a
    # table: e.g. zeroshot_ucm, fedavg_pl_ucm and fedprox_ucm, one method each, become one
    # comparison; so do one-method files that each sweep data.dataset (methods x datasets).
    groups: dict[tuple, list[Run]] = {}
    for members in by_experiment.values():
        keys = tuple(k for k in setting_keys(members) if any(k in r.sweep_values for r in members))
        datasets = tuple(sorted({str((r.config.get("data") or {}).get("dataset")) for r in members}))
        model = members[0].config.get("model") or {}
        groups.setdefault((datasets, str(model.get("name")), str(model.get("pretrained")), keys), []).extend(members)
    names = set(by_experiment)
    for (datasets, model, pretrained, keys), members in groups.items():
        if len({r.experiment for r in members}) < 2:
            continue
        data = datasets[0] if len(datasets) == 1 else f"{len(datasets)}-datasets"
        name = f"{data}-by-{'-'.join(short_key(k) for k in keys)}" if keys else f"{data}-final"
        if name in names:  # the same data and sweep on another backbone
            name += f"-{model}" + (f"-{Path(pretrained).stem}" if pretrained not in ("None", "") else "")
        names.add(name)
        frame = runs_frame(members, settings=list(keys))
        per_method = frame.groupby("method")["experiment"].nunique()
        frame["method"] = [f"{experiment}: {method}" if per_method[method] > 1 else method
                           for experiment, method in zip(frame["experiment"], frame["method"])]
        frame["experiment"] = name
        result.append(Comparison(name, members, frame, experiments=sorted({r.experiment for r in members})))
    return result


def pick_comparison(found: list[Comparison], name: str | None = None) -> Comparison:
    """The comparison called ``name``, else the one with most finished runs (notebooks)."""
    if not found:
        raise UserError("report: no finished runs to compare")
    if name:
        for comparison in found:
            if comparison.name == name:
                return comparison
        raise UserError(f"report: no experiment or comparison named {name!r}; expected one of: "
                        + ", ".join(c.name for c in found))
    return max(found, key=lambda c: len(latest_runs(c.frame)))


def write_comparison(comparison: Comparison, folder: Path, plots_too: bool = True
                     ) -> tuple[str, list[Path], pd.DataFrame]:
    """Tables (and plots) of one comparison into ``folder``; returns its markdown section, its
    files and its long table."""
    folder.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []
    table = comparison.table()
    markdown = markdown_tables(table, comparison.name, comparison.methods, comparison.settings)
    (folder / "table.md").write_text(markdown + "\n")
    table.to_csv(folder / "table.csv", index=False)
    files += [folder / "table.md", folder / "table.csv"]
    keys = [c for c in table.columns if c not in ("metric", "method", "setting", "mean", "std", "n_seeds", "seeds",
                                                  "scale")]
    for metric in dict.fromkeys(table["metric"]):
        wide = wide_table(table, metric, comparison.methods, comparison.settings)
        wide = wide.rename(columns=column_headers(table, keys))
        wide.to_csv(folder / f"table_{slug(metric)}.csv")
        files.append(folder / f"table_{slug(metric)}.csv")
    if plots_too:
        files += _plots(comparison, folder)
    files = [f for f in files if f is not None]
    images = [f for f in files if f.suffix == ".png"]
    links = "\n".join(f"![{f.stem}]({folder.name}/{f.name})" for f in images)
    across = f"Across experiments: {', '.join(comparison.experiments)}.\n\n" if comparison.experiments else ""
    section = markdown.replace(f"## {comparison.name}",
                               f"## {comparison.name}\n\n{across}Files: [{folder.name}/]({folder.name}/)", 1)
    return section + ("\n" + links + "\n" if links else ""), files, table


def _plots(comparison: Comparison, folder: Path) -> list[Path | None]:
    files: list[Path | None] = []
    frame = comparison.frame
    history = history_frame(comparison.runs, frame)
    clients = client_frame(comparison.runs, frame)
    finished = latest_runs(frame)
    primary = finished["primary_metric"].iloc[0] if len(finished) else "accuracy"
    plotted = [m for m in (f"global/{primary}", f"personalized/mean_{primary}") if m in table_metrics(frame)]
    name = comparison.name
    for metric in plotted:
        files.append(plots.plot_rounds(history, frame, metric, folder / f"rounds_{slug(metric)}.png", name))
        files.append(plots.plot_sweep(frame, metric, folder / f"sweep_{slug(metric)}.png", name))
    files.append(plots.plot_client_spread(clients, frame, folder / "clients.png", name))
    files.append(plots.plot_communication(frame, folder / "communication.png", name))
    if plotted:
        files.append(plots.plot_communication_curves(history, frame, plotted[0], folder / "communication_rounds.png",
                                                     name))
    if not comparison.experiments:
        files.append(plots.plot_partitions(comparison.runs, frame, folder / "partitions.png", name))
    return files


def build_report(results_dirs, out: str | Path | None = None, wandb_paths: list[str] | None = None,
                 plots_too: bool = True) -> Report:
    """Collect the runs under ``results_dirs`` (and of the W&B projects ``wandb_paths``,
    ``entity/project``, when online) and write the report folder (module docstring);
    ``plots_too=False`` writes the tables only."""
    results_dirs = [Path(d) for d in ([results_dirs] if isinstance(results_dirs, (str, Path)) else results_dirs)]
    if out is None:
        out = output_folder(results_dirs[0], "report")  # inside the first results directory, never a link out of it
    out = Path(out)
    runs = load_runs(results_dirs)
    if wandb_paths:
        from fedvlm.report.wandb_runs import load_wandb_runs

        runs += load_wandb_runs(wandb_paths)
    if not runs:
        raise UserError(f"report: no run folders under {', '.join(map(str, results_dirs))}; expected "
                        "<experiment>/<run-id>/ folders with config.yaml and metrics.jsonl, written by fedvlm run")
    unfinished = [str(r.path or r.run_id) for r in runs if not r.finished]
    finished = [r for r in runs if r.finished]
    if not finished:
        raise UserError(f"report: none of the {len(runs)} runs under {', '.join(map(str, results_dirs))} has "
                        "finished (no summary.json); finish or resume them with fedvlm run ... resume=true")
    out.mkdir(parents=True, exist_ok=True)
    report = Report(out, comparisons(finished), unfinished=unfinished)

    everything = runs_frame(finished)
    everything.to_csv(out / "runs.csv", index=False)
    statistics = partition_statistics(finished, everything)
    statistics.to_csv(out / "partition_stats.csv", index=False)
    sections, cells = [], []
    for comparison in report.comparisons:
        section, files, table = write_comparison(comparison, output_folder(out, comparison.name), plots_too)
        sections.append(section)
        report.files += files
        table.insert(0, "comparison", comparison.name)
        cells.append(table)
    pd.concat(cells, ignore_index=True).to_csv(out / "tables.csv", index=False)
    report.files += [out / "runs.csv", out / "partition_stats.csv", out / "tables.csv"]

    notes = ["# Results report", "",
             f"{len(finished)} finished runs from {', '.join(map(str, results_dirs))}"
             + (f" and W&B {', '.join(wandb_paths)}" if wandb_paths else "") + ".",
             "Every cell is the metric of the **last round** (never the best round), mean ± sample std over seeds "
             "(one seed: the mean alone); percentages for metrics in [0, 1]. Per-run numbers: `runs.csv`; every "
             "cell: `tables.csv`."]
    if unfinished:
        notes.append(f"\n{len(unfinished)} unfinished runs (no summary.json) are left out: "
                     + ", ".join(unfinished[:10]) + (" ..." if len(unfinished) > 10 else ""))
    duplicates = len(everything) - len(latest_runs(everything))
    if duplicates:
        notes.append(f"\n{duplicates} older runs repeat a (method, setting, seed) of a newer one and are left out.")
    report.index.write_text("\n".join(notes) + "\n\n" + "\n".join(sections))
    report.files.insert(0, report.index)
    return report
