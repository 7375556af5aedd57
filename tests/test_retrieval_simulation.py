"""Federated retrieval end to end on a tiny caption set in the RSICD layout: the round loop, the
retrieval task's metrics, and the untrained RDB scoring exactly zero-shot CLIP retrieval."""

import json

import numpy as np
import pytest
import torch
from PIL import Image

from fedvlm.config import load_config
from fedvlm.data.datasets import load_dataset
from fedvlm.errors import ConfigError
from fedvlm.heads.base import normalize
from fedvlm.metrics import retrieval_recall
from fedvlm.simulation import run
from fedvlm.tasks import TASKS

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread is faster


def test_retrieval_task_unpacks_image_and_caption_embeddings():
    g = torch.Generator().manual_seed(0)
    table = torch.randn(4, 3, 6, generator=g)
    table[1, 2] = 0  # image 1 has two captions
    table[3, 1:] = torch.cat([torch.randn(1, 6, generator=g), torch.zeros(1, 6)])
    images, captions, owner = [], [], []
    for i in range(4):
        images.append(normalize(table[i, 0]))
        for k in range(1, 3):
            if table[i, k].abs().sum() > 0:
                captions.append(normalize(table[i, k]))
                owner.append(i)
    expected = retrieval_recall(torch.stack(images) @ torch.stack(captions).T, torch.tensor(owner))
    assert TASKS.get("retrieval")().metrics(table, torch.zeros(4)) == pytest.approx(expected)


@pytest.fixture(scope="module")
def caption_root(tmp_path_factory):
    from fedvlm.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("data")
    generate_dataset(root / "synthetic_world", layouts=["rsicd"], num_images=60, seed=4, num_styles=1)
    return root


def _config(root, results, **changes):
    raw = {"name": "retrieval_e2e", "seed": 2, "model": {"name": "fedvlm-tiny", "pretrained": None},
           "data": {"dataset": "synthetic_rsicd", "root": str(root)},
           "partition": {"name": "dirichlet", "num_clients": 2, "alpha": 1.0},
           "head": {"name": "rdb", "bottleneck": 16}, "federation": {"rounds": 1},
           "optim": {"name": "adamw", "lr": 0.001, "weight_decay": 0.0, "batch_size": 16},
           "logging": {"results_dir": str(results), "wandb": "disabled", "progress": False}}
    for key, value in changes.items():
        merge = isinstance(value, dict) and key != "head"
        raw[key] = {**raw.get(key, {}), **value} if merge else value
    return load_config(overrides=raw)


def test_untrained_rdb_scores_zero_shot_clip_retrieval(caption_root, tmp_path):
    from fedvlm.backbone.clip import FrozenCLIP

    summary = run(_config(caption_root, tmp_path, federation={"rounds": 0},
                          model={"name": "fedvlm-tiny", "pretrained": "synthetic"}))
    tiny_backbone = FrozenCLIP.load("fedvlm-tiny", "synthetic")
    dataset = load_dataset("synthetic_rsicd", caption_root)
    test = dataset.official_splits["test"]
    pixels = torch.stack([tiny_backbone.preprocess(Image.open(dataset.paths[i]).convert("RGB")) for i in test])
    images = normalize(tiny_backbone.encode_images(pixels).pooled)
    captions_of = dataset.captions_of()
    texts = [dataset.captions[t] for i in test for t in captions_of[i]]
    owner = torch.tensor([n for n, i in enumerate(test) for _ in captions_of[i]])
    expected = retrieval_recall(images @ normalize(tiny_backbone.encode_text(texts)).T, owner)
    for key, value in expected.items():
        assert summary[f"global/{key}"] == pytest.approx(value, abs=1e-6), key


def test_two_clients_train_rdb_and_report_recall(caption_root, tmp_path):
    summary = run(_config(caption_root, tmp_path))
    assert summary["primary_metric"] == "mR" and summary["num_clients"] == 2
    assert 0 <= summary["global/mR"] <= 1 and 0 <= summary["personalized/mean_mR"] <= 1
    assert np.isfinite(summary["train/loss"])
    assert summary["parameters"]["private_per_client"] == 3  # the DTCL loss weights sigma
    lines = (tmp_path / "retrieval_e2e").glob("*/metrics.jsonl")
    assert any("global/i2t_R@10" in json.loads(line) for f in lines for line in f.read_text().splitlines())


def test_a_classification_head_on_a_caption_dataset_is_refused(caption_root, tmp_path):
    with pytest.raises(ConfigError, match="retrieval head"):
        run(_config(caption_root, tmp_path, head={"name": "coop", "n_ctx": 2}))
