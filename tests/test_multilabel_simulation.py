"""End-to-end multi-label runs: FedMPT on the synthetic world's VOC layout, with the heterogeneity
partition, hidden labels and partial participation, through the real round loop."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fedvlm.config import load_config
from fedvlm.data.synthetic import generate_dataset
from fedvlm.simulation import run


@pytest.fixture(scope="module")
def synthetic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("multilabel")
    generate_dataset(root / "synthetic_world", layouts=["voc2007"], num_images=32, seed=11)
    return root


def _config(root, results, **sections):
    raw = {
        "name": "ml", "seed": 2,
        "model": {"name": "fedvlm-tiny", "pretrained": None},
        "data": {"dataset": "synthetic_voc", "root": str(root), "hidden_labels": 0.6},
        "partition": {"name": "feature_clusters", "num_clients": 3},
        "head": {"name": "fedmpt", "conditions": "synthetic_voc", "num_conditions": 2, "condition_tokens": 2,
                 "class_tokens": 2, "ot_iterations": 10},
        "federation": {"rounds": 2, "participation": 0.67},
        "optim": {"lr": 0.01, "batch_size": 8},
        "logging": {"progress": False, "wandb": "disabled", "results_dir": str(results)},
    }
    for key, value in sections.items():
        renamed = value.get("name", raw[key].get("name")) != raw[key].get("name")
        raw[key] = value if renamed else {**raw[key], **value}
    return load_config(overrides=raw)


def test_fedmpt_runs_federated_with_clusters_hidden_labels_and_participation(synthetic_root, tmp_path):
    summary = run(_config(synthetic_root, tmp_path))
    for key in ("global/mAP", "global/CF1", "global/OF1", "personalized/mean_mAP"):
        assert 0 <= summary[key] <= 1, key
    lines = [json.loads(line) for line in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert [line["clients"] for line in lines] == [2, 2]  # round(0.67 * 3) clients per round
    shared = summary["parameters"]["shared_per_client"]
    assert summary["parameters"]["private_per_client"] == 0 and shared > 0
    assert lines[-1]["uploaded_bytes"] == 2 * 2 * shared * 4  # two rounds, two clients, fp32
    counts = np.loadtxt(Path(summary["run_dir"]) / "partition.csv", delimiter=",", skiprows=1)
    assert counts.shape[0] == 3  # one client per k-means cluster


def test_a_baseline_head_runs_through_the_same_loop(synthetic_root, tmp_path):
    summary = run(_config(synthetic_root, tmp_path, head={"name": "positive_coop", "n_ctx": 4},
                          federation={"rounds": 1}))
    assert 0 <= summary["global/mAP"] <= 1 and summary["method"] == "positive_coop"
    checkpoint = torch.load(Path(summary["run_dir"]) / "checkpoints" / "last.pt", weights_only=False)
    assert sorted(checkpoint["global_shared"]) == ["context", "negative_embedding"]
