import numpy as np
import pytest
import torch

from head_checks import CLASSES, TEMPLATE, TensorBatches, assert_batched_equals_sequential, assert_slots_independent
from fedvlm.heads.base import normalize
from fedvlm.heads.full_model import FullModelConfig, FullModelHead

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread is faster


def _head(backbone, slots=1, **options):
    return FullModelHead(FullModelConfig(name="full_model", **options), backbone, CLASSES, TEMPLATE,
                         num_slots=slots, seed=0)


@pytest.fixture(scope="module")
def data(tiny_backbone):
    return TensorBatches(tiny_backbone, count=24)


def test_the_whole_image_encoder_and_the_classifier_are_shared(tiny_backbone):
    head = _head(tiny_backbone)
    visual = sum(p.numel() for p in tiny_backbone.model.visual.parameters())
    assert head.parameters_per_client() == visual + len(CLASSES) * (tiny_backbone.embed_dim + 1)
    assert head.private_names() == []
    assert len(head.shared_names()) == len(list(tiny_backbone.model.visual.parameters())) + 2


def test_starting_encoder_is_clips_and_zeroshot_head_is_zero_shot_clip(tiny_backbone, data):
    head = _head(tiny_backbone, head_init="zeroshot")
    batch = data.batch(np.arange(4), np.zeros(4))
    torch.testing.assert_close(head.encode(batch.pixels, 0), tiny_backbone.model.encode_image(batch.pixels),
                               atol=1e-5, rtol=1e-5)
    text = normalize(tiny_backbone.encode_text([TEMPLATE.format(c) for c in CLASSES]))
    expected = tiny_backbone.logit_scale * normalize(batch.image) @ text.T
    torch.testing.assert_close(head(batch), expected, atol=1e-4, rtol=1e-5)


def test_training_moves_the_encoder_not_the_frozen_backbone(tiny_backbone, data):
    head = _head(tiny_backbone)
    before = [p.clone() for p in tiny_backbone.model.visual.parameters()]
    head.training_loss(data.batch(np.arange(4), np.zeros(4))).sum().backward()
    assert head.encoder["conv1__weight"].grad.abs().sum() > 0
    assert all(torch.equal(a, b) for a, b in zip(before, tiny_backbone.model.visual.parameters()))


def test_slots_are_independent(tiny_backbone, data):
    assert_slots_independent(_head(tiny_backbone, slots=2), data)


def test_batched_clients_equal_sequential_clients(tiny_backbone, data):
    assert_batched_equals_sequential(lambda slots: _head(tiny_backbone, slots), data, lr=0.01)
