"""A run with runtime.client_state: disk killed at every kill point, among them after a round's
client-state files are written and before the checkpoint that would name them
(``before_checkpoint``), resumes to the files of an uninterrupted run: metrics byte for byte, the
checkpoint and every client's file bit for bit, and only the files the final checkpoint names."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
import yaml

from fedvlm.tracking.client_store import file_name, load_client_states
from bitwise import assert_bitwise_equal

RAW = {
    "name": "resume_store", "seed": 7,
    "model": {"name": "fedvlm-tiny", "pretrained": None},
    "data": {"dataset": "synthetic_scenes"},
    "partition": {"name": "dirichlet", "num_clients": 4, "alpha": 1.0},
    "head": {"name": "fedotp"},
    "federation": {"rounds": 4, "participation": 0.5},
    "optim": {"lr": 0.01, "batch_size": 8, "keep_state": True},
    "runtime": {"accelerator": "cpu", "execution": "sequential", "client_state": "disk"},
    "logging": {"progress": False, "wandb": "disabled", "checkpoint_every": 2},
}


def _cli(args, env=None):
    return subprocess.run([sys.executable, "-m", "fedvlm", *args], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})


def _checkpoint(folder: Path) -> dict:
    return torch.load(folder / "checkpoints/last.pt", weights_only=True)


def _store_files(folder: Path) -> list[str]:
    return sorted(p.name for p in (folder / "client_state").iterdir())



def test_killed_run_with_the_disk_store_resumes_bitwise_at_every_instant(colour_data_root, tmp_path):
    raw = {**RAW, "data": {**RAW["data"], "root": str(colour_data_root)},
           "logging": {**RAW["logging"], "results_dir": str(tmp_path / "whole")}}
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(raw))
    whole = _cli(["run", str(config)])
    assert whole.returncode == 0, whole.stderr[-2000:]
    (whole_dir,) = (tmp_path / "whole" / "resume_store").iterdir()
    killed_results = f"logging.results_dir={tmp_path / 'killed'}"

    first = _cli(["run", str(config), killed_results], {"FEDVLM_KILL_AT": "mid_round@3"})
    assert first.returncode == -9, first.stderr[-2000:]
    (killed_dir,) = (tmp_path / "killed" / "resume_store").iterdir()
    # (kill point, then: rounds in the checkpoint, lines in metrics.jsonl)
    for point, checkpointed, lines in (("after_round@3", 2, 3), ("before_checkpoint@4", 2, 3),
                                       ("after_checkpoint@4", 4, 3), ("before_summary@4", 4, 4)):
        resumed = _cli(["run", str(config), killed_results, "resume=true"], {"FEDVLM_KILL_AT": point})
        assert resumed.returncode == -9, (point, resumed.stderr[-2000:])
        checkpoint = _checkpoint(killed_dir)
        assert checkpoint["next_round"] == checkpointed, point
        assert len((killed_dir / "metrics.jsonl").read_text().splitlines()) == lines, point
        named = sorted(file_name(k, v) for k, v in checkpoint["client_state"].items())
        assert set(named) <= set(_store_files(killed_dir)), point  # the checkpoint's files are all there
        if point == "before_checkpoint@4":
            # round 4's files were written and the kill came before the commit: files the
            # checkpoint does not name are on disk, and it still names its own (round <= 2)
            assert any(".round4." in name for name in _store_files(killed_dir))
            assert all(v <= 2 for v in checkpoint["client_state"].values())
    done = _cli(["run", str(config), killed_results, "resume=true"])
    assert done.returncode == 0, done.stderr[-2000:]

    assert (whole_dir / "metrics.jsonl").read_bytes() == (killed_dir / "metrics.jsonl").read_bytes()
    a, b = _checkpoint(whole_dir), _checkpoint(killed_dir)
    for section in ("global_shared", "uploads", "algorithm_server", "client_state"):
        assert_bitwise_equal(a[section], b[section], section)
    assert a["history"] == b["history"] and a["communication"] == b["communication"]
    assert_bitwise_equal(load_client_states(whole_dir, a["client_state"]), load_client_states(killed_dir, b["client_state"]))
    # nothing but the final checkpoint's files is left: the crashed runs' newer files and the
    # versions the commits superseded are gone
    assert _store_files(killed_dir) == _store_files(whole_dir) == \
        sorted(file_name(k, v) for k, v in b["client_state"].items())
    summaries = [json.loads((d / "summary.json").read_text()) for d in (whole_dir, killed_dir)]
    where = ("run_id", "run_dir", "wall_time_s", "rounds_time_s")
    assert [{k: v for k, v in s.items() if k not in where} for s in summaries][0] == \
        {k: v for k, v in summaries[1].items() if k not in where}
