"""fedvlm sweep CONFIG --slice i/n: slices of a sweep cover its runs exactly once (run folders
checked), and a malformed slice is one line with exit status 2."""

import os
import subprocess
import sys

import pytest
import yaml

from fedvlm.cli import parse_slice, sweep_slice
from fedvlm.config import load_configs
from fedvlm.errors import ConfigError

SWEEP = {
    "name": "sliced", "seed": 1,
    "model": {"name": "fedvlm-tiny", "pretrained": None},
    "data": {"dataset": "synthetic_scenes"},
    "partition": {"name": "iid", "num_clients": 2},
    "head": {"name": "coop", "n_ctx": 4},
    "federation": {"rounds": 0},
    "logging": {"progress": False, "wandb": "disabled"},
    "seeds": [1, 2], "sweep": {"head.n_ctx": [2, 4, 8]},
}


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "fedvlm", *args], capture_output=True, text=True, timeout=900,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def _runs_in(results):
    """(n_ctx, seed) of every run folder's config.yaml."""
    return sorted((raw["head"]["n_ctx"], raw["seed"]) for raw in
                  (yaml.safe_load(path.read_text()) for path in results.glob("sliced/*/config.yaml")))


def test_two_slices_run_every_run_of_the_sweep_once(colour_data_root, tmp_path):
    config = tmp_path / "sweep.yaml"
    config.write_text(yaml.safe_dump({**SWEEP, "data": {**SWEEP["data"], "root": str(colour_data_root)},
                                      "logging": {**SWEEP["logging"], "results_dir": str(tmp_path / "results")}}))
    first = _cli("sweep", str(config), "--slice", "0/2")
    assert first.returncode == 0, first.stderr[-2000:]
    assert first.stdout.startswith("sweep slice 0/2: 3 of 6 runs")
    after_first = _runs_in(tmp_path / "results")
    second = _cli("sweep", str(config), "--slice", "1/2")
    assert second.returncode == 0, second.stderr[-2000:]
    everything = sorted((n, seed) for n in (2, 4, 8) for seed in (1, 2))
    assert len(after_first) == 3 and _runs_in(tmp_path / "results") == everything  # once each
    listed = _cli("sweep", str(config), "--slice", "1/2", "--dry-run")
    assert listed.returncode == 0 and listed.stdout.count("\n[") == 3 and _runs_in(tmp_path / "results") == everything


@pytest.mark.parametrize("bad", ["2/2", "-1/2", "1/0", "a/b", "1", "0/2/3"])
def test_a_bad_slice_is_one_line_and_exit_2(tmp_path, bad):
    done = _cli("sweep", "does-not-matter.yaml", f"--slice={bad}")
    assert done.returncode == 2 and done.stderr.count("\n") == 1, done.stderr
    assert done.stderr.startswith("error: --slice: expected i/n") and "Traceback" not in done.stderr


def test_slices_partition_the_runs_round_robin():
    configs = load_configs(overrides={k: v for k, v in SWEEP.items()})
    for count in (1, 2, 4, 7):
        numbers = sorted(n for i in range(count) for n, _ in sweep_slice(configs, i, count))
        assert numbers == list(range(1, len(configs) + 1))
    assert [n for n, _ in sweep_slice(configs, 1, 4)] == [2, 6]
    assert parse_slice("3/4") == (3, 4)
    with pytest.raises(ConfigError, match="--slice"):
        parse_slice("4/4")
