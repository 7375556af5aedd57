"""The single-label prompt family through the real round loop: tiny CLIP, a small colour ImageFolder."""

import json
from pathlib import Path

import pytest
import torch

from fedvlm.config import load_config
from fedvlm.simulation import run

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread is faster

HEADS = {
    "fedotp": {"name": "fedotp"},
    "fedrsclip": {"name": "fedrsclip"},
    "fedpgp": {"name": "fedpgp", "n_ctx": 4},
    "maple": {"name": "maple", "prompt_depth": 2},
    "otdpp": {"name": "otdpp", "prompt_depth": 2},
    "full_model": {"name": "full_model"},
}


def _config(data_root, results, head, **extra):
    raw = {
        "name": f"e2e_{head['name']}", "seed": 3,
        "model": {"name": "fedvlm-tiny", "pretrained": None},
        "data": {"dataset": "synthetic_scenes", "root": str(data_root)},
        "partition": {"name": "dirichlet", "num_clients": 3, "alpha": 1.0},
        "head": head,
        "federation": {"rounds": 2},
        "optim": {"lr": 0.01, "batch_size": 8},
        "logging": {"progress": False, "wandb": "disabled", "results_dir": str(results)},
        **extra,
    }
    return load_config(overrides=raw)


@pytest.mark.parametrize("method", list(HEADS))
def test_two_rounds_upload_only_the_shared_part(colour_data_root, tmp_path, method):
    summary = run(_config(colour_data_root, tmp_path, HEADS[method]))
    parameters = summary["parameters"]
    assert summary["uploaded_bytes"] == 2 * 3 * parameters["shared_per_client"] * 4  # 2 rounds, 3 clients, fp32
    assert (parameters["private_per_client"] > 0) == (method not in ("maple", "full_model"))
    assert 0 <= summary["global/accuracy"] <= 1 and len(summary["clients/accuracy"]) == 3
    checkpoint = torch.load(Path(summary["run_dir"]) / "checkpoints/last.pt", weights_only=False)
    # Only FedRSCLIP (DPAC) keeps what every client uploaded; the others keep nothing extra.
    uploads = checkpoint["uploads"]
    if method == "fedrsclip":
        assert sorted(uploads) == [0, 1, 2] and all(list(u) == ["shared_context"] for u in uploads.values())
    else:
        assert uploads == {}
    for personal in checkpoint["personal"].values():
        assert not set(personal) & set(checkpoint["global_shared"])  # private and shared are disjoint
    lines = [json.loads(line) for line in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert all(line["train/loss"] == line["train/loss"] for line in lines)  # no NaN
