"""CoCoOp: the Meta-Net's per-image bias on every context token, checked against a loop over images
that builds and encodes each image's prompts on its own."""

import numpy as np
import pytest
import torch

from head_checks import CLASSES, TEMPLATE, TensorBatches, assert_batched_equals_sequential, assert_slots_independent
from fedvlm.config import load_configs
from fedvlm.describe import describe
from fedvlm.heads.base import normalize
from fedvlm.heads.cocoop import CoCoOpConfig, CoCoOpHead

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread is faster


def _head(backbone, slots=1, **options):
    return CoCoOpHead(CoCoOpConfig(name="cocoop", **options), backbone, CLASSES, TEMPLATE, num_slots=slots, seed=0)


@pytest.fixture(scope="module")
def data(tiny_backbone):
    return TensorBatches(tiny_backbone)


def test_logits_equal_a_per_image_loop(tiny_backbone, data):
    head = _head(tiny_backbone, slots=2)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():  # two different clients, and a Meta-Net whose bias is far from zero
        for param in head.trainable().values():
            param[1] += 0.2 * torch.randn(param[1].shape, generator=generator) * (param[1].std() + 0.02)
        head.meta_bias2 += 0.05
    rows, slot = np.arange(6), np.array([1, 0, 1, 1, 0, 0])
    batch = data.batch(rows, slot)
    with torch.no_grad():
        logits = head(batch)
        scale = tiny_backbone.logit_scale
        for i in range(len(rows)):
            s = int(slot[i])
            x = normalize(batch.image[i])
            bias = torch.relu(x @ head.meta_weight1[s] + head.meta_bias1[s]) @ head.meta_weight2[s] + head.meta_bias2[s]
            context = head.context[s] + bias  # the same bias on every context token
            prompts = head.layout.splice(context.unsqueeze(0))[0]  # [C, L, d_t]
            text = normalize(tiny_backbone.encode_token_embeddings(prompts, head.layout.eot))  # [C, D]
            torch.testing.assert_close(logits[i], scale * text @ x, atol=1e-4, rtol=1e-5)
        assert (logits[0] - logits[2]).abs().max() > 1e-3  # images of one slot get different prompts


def test_a_zero_meta_net_is_the_initial_hand_written_prompt(tiny_backbone, data):
    """With pi(x) = 0 the prompt is "a photo of a <class>.": zero-shot CLIP through encode_text."""
    head = _head(tiny_backbone)
    with torch.no_grad():
        head.meta_weight2.zero_()
        head.meta_bias2.zero_()
    batch = data.batch(np.arange(4), np.zeros(4))
    text = normalize(tiny_backbone.encode_text([f"a photo of a {c}." for c in CLASSES]))
    expected = tiny_backbone.logit_scale * normalize(batch.image) @ text.T
    with torch.no_grad():
        torch.testing.assert_close(head(batch), expected, atol=1e-4, rtol=1e-5)


def test_meta_net_shapes_and_everything_shared(tiny_backbone):
    head = _head(tiny_backbone)
    width, text_width = tiny_backbone.embed_dim, tiny_backbone.text_width
    hidden = width // 16
    assert head.meta_weight1.shape == (1, width, hidden) and head.meta_weight2.shape == (1, hidden, text_width)
    assert head.private_names() == []
    assert head.parameters_per_client() == 4 * text_width + width * hidden + hidden + hidden * text_width + text_width


def test_slots_are_independent(tiny_backbone, data):
    assert_slots_independent(_head(tiny_backbone, slots=2), data)


def test_batched_clients_equal_sequential_clients(tiny_backbone, data):
    assert_batched_equals_sequential(lambda slots: _head(tiny_backbone, slots), data)


def test_describe_counts_on_vit_b16():
    """ViT-B/16 with random weights: context 4 x 512 plus the Meta-Net 512 -> 32 -> 512."""
    counts = describe(load_configs("experiments/otdpp/cocoop.yaml")[0])
    assert counts["model"] == "ViT-B-16"
    expected = 4 * 512 + (512 * 32 + 32) + (32 * 512 + 512)
    assert expected == 35_360
    assert counts["trainable_parameters"] == counts["transmitted_parameters"] == expected
    assert counts["private_parameters"] == 0


def test_evaluation_does_not_memoise_cocoops_per_image_text(tiny_backbone):
    """CoCoOp's prompts differ per image: evaluation scores it without the text memo (which would
    hash and keep every batch's B x C prompt sets); a head with fixed prompts keeps it."""
    from fedvlm.evaluation import text_scope
    from fedvlm.heads import HEADS

    cocoop = HEADS.get("cocoop")(HEADS.get("cocoop").Config(name="cocoop"), tiny_backbone, ["cat", "dog"],
                                 "a photo of a {}.")
    coop = HEADS.get("coop")(HEADS.get("coop").Config(name="coop"), tiny_backbone, ["cat", "dog"], "a photo of a {}.")
    with text_scope(cocoop):
        assert tiny_backbone._text_memo is None
    with text_scope(coop):
        assert tiny_backbone._text_memo == {}
    assert tiny_backbone._text_memo is None
