"""Algorithms in the real round loop: resumed runs and 1 vs 2 processes are bitwise identical
with their client and server state, and every algorithm composes with heads of different kinds
(coop: shared only; fedotp: private parameters; dualcoop: multi-label)."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml

from fedvlm.algorithms import ALGORITHMS, ClientUpdate, ServerRound
from fedvlm.client.optim import SlotOptimizer
from fedvlm.client.training import ClientTask, train_pass
from fedvlm.config import OptimConfig
from fedvlm.heads import HEADS

BASE = {
    "name": "e2e", "seed": 3,
    "model": {"name": "fedvlm-tiny", "pretrained": None},
    "data": {"dataset": "synthetic_scenes"},
    "partition": {"name": "dirichlet", "num_clients": 3, "alpha": 1.0},
    "head": {"name": "coop", "n_ctx": 4},
    "optim": {"lr": 0.01, "batch_size": 8},
    "logging": {"progress": False, "wandb": "disabled"},
}


def _write(tmp_path, data_root, **sections):
    raw = {**json.loads(json.dumps(BASE)), **sections}
    raw["data"] = {**raw["data"], "root": str(data_root)}
    raw["logging"] = {**raw["logging"], "results_dir": str(tmp_path / "results")}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def _cli(args, env_extra=None):
    return subprocess.run([sys.executable, "-m", "fedvlm", *args], capture_output=True, text=True,
                          env={**os.environ, **(env_extra or {})}, timeout=600)


def _checkpoint(results, name):
    (folder,) = (results / name).iterdir()
    return folder, torch.load(folder / "checkpoints/last.pt", weights_only=True)


def _assert_same_tensors(a: dict, b: dict, where: str):
    assert a.keys() == b.keys(), where
    for key in a:
        if isinstance(a[key], dict):
            _assert_same_tensors(a[key], b[key], f"{where}[{key}]")
        else:
            assert torch.equal(a[key], b[key]), f"{where}[{key}]"  # bitwise


@pytest.mark.parametrize("algorithm", [{"name": "scaffold"}, {"name": "fedadam", "server_lr": 0.005}])
def test_a_run_killed_after_round_one_resumes_bitwise(colour_data_root, tmp_path, algorithm):
    config = _write(tmp_path, colour_data_root, algorithm=algorithm, federation={"rounds": 3, "participation": 0.67},
                    runtime={"execution": "sequential"}, logging={**BASE["logging"], "checkpoint_every": 1})
    whole = _cli(["run", str(config), "name=whole"])
    assert whole.returncode == 0, whole.stderr[-2000:]
    killed = _cli(["run", str(config), "name=killed"], {"FEDVLM_KILL_AT": "after_round@1"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    _, early = _checkpoint(tmp_path / "results", "killed")
    assert early["next_round"] == 1 and early["algorithm_server"]  # the server state was saved
    resumed = _cli(["run", str(config), "name=killed", "resume=true"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    (whole_dir, a), (killed_dir, b) = _checkpoint(tmp_path / "results", "whole"), \
        _checkpoint(tmp_path / "results", "killed")
    for section in ("global_shared", "algorithm_server", "algorithm_clients", "personal"):
        _assert_same_tensors(a[section], b[section], section)
    assert (whole_dir / "metrics.jsonl").read_bytes() == (killed_dir / "metrics.jsonl").read_bytes()
    if algorithm["name"] == "scaffold":  # c and every trained client's c_i are live state
        assert b["algorithm_server"]["control/context"].abs().sum() > 0
        assert sorted(b["algorithm_clients"]) == [0, 1, 2]
    else:
        assert sorted(b["algorithm_server"]) == ["m/context", "v/context"] and not b["algorithm_clients"]


def test_scaffold_gives_identical_results_on_one_and_two_processes(colour_data_root, tmp_path):
    config = _write(tmp_path, colour_data_root, algorithm={"name": "scaffold"},
                    runtime={"execution": "sequential", "accelerator": "cpu", "ddp_timeout_s": 120},
                    federation={"rounds": 2, "participation": 0.67})
    one = _cli(["run", str(config), "name=one", "runtime.devices=1"])
    two = _cli(["run", str(config), "name=two", "runtime.devices=2"])
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-2000:]
    (one_dir, a), (two_dir, b) = _checkpoint(tmp_path / "results", "one"), _checkpoint(tmp_path / "results", "two")
    for section in ("global_shared", "algorithm_server", "algorithm_clients"):
        _assert_same_tensors(a[section], b[section], section)
    assert a["algorithm_clients"]  # client controls crossed the all-gather
    assert (one_dir / "metrics.jsonl").read_bytes() == (two_dir / "metrics.jsonl").read_bytes()


class _Features:
    """Pooled features and patch tokens of 24 random images (class ids, or multi-hot labels)."""

    def __init__(self, backbone, multilabel: bool):
        from fedvlm.heads.base import Batch

        self.Batch = Batch
        features = backbone.encode_images(torch.randn(24, 3, 64, 64, generator=torch.Generator().manual_seed(0)),
                                          patches=True)
        self.pooled, self.patches = features.pooled, features.patches
        classes = torch.arange(24) % 3
        self.labels = torch.nn.functional.one_hot(classes, 3).float() if multilabel else classes
        if multilabel:
            self.labels[::2, 0] = 1.0  # several labels per image

    def batch(self, rows, slot, train=True, views=None):
        index = torch.as_tensor(np.asarray(rows), dtype=torch.long)
        return self.Batch(labels=self.labels[index], slot=torch.as_tensor(np.asarray(slot), dtype=torch.long),
                          image=self.pooled[index], patches=self.patches[index])


HEAD_KINDS = {"coop": False, "fedotp": False, "dualcoop": True}  # name -> multi-label
ALGORITHM_NAMES = sorted(n for n in ALGORITHMS.names() if not n.startswith("test_") and n not in ("local", "centralized"))


@pytest.mark.parametrize("head_name", sorted(HEAD_KINDS))
def test_every_algorithm_composes_with_heads_of_each_kind(tiny_backbone, head_name):
    """One round of two clients (one pass of two slots) and the server step, for every algorithm:
    the server state and uploads cover the shared names only, the private ones stay with the
    clients, and everything stays finite and moves."""
    data = _Features(tiny_backbone, HEAD_KINDS[head_name])
    head_class = HEADS.get(head_name)
    shares = {0: np.arange(0, 10), 1: np.arange(10, 24)}
    for name in ALGORITHM_NAMES:
        algorithm = ALGORITHMS.get(name).model_validate({"name": name})
        head = head_class(head_class.Config(name=head_name), tiny_backbone, ["red field", "green forest", "blue lake"],
                          "a photo of a {}.", num_slots=2, seed=0)
        shared_names, private_names = head.shared_names(), head.private_names()
        initial = head.read_slot(0)
        global_shared = {n: initial[n] for n in shared_names}
        server_state = algorithm.init_server_state(global_shared)
        optimizer = SlotOptimizer(head.trainable(), OptimConfig(lr=0.05, batch_size=4, momentum=0.0))
        tasks = [ClientTask(k, shares[k], initial, None) for k in (0, 1)]
        results = train_pass(head, optimizer, tasks, data, batch_size=4, epochs=1, steps=None, lr=0.05, seed=7,
                             round_index=0, algorithm=algorithm, global_shared=global_shared,
                             server_state=server_state)
        updates = [ClientUpdate(r.client, r.num_samples, {n: r.params[n] for n in shared_names}, r.extras, r.steps)
                   for r in results]
        new_global, new_server = algorithm.server_step(global_shared, updates, server_state, ServerRound(0, 3, 4, 2))
        where = f"{head_name} x {name}"
        assert sorted(new_global) == sorted(shared_names), where
        per_client = set(getattr(algorithm, "state_keys", ()))  # FedAWA: one weight logit per client, no tensor
        assert all(new_server[key].shape == (4,) for key in per_client & set(new_server)), where
        for key in [k for k in new_server if k not in per_client] + [k for r in results
                                                                     for k in (*r.extras, *r.algorithm_state)]:
            assert key.split("/", 1)[1] in shared_names, (where, key)
        assert all(torch.isfinite(v).all() for v in new_global.values()), where
        assert any(not torch.equal(new_global[n], global_shared[n]) for n in shared_names), where
        for r in results:
            assert all(torch.isfinite(v).all() for v in r.params.values()), where
            if private_names:  # private parameters trained, locally
                assert any(not torch.equal(r.params[n], initial[n]) for n in private_names), where
