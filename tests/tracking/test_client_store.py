"""runtime.client_state: disk (fedvlm/tracking/client_store.py): the same run with each client's
state in files ends bitwise where the memory store ends, a round writes files for its trained
clients only, a checkpoint names the current ones and nothing else stays, and a missing or damaged
file on resume is one line, exit 2, with the run folder unchanged."""

import json
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save

from fedvlm.cli import main
from fedvlm.config import load_config
from fedvlm.simulation import run, sample_clients
from fedvlm.tracking import client_store
from fedvlm.tracking.client_store import DiskClientStore, load_client_states
from bitwise import assert_bitwise_equal

BASE = {
    "name": "store", "seed": 5,
    "model": {"name": "fedvlm-tiny", "pretrained": None},
    "data": {"dataset": "synthetic_scenes"},
    "partition": {"name": "dirichlet", "num_clients": 4, "alpha": 1.0},
    "head": {"name": "coop", "n_ctx": 4},
    "federation": {"rounds": 3, "participation": 0.5},
    "optim": {"lr": 0.01, "batch_size": 8},
    "runtime": {"accelerator": "cpu"},
    "logging": {"progress": False, "wandb": "disabled"},
}
# a head with private parameters and kept optimizer state; an algorithm with client state
SETTINGS = {
    "fedotp_keep_state": {"head": {"name": "fedotp"}, "optim": {"lr": 0.01, "batch_size": 8, "keep_state": True}},
    "coop_scaffold": {"algorithm": {"name": "scaffold"}},
}


def _raw(data_root, results, setting, **sections):
    raw = json.loads(json.dumps(BASE))
    raw.update(json.loads(json.dumps(SETTINGS[setting])))
    raw["data"]["root"] = str(data_root)
    raw["logging"]["results_dir"] = str(results)
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value}
    return raw


def _checkpoint(run_dir: Path) -> dict:
    return torch.load(run_dir / "checkpoints/last.pt", weights_only=True)



def _client_sections(run_dir: Path) -> tuple[dict, dict, dict]:
    """Every client's (personal, optimizer, algorithm_clients), from the checkpoint or its files."""
    checkpoint = _checkpoint(run_dir)
    if checkpoint["client_state"]:
        return load_client_states(run_dir, checkpoint["client_state"])
    return checkpoint["personal"], checkpoint["optimizer"], checkpoint["algorithm_clients"]


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_disk_store_ends_bitwise_where_memory_ends(colour_data_root, tmp_path, setting):
    memory = run(load_config(overrides=_raw(colour_data_root, tmp_path / "memory", setting)))
    disk = run(load_config(overrides=_raw(colour_data_root, tmp_path / "disk", setting,
                                          runtime={"client_state": "disk"})))
    memory_dir, disk_dir = Path(memory["run_dir"]), Path(disk["run_dir"])
    a, b = _checkpoint(memory_dir), _checkpoint(disk_dir)
    for section in ("global_shared", "uploads", "algorithm_server"):
        assert_bitwise_equal(a[section], b[section], section)
    assert a["history"] == b["history"]
    assert (memory_dir / "metrics.jsonl").read_bytes() == (disk_dir / "metrics.jsonl").read_bytes()
    # the disk checkpoint holds no client tensor, only the round of each client's file
    assert not b["personal"] and not b["optimizer"] and not b["algorithm_clients"] and not a["client_state"]
    trained = sorted(set().union(*(sample_clients(5, r, 4, 0.5) for r in range(3))))
    assert sorted(b["client_state"]) == trained == sorted(a["personal"])
    for kept_memory, kept_disk, name in zip(_client_sections(memory_dir), _client_sections(disk_dir),
                                            ("personal", "optimizer", "algorithm_clients")):
        assert_bitwise_equal(kept_memory, kept_disk, name)
    assert any(_client_sections(disk_dir)[1 if setting == "fedotp_keep_state" else 2].values())
    # exactly the files the checkpoint names are left (superseded versions were removed)
    files = sorted(p.name for p in (disk_dir / "client_state").iterdir())
    assert files == sorted(client_store.file_name(k, v) for k, v in b["client_state"].items())


def test_a_round_writes_files_for_its_trained_clients_only(colour_data_root, tmp_path, monkeypatch):
    """Each round writes one file per client that trained in it (and none for the others);
    with a checkpoint every 2 rounds, the checkpoint names each client's newest round and the
    versions it superseded, named by the previous checkpoint or by none, are gone."""
    writes: list[tuple[int, int]] = []
    write = DiskClientStore._write

    def recording(self, client, version, entry):
        writes.append((version, client))
        return write(self, client, version, entry)

    monkeypatch.setattr(DiskClientStore, "_write", recording)
    raw = _raw(colour_data_root, tmp_path, "fedotp_keep_state", federation={"rounds": 4, "participation": 0.5},
               partition={"num_clients": 6}, logging={"checkpoint_every": 2}, runtime={"client_state": "disk"})
    summary = run(load_config(overrides=raw))
    sampled = [sample_clients(5, r, 6, 0.5) for r in range(4)]
    assert [sorted(k for v, k in writes if v == r + 1) for r in range(4)] == sampled
    assert all(len(clients) == 3 for clients in sampled)  # 3 of 6 clients' files per round, not 6
    checkpoint = _checkpoint(Path(summary["run_dir"]))
    newest = {k: r + 1 for r in range(4) for k in sampled[r]}
    assert checkpoint["client_state"] == dict(sorted(newest.items()))
    files = sorted(p.name for p in (Path(summary["run_dir"]) / "client_state").iterdir())
    assert files == sorted(client_store.file_name(k, v) for k, v in newest.items())


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _error_line(capsys, argv) -> str:
    status = main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert status == 2, captured.err
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    return lines[0]


def test_a_missing_or_damaged_file_is_one_line_and_changes_nothing(colour_data_root, tmp_path, capsys):
    raw = _raw(colour_data_root, tmp_path / "results", "fedotp_keep_state", runtime={"client_state": "disk"},
               federation={"rounds": 3, "participation": 1.0})
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(raw))
    summary = run(load_config(config))
    folder = Path(summary["run_dir"])
    (folder / "summary.json").unlink()  # as if killed after its final checkpoint
    manifest = _checkpoint(folder)["client_state"]
    victim = folder / "client_state" / client_store.file_name(2, manifest[2])
    good = victim.read_bytes()
    header = int.from_bytes(good[:8], "little") + 8  # safetensors: 8-byte header length, JSON, tensor bytes
    flipped = bytearray(good)
    flipped[header + 5] ^= 0x01  # one bit of a tensor: the header still parses
    damages = {"does not exist": None, "cannot be read as a safetensors file": good[: len(good) // 2],
               "fails its checksum": bytes(flipped),
               "has no fedvlm-client-state-1 header": save({"weights": torch.zeros(3)})}  # another program's file
    for expected, damaged in damages.items():
        victim.unlink(missing_ok=True)
        if damaged is not None:
            victim.write_bytes(damaged)
        before = _files(folder)
        line = _error_line(capsys, ["run", str(config), f"resume={folder}"])
        assert str(victim) in line and expected in line, line
        assert "client 2 after round" in line and "expected" in line, line
        assert _files(folder) == before, expected  # nothing removed, nothing written
    victim.write_bytes(good)
    assert main(["run", str(config), f"resume={folder}"]) == 0  # the intact file resumes


def test_a_run_resumes_in_the_other_mode_bitwise(colour_data_root, tmp_path):
    """runtime may differ on resume: a memory-mode checkpoint resumed in disk mode writes its
    clients to files (named by the next checkpoint), a disk-mode one resumed in memory mode reads
    them back; both end where the uninterrupted run ends."""
    import os
    import subprocess
    import sys

    whole = run(load_config(overrides=_raw(colour_data_root, tmp_path / "whole", "fedotp_keep_state")))
    expected = _client_sections(Path(whole["run_dir"]))
    for saved, resumed in (("memory", "disk"), ("disk", "memory")):
        raw = _raw(colour_data_root, tmp_path / saved, "fedotp_keep_state", runtime={"client_state": saved})
        config = tmp_path / f"{saved}.yaml"
        config.write_text(yaml.safe_dump(raw))
        killed = subprocess.run([sys.executable, "-m", "fedvlm", "run", str(config)], capture_output=True, text=True,
                                timeout=600, env={**os.environ, "FEDVLM_KILL_AT": "after_round@1"})
        assert killed.returncode == -9, killed.stderr[-2000:]
        (folder,) = (tmp_path / saved / "store").iterdir()
        summary = run(load_config(config, [f"resume={folder}", f"runtime.client_state={resumed}"]))
        assert summary["global/accuracy"] == whole["global/accuracy"], (saved, resumed)
        checkpoint = _checkpoint(folder)
        assert bool(checkpoint["client_state"]) == (resumed == "disk") and bool(checkpoint["personal"]) == (
            resumed == "memory")
        assert (folder / "metrics.jsonl").read_bytes() == (Path(whole["run_dir"]) / "metrics.jsonl").read_bytes()
        assert_bitwise_equal(_client_sections(folder), expected, f"{saved} -> {resumed}")
