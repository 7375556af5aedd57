"""runtime.client_state: disk on real gloo processes: 1 and 2 processes end bitwise equal (the
clients' files too), each rank reads and writes only the files of the clients it owns, no private
tensor reaches rank 0 for the checkpoint, and a run checkpointed on 1 process resumes on 2
(tests/recorded_launch.py records the collectives and every store access)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from fedvlm.simulation import owner
from fedvlm.tracking.client_store import load_client_states
from bitwise import assert_bitwise_equal, launch_recorded

BASE = {
    "seed": 3,
    "model": {"name": "fedvlm-tiny", "pretrained": None},
    "data": {"dataset": "synthetic_scenes"},
    "partition": {"name": "dirichlet", "num_clients": 5, "alpha": 1.0},
    "head": {"name": "coop", "n_ctx": 4},
    "federation": {"rounds": 3, "participation": 0.6},
    "optim": {"lr": 0.01, "batch_size": 8},
    # sequential: one slot on any process count (batched slots add up in another order, to 1e-5)
    "runtime": {"accelerator": "cpu", "execution": "sequential", "ddp_timeout_s": 300, "client_state": "disk"},
    "logging": {"progress": False, "wandb": "disabled"},
}
RUNS = {
    "fedotp": {"head": {"name": "fedotp"}, "optim": {"lr": 0.01, "batch_size": 8, "keep_state": True}},
    "scaffold": {"algorithm": {"name": "scaffold"}},
}


def _raw(data_root, results: Path, name: str) -> dict:
    raw = {**json.loads(json.dumps(BASE)), **json.loads(json.dumps(RUNS[name])), "name": name}
    raw["data"] = {"dataset": "synthetic_scenes", "root": str(data_root)}
    raw["logging"] = {**BASE["logging"], "results_dir": str(results)}
    return raw


def _launch(data_root, folder: Path, devices: int) -> Path:
    return launch_recorded([_raw(data_root, folder / "results", name) for name in RUNS], folder, devices)


@pytest.fixture(scope="module")
def launches(colour_data_root, tmp_path_factory):
    return {devices: _launch(colour_data_root, tmp_path_factory.mktemp(f"store{devices}"), devices)
            for devices in (1, 2)}


def _run_dir(results: Path, name: str) -> Path:
    (run_dir,) = (results / name).iterdir()
    return run_dir



def _assert_identical(dir_a: Path, dir_b: Path, name: str):
    a, b = (torch.load(d / "checkpoints/last.pt", weights_only=True) for d in (dir_a, dir_b))
    for section in ("global_shared", "uploads", "algorithm_server", "client_state"):
        assert_bitwise_equal(a[section], b[section], f"{name} {section}")
    assert a["history"] == b["history"], name
    assert (dir_a / "metrics.jsonl").read_bytes() == (dir_b / "metrics.jsonl").read_bytes(), name
    kept_a, kept_b = (load_client_states(d, c["client_state"]) for d, c in ((dir_a, a), (dir_b, b)))
    assert_bitwise_equal(kept_a, kept_b, f"{name} client files")
    return kept_b


def test_one_and_two_processes_end_bitwise_equal_with_the_disk_store(launches):
    for name in RUNS:
        personal, optimizer, algorithm = _assert_identical(_run_dir(launches[1] / "results", name),
                                                           _run_dir(launches[2] / "results", name), name)
        assert (optimizer if name == "fedotp" else algorithm)  # the kept state is in the files


def test_each_rank_reads_and_writes_only_the_clients_it_owns(launches):
    folder = launches[2]
    for rank in (0, 1):
        accesses = json.loads((folder / "received" / f"store_rank{rank}.json").read_text())
        assert {op for _, op, _ in accesses} == {"read", "write"}, rank  # both happened on this rank
        foreign = [(run, op, client) for run, op, client in accesses if owner(client, 2) != rank]
        assert not foreign, (rank, foreign)
        received = torch.load(folder / "received" / f"rank{rank}.pt", weights_only=True)
        # no gather of client state to rank 0 at the checkpoint: the collectives of a checkpoint
        # round are the round's (reports, sums), nothing sized by the clients' private state
        assert not [r for r in received if r["collective"] == "gather"], rank


def test_a_run_checkpointed_on_one_process_resumes_on_two(colour_data_root, tmp_path):
    raw = _raw(colour_data_root, tmp_path / "results", "fedotp")
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(raw))

    def cli(*args, env=None):
        return subprocess.run([sys.executable, "-m", "fedvlm", "run", str(config), *args], capture_output=True,
                              text=True, timeout=900, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})

    whole = cli("name=whole")
    assert whole.returncode == 0, whole.stderr[-2000:]
    killed = cli("name=killed", env={"FEDVLM_KILL_AT": "after_round@1"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = cli("name=killed", "resume=true", "runtime.devices=2")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    _assert_identical(_run_dir(tmp_path / "results", "whole"), _run_dir(tmp_path / "results", "killed"), "fedotp")
