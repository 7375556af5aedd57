import numpy as np
import pytest
import torch

from head_checks import CLASSES, TEMPLATE, TensorBatches, assert_batched_equals_sequential, assert_slots_independent
from fedvlm.errors import ConfigError
from fedvlm.heads.base import normalize
from fedvlm.heads.maple import MaPLeConfig, MaPLeHead

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread is faster


def _head(backbone, slots=1, **options):
    return MaPLeHead(MaPLeConfig(name="maple", **options), backbone, CLASSES, TEMPLATE, num_slots=slots, seed=0)


@pytest.fixture(scope="module")
def data(tiny_backbone):
    return TensorBatches(tiny_backbone)


def test_parameter_count_and_everything_shared(tiny_backbone):
    head = _head(tiny_backbone, prompt_depth=3)
    d_t, d_v = tiny_backbone.text_width, 128
    # J x (n_ctx x d_t text prompts + Linear(d_t -> d_v) coupling): 3,555,072 on ViT-B-16 at J = 9
    assert head.parameters_per_client() == 3 * (2 * d_t + d_t * d_v + d_v)
    assert head.private_names() == []
    with pytest.raises(ConfigError, match="prompt_depth: 5 exceeds the 4 blocks"):
        _head(tiny_backbone, prompt_depth=5)


def test_initial_prompt_is_a_photo_of_a_with_two_learnable_words(tiny_backbone, data):
    """At depth 1 (no deeper prompts) the initial text side is CLIP's "a photo of a <class>."; the
    vision side then only adds the two coupled prompt tokens."""
    head = _head(tiny_backbone, prompt_depth=1)
    prompts = head.layer_prompts(torch.tensor([0]))
    text = head.layout.encode_deep(tiny_backbone, prompts[:, 0], prompts[:, 1:])[0]
    expected = tiny_backbone.model.encode_text(tiny_backbone.tokenize([f"a photo of a {c}." for c in CLASSES]))
    torch.testing.assert_close(text, expected, atol=1e-5, rtol=1e-5)
    batch = data.batch(np.arange(3), np.zeros(3))
    vision = prompts @ head.coupling_weight[0] + head.coupling_bias[0].unsqueeze(1)  # F_0(prompt)
    image = tiny_backbone.encode_prompted_images(batch.pixels, vision.expand(3, -1, -1, -1)).pooled
    logits = tiny_backbone.logit_scale * normalize(image) @ normalize(expected).T
    torch.testing.assert_close(head(batch), logits, atol=1e-4, rtol=1e-5)


def test_deeper_prompts_reach_both_encoders(tiny_backbone, data):
    head = _head(tiny_backbone, prompt_depth=3)
    batch = data.batch(np.arange(3), np.zeros(3))
    head.training_loss(batch).sum().backward()
    assert head.deep_context.grad[0, 1].abs().sum() > 0  # layer-2 text prompts
    assert head.coupling_weight.grad[0, 2].abs().sum() > 0  # layer-2 visual prompts


def test_slots_are_independent(tiny_backbone, data):
    assert_slots_independent(_head(tiny_backbone, slots=2, prompt_depth=3), data)


def test_batched_clients_equal_sequential_clients(tiny_backbone, data):
    assert_batched_equals_sequential(lambda slots: _head(tiny_backbone, slots, prompt_depth=3), data, lr=0.01)
