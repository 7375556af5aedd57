import numpy as np
import ot as pot
import pytest
import torch

from head_checks import CLASSES, TEMPLATE, TensorBatches, assert_batched_equals_sequential, assert_slots_independent
from fedvlm.heads.base import normalize
from fedvlm.heads.otdpp import OTDPPConfig, OTDPPHead

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread is faster


def _head(backbone, slots=1, **options):
    options.setdefault("prompt_depth", 3)
    return OTDPPHead(OTDPPConfig(name="otdpp", **options), backbone, CLASSES, TEMPLATE, num_slots=slots, seed=0)


@pytest.fixture(scope="module")
def data(tiny_backbone):
    return TensorBatches(tiny_backbone)


@pytest.mark.parametrize("split", ["width", "prompts"])
def test_each_prompt_splits_one_to_one_into_a_global_head_and_a_local_tail(tiny_backbone, split):
    head = _head(tiny_backbone, split=split)
    width = tiny_backbone.text_width
    assert head.shared_names() == ["global_head"] and head.private_names() == ["local_tail"]
    # context (N, n_ctx, d_t) = (2, 4, d_t): 2 x 4 x d_t trainable, half of it transmitted (Sec. 4.6)
    assert head.parameters_per_client() == 2 * 4 * width
    assert head.parameters_per_client(head.shared_names()) == 4 * width
    tokens = head.prompt_tokens(torch.tensor([0]))  # [1, J, N, n_ctx, d_t]
    assert tokens.shape == (1, 3, 2, 4, width)
    if split == "width":
        torch.testing.assert_close(tokens[0, 0, :, :, : width // 2], head.global_head[0, 0])
        torch.testing.assert_close(tokens[0, 0, :, :, width // 2 :], head.local_tail[0, 0])
    else:
        torch.testing.assert_close(tokens[0, 0, :1], head.global_head[0, 0])
        torch.testing.assert_close(tokens[0, 0, 1:], head.local_tail[0, 0])
    torch.testing.assert_close(tokens[0, 2], tokens[0, 0])  # tied deep prompts: re-injected per layer


def test_server_model_carries_the_placeholder_tail(tiny_backbone):
    head = _head(tiny_backbone)
    initial = head.read_slot(0)
    shared = {"global_head": initial["global_head"] + 1}
    state = head.server_model(initial, shared)
    assert torch.equal(state["global_head"], shared["global_head"])
    assert torch.equal(state["local_tail"], initial["local_tail"])  # the fixed, untrained placeholder


def test_depth_and_coupling_options_and_the_single_prompt_ablation(tiny_backbone):
    width, vision = tiny_backbone.text_width, 128
    assert _head(tiny_backbone, prompt_depth=1).parameters_per_client() == 8 * width  # tied: depth costs nothing
    per_layer = _head(tiny_backbone, deep_prompts="per_layer")
    assert per_layer.parameters_per_client() == 3 * 8 * width
    linear = _head(tiny_backbone, vision_coupling="linear")
    assert linear.parameters_per_client() == 8 * width + 3 * (width * vision + vision)
    assert "coupling_weight" in linear.shared_names()
    single = _head(tiny_backbone, dual=False)
    assert single.private_names() == [] and single.parameters_per_client() == 8 * width


def test_frozen_coupling_maps_prompts_through_clips_projections(tiny_backbone):
    head = _head(tiny_backbone)
    tokens = head.prompt_tokens(torch.tensor([0]))
    visual = head.visual_prompts(tokens, torch.tensor([0]))
    assert visual.shape == (1, 3, 8, 128)  # one visual token per text prompt token
    projection = tiny_backbone.text_tower.text_projection @ tiny_backbone.model.visual.proj.T
    torch.testing.assert_close(visual[0, 1, 5], tokens[0, 1, 1, 1] @ projection)


def test_logits_are_balanced_ot_of_pot_plans_between_patches_and_prompts(tiny_backbone, data):
    head = _head(tiny_backbone)
    batch = data.batch(np.arange(2), np.zeros(2))
    logits = head(batch)
    tokens = head.prompt_tokens(torch.tensor([0]))
    with torch.no_grad():
        text = head.text_features(tokens)[0].double()  # [C, N, D]
        visual = head.visual_prompts(tokens, torch.tensor([0])).expand(2, -1, -1, -1)
        patches = normalize(tiny_backbone.encode_prompted_images(batch.pixels, visual).patches).double()
    M, N = patches.shape[1], text.shape[1]
    a, b = torch.full((M,), 1 / M, dtype=torch.float64), torch.full((N,), 1 / N, dtype=torch.float64)
    scale = tiny_backbone.logit_scale.item()
    for i in range(2):
        for c in range(len(CLASSES)):
            similarity = patches[i] @ text[c].T
            plan = pot.sinkhorn(a, b, 1 - similarity, 0.1, numItermax=10_000, stopThr=1e-12)
            distance = (plan * (1 - similarity)).sum().item()  # D_OT(k), Eq. 2
            assert abs(logits[i, c].item() - scale * (1 - distance)) < 1e-5 * scale  # Eq. 3, tau = 1/logit_scale
    torch.testing.assert_close(_head(tiny_backbone, temperature=0.5)(batch), logits / scale / 0.5)  # explicit tau


def test_slots_are_independent(tiny_backbone, data):
    assert_slots_independent(_head(tiny_backbone, slots=2), data)


OTHER_READINGS = {"split": "prompts", "deep_prompts": "per_layer", "vision_coupling": "linear"}


@pytest.mark.parametrize("options", [{}, OTHER_READINGS])
def test_batched_clients_equal_sequential_clients(tiny_backbone, data, options):
    assert_batched_equals_sequential(lambda slots: _head(tiny_backbone, slots, **options), data, lr=0.01)
