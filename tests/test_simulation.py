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
from fedvlm.heads import HEADS
from fedvlm.heads.base import normalize
from fedvlm.heads.coop import CoOpConfig, CoOpHead
from fedvlm.server import ALGORITHMS, FedAvg
from fedvlm.simulation import run, sample_clients, shard_clients

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
    def aggregate(self, current, updates):
        SERVER_INPUTS.append([sorted(u.shared) for u in updates])
        return super().aggregate(current, updates)


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
    assert SERVER_INPUTS and all(keys == ["context"] for round_ in SERVER_INPUTS for keys in round_)
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
    sizes = [100, 1, 1, 1, 50, 50]
    shards = shard_clients(list(range(6)), sizes, 2)
    assert sorted(sum(shards, [])) == list(range(6))
    loads = sorted(sum(sizes[k] for k in shard) for shard in shards)
    assert loads == [101, 102]  # largest first onto the least-loaded rank: 100+1+1 vs 50+50+1


def _cli(args, env_extra=None, cwd=None):
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "fedvlm", *args], capture_output=True, text=True, env=env,
                          cwd=cwd, timeout=600)


def _write(path, raw):
    path.write_text(yaml.safe_dump(raw))
    return path


def test_killed_run_resumes_to_the_identical_result(colour_data_root, tmp_path):
    raw = _config(colour_data_root, tmp_path / "results", federation={"rounds": 4}, runtime={"execution": "sequential"},
                  optim={"keep_state": True})
    config = _write(tmp_path / "exp.yaml", raw)
    whole = _cli(["run", str(config), "name=whole"])
    assert whole.returncode == 0, whole.stderr
    killed = _cli(["run", str(config), "name=killed"], {"FEDVLM_KILL_AFTER_ROUND": "2"})
    assert killed.returncode != 0  # SIGKILL
    resumed = _cli(["run", str(config), "name=killed", "resume=true"])
    assert resumed.returncode == 0, resumed.stderr
    (whole_dir,) = (tmp_path / "results" / "whole").iterdir()
    (killed_dir,) = (tmp_path / "results" / "killed").iterdir()
    a = torch.load(whole_dir / "checkpoints/last.pt", weights_only=False)
    b = torch.load(killed_dir / "checkpoints/last.pt", weights_only=False)
    assert torch.equal(a["global_shared"]["context"], b["global_shared"]["context"])  # bitwise
    for k in a["optimizer"]:
        assert all(torch.equal(a["optimizer"][k][n], b["optimizer"][k][n]) for n in a["optimizer"][k])
    strip = lambda folder: [{k: v for k, v in json.loads(line).items()}  # noqa: E731
                            for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert strip(whole_dir) == strip(killed_dir)  # same 4 rounds, no duplicate lines from round 3
    nothing_left = _cli(["run", str(config), "name=killed", "resume=true"])
    assert nothing_left.returncode == 2 and "no unfinished run of killed" in nothing_left.stderr


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
    a = torch.load(one_dir / "checkpoints/last.pt", weights_only=False)
    b = torch.load(two_dir / "checkpoints/last.pt", weights_only=False)
    assert torch.equal(a["global_shared"]["context"], b["global_shared"]["context"])
    metrics = lambda d: [json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert metrics(one_dir) == metrics(two_dir)
