"""The run folder as a transaction: checkpoints that cannot run code, schema checks, the folder
lock, whole-file writes, and no half-made folders (docs/RELIABILITY.md, sections 2, 4, 6b)."""

import os
import pickle

import pytest
import torch

from fedvlm.errors import ConfigError
from fedvlm.tracking.run_folder import CHECKPOINT_FORMAT, RunFolder, read_checkpoint, write_atomically


def valid_checkpoint() -> dict:
    return {"format": CHECKPOINT_FORMAT, "config": {"name": "x"}, "identity": {"dataset": "ab", "backbone": "cd"},
            "next_round": 1, "global_shared": {"context": torch.zeros(2, 3)},
            "personal": {0: {"local": torch.ones(2)}}, "optimizer": {}, "uploads": {},
            "communication": {"uploaded_bytes": 8, "downloaded_bytes": 8},
            "history": [{"round": 1, "train/loss": 0.5, "clients/accuracy": [1.0, None]}],
            "algorithm_server": {"control/context": torch.zeros(2, 3)}, "algorithm_clients": {0: {}},
            "client_state": {}}


class _WritesAFile:
    """Unpickling this runs ``open(target, 'w')``: what a planted checkpoint would do."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_a_planted_pickle_never_runs(tmp_path):
    target = tmp_path / "pwned"
    path = tmp_path / "last.pt"
    torch.save({**valid_checkpoint(), "config": _WritesAFile(target)}, path)  # a torch zip with code inside
    with pytest.raises(ConfigError) as error:
        read_checkpoint(path)
    assert not target.exists()
    assert "\n" not in str(error.value) and "cannot be read safely" in str(error.value)
    plain = tmp_path / "plain.pt"  # and a bare pickle stream, no torch container
    plain.write_bytes(pickle.dumps(_WritesAFile(target)))
    with pytest.raises(ConfigError):
        read_checkpoint(plain)
    assert not target.exists()
    torch.load(path, weights_only=False)  # the plant is live: an unpickling loader runs it
    assert target.exists()


@pytest.mark.parametrize("damage", ["truncated", "random", "empty", "not_a_mapping", "old_format", "missing_key",
                                    "wrong_type", "not_tensors", "bool_round",
                                    "client_state_ahead", "client_state_not_rounds"])
def test_damaged_or_foreign_checkpoints_are_one_line(tmp_path, damage):
    path = tmp_path / "last.pt"
    state = valid_checkpoint()
    torch.save(state, path)
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    elif damage == "random":
        path.write_bytes(os.urandom(4096))
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        changed = {"not_a_mapping": [1, 2], "old_format": {**state, "format": 1},
                   "missing_key": {k: v for k, v in state.items() if k != "history"},
                   "wrong_type": {**state, "next_round": "1"},
                   "not_tensors": {**state, "global_shared": {"context": [0.0, 1.0]}},
                   "bool_round": {**state, "next_round": True},
                   # a client's file from a round after the checkpoint's, or not a round at all
                   "client_state_ahead": {**state, "client_state": {0: 2}},
                   "client_state_not_rounds": {**state, "client_state": {0: "1"}}}[damage]
        torch.save(changed, path)
    with pytest.raises(ConfigError) as error:
        read_checkpoint(path)
    message = str(error.value)
    assert "\n" not in message and str(path) in message and "fedvlm run" in message


def test_a_valid_checkpoint_loads_as_saved(tmp_path):
    folder = RunFolder(tmp_path)
    folder.save_checkpoint(valid_checkpoint())
    loaded = folder.load_checkpoint()
    assert torch.equal(loaded["personal"][0]["local"], torch.ones(2))
    assert loaded["history"] == valid_checkpoint()["history"]
    assert not list(tmp_path.rglob("*.tmp"))  # the temporary file was renamed, not left behind


def test_a_format_3_checkpoint_reads_as_one_keeping_every_client_in_it(tmp_path):
    """Format 3 (before runtime.client_state) is format 4 with every client's state in the file."""
    path = tmp_path / "last.pt"
    torch.save({**{k: v for k, v in valid_checkpoint().items() if k != "client_state"}, "format": 3}, path)
    loaded = read_checkpoint(path)
    assert loaded["format"] == CHECKPOINT_FORMAT == 4 and loaded["client_state"] == {}
    assert torch.equal(loaded["personal"][0]["local"], torch.ones(2))


def test_a_second_writer_fails_in_one_line(tmp_path):
    first = RunFolder.create(tmp_path, "exp", "run1")  # created locked
    with pytest.raises(ConfigError) as error:
        RunFolder(first.path).lock()  # another open file description: what another process holds
    assert "\n" not in str(error.value) and "another process" in str(error.value)
    first.unlock()
    RunFolder(first.path).lock().unlock()  # free again once the writer is done


def test_whole_files_or_the_old_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    write_atomically(path, b"old\n")

    def dies_halfway(stream):
        stream.write(b"new half")
        raise RuntimeError("killed mid-write")

    with pytest.raises(RuntimeError):
        write_atomically(path, save=dies_halfway)
    assert path.read_bytes() == b"old\n"


def test_a_folder_with_a_record_is_never_discarded(tmp_path):
    empty = RunFolder.create(tmp_path, "exp", "run1")
    (empty.path / "config.yaml").write_text("name: exp\n")
    assert empty.discard_if_empty() and not (tmp_path / "exp").exists()  # experiment folder too, it was its only run
    kept = RunFolder.create(tmp_path, "exp", "run2")
    kept.write_metrics([{"round": 1}])
    assert not kept.discard_if_empty() and kept.metrics_path.exists()
    stages = RunFolder.create(tmp_path, "patching", "run3")  # fedvlm patch: a stage below holds a checkpoint
    stage = RunFolder.create(stages.path, "patching_patch", "stage")
    stage.save_checkpoint(valid_checkpoint())
    assert not stages.discard_if_empty() and stage.checkpoint_path.exists()


@pytest.mark.parametrize("name", ["../escape", "/abs", "a/b", "..", ".", ""])
def test_run_folders_stay_below_the_results_dir(tmp_path, name):
    with pytest.raises(ConfigError):
        RunFolder.create(tmp_path / "results", name, "run1")
    assert not (tmp_path / "escape").exists() and not (tmp_path / "results").exists()
