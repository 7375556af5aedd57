"""End-to-end runs of the round loop on a tiny CLIP and a small colour dataset."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from fedvlm.config import load_config
from fedvlm.errors import ConfigError
from fedvlm.heads import HEADS
from fedvlm.heads.base import normalize
from fedvlm.heads.coop import CoOpConfig, CoOpHead
from fedvlm.server import ALGORITHMS, FedAvg
from fedvlm.simulation import run, sample_clients, shard_clients
from fedvlm.tracking.run_folder import RunFolder

BASE = {
    "name": "e2e", "seed": 3,
    "model": {"name": "fedvlm-tiny", "pretrained": None},
    "data": {"dataset": "synthetic_scenes"},
    "partition": {"name": "dirichlet", "num_clients": 3, "alpha": 1.0},
    "head": {"name": "coop", "n_ctx": 4},
    "federation": {"rounds": 2},
    "optim": {"lr": 0.01, "batch_size": 8},
    "logging": {"progress": False},
}


def _config(data_root, results, **sections):
    raw = json.loads(json.dumps(BASE))
    raw["data"]["root"] = str(data_root)
    raw["logging"]["results_dir"] = str(results)
    for key, value in sections.items():
        raw.setdefault(key, {})
        replaces = isinstance(value, dict) and value.get("name", raw[key].get("name")) != raw[key].get("name")
        raw[key] = {**raw[key], **value} if isinstance(value, dict) and not replaces else value
    return raw


# A head with a private part, registered the way any new head is (one class, one decorator).
class _PrivateContextConfig(CoOpConfig):
    pass


@HEADS.register("test_shared_private")
class SharedPrivateHead(CoOpHead):
    Config = _PrivateContextConfig
    private = ("local_context",)

    def __init__(self, config, backbone, classnames, template, num_slots=1, seed=0):
        super().__init__(config, backbone, classnames, template, num_slots, seed)
        self.local_context = self.slot_parameter(torch.zeros_like(self.context[0]))

    def text_features(self, slots):
        return normalize(self.layout.encode(self.backbone, self.context[slots] + self.local_context[slots]))


SERVER_INPUTS: list = []


@ALGORITHMS.register("test_recording_fedavg")
class RecordingFedAvg(FedAvg):
    def client_terms(self, current, update):  # what the server half is handed of each client
        SERVER_INPUTS.append([sorted(update.shared), sorted(update.extras)])
        return super().client_terms(current, update)


def test_three_clients_two_rounds_end_to_end(colour_data_root, tmp_path, tiny_backbone):
    summary = run(load_config(overrides=_config(colour_data_root, tmp_path)))
    folder = Path(summary["run_dir"])
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "partition.csv", "partition.png",
                 "checkpoints/last.pt"):
        assert (folder / name).exists(), name
    assert list(folder.glob("wandb/offline-run-*")), "no offline W&B run"
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [m["round"] for m in lines] == [1, 2]
    width = tiny_backbone.text_width
    per_client = 4 * width * 4  # 4 context vectors x text width x 4 bytes
    assert lines[-1]["uploaded_bytes"] == lines[-1]["downloaded_bytes"] == 2 * 3 * per_client
    assert summary["parameters"]["shared_per_client"] == 4 * width
    assert summary["parameters"]["private_per_client"] == 0
    assert 0 <= summary["global/accuracy"] <= 1 and len(summary["clients/accuracy"]) == 3
    assert 0 < summary["rounds_time_s"] < summary["wall_time_s"]  # set-up (features) comes before the rounds
    counts = np.loadtxt(folder / "partition.csv", delimiter=",", skiprows=1)
    assert counts.shape == (3, 3) and counts.sum() == 18  # half of 36 images are training images
    assert yaml.safe_load((folder / "config.yaml").read_text())["partition"]["alpha"] == 1.0


def test_federated_coop_learns_the_colours(colour_data_root, tmp_path):
    zero = run(load_config(overrides=_config(colour_data_root, tmp_path, head={"name": "zeroshot"},
                                             federation={"rounds": 0})))
    trained = run(load_config(overrides=_config(colour_data_root, tmp_path, federation={"rounds": 4},
                                                optim={"lr": 0.05})))
    assert trained["global/accuracy"] >= 0.9
    assert trained["global/accuracy"] > zero["global/accuracy"]


def test_private_parameters_never_reach_the_server(colour_data_root, tmp_path, tiny_backbone):
    SERVER_INPUTS.clear()
    summary = run(load_config(overrides=_config(colour_data_root, tmp_path, head={"name": "test_shared_private"},
                                                algorithm={"name": "test_recording_fedavg"})))
    assert SERVER_INPUTS and all(entry == [["context"], []] for entry in SERVER_INPUTS)
    checkpoint = torch.load(Path(summary["run_dir"]) / "checkpoints/last.pt", weights_only=True)
    assert list(checkpoint["global_shared"]) == ["context"]
    private = [checkpoint["personal"][k]["local_context"] for k in range(3)]
    assert all(p.abs().sum() > 0 for p in private)  # each client trained and kept its own
    assert not torch.equal(private[0], private[1])
    context = 4 * tiny_backbone.text_width
    assert summary["parameters"]["private_per_client"] == context
    assert summary["uploaded_bytes"] == 2 * 3 * context * 4  # only the shared half travels


def test_local_and_centralized_algorithms(colour_data_root, tmp_path):
    local = run(load_config(overrides=_config(colour_data_root, tmp_path, algorithm={"name": "local"})))
    assert local["uploaded_bytes"] == 0 and "global/accuracy" not in local
    central = run(load_config(overrides=_config(colour_data_root, tmp_path, algorithm={"name": "centralized"})))
    assert central["num_clients"] == 1 and central["clients/accuracy"][0] == central["global/accuracy"]


def test_sampling_and_sharding():
    rounds = [sample_clients(5, r, 20, 0.3) for r in range(3)]
    assert all(len(c) == 6 and c == sorted(c) for c in rounds)
    assert rounds[0] != rounds[1] and rounds[0] == sample_clients(5, 0, 20, 0.3)
    # a client trains on the same rank every round (its private state lives there)
    assert shard_clients([0, 1, 3, 4, 6], 2) == [[0, 4, 6], [1, 3]]
    for clients in rounds:
        shards = shard_clients(clients, 3)
        assert sorted(sum(shards, [])) == clients
        assert all(k % 3 == rank for rank, shard in enumerate(shards) for k in shard)


def _cli(args, env_extra=None, cwd=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "fedvlm", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


def _write(path, raw):
    path.write_text(yaml.safe_dump(raw))
    return path


def _files(folder):
    """Every file of a run folder, as bytes (the lock file is empty and stays so)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _checkpoint(folder):
    return torch.load(folder / "checkpoints/last.pt", weights_only=True)


def _same_state(a, b):
    for section in ("personal", "optimizer", "uploads"):
        assert a[section].keys() == b[section].keys(), section
        for k in a[section]:
            assert all(torch.equal(a[section][k][n], b[section][k][n]) for n in a[section][k]), (section, k)
    assert a["global_shared"].keys() == b["global_shared"].keys()
    assert all(torch.equal(a["global_shared"][n], b["global_shared"][n]) for n in a["global_shared"])  # bitwise
    assert a["history"] == b["history"] and a["communication"] == b["communication"]
    assert a["identity"] == b["identity"] and a["next_round"] == b["next_round"]


# What may differ between the summaries of a killed-and-resumed run and an uninterrupted one.
_WHERE_AND_WHEN = ("run_id", "run_dir", "wall_time_s", "rounds_time_s")


def test_killed_run_resumes_bitwise_at_every_instant(colour_data_root, tmp_path):
    """One run killed at every kill point in turn (mid-round, between a checkpoint and its
    metrics line, at a round's end with the metrics ahead of the checkpoint, between the final
    checkpoint and the summary), resumed each time, ends with the files of an uninterrupted run."""
    raw = _config(colour_data_root, tmp_path / "whole", federation={"rounds": 4}, runtime={"execution": "sequential"},
                  optim={"keep_state": True}, logging={"checkpoint_every": 2, "wandb": "disabled"})
    config = _write(tmp_path / "exp.yaml", raw)
    whole = _cli(["run", str(config)])
    assert whole.returncode == 0, whole.stderr
    killed_results = f"logging.results_dir={tmp_path / 'killed'}"
    (whole_dir,) = (tmp_path / "whole" / "e2e").iterdir()

    first = _cli(["run", str(config), killed_results], {"FEDVLM_KILL_AT": "mid_round@3"})
    assert first.returncode == -9, first.stderr  # SIGKILL
    (killed_dir,) = (tmp_path / "killed" / "e2e").iterdir()
    # (kill point, then: rounds in the checkpoint, lines in metrics.jsonl)
    for point, checkpointed, lines in (("after_round@3", 2, 3), ("after_checkpoint@4", 4, 3),
                                       ("before_summary@4", 4, 4)):
        assert _checkpoint(killed_dir)["next_round"] in (2, 4) and not (killed_dir / "summary.json").exists()
        resumed = _cli(["run", str(config), killed_results, "resume=true"], {"FEDVLM_KILL_AT": point})
        assert resumed.returncode == -9, (point, resumed.stderr)
        assert _checkpoint(killed_dir)["next_round"] == checkpointed, point
        assert len((killed_dir / "metrics.jsonl").read_text().splitlines()) == lines, point
    done = _cli(["run", str(config), killed_results, "resume=true"])
    assert done.returncode == 0, done.stderr

    assert (whole_dir / "metrics.jsonl").read_bytes() == (killed_dir / "metrics.jsonl").read_bytes()
    _same_state(_checkpoint(whole_dir), _checkpoint(killed_dir))
    a, b = (json.loads((d / "summary.json").read_text()) for d in (whole_dir, killed_dir))
    assert {k: v for k, v in a.items() if k not in _WHERE_AND_WHEN} == \
        {k: v for k, v in b.items() if k not in _WHERE_AND_WHEN}
    assert [m["round"] for m in map(json.loads, (killed_dir / "metrics.jsonl").read_text().splitlines())] == [1, 2, 3, 4]

    # Resuming the finished run is a no-op that says so: one line, exit 0, every file as it was.
    before = _files(killed_dir)
    again = _cli(["run", str(config), killed_results, "resume=true"])
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip().count("\n") == 0 and "already finished" in again.stdout
    assert _files(killed_dir) == before
    by_path = run(load_config(config, [killed_results, f"resume={killed_dir}"]))
    assert by_path["already_finished"] and by_path["global/accuracy"] == b["global/accuracy"]
    assert _files(killed_dir) == before


def test_a_folder_being_written_cannot_be_resumed(colour_data_root, tmp_path):
    raw = _config(colour_data_root, tmp_path / "results", federation={"rounds": 2},
                  logging={"wandb": "disabled"})
    config = _write(tmp_path / "exp.yaml", raw)
    killed = _cli(["run", str(config)], {"FEDVLM_KILL_AT": "after_round@1"})
    assert killed.returncode == -9
    (folder,) = (tmp_path / "results" / "e2e").iterdir()
    before = _files(folder)
    writer = RunFolder(folder).lock()  # another process writing the folder (this test's process)
    try:
        second = _cli(["run", str(config), "resume=true"])
    finally:
        writer.unlock()
    assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr
    assert "being written by another process" in second.stderr and _files(folder) == before
    resumed = _cli(["run", str(config), "resume=true"])  # once the writer is gone
    assert resumed.returncode == 0, resumed.stderr


LOCK_PROBES: list = []


@ALGORITHMS.register("test_lock_probe")
class LockProbeFedAvg(FedAvg):
    """Mid-run (at aggregation), try to take the lock of the run folder being written."""

    def server_step_from_sums(self, current, sums, server_state, round_info):
        for folder in LOCK_PROBES[0].glob("*/*"):
            try:
                RunFolder(folder).lock().unlock()
                LOCK_PROBES.append("free")
            except ConfigError as error:
                LOCK_PROBES.append(str(error))
        return super().server_step_from_sums(current, sums, server_state, round_info)


def test_a_running_run_holds_its_folder_lock(colour_data_root, tmp_path):
    LOCK_PROBES[:] = [tmp_path]
    run(load_config(overrides=_config(colour_data_root, tmp_path, algorithm={"name": "test_lock_probe"},
                                      logging={"wandb": "disabled"})))
    assert len(LOCK_PROBES) == 3 and all("another process" in probe for probe in LOCK_PROBES[1:])
    (folder,) = tmp_path.glob("*/*")
    RunFolder(folder).lock().unlock()  # released when the run ended


def test_resume_refuses_a_changed_dataset(colour_data_root, tmp_path):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(colour_data_root, data)
    raw = _config(data, tmp_path / "results", federation={"rounds": 2}, logging={"wandb": "disabled"})
    config = _write(tmp_path / "exp.yaml", raw)
    killed = _cli(["run", str(config)], {"FEDVLM_KILL_AT": "after_round@1"})
    assert killed.returncode == -9
    (folder,) = (tmp_path / "results" / "e2e").iterdir()
    before = _files(folder)
    shutil.rmtree(data / "synthetic_scenes" / "blue_lake")  # a class folder removed between kill and resume
    resumed = _cli(["run", str(config), "resume=true"])
    assert resumed.returncode == 2 and resumed.stderr.count("\n") == 1, resumed.stderr
    assert "the dataset synthetic_scenes" in resumed.stderr and "36 images, 3 classes" in resumed.stderr
    assert "24 images, 2 classes" in resumed.stderr and _files(folder) == before


def test_resume_refuses_other_backbone_weights(colour_data_root, tmp_path, tiny_backbone):
    weights = tmp_path / "tiny.pt"
    torch.save(tiny_backbone.model.state_dict(), weights)
    raw = _config(colour_data_root, tmp_path / "results", model={"name": "fedvlm-tiny", "pretrained": str(weights)},
                  logging={"wandb": "disabled"})
    summary = run(load_config(overrides=raw))
    folder = Path(summary["run_dir"])
    (folder / "summary.json").unlink()  # as if killed after the final checkpoint
    state = tiny_backbone.model.state_dict()
    torch.save({k: v + 1 if v.is_floating_point() else v for k, v in state.items()}, weights)  # other weights, same path
    with pytest.raises(ConfigError, match="the backbone fedvlm-tiny") as error:
        run(load_config(overrides={**raw, "resume": str(folder)}))
    assert "\n" not in str(error.value) and not (folder / "summary.json").exists()


def test_run_names_cannot_leave_the_results_dir(colour_data_root, tmp_path):
    for name in ("../outside", str(tmp_path / "absolute"), "a/b"):
        with pytest.raises(ConfigError, match="name: expected a folder name"):
            load_config(overrides={**_config(colour_data_root, tmp_path / "results"), "name": name})
    config = _write(tmp_path / "exp.yaml", _config(colour_data_root, tmp_path / "results"))
    refused = _cli(["run", str(config), "name=../outside"])
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1 and not (tmp_path / "outside").exists()


@pytest.mark.parametrize("execution", ["sequential"])
def test_one_and_two_processes_give_identical_results(colour_data_root, tmp_path, execution):
    raw = _config(colour_data_root, tmp_path / "results", partition={"num_clients": 3},
                  runtime={"execution": execution, "accelerator": "cpu", "ddp_timeout_s": 120},
                  federation={"rounds": 2, "participation": 0.67})
    config = _write(tmp_path / "exp.yaml", raw)
    one = _cli(["run", str(config), "name=one", "runtime.devices=1"])
    two = _cli(["run", str(config), "name=two", "runtime.devices=2"])
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-2000:]
    (one_dir,), (two_dir,) = (tmp_path / "results" / "one").iterdir(), (tmp_path / "results" / "two").iterdir()
    a = torch.load(one_dir / "checkpoints/last.pt", weights_only=True)
    b = torch.load(two_dir / "checkpoints/last.pt", weights_only=True)
    assert torch.equal(a["global_shared"]["context"], b["global_shared"]["context"])
    metrics = lambda d: [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert metrics(one_dir) == metrics(two_dir)


def test_a_run_saved_before_a_key_existed_resumes_with_its_default(colour_data_root, tmp_path):
    """A checkpoint written before a settings key was added (here: runtime.feature_table and
    logging.backends removed from its saved settings) resumes, the key at its default, and ends
    where an uninterrupted run ends; a saved setting that really differs is still refused."""
    raw = _config(colour_data_root, tmp_path / "results", federation={"rounds": 2}, logging={"wandb": "disabled"})
    whole = run(load_config(overrides={**raw, "name": "whole"}))
    config = _write(tmp_path / "exp.yaml", raw)
    assert _cli(["run", str(config)], {"FEDVLM_KILL_AT": "after_round@1"}).returncode == -9
    (folder,) = (tmp_path / "results" / "e2e").iterdir()
    path = folder / "checkpoints" / "last.pt"
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["config"]["runtime"]["feature_table"], checkpoint["config"]["logging"]["backends"]
    torch.save(checkpoint, path)
    resumed = run(load_config(overrides={**raw, "resume": str(folder)}))
    assert resumed["global/accuracy"] == whole["global/accuracy"] and resumed["train/loss"] == whole["train/loss"]
    checkpoint["config"]["optim"]["lr"] = 0.5  # a real difference
    torch.save(checkpoint, path)
    (folder / "summary.json").unlink()
    with pytest.raises(ConfigError, match="resume: optim differs"):
        run(load_config(overrides={**raw, "resume": str(folder)}))
