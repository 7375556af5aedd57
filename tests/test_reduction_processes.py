"""Aggregation by reduction on real gloo processes: 1, 2 (and 4, slow) processes end bitwise
equal for several algorithms (also FedNova with stragglers and dropout, and FedAWA, whose
server step gathers every update) and a head with private parameters, and no rank ever receives a
private tensor of a client another rank owns (tests/recorded_launch.py records every tensor the
collectives hand back)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fedvlm.simulation import owner
from bitwise import assert_bitwise_equal, launch_recorded

BASE = {
    "seed": 3,
    "model": {"name": "fedvlm-tiny", "pretrained": None},
    "data": {"dataset": "synthetic_scenes"},
    "partition": {"name": "dirichlet", "num_clients": 4, "alpha": 1.0},
    "head": {"name": "coop", "n_ctx": 4},
    "federation": {"rounds": 2, "participation": 0.75},
    "optim": {"lr": 0.01, "batch_size": 8},
    "runtime": {"execution": "sequential", "accelerator": "cpu", "ddp_timeout_s": 300},
    "logging": {"progress": False, "wandb": "disabled"},
}
RUNS = {
    "fedavg": {"algorithm": {"name": "fedavg"}},
    "scaffold": {"algorithm": {"name": "scaffold"}},
    "fedadam": {"algorithm": {"name": "fedadam", "server_lr": 0.005}},
    "dp_fedavg": {"algorithm": {"name": "dp_fedavg", "clip_norm": 0.05, "noise_multiplier": 0.5}},
    # stragglers take fewer steps (FedNova's tau_i), a dropped client reports nothing
    "fednova": {"algorithm": {"name": "fednova"},
                "federation": {"rounds": 2, "participation": 1.0, "dropout": 0.25,
                               "stragglers": {"fraction": 0.5, "min_work": 0.2}}},
    # the server step needs every update (gathered shared parameters), not sums
    "fedawa": {"algorithm": {"name": "fedawa"}, "federation": {"rounds": 2, "participation": 1.0}},
    # private parameters; every client trains every round, so each one's are its own
    "fedotp": {"head": {"name": "fedotp"}, "federation": {"rounds": 2, "participation": 1.0},
               "optim": {"lr": 0.01, "batch_size": 8, "keep_state": True}},
}


def _launch(data_root, folder: Path, devices: int) -> Path:
    runs = [{**json.loads(json.dumps(BASE)), **sections, "name": name,
             "data": {"dataset": "synthetic_scenes", "root": str(data_root)},
             "logging": {**BASE["logging"], "results_dir": str(folder / "results")}}
            for name, sections in RUNS.items()]
    return launch_recorded(runs, folder, devices)


@pytest.fixture(scope="module")
def launches(colour_data_root, tmp_path_factory):
    return {devices: _launch(colour_data_root, tmp_path_factory.mktemp(f"p{devices}"), devices) for devices in (1, 2)}


def _run(folder: Path, name: str):
    (run_dir,) = (folder / "results" / name).iterdir()
    return run_dir, torch.load(run_dir / "checkpoints/last.pt", weights_only=True)



SECTIONS = ("global_shared", "personal", "optimizer", "uploads", "algorithm_server", "algorithm_clients")


def _assert_identical(one: Path, other: Path):
    for name in RUNS:
        (dir_a, a), (dir_b, b) = _run(one, name), _run(other, name)
        for section in SECTIONS:
            assert_bitwise_equal(a[section], b[section], f"{name} {section}")
        assert a["history"] == b["history"], name
        assert (dir_a / "metrics.jsonl").read_bytes() == (dir_b / "metrics.jsonl").read_bytes(), name


def test_one_and_two_processes_end_bitwise_equal(launches):
    _assert_identical(launches[1], launches[2])
    _, fedotp = _run(launches[2], "fedotp")
    assert sorted(fedotp["personal"]) == [0, 1, 2, 3] and sorted(fedotp["optimizer"]) == [0, 1, 2, 3]
    _, scaffold = _run(launches[2], "scaffold")
    assert scaffold["algorithm_clients"]  # the clients' controls reached the checkpoint


@pytest.mark.slow
def test_four_processes_end_bitwise_equal_to_one(launches, colour_data_root, tmp_path):
    _assert_identical(launches[1], _launch(colour_data_root, tmp_path, 4))


def _contains(haystack: np.ndarray, needle: np.ndarray) -> bool:
    """Whether ``needle`` (its first 16 values) appears contiguously in ``haystack``."""
    needle = needle[:16]
    for start in np.flatnonzero(haystack == needle[0]):
        if start + len(needle) <= len(haystack) and np.array_equal(haystack[start : start + len(needle)], needle):
            return True
    return False


def _private_tensors(folder: Path, client_of_rank) -> list[np.ndarray]:
    """The final private tensors (private parameters, optimizer state, SCAFFOLD's c_i) of the
    clients ``client_of_rank`` selects."""
    tensors = []
    for name, sections in (("fedotp", ("personal", "optimizer")), ("scaffold", ("algorithm_clients",))):
        _, checkpoint = _run(folder, name)
        for section in sections:
            for client, entry in checkpoint[section].items():
                if client_of_rank(client):
                    tensors += [t.double().flatten().numpy() for t in entry.values() if t.numel() >= 16]
    return tensors


def test_no_rank_receives_another_ranks_private_tensors(launches):
    folder = launches[2]
    received = {rank: torch.load(folder / "received" / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)}
    for rank in (0, 1):
        foreign = _private_tensors(folder, lambda k: owner(k, 2) != rank)
        assert len(foreign) >= 4 and all(np.abs(t).sum() > 0 for t in foreign)
        during_rounds = [r["values"].numpy() for r in received[rank] if r["phase"] == "round"]
        assert during_rounds  # the recorder saw the round's collectives
        assert not any(_contains(values, tensor) for values in during_rounds for tensor in foreign), rank
    # The checkpoint: only rank 0, which writes the file, receives the other rank's clients (the
    # search finds them there, so it would have found them above); rank 1 receives none.
    at_checkpoint = {rank: [r["values"].numpy() for r in received[rank] if r["phase"] == "checkpoint"]
                     for rank in (0, 1)}
    foreign_to_zero = _private_tensors(folder, lambda k: owner(k, 2) == 1)
    assert all(any(_contains(values, tensor) for values in at_checkpoint[0]) for tensor in foreign_to_zero)
    assert at_checkpoint[1] and all(values.size <= 1 for values in at_checkpoint[1])  # the row count alone
