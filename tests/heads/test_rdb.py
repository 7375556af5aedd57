"""RDB (CMAA + DTCL) and the symmetric cross-modal adapter: untrained = zero-shot CLIP, the loss
terms as switched, the EMA teacher, slot independence, batched == sequential."""

import numpy as np
import pytest
import torch

from head_checks import CLASSES, TEMPLATE, assert_batched_equals_sequential, perturb_slot
from retrieval_checks import caption_batches
from fedvlm.errors import ConfigError
from fedvlm.heads.base import normalize, slot_mean
from fedvlm.heads.rdb import CrossModalAdapterConfig, CrossModalAdapterHead, RDBConfig, RDBHead
from fedvlm.retrieval.losses import bidirectional_triplet

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread is faster

SMALL = {"bottleneck": 8, "attention_heads": 2}


def _rdb(backbone, slots=1, **options):
    return RDBHead(RDBConfig(name="rdb", **{**SMALL, **options}), backbone, CLASSES, TEMPLATE, num_slots=slots, seed=0)


@pytest.fixture(scope="module")
def data(tiny_backbone):
    return caption_batches(tiny_backbone)


def test_untrained_head_embeds_like_zero_shot_clip(tiny_backbone, data):
    head = _rdb(tiny_backbone).eval()
    batch = data.batch(np.arange(4), np.zeros(4), train=False)
    table = head(batch)  # [B, 1 + K, D]
    assert table.shape == (4, 3, tiny_backbone.embed_dim)
    torch.testing.assert_close(table[:, 0], normalize(batch.image))
    torch.testing.assert_close(table[:, 1:], normalize(batch.extras["caption_pooled"]))


def test_training_moves_both_branches_and_the_shared_layer(tiny_backbone, data):
    head = _rdb(tiny_backbone)
    head.write_slot(0, head.read_slot(0))
    head.training_loss(data.batch(np.arange(8), np.zeros(8), views=np.zeros(8, dtype=int))).sum().backward()
    head.image_up_weight.data.normal_(0, 0.1)  # past the zero start, gradients reach every branch
    head.text_up_weight.data.normal_(0, 0.1)
    head.zero_grad()
    head.training_loss(data.batch(np.arange(8), np.zeros(8), views=np.zeros(8, dtype=int))).sum().backward()
    for name in ("diff_query_weight", "lambda_q1", "word_forward_ih", "sentence_context", "shared_weight",
                 "gate_weight", "image_down_weight", "text_down_weight", "classifier", "loss_sigma"):
        assert getattr(head, name).grad.abs().sum() > 0, name


def test_only_the_loss_weights_are_private(tiny_backbone):
    head = _rdb(tiny_backbone)
    assert head.private_names() == ["loss_sigma"]
    assert "image_up_weight" in head.shared_names() and "classifier" in head.shared_names()


def test_cross_only_without_weighting_is_the_triplet_loss(tiny_backbone, data):
    head = _rdb(tiny_backbone, slots=2, loss={"terms": ["cross"], "weighting": "sum"}, dropout=0.0)
    perturb_slot(head, 1)
    batch = data.batch(np.arange(8), np.array([0, 1] * 4), views=np.zeros(8, dtype=int))
    weights = head.weights()
    image = head.embed_images(batch, weights)
    inputs, slot, _ = head.caption_inputs(batch)
    text = head.embed_captions(inputs, slot, weights, train=True)
    expected = slot_mean(bidirectional_triplet(image @ text.T, batch.slot, 0.2), batch.slot, 2)
    torch.testing.assert_close(head.training_loss(batch), expected)
    assert not hasattr(head, "loss_sigma") and not hasattr(head, "classifier")


def test_ema_teacher_starts_at_the_loaded_model_and_follows_active_slots(tiny_backbone):
    head = _rdb(tiny_backbone, slots=2, loss={"ema_decay": 0.9})
    start = head.read_slot(0)
    head.write_slot(0, start)
    head.write_slot(1, start)
    with torch.no_grad():
        head.shared_weight.add_(1.0)
    head.after_step(torch.tensor([True, False]))
    teacher = head._teacher["shared_weight"]
    torch.testing.assert_close(teacher[0], 0.9 * start["shared_weight"] + 0.1 * head.shared_weight[0])
    torch.testing.assert_close(teacher[1], start["shared_weight"])
    head.write_slot(0, start)  # loading a client resets its teacher
    torch.testing.assert_close(teacher[0], start["shared_weight"])


def test_symmetric_adapter_reads_pooled_features_only(tiny_backbone, data):
    head = CrossModalAdapterHead(CrossModalAdapterConfig(name="cross_modal_adapter", bottleneck=8), tiny_backbone,
                                 CLASSES, TEMPLATE)
    assert not hasattr(head, "diff_query_weight") and not hasattr(head, "word_forward_ih")
    assert head.terms == ["cross"]
    dim, r = tiny_backbone.embed_dim, 8
    assert head.parameters_per_client() == 2 * (dim * r + r) + (r * r + r) + (2 * r * r + r) + 2 * (r * dim + dim)
    with pytest.raises(ConfigError, match="rdb"):
        CrossModalAdapterHead(CrossModalAdapterConfig(name="cross_modal_adapter", image_branch="differential_attention"),
                              tiny_backbone, CLASSES, TEMPLATE)


def _nonzero_up(head):
    with torch.no_grad():
        head.image_up_weight.normal_(0, 0.2, generator=torch.Generator().manual_seed(5))
        head.text_up_weight.normal_(0, 0.2, generator=torch.Generator().manual_seed(6))
    return head


def test_slots_are_independent(tiny_backbone, data):
    head = _nonzero_up(_rdb(tiny_backbone, slots=2, dropout=0.0))
    perturb_slot(head, 1)
    rows, slot = np.arange(6), np.array([0, 1, 1, 0, 1, 0])
    together = head(data.batch(rows, slot, train=False))
    for s in (0, 1):
        alone = head(data.batch(rows[slot == s], np.full((slot == s).sum(), s), train=False))
        torch.testing.assert_close(together[torch.from_numpy(slot == s)], alone, atol=1e-5, rtol=1e-5)
    head.zero_grad()
    head.training_loss(data.batch(rows, slot, views=np.zeros(6, dtype=int)))[0].backward()
    for name, param in head.trainable().items():
        assert param.grad is None or param.grad[1].abs().sum() == 0, name


@pytest.mark.parametrize("image_branch,text_branch", [("differential_attention", "hierarchical_attention"),
                                                      ("mlp", "mlp")])
def test_batched_equals_sequential_with_dropout_and_ema(tiny_backbone, data, image_branch, text_branch):
    def make(slots):
        return _nonzero_up(_rdb(tiny_backbone, slots, image_branch=image_branch, text_branch=text_branch))

    assert_batched_equals_sequential(make, data, lr=0.05)
