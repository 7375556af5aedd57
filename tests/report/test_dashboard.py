"""``fedvlm dashboard`` (fedvlm/report/dashboard.py), offline: the workspace object and the view
W&B would receive (its serialized model) hold the sections, panel types, metric keys, grouping and
filters; saving without a server is one line."""

import json
import sys

import pytest
import wandb_workspaces.reports.v2 as wr

from fedvlm.cli import main
from fedvlm.report.dashboard import FINAL_METRICS, ROUND_METRICS, build_workspace


@pytest.fixture(scope="module")
def workspace():
    return build_workspace("my-team/fedvlm", group="multilabel_voc_heterogeneity", tags=["fedmpt", "seed1"])


def test_sections_and_panels(workspace):
    assert (workspace.entity, workspace.project) == ("my-team", "fedvlm")
    assert [section.name for section in workspace.sections] == \
        ["Metric vs round", "Final metrics", "Communication and partitions"]
    curves, final, cost = (section.panels for section in workspace.sections)
    assert all(isinstance(panel, wr.LinePlot) and panel.x == "round" for panel in curves)
    assert [panel.y for panel in curves] == [[metric] for metric in ROUND_METRICS]
    assert {"global/accuracy", "global/mAP", "personalized/mean_accuracy", "train/loss"} <= set(ROUND_METRICS)
    assert all((panel.groupby_aggfunc, panel.groupby_rangefunc) == ("mean", "stddev") for panel in curves)
    bars, table = final[:-1], final[-1]
    assert [panel.metrics for panel in bars] == [[metric] for metric in FINAL_METRICS]
    assert isinstance(table, wr.WeavePanelSummaryTable) and table.table_name == "final/results"
    assert [type(panel) for panel in cost] == [wr.ScatterPlot, wr.MediaBrowser]
    assert workspace.settings.x_axis == "round"


def test_runs_are_filtered_by_group_and_tags_and_grouped_by_method(workspace):
    # the spec save() sends (wandb_workspaces.workspaces.internal.upsert_view2 dumps it so)
    spec = json.loads(workspace._to_model().spec.model_dump_json(by_alias=True, exclude_none=True))
    runset = spec["section"]["runSets"][0]
    leaves = runset["filters"]["filters"]
    assert {"key": {"section": "run", "name": "group"}, "op": "=",
            "value": "multilabel_voc_heterogeneity", "disabled": False} in leaves
    assert [leaf["value"] for leaf in leaves if leaf["key"]["name"] == "tags"] == [["fedmpt"], ["seed1"]]
    assert runset["grouping"] == [{"section": "config", "name": "head.value.name"},
                                  {"section": "config", "name": "algorithm.value.name"}]


def test_without_filters_every_run_is_shown():
    settings = build_workspace("my-team/fedvlm").runset_settings
    assert settings.filters == ""


def test_the_command_prints_the_panels_and_saves_nothing(capsys):
    assert main(["dashboard", "my-team/fedvlm", "--group", "exp", "--tags", "coop"]) == 0
    out = capsys.readouterr().out
    assert "runs: Metric(\"Group\") == 'exp' and Metric(\"Tags\") in ['coop']" in out
    assert "  LinePlot: global/mAP vs round" in out and "  WeavePanelSummaryTable: table final/results" in out
    assert out.rstrip().endswith("(not saved: add --save to create it in W&B)")


@pytest.mark.parametrize("argv, expected", [
    (["dashboard", "fedvlm"], "error: dashboard: 'fedvlm': expected ENTITY/PROJECT, e.g. my-team/fedvlm"),
    (["dashboard", "me/fedvlm", "--save"], "error: dashboard --save: cannot reach the W&B server http://127.0.0.1:9"),
])
def test_bad_input_and_no_network_are_one_line(argv, expected, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens on port 9
    assert main(argv) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), lines


def test_without_the_library_the_command_names_the_extra(capsys, monkeypatch):
    for name in [name for name in sys.modules if name.startswith("wandb_workspaces")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "wandb_workspaces", None)  # None: Python's mark for "not importable"
    assert main(["dashboard", "me/fedvlm"]) == 2
    assert capsys.readouterr().err.strip() == ("error: dashboard: needs the wandb-workspaces package; install "
                                               "fedvlm's [dashboard] extra: pip install -e '.[dashboard]'")
