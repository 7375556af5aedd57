"""Report plots, saved as PNG files a person can open: metric vs round, metric vs swept
setting, per-client spread, communication vs metric, partition heatmaps.

Each function takes frames from :mod:`fedvlm.report.runs` (one experiment's rows), writes one
PNG and returns its path (``None`` when there is nothing to draw). Figures are built without
pyplot (``matplotlib.figure.Figure``), so nothing depends on a display or a notebook backend.
Curves and points are means over seeds; bands and error bars are ± one std over seeds.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pandas as pd

from fedvlm.report.runs import format_value, short_key
from fedvlm.report.tables import as_percent, latest_runs, method_order, metric_title, setting_order

MAX_PANELS = 12


def _figure(panels: int, width: float = 4.2, height: float = 3.2, columns: int = 4):
    os.environ.setdefault("MPLCONFIGDIR", str(Path.home() / ".cache" / "fedvlm" / "matplotlib"))
    from matplotlib.figure import Figure

    columns = max(1, min(columns, panels))
    rows = math.ceil(panels / columns)
    figure = Figure(figsize=(width * columns + 2.2, height * rows + 0.9), layout="constrained")
    axes = np.atleast_1d(figure.subplots(rows, columns, squeeze=False).ravel())
    for extra in axes[panels:]:
        extra.set_visible(False)
    return figure, axes[:panels]


def method_colours(methods: list[str]) -> dict[str, tuple]:
    from matplotlib import colormaps

    palette = colormaps["tab10" if len(methods) <= 10 else "tab20"]
    return {m: palette(i % palette.N) for i, m in enumerate(methods)}


def _save(figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path


def _legend(figure, axes, methods: list[str], colours: dict) -> None:
    from matplotlib.lines import Line2D

    handles = [Line2D([], [], color=colours[m], marker="o", label=m) for m in methods]
    figure.legend(handles=handles, loc="outside right upper", fontsize=8, title="method", title_fontsize=8)


def _scale(values: pd.Series) -> tuple[float, str]:
    return (100.0, " (%)") if as_percent(values) else (1.0, "")


def _title(figure, experiment: str, what: str, legend: bool = True) -> None:
    """The figure's title, wrapped to the width of the figure (long experiment names)."""
    import textwrap

    text = f"{experiment}: {what}" if experiment else what
    # Left-aligned over the panels, wrapped short of the legend column on the right.
    width = max(30, int((figure.get_figwidth() - (2.4 if legend else 0.3)) * 11))
    figure.suptitle("\n".join(textwrap.wrap(text, width)), fontsize=11, x=0.01, ha="left")


# -------------------------------------------------------------------- metric vs round


def plot_rounds(history: pd.DataFrame, frame: pd.DataFrame, metric: str, path: Path,
                experiment: str = "") -> Path | None:
    """``metric`` against the round, one line per method (mean over seeds, ± std band), one
    panel per setting (the table's columns). Only rounds that evaluated the metric are drawn."""
    runs = latest_runs(frame)
    if history.empty or metric not in history or runs.empty:
        return None
    history = history[history["run_id"].isin(runs["run_id"]) & history[metric].notna()]
    if history.empty:
        return None
    scale, unit = _scale(history[metric])
    settings = setting_order(runs)[:MAX_PANELS]
    colours = method_colours(method_order(runs))  # one colour per method in every plot of the comparison
    methods = [m for m in method_order(runs) if m in set(history["method"])]
    figure, axes = _figure(len(settings))
    for axis, setting in zip(axes, settings):
        part = history[history["setting"] == setting]
        for method in methods:
            curve = part[part["method"] == method].groupby("round")[metric].agg(["mean", "std", "count"])
            if curve.empty:
                continue
            rounds, mean = curve.index.to_numpy(), curve["mean"].to_numpy() * scale
            std = np.nan_to_num(curve["std"].to_numpy() * scale)
            axis.plot(rounds, mean, color=colours[method], marker="o" if len(rounds) <= 12 else None, markersize=4)
            if (curve["count"] > 1).any():
                axis.fill_between(rounds, mean - std, mean + std, color=colours[method], alpha=0.18, linewidth=0)
        axis.set_title(setting if setting != "final" else "", fontsize=9)
        axis.set_xlabel("round")
        axis.set_ylabel(metric_title(metric) + unit)
        axis.grid(alpha=0.3)
        axis.xaxis.get_major_locator().set_params(integer=True)
    _legend(figure, axes, methods, colours)
    _title(figure, experiment, f"{metric_title(metric)} per round (mean ± std over seeds)")
    return _save(figure, path)


# -------------------------------------------------------------------- metric vs setting


def _numeric(values) -> bool:
    return all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool) for v in values)


def plot_sweep(frame: pd.DataFrame, metric: str, path: Path, experiment: str = "") -> Path | None:
    """Final ``metric`` against the first swept setting key (number of clients, alpha, t,
    Mask, ...): one line per method (and per value of any further swept key), error bars ± std."""
    runs = latest_runs(frame)
    if runs.empty or metric not in runs or runs[metric].notna().sum() == 0:
        return None
    keys = list(runs["setting_keys"].iloc[0])
    if not keys:
        return None
    colours = method_colours(method_order(runs))
    runs = runs[runs[metric].notna()].copy()
    runs["x"] = [values[0] for values in runs["setting_values"]]
    runs["line"] = [m if len(keys) == 1 else m + " " + ", ".join(f"{short_key(k)}={format_value(v)}"
                                                                 for k, v in zip(keys[1:], values[1:]))
                    for m, values in zip(runs["method"], runs["setting_values"])]
    if runs["x"].nunique() < 2:
        return None
    scale, unit = _scale(runs[metric])
    xs = sorted(runs["x"].unique(), key=lambda v: (not _numeric([v]), v if _numeric([v]) else format_value(v)))
    numeric = _numeric(xs)
    position = {x: (float(x) if numeric else i) for i, x in enumerate(xs)}
    lines = list(dict.fromkeys(runs.sort_values("run_id")["line"]))
    method_of = dict(zip(runs["line"], runs["method"]))
    figure, (axis,) = _figure(1, width=6.0, height=4.0)
    styles = ["-", "--", ":", "-."]
    log_scale = numeric and min(xs) > 0 and max(xs) / min(xs) >= 20
    for number, line in enumerate(lines):
        # Lines are nudged sideways a little so that equal means keep their error bars apart.
        shift = (number - (len(lines) - 1) / 2) * 0.012
        nudge = (lambda x: x * 10 ** (shift * math.log10(max(xs) / min(xs)))) if log_scale else \
            (lambda x: x + shift * ((max(position.values()) - min(position.values())) or 1))
        part = runs[runs["line"] == line]
        stats = part.groupby("x")[metric].agg(["mean", "std", "count"])
        stats = stats.loc[[x for x in xs if x in stats.index]]
        method = part["method"].iloc[0]
        siblings = [other for other in lines if method_of[other] == method]  # same colour, other dashes
        axis.errorbar([nudge(position[x]) for x in stats.index], stats["mean"] * scale,
                      yerr=np.nan_to_num(stats["std"] * scale), color=colours[method],
                      linestyle=styles[siblings.index(line) % len(styles)], marker="o", markersize=5, capsize=3,
                      label=line)
    if log_scale:
        axis.set_xscale("log")
    axis.set_xticks([position[x] for x in xs], [format_value(x) for x in xs])
    axis.minorticks_off()
    axis.set_xlabel(keys[0])
    axis.set_ylabel("final " + metric_title(metric) + unit)
    axis.grid(alpha=0.3)
    figure.legend(loc="outside right upper", fontsize=8, title="method", title_fontsize=8)
    _title(figure, experiment, f"final {metric_title(metric)} vs {short_key(keys[0])}")
    return _save(figure, path)


# -------------------------------------------------------------------- per-client spread


def plot_client_spread(clients: pd.DataFrame, frame: pd.DataFrame, path: Path, experiment: str = "") -> Path | None:
    """Final per-client primary metric: one box per method (clients of every seed pooled, each
    client a dot), one panel per setting. Shows who the federation leaves behind."""
    runs = latest_runs(frame)
    if clients.empty or runs.empty:
        return None
    clients = clients[clients["run_id"].isin(runs["run_id"]) & clients["value"].notna()]
    if clients.empty:
        return None
    scale, unit = _scale(clients["value"])
    metric = clients["metric"].iloc[0]
    settings = [s for s in setting_order(runs) if s in set(clients["setting"])][:MAX_PANELS]
    methods = method_order(runs)
    colours = method_colours(methods)
    figure, axes = _figure(len(settings), width=max(3.0, 0.9 * len(methods) + 1.5))
    rng = np.random.default_rng(0)
    for axis, setting in zip(axes, settings):
        part = clients[clients["setting"] == setting]
        shown = [m for m in methods if m in set(part["method"])]
        data = [part[part["method"] == m]["value"].to_numpy() * scale for m in shown]
        boxes = axis.boxplot(data, positions=range(len(shown)), widths=0.6, showfliers=False, patch_artist=True,
                             medianprops={"color": "black"})
        for patch, method in zip(boxes["boxes"], shown):
            patch.set_facecolor((*colours[method][:3], 0.25))
            patch.set_edgecolor(colours[method])
        for i, (values, method) in enumerate(zip(data, shown)):
            axis.scatter(i + rng.uniform(-0.18, 0.18, len(values)), values, s=10, color=colours[method], zorder=3)
        axis.set_xticks(range(len(shown)), shown, rotation=30, ha="right", fontsize=8)
        axis.set_title(setting if setting != "final" else "", fontsize=9)
        axis.set_ylabel(f"{metric} per client{unit}")
        axis.grid(axis="y", alpha=0.3)
    _title(figure, experiment, f"final {metric} of each client (all seeds)", legend=False)
    return _save(figure, path)


# -------------------------------------------------------------------- communication


def _bytes_axis(axis, values) -> None:
    from matplotlib.ticker import FuncFormatter

    positive = [v for v in values if v > 0]
    if positive and max(positive) / min(positive) >= 20:
        if min(values) <= 0:
            axis.set_xscale("symlog", linthresh=min(positive))
        else:
            axis.set_xscale("log")
    axis.xaxis.set_major_formatter(FuncFormatter(lambda v, _: human_bytes(v)))


def human_bytes(value: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            return f"{value:.3g} {unit}"
        value /= 1000
    return f"{value:.3g} TB"


def plot_communication(frame: pd.DataFrame, path: Path, experiment: str = "", metrics: list[str] | None = None
                       ) -> Path | None:
    """Final metric against the bytes a run moved (uploads + downloads over all rounds), one
    panel per metric (global and personalized primary), one marker per (method, setting)."""
    runs = latest_runs(frame)
    if runs.empty:
        return None
    primary = runs["primary_metric"].iloc[0]
    metrics = metrics or [m for m in (f"global/{primary}", f"personalized/mean_{primary}")
                          if m in runs and runs[m].notna().any()]
    if not metrics:
        return None
    methods = method_order(runs)
    colours = method_colours(methods)
    markers = "osD^v<>Pp*hX"
    settings = setting_order(runs)
    figure, axes = _figure(len(metrics), width=5.2, height=4.0, columns=2)
    for axis, metric in zip(axes, metrics):
        scale, unit = _scale(runs[metric])
        part = runs[runs[metric].notna()]
        stats = part.groupby(["method", "setting"], sort=False).agg(
            bytes=("total_bytes", "mean"), mean=(metric, "mean"), std=(metric, "std")).reset_index()
        for row in stats.itertuples():
            marker = markers[settings.index(row.setting) % len(markers)]
            axis.errorbar(row.bytes, row.mean * scale, yerr=0 if math.isnan(row.std) else row.std * scale,
                          color=colours[row.method], marker=marker, markersize=6, capsize=3, linestyle="none")
        _bytes_axis(axis, stats["bytes"].tolist())
        axis.set_xlabel("bytes moved (upload + download, all rounds)")
        axis.set_ylabel("final " + metric_title(metric) + unit)
        axis.grid(alpha=0.3)
    from matplotlib.lines import Line2D

    present = {m for metric in metrics for m in runs[runs[metric].notna()]["method"]}
    handles = [Line2D([], [], color=colours[m], marker="o", linestyle="none", label=m) for m in methods if m in present]
    if len(settings) > 1:
        handles += [Line2D([], [], color="grey", marker=markers[i % len(markers)], linestyle="none", label=s)
                    for i, s in enumerate(settings)]
    figure.legend(handles=handles, loc="outside right upper", fontsize=8)
    _title(figure, experiment, "communication cost vs final metric")
    return _save(figure, path)


def plot_communication_curves(history: pd.DataFrame, frame: pd.DataFrame, metric: str, path: Path,
                              experiment: str = "") -> Path | None:
    """``metric`` against the cumulative bytes moved so far, one line per method (means over
    seeds at each evaluated round), one panel per setting: accuracy bought per byte."""
    runs = latest_runs(frame)
    if history.empty or metric not in history or runs.empty:
        return None
    history = history[history["run_id"].isin(runs["run_id"]) & history[metric].notna()]
    if history.empty:
        return None
    scale, unit = _scale(history[metric])
    settings = setting_order(runs)[:MAX_PANELS]
    colours = method_colours(method_order(runs))
    methods = [m for m in method_order(runs) if m in set(history["method"])]
    figure, axes = _figure(len(settings))
    for axis, setting in zip(axes, settings):
        part = history[history["setting"] == setting]
        for method in methods:
            curve = part[part["method"] == method].groupby("round")[[metric, "total_bytes"]].mean()
            if not curve.empty:
                axis.plot(curve["total_bytes"], curve[metric] * scale, color=colours[method], marker="o", markersize=3)
        _bytes_axis(axis, part["total_bytes"].tolist())
        axis.set_title(setting if setting != "final" else "", fontsize=9)
        axis.set_xlabel("cumulative bytes moved")
        axis.set_ylabel(metric_title(metric) + unit)
        axis.grid(alpha=0.3)
    _legend(figure, axes, methods, colours)
    _title(figure, experiment, f"{metric_title(metric)} vs communication, round by round")
    return _save(figure, path)


# -------------------------------------------------------------------- partitions


def plot_partitions(runs: list, frame: pd.DataFrame, path: Path, experiment: str = "") -> Path | None:
    """Client x class image counts of each setting (the first seed's partition, the first
    method's run): what the clients were given."""
    chosen = latest_runs(frame).sort_values("seed")
    by_id = {r.run_id: r for r in runs if r.partition is not None}
    panels = []
    for setting in setting_order(chosen):
        for run_id in chosen[chosen["setting"] == setting]["run_id"]:
            if run_id in by_id:
                seed = int(chosen.set_index("run_id").loc[run_id, "seed"])
                panels.append((f"{setting}, seed {seed}" if setting != "final" else f"seed {seed}", by_id[run_id]))
                break
    panels = panels[:MAX_PANELS]
    if not panels:
        return None
    classes = max(r.partition.shape[1] for _, r in panels)
    clients = max(r.partition.shape[0] for _, r in panels)
    figure, axes = _figure(len(panels), width=max(3.2, min(0.3 * classes + 1.5, 9)),
                           height=max(2.4, min(0.25 * clients + 1.6, 8)), columns=3)
    for axis, (title, run) in zip(axes, panels):
        counts = run.partition.to_numpy()
        image = axis.imshow(counts, aspect="auto", cmap="viridis", interpolation="nearest")
        names = [str(c)[:14] for c in run.partition.columns]
        if counts.shape[1] <= 40:
            axis.set_xticks(range(counts.shape[1]), names, rotation=90, fontsize=7)
        if counts.shape[0] <= 40:
            axis.set_yticks(range(counts.shape[0]), [str(k) for k in range(counts.shape[0])], fontsize=7)
        if counts.size <= 300:
            for k in range(counts.shape[0]):
                for c in range(counts.shape[1]):
                    axis.text(c, k, str(counts[k, c]), ha="center", va="center", fontsize=6,
                              color="white" if counts[k, c] < counts.max() / 2 else "black")
        axis.set_title(title, fontsize=9)
        axis.set_xlabel("class", fontsize=8)
        axis.set_ylabel("client", fontsize=8)
        figure.colorbar(image, ax=axis, label="train images", shrink=0.9)
    _title(figure, experiment, "partition: training images per client and class", legend=False)
    return _save(figure, path)


def plot_heterogeneity(stats: pd.DataFrame, frame: pd.DataFrame, metric: str, path: Path,
                       statistic: str = "label_skew", experiment: str = "") -> Path | None:
    """Final ``metric`` of each run against a partition statistic of that run (see
    :func:`fedvlm.report.partitions.partition_statistics`), one colour per method."""
    runs = latest_runs(frame)
    if stats.empty or runs.empty or metric not in runs:
        return None
    data = runs.merge(stats[["run_id", statistic]], on="run_id")
    data = data[data[metric].notna() & data[statistic].notna()]
    if data.empty:
        return None
    scale, unit = _scale(data[metric])
    colours = method_colours(method_order(runs))
    methods = method_order(data)
    figure, (axis,) = _figure(1, width=6.0, height=4.0)
    for method in methods:
        part = data[data["method"] == method]
        axis.scatter(part[statistic], part[metric] * scale, color=colours[method], label=method, s=25)
    axis.set_xlabel(STATISTIC_LABELS.get(statistic, statistic))
    axis.set_ylabel("final " + metric_title(metric) + unit)
    axis.grid(alpha=0.3)
    figure.legend(loc="outside right upper", fontsize=8, title="method", title_fontsize=8)
    _title(figure, experiment, f"final {metric_title(metric)} vs partition heterogeneity (one dot per run)")
    return _save(figure, path)


STATISTIC_LABELS = {
    "label_skew": "label skew: mean total variation to the pooled class mix (0 = IID)",
    "classes_per_client": "classes per client (mean)",
    "size_cv": "client size coefficient of variation",
}
