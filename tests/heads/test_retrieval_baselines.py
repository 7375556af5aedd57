"""CLIP-Adapter and full fine-tuning for retrieval: their formulas, slots, batched == sequential."""

import numpy as np
import pytest
import torch

from head_checks import CLASSES, TEMPLATE, assert_batched_equals_sequential, perturb_slot
from retrieval_checks import caption_batches
from fedvlm.heads.base import normalize
from fedvlm.heads.clip_adapter import CLIPAdapterConfig, CLIPAdapterHead
from fedvlm.heads.retrieval_full_model import RetrievalFullModelConfig, RetrievalFullModelHead

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread is faster


@pytest.fixture(scope="module")
def data(tiny_backbone):
    return caption_batches(tiny_backbone, count=24)


def _adapter(backbone, slots=1, **options):
    return CLIPAdapterHead(CLIPAdapterConfig(name="clip_adapter", **options), backbone, CLASSES, TEMPLATE,
                           num_slots=slots, seed=0)


def test_clip_adapter_blends_the_adapted_feature_with_the_frozen_one(tiny_backbone, data):
    head = _adapter(tiny_backbone).eval()
    batch = data.batch(np.arange(3), np.zeros(3), train=False)
    table = head(batch)
    f = batch.image
    adapted = torch.relu(torch.relu(f @ head.image_fc1[0]) @ head.image_fc2[0])
    torch.testing.assert_close(table[:, 0], normalize(0.2 * adapted + 0.8 * f))
    torch.testing.assert_close(table[:, 1:], normalize(batch.extras["caption_pooled"]))  # image-side only
    dim = tiny_backbone.embed_dim
    assert head.parameters_per_client() == 2 * dim * (dim // 4)


def test_clip_adapter_without_adapters_is_zero_shot_retrieval(tiny_backbone):
    assert _adapter(tiny_backbone, adapt=[]).trainable() == {}


def test_clip_adapter_batched_equals_sequential(tiny_backbone, data):
    assert_batched_equals_sequential(lambda slots: _adapter(tiny_backbone, slots, adapt=["image", "text"]), data)


def _full(backbone, slots=1, **options):
    return RetrievalFullModelHead(RetrievalFullModelConfig(name="retrieval_full_model", **options), backbone, CLASSES,
                                  TEMPLATE, num_slots=slots, seed=0)


def test_full_fine_tuning_starts_at_clip_and_tunes_both_towers(tiny_backbone, data):
    head = _full(tiny_backbone).eval()
    batch = data.batch(np.arange(3), np.zeros(3), train=False)
    table = head(batch)
    torch.testing.assert_close(table[:, 0], normalize(tiny_backbone.model.encode_image(batch.pixels)), atol=1e-5,
                               rtol=1e-4)
    torch.testing.assert_close(table[:, 1:], normalize(batch.extras["caption_pooled"]), atol=1e-5, rtol=1e-4)
    assert head.parameters_per_client() == sum(p.numel() for n, p in tiny_backbone.model.named_parameters()
                                               if n not in ("logit_scale",))
    assert _full(tiny_backbone, text_tower="frozen").parameters_per_client() == \
        sum(p.numel() for p in tiny_backbone.model.visual.parameters())


def test_full_fine_tuning_slots_are_independent(tiny_backbone, data):
    head = _full(tiny_backbone, slots=2)
    perturb_slot(head, 1)
    rows, slot = np.arange(4), np.array([0, 1, 1, 0])
    together = head(data.batch(rows, slot, train=False))
    alone = head(data.batch(rows[slot == 1], np.ones(2, dtype=int), train=False))
    torch.testing.assert_close(together[torch.from_numpy(slot == 1)], alone, atol=1e-5, rtol=1e-5)
    head.zero_grad()
    head.training_loss(data.batch(rows, slot))[0].backward()
    assert all(p.grad is None or p.grad[1].abs().sum() == 0 for p in head.trainable().values())
    assert head.visual["conv1__weight"].grad[0].abs().sum() > 0
    assert head.text["token_embedding__weight"].grad[0].abs().sum() > 0


def test_full_fine_tuning_ema_teacher_holds_the_text_tower_only(tiny_backbone, data):
    head = _full(tiny_backbone, loss={"terms": ["cross", "consistency"], "weighting": "sum"})
    head.write_slot(0, head.read_slot(0))
    assert head._teacher and all(name.startswith("text.") for name in head._teacher)
    head.training_loss(data.batch(np.arange(4), np.zeros(4))).sum().backward()
    head.after_step(torch.tensor([True]))
