"""KgCoOp: CoOp's cross-entropy plus lambda times the distance of the learned class text features
to the hand-crafted prompt's, recomputed here from ``encode_text`` of the written-out prompts."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from head_checks import CLASSES, TEMPLATE, TensorBatches, assert_batched_equals_sequential, assert_slots_independent
from fedvlm.config import load_configs
from fedvlm.describe import describe
from fedvlm.heads.base import normalize
from fedvlm.heads.kgcoop import KgCoOpConfig, KgCoOpHead, knowledge_guidance

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread is faster


def _head(backbone, slots=1, **options):
    return KgCoOpHead(KgCoOpConfig(name="kgcoop", **options), backbone, CLASSES, TEMPLATE, num_slots=slots, seed=0)


@pytest.fixture(scope="module")
def data(tiny_backbone):
    return TensorBatches(tiny_backbone)


def test_defaults_are_the_papers():
    config = KgCoOpConfig(name="kgcoop")
    assert (config.n_ctx, config.ctx_init, config.weight, config.anchor_distance) == (4, "a photo of a", 8.0,
                                                                                      "squared_l2")


def test_training_loss_is_cross_entropy_plus_lambda_times_the_distance_to_the_hand_crafted_prompt(tiny_backbone,
                                                                                                  data):
    head = _head(tiny_backbone, slots=2, weight=3.0)
    with torch.no_grad():  # move slot 1 away from the initial "a photo of a"
        head.context[1] += 0.3 * torch.randn(head.context[1].shape, generator=torch.Generator().manual_seed(2))
    rows, slot = np.arange(7), np.array([0, 1, 1, 0, 1, 0, 0])
    batch = data.batch(rows, slot)
    with torch.no_grad():
        loss = head.training_loss(batch)
    scale = float(tiny_backbone.logit_scale)
    anchor = normalize(tiny_backbone.encode_text([TEMPLATE.format(c) for c in CLASSES]))  # w^clip, written out
    for s in (0, 1):
        mine = slot == s
        # each client's prompt encoded alone (a one-client stack)
        text = normalize(head.layout.encode(tiny_backbone, head.context[s : s + 1].detach()))[0]  # [C, D]
        logits = scale * normalize(batch.image[mine]) @ text.T
        cross_entropy = F.cross_entropy(logits, batch.labels[mine])
        distance = sum(float(((text[c] - anchor[c]) ** 2).sum()) for c in range(len(CLASSES))) / len(CLASSES)
        assert distance > 1e-4  # the regulariser is not trivially zero here
        assert abs(float(loss[s]) - (float(cross_entropy) + 3.0 * distance)) < 1e-4


def test_the_codes_cosine_form_is_half_of_equation_5():
    generator = torch.Generator().manual_seed(0)
    text = normalize(torch.randn(2, 5, 8, generator=generator))
    anchor = normalize(torch.randn(5, 8, generator=generator))
    squared = knowledge_guidance(text, anchor, "squared_l2")
    cosine = knowledge_guidance(text, anchor, "cosine")
    torch.testing.assert_close(cosine, squared / 2)
    expected = torch.stack([1 - F.cosine_similarity(text[u], anchor, dim=-1).mean() for u in range(2)])
    torch.testing.assert_close(cosine, expected)


def test_anchor_template_overrides_the_dataset_template(tiny_backbone):
    head = _head(tiny_backbone, anchor_template="a satellite photo of {}.")
    expected = normalize(tiny_backbone.encode_text([f"a satellite photo of {c}." for c in CLASSES]))
    torch.testing.assert_close(head.anchor.features(), expected)
    assert "anchor._features" not in head.state_dict()  # recomputed from the frozen backbone, never saved


def test_weight_zero_is_coop(tiny_backbone, data):
    from fedvlm.heads.coop import CoOpConfig, CoOpHead

    kgcoop = _head(tiny_backbone, weight=0.0)
    coop = CoOpHead(CoOpConfig(name="coop", n_ctx=4, ctx_init="a photo of a"), tiny_backbone, CLASSES, TEMPLATE)
    batch = data.batch(np.arange(5), np.zeros(5))
    torch.testing.assert_close(kgcoop.training_loss(batch), coop.training_loss(batch))


def test_slots_are_independent(tiny_backbone, data):
    assert_slots_independent(_head(tiny_backbone, slots=2), data)


def test_batched_clients_equal_sequential_clients(tiny_backbone, data):
    assert_batched_equals_sequential(lambda slots: _head(tiny_backbone, slots), data)


def test_describe_counts_on_vit_b16():
    """ViT-B/16 with random weights: 4 context tokens x 512, all shared (CoOp's 2,048)."""
    counts = describe(load_configs("experiments/otdpp/kgcoop.yaml")[0])
    assert counts["model"] == "ViT-B-16"
    assert counts["trainable_parameters"] == counts["transmitted_parameters"] == 4 * 512
    assert counts["private_parameters"] == 0
