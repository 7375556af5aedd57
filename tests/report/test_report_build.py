"""``fedvlm report`` on real runs (the session's small results set): tables equal the numbers in
the metrics files computed by hand, every plot is a real image, CLI errors are one line."""

import contextlib
import io
import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from fedvlm.cli import main
from fedvlm.report import build_report, find_run_folders


@pytest.fixture(scope="module")
def built(report_results, tmp_path_factory):
    """The report as `fedvlm report RESULTS --out OUT` writes it, and what the command printed."""
    out = tmp_path_factory.mktemp("built") / "report"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert main(["report", str(report_results), "--out", str(out)]) == 0
    return out, printed.getvalue()


def by_hand(results, experiment):
    """(method, num_clients) -> final global and personalized accuracies of each seed, read
    straight from config.yaml and the last line of metrics.jsonl."""
    cells = {}
    for folder in sorted((results / experiment).iterdir()):
        config = yaml.safe_load((folder / "config.yaml").read_text())
        last = json.loads((folder / "metrics.jsonl").read_text().splitlines()[-1])
        key = (f"{config['head']['name']}/{config['algorithm']['name']}", config["partition"]["num_clients"])
        cells.setdefault(key, []).append(last)
    return cells


def test_table_equals_mean_and_std_of_the_metrics_files(report_results, built):
    out, _ = built
    table = pd.read_csv(out / "sweep" / "table.csv")
    cells = by_hand(report_results, "sweep")
    assert set(cells) == {("coop/fedavg", 2), ("coop/fedavg", 3), ("zeroshot/fedavg", 2), ("zeroshot/fedavg", 3)}
    markdown = (out / "sweep" / "table.md").read_text()
    for (method, clients), lasts in cells.items():
        assert len(lasts) == 2  # seeds 1 and 2
        for metric in ("global/accuracy", "personalized/mean_accuracy"):
            values = 100 * np.array([line[metric] for line in lasts])
            row = table[(table.metric == metric) & (table.method == method)
                        & (table["partition.num_clients"] == clients)]
            assert row["mean"].item() == pytest.approx(values.mean())
            assert row["std"].item() == pytest.approx(values.std(ddof=1))
            assert row["n_seeds"].item() == 2
            assert f"{values.mean():.2f} ± {values.std(ddof=1):.2f}" in markdown
    wide = pd.read_csv(out / "sweep" / "table_global_accuracy.csv", index_col="method", dtype=str)
    assert list(wide.columns) == ["2", "3"] and list(wide.index) == ["coop/fedavg", "zeroshot/fedavg"]


def test_single_seed_shows_the_mean_alone(report_results, tmp_path):
    seed_one = [f for f in find_run_folders([report_results / "sweep"]) if yaml.safe_load(
        (f / "config.yaml").read_text())["seed"] == 1]
    report = build_report(seed_one, tmp_path / "one", plots_too=False)
    table = pd.read_csv(tmp_path / "one" / "sweep" / "table.csv")
    assert (table["n_seeds"] == 1).all() and table["std"].isna().all()
    markdown = (tmp_path / "one" / "sweep" / "table.md").read_text()
    assert "±" not in markdown and "one seed (1): no spread to show" in markdown
    assert report.comparisons[0].name == "sweep"


def test_every_plot_is_an_image_of_its_panels(built):
    out, _ = built
    pngs = {f.relative_to(out).as_posix(): f for f in out.rglob("*.png")}
    expected = {"sweep/rounds_global_accuracy.png", "sweep/rounds_personalized_mean_accuracy.png",
                "sweep/sweep_global_accuracy.png", "sweep/sweep_personalized_mean_accuracy.png", "sweep/clients.png",
                "sweep/communication.png", "sweep/communication_rounds.png", "sweep/partitions.png",
                "local/rounds_personalized_mean_accuracy.png", "local/partitions.png"}
    assert expected <= set(pngs), sorted(pngs)
    assert "local/rounds_global_accuracy.png" not in pngs  # local training has no global model to plot
    for name, path in pngs.items():
        pixels = np.asarray(Image.open(path).convert("L"), dtype=float)
        assert pixels.shape[0] >= 300 and pixels.shape[1] >= 400, name
        assert pixels.std() > 10, f"{name} looks blank"
    # one panel per setting: two settings (2 and 3 clients) make a wider figure than one
    wide = Image.open(pngs["sweep/rounds_global_accuracy.png"]).size
    single = Image.open(pngs["synthetic_scenes-by-num_clients/sweep_global_accuracy.png"]).size
    assert wide[0] > single[0]
    index = (out / "README.md").read_text()
    for name in expected:
        assert f"]({name})" in index


def test_runs_csv_and_partition_statistics(report_results, built):
    out, printed = built
    assert "report: 3 comparisons, 3 tables, " in printed and f"open {out / 'README.md'}" in printed
    runs = pd.read_csv(out / "runs.csv")
    assert len(runs) == 10 and set(runs["experiment"]) == {"sweep", "local"}
    stats = pd.read_csv(out / "partition_stats.csv")
    assert len(stats) == 10
    row = stats[stats["experiment"] == "local"].iloc[0]
    counts = pd.read_csv(report_results / "local" / row["run_id"] / "partition.csv").to_numpy()
    assert row["images"] == counts.sum() and row["clients"] == counts.shape[0]


def test_report_tables_only(report_results, tmp_path, capsys):
    assert main(["report", str(report_results), "--out", str(tmp_path / "r"), "--no-plots"]) == 0
    assert "3 comparisons, 3 tables, 0 plots" in capsys.readouterr().out
    assert (tmp_path / "r" / "tables.csv").exists() and not list((tmp_path / "r").rglob("*.png"))


@pytest.mark.parametrize("make, expected", [
    (lambda p: p / "missing", "report: results directory {p}/missing does not exist"),
    (lambda p: p, "report: no run folders under {p}"),
])
def test_report_errors_are_one_line(tmp_path, capsys, make, expected):
    assert main(["report", str(make(tmp_path))]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: " + expected.format(p=tmp_path)) and "\n" not in err


def _offline_run(root, name, synced=False):
    run = root / "exp" / name / "wandb" / f"offline-run-20260101_000000-{name}"
    run.mkdir(parents=True)
    (run / f"run-{name}.wandb").write_bytes(b"")
    if synced:
        (run / f"run-{name}.wandb.synced").write_text("")
    return run


def test_sync_lists_offline_runs_and_fails_in_one_line_without_network(tmp_path, capsys):
    fresh, done = _offline_run(tmp_path, "a"), _offline_run(tmp_path, "b", synced=True)
    assert main(["sync", str(tmp_path), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"would upload {fresh}" in out and str(done) not in out
    assert main(["sync", str(tmp_path), "--dry-run", "--include-synced"]) == 0
    assert str(done) in capsys.readouterr().out

    env = {**os.environ, "WANDB_BASE_URL": "http://127.0.0.1:9"}  # nothing listens on port 9
    result = subprocess.run([sys.executable, "-m", "fedvlm", "sync", str(tmp_path)], capture_output=True, text=True,
                            env=env, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("error: sync: cannot reach the W&B server http://127.0.0.1:9")
    assert "\n" not in result.stderr.strip() and "Traceback" not in result.stderr


def test_report_from_wandb_fails_in_one_line_without_network(report_results, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")
    assert main(["report", str(report_results), "--out", str(tmp_path), "--wandb", "me/fedvlm"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: report --wandb: cannot reach the W&B server") and "\n" not in err
