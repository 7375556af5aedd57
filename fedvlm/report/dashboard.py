"""``fedvlm dashboard ENTITY/PROJECT``: the W&B workspace that compares baselines, built with W&B's
maintained ``wandb-workspaces`` library (the ``[dashboard]`` extra) instead of the nine clicks
docs/WANDB.md used to list.

The runs table is filtered to one experiment (``--group``, the experiment name every run of it is
grouped under) and/or to runs carrying every ``--tags`` tag, and grouped by method
(``head.name``, then ``algorithm.name``): each group is one cell of a paper's table, its seeds. The
workspace then holds:

* **Metric vs round**: one line plot per metric, x axis ``round`` (the step metric every run
  defines, fedvlm/tracking/wandb_logger.py), the mean over a group's runs with a ± std band;
* **Final metrics**: one bar per group of each metric's last value (W&B's summary is the last
  round, never the best) and the ``final/results`` table panel, which concatenates the one-row
  table each run logs into the experiment's comparison table;
* **Communication and partitions**: accuracy against the bytes uploaded, and the partition heatmaps.

Building is offline; :func:`save` needs the network and a W&B login.
"""

from __future__ import annotations

from fedvlm.errors import UserError

GROUP_BY = ("head.name", "algorithm.name")  # the method: head, then federated algorithm
ROUND_METRICS = ("global/accuracy", "global/mAP", "personalized/mean_accuracy", "personalized/mean_mAP",
                 "personalized/min_accuracy", "personalized/min_mAP", "train/loss")
FINAL_METRICS = ("global/accuracy", "global/mAP", "personalized/mean_accuracy", "personalized/mean_mAP")
STEP = "round"


def _libraries():
    try:
        import wandb_workspaces.reports.v2 as reports
        import wandb_workspaces.workspaces as workspaces
    except ImportError:
        raise UserError("dashboard: needs the wandb-workspaces package; install fedvlm's [dashboard] extra: "
                        "pip install -e '.[dashboard]'") from None
    return workspaces, reports


def _entity_project(path: str) -> tuple[str, str]:
    parts = path.split("/")
    if len(parts) != 2 or not all(parts):
        raise UserError(f"dashboard: {path!r}: expected ENTITY/PROJECT, e.g. my-team/fedvlm")
    return parts[0], parts[1]


def build_workspace(path: str, group: str | None = None, tags: list[str] | None = None):
    """The workspace object for ``ENTITY/PROJECT`` (nothing is sent anywhere)."""
    ws, wr = _libraries()
    entity, project = _entity_project(path)
    by_method = [ws.Config(key) for key in GROUP_BY]
    filters = ([ws.Metric("Group") == group] if group else []) + [ws.Tags().isin([tag]) for tag in tags or []]
    mean_and_spread = {"groupby_aggfunc": "mean", "groupby_rangefunc": "stddev"}
    curves = ws.Section(name="Metric vs round", is_open=True, panel_settings=ws.SectionPanelSettings(x_axis=STEP),
                        panels=[wr.LinePlot(title=metric, x=STEP, y=[metric], **mean_and_spread)
                                for metric in ROUND_METRICS])
    final = ws.Section(name="Final metrics", is_open=True,
                       panels=[*(wr.BarPlot(title=f"final {metric}", metrics=[metric], orientation="v",
                                            **mean_and_spread) for metric in FINAL_METRICS),
                               wr.WeavePanelSummaryTable(table_name="final/results")])
    cost = ws.Section(name="Communication and partitions", panels=[
        wr.ScatterPlot(title="global/accuracy vs uploaded bytes", x=wr.SummaryMetric("uploaded_bytes"),
                       y=wr.SummaryMetric("global/accuracy")),
        wr.MediaBrowser(title="partitions (client x class)", media_keys=["partition/heatmap"])])
    return ws.Workspace(
        entity=entity, project=project, name=f"fedvlm: {group or project}"[:128],
        sections=[curves, final, cost],
        settings=ws.WorkspaceSettings(x_axis=STEP),
        runset_settings=ws.RunsetSettings(filters=filters, groupby=by_method))


def describe(workspace) -> list[str]:
    """What the workspace holds, one line per filter, grouping and panel (printed without ``--save``)."""
    settings = workspace.runset_settings
    lines = [f"workspace {workspace.name!r} for {workspace.entity}/{workspace.project}",
             f"runs: {settings.filters or 'all runs of the project'}",  # the library keeps filters as a string
             f"grouped by: {', '.join(key.name for key in settings.groupby)}"]
    for section in workspace.sections:
        lines.append(f"section {section.name!r}:")
        for panel in section.panels:
            lines.append(f"  {type(panel).__name__}: {_panel_keys(panel)}")
    return lines


def _panel_keys(panel) -> str:
    if hasattr(panel, "metrics"):
        return ", ".join(map(str, panel.metrics))
    if hasattr(panel, "table_name"):
        return f"table {panel.table_name}"
    if hasattr(panel, "media_keys"):
        return ", ".join(panel.media_keys)
    y = panel.y if isinstance(panel.y, list) else [panel.y]
    return f"{', '.join(getattr(k, 'name', k) for k in y)} vs {getattr(panel.x, 'name', panel.x)}"


def save(workspace) -> str:
    """Save the workspace to W&B (network and login needed); its URL."""
    from fedvlm.report.wandb_runs import check_reachable

    check_reachable("dashboard --save")
    try:
        return workspace.save().url
    except Exception as error:  # W&B's client raises its own error types for a bad login or project
        raise UserError(f"dashboard --save: W&B refused the workspace for {workspace.entity}/{workspace.project}: "
                        f"{str(error).splitlines()[0] if str(error) else type(error).__name__}; "
                        "log in with `wandb login` or set WANDB_API_KEY") from None
