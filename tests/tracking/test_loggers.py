"""``logging.backends`` (fedvlm/tracking/loggers.py): a short run on the colour dataset feeds
Lightning's CSV and TensorBoard loggers one row/event per round, its step the round; an unknown
backend or a missing package is one line, exit status 2."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fedvlm.cli import main
from fedvlm.config import load_config
from fedvlm.simulation import run

pytestmark = pytest.mark.usefixtures("one_thread")

ROUNDS = 3
EXPERIMENT = {
    "name": "backends", "seed": 3, "model": {"name": "fedvlm-tiny", "pretrained": None},
    "data": {"dataset": "synthetic_scenes"}, "partition": {"name": "dirichlet", "num_clients": 3, "alpha": 1.0},
    "head": {"name": "coop", "n_ctx": 4}, "federation": {"rounds": ROUNDS},
    "optim": {"lr": 0.01, "batch_size": 8},
    "eval": {"every": 2},  # rounds 2 and 3 (the last) are evaluated: new columns appear mid-run
    "logging": {"progress": False, "wandb": "disabled", "backends": ["csv", "tensorboard"]},
}


def _experiment(data_root, results, **logging) -> dict:
    raw = json.loads(json.dumps(EXPERIMENT))
    raw["data"]["root"] = str(data_root)
    raw["logging"].update(results_dir=str(results), **logging)
    return raw


@pytest.fixture(scope="module")
def finished_run(colour_data_root, tmp_path_factory):
    results = tmp_path_factory.mktemp("results")
    summary = run(load_config(overrides=_experiment(colour_data_root, results)))
    return Path(summary["run_dir"]), summary


def test_csv_rows_are_rounds_with_the_scalar_metrics(finished_run):
    folder, summary = finished_run
    with open(folder / "csv" / "metrics.csv", newline="") as file:
        rows = list(csv.DictReader(file))
    assert [int(row["step"]) for row in rows] == list(range(1, ROUNDS + 1))
    assert [int(row["round"]) for row in rows] == list(range(1, ROUNDS + 1))
    assert {"train/loss", "lr", "clients", "uploaded_bytes", "global/accuracy",
            "personalized/mean_accuracy"} <= set(rows[0])
    assert not any(key.startswith("clients/") for key in rows[0])  # per-client lists are W&B's only
    assert rows[0]["global/accuracy"] == ""  # round 1 was not evaluated
    assert float(rows[-1]["global/accuracy"]) == pytest.approx(summary["global/accuracy"])
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [float(row["train/loss"]) for row in rows] == pytest.approx([line["train/loss"] for line in lines])
    assert not (folder / "wandb").exists() and summary["wandb_dir"] is None  # logging.wandb: disabled


def test_tensorboard_events_are_indexed_by_round(finished_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    folder, summary = finished_run
    events = EventAccumulator(str(folder / "tensorboard"))
    events.Reload()
    assert [event.step for event in events.Scalars("train/loss")] == list(range(1, ROUNDS + 1))
    accuracy = events.Scalars("global/accuracy")
    assert [event.step for event in accuracy] == [2, 3]
    assert accuracy[-1].value == pytest.approx(summary["global/accuracy"])
    assert not any(tag.startswith("clients/") for tag in events.Tags()["scalars"])


@pytest.fixture()
def config_file(tmp_path, colour_data_root):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(_experiment(colour_data_root, tmp_path / "results")))
    return path


def _one_error_line(capsys, argv) -> str:
    status = main(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_an_unknown_backend_is_one_line_naming_the_key_and_the_choices(config_file, capsys):
    line = _one_error_line(capsys, ["run", str(config_file), "logging.backends=[csv, mlflow]"])
    assert line == ("error: logging.backends.1: input should be 'wandb', 'csv' or 'tensorboard' "
                    "(got 'mlflow')")
    assert not (config_file.parent / "results").exists()


def test_a_missing_tensorboard_names_the_extra_before_any_data_is_read(config_file, capsys, monkeypatch):
    # None in sys.modules is how Python marks a module as not importable
    monkeypatch.setitem(sys.modules, "tensorboard", None)
    monkeypatch.setitem(sys.modules, "tensorboardX", None)
    line = _one_error_line(capsys, ["run", str(config_file), "logging.backends=tensorboard"])
    assert line == ("error: logging.backends: tensorboard needs the tensorboard package; "
                    "install fedvlm's [tensorboard] extra: pip install -e '.[tensorboard]'")
    assert not (config_file.parent / "results").exists()


def _cli(args, env_extra=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "fedvlm", *args], capture_output=True, text=True, env=env,
                          timeout=600)


def test_a_resumed_run_rebuilds_the_csv_from_its_checkpoint(colour_data_root, tmp_path):
    """Killed after round 3 with rounds 1-2 checkpointed (metrics.csv already holds round 3), then
    resumed: metrics.csv holds rounds 1..4 once each, the rows of an uninterrupted run."""
    raw = _experiment(colour_data_root, tmp_path / "whole", backends=["csv"], checkpoint_every=2)
    raw["federation"]["rounds"] = 4
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(raw))
    assert _cli(["run", str(config)]).returncode == 0
    killed = f"logging.results_dir={tmp_path / 'killed'}"
    assert _cli(["run", str(config), killed], {"FEDVLM_KILL_AT": "after_round@3"}).returncode == -9
    resumed = _cli(["run", str(config), killed, "resume=true"])
    assert resumed.returncode == 0, resumed.stderr
    (whole,), (again,) = ((tmp_path / name / "backends").iterdir() for name in ("whole", "killed"))
    rows = {folder: (folder / "csv" / "metrics.csv").read_text() for folder in (whole, again)}
    with open(again / "csv" / "metrics.csv", newline="") as file:
        assert [int(row["step"]) for row in csv.DictReader(file)] == [1, 2, 3, 4]
    assert rows[again] == rows[whole]
