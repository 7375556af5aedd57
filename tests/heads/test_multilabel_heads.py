"""Multi-label heads: DualCoOp and PositiveCoOp against a transcription of the authors' scoring
code, CoOp with ASL on multi-hot labels, and batched == sequential training for every one of
FedMPT, DualCoOp and PositiveCoOp (each client exactly as if alone)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedvlm.client.batches import FeatureBatches
from fedvlm.client.optim import SlotOptimizer
from fedvlm.client.training import ClientTask, train_pass
from fedvlm.config import OptimConfig
from fedvlm.heads import HEADS, Batch
from fedvlm.losses import asymmetric_loss

CLASSES = ["car", "storage tank", "tree", "river"]


def _head(backbone, name, slots=1, **options):
    head_class = HEADS.get(name)
    defaults = {"fedmpt": {"conditions": ["green lawn", "night"]}, "dualcoop": {"n_ctx": 4, "output_scale": 5.0},
                "positive_coop": {"n_ctx": 4, "output_scale": 5.0}}.get(name, {})
    config = head_class.Config(name=name, **{**defaults, **options})
    return head_class(config, backbone, CLASSES, "a photo of a {}.", num_slots=slots, seed=0)


def _reference_dualcoop(image_features, text_pos, text_neg):
    """DualCoOp's forward (models/dualcoop.py) on [B, D, M] patch features: 20 * conv1d against
    the [neg; pos] text features, softmax over patches of the positive half, 5 * weighted sum,
    logits [B, 2, C]; the ASL of the authors softmaxes over that pair of 2."""
    text = F.normalize(torch.cat([text_neg, text_pos]), dim=-1)
    output = 20 * F.conv1d(F.normalize(image_features, dim=1), text[:, :, None])
    half = output.shape[1] // 2
    w_half = F.softmax(output[:, half:], dim=-1)
    output = 5 * (output * torch.cat([w_half, w_half], dim=1)).sum(-1)
    return output.view(output.shape[0], 2, half)


def test_dualcoop_equals_the_reference_scoring(tiny_backbone):
    head = _head(tiny_backbone, "dualcoop", global_region=False)
    generator = torch.Generator().manual_seed(0)
    patches, image = torch.randn(3, 9, tiny_backbone.embed_dim, generator=generator), torch.randn(3, tiny_backbone.embed_dim)
    batch = Batch(labels=torch.zeros(3, 4), slot=torch.zeros(3, dtype=torch.long), patches=patches, image=image)
    positive, negative = head.text_features(torch.tensor([0]))
    pair = _reference_dualcoop(patches.transpose(1, 2), positive[0], negative[0])
    torch.testing.assert_close(torch.sigmoid(head(batch)), torch.softmax(pair, dim=1)[:, 1], atol=1e-5, rtol=1e-5)
    # global_region (the default): the pooled embedding is scored as one more region
    with_global = _head(tiny_backbone, "dualcoop")
    pair = _reference_dualcoop(torch.cat([image[:, None], patches], 1).transpose(1, 2), positive[0], negative[0])
    torch.testing.assert_close(torch.sigmoid(with_global(batch)), torch.softmax(pair, dim=1)[:, 1], atol=1e-5, rtol=1e-5)
    # Eq. 2 as printed in FedMPT: the softmax over classes instead of patches
    classes = _head(tiny_backbone, "dualcoop", aggregate_over="classes", global_region=False)
    s_pos = 20 * torch.einsum("bmd,cd->bmc", F.normalize(patches, dim=-1), F.normalize(positive[0], dim=-1))
    s_neg = 20 * torch.einsum("bmd,cd->bmc", F.normalize(patches, dim=-1), F.normalize(negative[0], dim=-1))
    w = torch.softmax(s_pos, dim=-1)
    torch.testing.assert_close(classes(batch), 5 * ((w * s_pos).sum(1) - (w * s_neg).sum(1)), atol=1e-4, rtol=1e-5)
    assert head.parameters_per_client() == 2 * 4 * tiny_backbone.text_width
    default = HEADS.get("dualcoop")(HEADS.get("dualcoop").Config(name="dualcoop"), tiny_backbone, CLASSES, "{}")
    assert default.output_scale == pytest.approx(tiny_backbone.logit_scale.item() / 20)  # 5 on OpenAI CLIP


def test_positive_coop_negative_is_a_learned_embedding(tiny_backbone):
    head = _head(tiny_backbone, "positive_coop", global_region=False)
    patches = torch.randn(2, 5, tiny_backbone.embed_dim, generator=torch.Generator().manual_seed(1))
    logits = head(Batch(labels=torch.zeros(2, 4), slot=torch.zeros(2, dtype=torch.long), patches=patches))
    positive = head.layout.encode(tiny_backbone, head.context[:1])[0]
    pair = _reference_dualcoop(patches.transpose(1, 2), positive, head.negative_embedding[0])
    torch.testing.assert_close(torch.sigmoid(logits), torch.softmax(pair, dim=1)[:, 1], atol=1e-5, rtol=1e-5)
    assert set(head.trainable()) == {"context", "negative_embedding"}
    assert head.parameters_per_client() == 4 * tiny_backbone.text_width + 4 * tiny_backbone.embed_dim
    residual = _head(tiny_backbone, "positive_coop", positive_residual=True)
    assert residual.parameters_per_client() == head.parameters_per_client() + 4 * tiny_backbone.embed_dim


def test_coop_trains_with_asl_on_multi_hot_labels(tiny_backbone):
    """The existing CoOp head needs nothing for multi-label data: the base loss is ASL summed over
    classes (unknown = -1 skipped), averaged over each slot's samples."""
    head = _head(tiny_backbone, "coop", slots=2)
    image = torch.randn(4, tiny_backbone.embed_dim, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([[1, 0, -1, 0], [0, 1, 1, 0], [-1, -1, -1, -1], [1, 1, 0, 0]], dtype=torch.float32)
    batch = Batch(labels=labels, slot=torch.tensor([0, 1, 0, 1]), image=image)
    logits = head(batch)
    per_sample = asymmetric_loss(logits, labels, reduction="none").sum(-1)
    torch.testing.assert_close(head.training_loss(batch), torch.stack([per_sample[[0, 2]].mean(), per_sample[[1, 3]].mean()]))
    head.training_loss(batch)[0].backward()
    assert head.context.grad[0].abs().sum() > 0 and head.context.grad[1].abs().sum() == 0


def _data(backbone, n=24, patches=6):
    g = torch.Generator().manual_seed(0)
    labels = (torch.rand(n, 4, generator=g) < 0.4).float()
    labels[torch.rand(n, 4, generator=g) < 0.2] = -1  # part annotation: unknown labels
    pooled = torch.randn(n, backbone.embed_dim, generator=g)
    return FeatureBatches(pooled, torch.randn(n, patches, backbone.embed_dim, generator=g), labels, "cpu")


def _train(backbone, name, slots):
    head = _head(backbone, name, slots=slots)
    optimizer = SlotOptimizer(head.trainable(), OptimConfig(lr=0.05, batch_size=4))
    initial = head.read_slot(0)
    shares = {0: np.arange(0, 9), 1: np.arange(9, 13), 2: np.arange(13, 24)}  # 3, 1 and 3 batches
    data, results = _data(backbone), []
    for first in range(0, 3, slots):
        tasks = [ClientTask(k, shares[k], initial, None) for k in range(first, min(first + slots, 3))]
        results += train_pass(head, optimizer, tasks, data, batch_size=4, epochs=1, steps=None, lr=0.05, seed=7,
                              round_index=1)
    return {r.client: r for r in results}


@pytest.mark.parametrize("name", ["fedmpt", "dualcoop", "positive_coop"])
def test_batched_clients_equal_sequential_clients(tiny_backbone, name):
    sequential, batched = _train(tiny_backbone, name, 1), _train(tiny_backbone, name, 3)
    for k in range(3):
        for key, value in sequential[k].params.items():
            torch.testing.assert_close(batched[k].params[key], value, atol=1e-5, rtol=1e-5)
        assert abs(batched[k].loss - sequential[k].loss) < 1e-5
    moved = [key for key, value in sequential[0].params.items() if not torch.equal(value, sequential[2].params[key])]
    assert moved, "the clients did not train"


@pytest.mark.parametrize("name, options", [("maple", {"prompt_depth": 2}), ("fedpgp", {"n_ctx": 4})])
def test_issue4_heads_train_on_multi_hot_labels(tiny_backbone, name, options):
    """Fed-MaPLe and FedPGP (the multi-label tables' baselines) take {1, 0, -1} targets through the
    same base ASL: a finite loss per slot, gradients on every slot that has samples, and unknown
    labels contributing nothing."""
    head = _head(tiny_backbone, name, slots=2, **options)
    generator = torch.Generator().manual_seed(4)
    size = tiny_backbone.image_size
    batch = Batch(labels=torch.tensor([[1, 0, -1, 0], [0, 1, 1, 0], [1, -1, 0, 0]], dtype=torch.float32),
                  slot=torch.tensor([0, 1, 0]), image=torch.randn(3, tiny_backbone.embed_dim, generator=generator),
                  pixels=torch.randn(3, 3, size, size, generator=generator))
    loss = head.training_loss(batch)
    assert loss.shape == (2,) and bool(torch.isfinite(loss).all())
    grads = torch.autograd.grad(loss.sum(), [p for p in head.trainable().values()], allow_unused=True)
    assert any(g is not None and g[0].abs().sum() > 0 for g in grads)
    assert any(g is not None and g[1].abs().sum() > 0 for g in grads)
    with torch.no_grad():  # nothing known, nothing supervised
        assert float(head.sample_loss(head(batch), torch.full((3, 4), -1.0)).abs().sum()) == 0.0
