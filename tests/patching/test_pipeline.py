"""The patching pipeline end to end on a tiny world, and the rows and bands it reads."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fedvlm.config import load_config
from fedvlm.data.datasets import DATASETS, load_dataset
from fedvlm.inputs.bands import BandBatches
from fedvlm.patching.pipeline import load_patching_config, run_patching, split_rows
from fedvlm.simulation import _splits

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread is faster


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from fedvlm.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("data")
    generate_dataset(root / "synthetic_world", layouts=["bigearthnet"], num_images=30, seed=6, num_styles=1)
    return root


def test_validation_rows_come_from_the_same_cut_as_the_round_loop(colour_data_root):
    config = load_config(overrides={"name": "x", "data": {"dataset": "synthetic_scenes", "root": str(colour_data_root),
                                                          "split": [0.5, 0.25, 0.25]}})
    dataset = load_dataset("synthetic_scenes", colour_data_root)
    rows = split_rows(dataset, DATASETS.get("synthetic_scenes"), [0.5, 0.25, 0.25], config.seed)
    train, test = _splits(config, dataset.labels, dataset.official_splits)
    assert np.array_equal(rows["train"], train) and np.array_equal(rows["test"], test)
    assert len(np.intersect1d(rows["val"], np.union1d(train, test))) == 0 and len(rows["val"]) == 9


def test_bands_are_standardised_and_resized(world):
    dataset = load_dataset("synthetic_bigearthnet", world)

    class Images:
        def batch(self, rows, slot, train=True, views=None):
            from fedvlm.heads.base import Batch

            return Batch(labels=torch.zeros(len(rows)), slot=torch.as_tensor(slot))

    bands = BandBatches(Images(), dataset, np.arange(len(dataset)), size=16, device="cpu")
    batch = bands.batch(np.arange(len(dataset)), np.zeros(len(dataset), dtype=int))
    assert batch.extras["bands"].shape == (30, 12, 16, 16)
    per_band = batch.extras["bands"].transpose(0, 1).flatten(1)
    torch.testing.assert_close(per_band.mean(1), torch.zeros(12), atol=1e-4, rtol=0)


def test_paint_then_alignment_end_to_end(world, colour_data_root, tmp_path):
    student = {"architecture": "vit_small_patch16_224", "in_channels": 12, "image_size": 16,
               "kwargs": {"patch_size": 8, "embed_dim": 16, "depth": 1, "num_heads": 2}}
    raw = {
        "name": "patch_e2e", "seed": 1, "model": {"name": "fedvlm-tiny", "pretrained": "synthetic"},
        "logging": {"results_dir": str(tmp_path), "wandb": "disabled", "progress": False},
        "patch": {"data": {"dataset": "synthetic_bigearthnet", "root": str(world), "split": [0.6, 0.2, 0.2]},
                  "partition": {"name": "iid", "num_clients": 2}, "head": {"name": "paint"},
                  "federation": {"rounds": 1}, "optim": {"name": "adamw", "lr": 1e-3, "batch_size": 8},
                  "eval": {"personalized": False}},
        "supported": {"dataset": "synthetic_scenes", "root": str(colour_data_root), "split": [0.5, 0.25, 0.25]},
        "alphas": [0.0, 1.0],
        "align": {"data": {"dataset": "synthetic_bigearthnet", "root": str(world), "split": [0.6, 0.2, 0.2]},
                  "partition": {"name": "iid", "num_clients": 2}, "head": {"name": "ms_student", "student": student},
                  "federation": {"rounds": 1}, "optim": {"name": "adamw", "lr": 1e-3, "batch_size": 8},
                  "eval": {"personalized": False}},
        "retrieval_ks": [1, 5],
    }
    results = run_patching(load_patching_config(None, raw))
    folder = Path(results["run_dir"])
    for name in ("config.yaml", "paint_curve.json", "paint_curve.png", "patched_clip.pt", "results.json", "results.md"):
        assert (folder / name).exists(), name
    zero, tuned = results["paint"]
    assert zero["alpha"] == 0.0 and tuned["alpha"] == 1.0
    assert zero["patch/test/mAP"] != tuned["patch/test/mAP"]  # the averaged encoder moved
    assert results["alpha"] in (0.0, 1.0)
    (row,) = results["alignment"]
    assert row["teacher"] == "patched" and 0 <= row["student"]["mAP"] <= 1
    assert set(row["retrieval"]) == {"rgb_to_ms_R@1", "rgb_to_ms_R@5", "ms_to_rgb_R@1", "ms_to_rgb_R@5", "mR"}
    # the teacher's RGB zero-shot mAP on the test split is the curve's at the chosen alpha
    assert row["teacher_rgb"]["mAP"] == pytest.approx(results["patched"]["patch/test/mAP"], abs=1e-5)
    assert json.loads((folder / "results.json").read_text())["alpha"] == results["alpha"]


def test_a_split_without_validation_rows_is_refused_before_anything_runs(tmp_path):
    from fedvlm.errors import ConfigError

    raw = {"name": "x", "patch": {"data": {"dataset": "synthetic_bigearthnet", "split": [0.5, 0.5]},
                                  "head": {"name": "paint"}, "partition": {"name": "iid"}},
           "supported": {"dataset": "synthetic_scenes"}}
    with pytest.raises(ConfigError, match="patch.data.split"):
        load_patching_config(None, raw)
    with pytest.raises(ConfigError, match="alphas"):
        load_patching_config(None, {**raw, "patch": {**raw["patch"], "data": {"dataset": "synthetic_bigearthnet"}},
                                    "alphas": [1.5]})
