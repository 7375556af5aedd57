"""The shared-prefix text path equals running every prompt on its own (values and gradients)."""

import pytest
import torch
from open_clip.model import CLIP

from fedvlm.backbone.clip import FrozenCLIP
from fedvlm.heads.prompts import PromptLayout

# Names of different token lengths, so the suffixes are padded and the EOTs differ.
CLASSNAMES = ["forest", "annual crop land", "river", "highway or road", "sea"]


def features_and_gradient(backbone, layout, context, share: bool):
    backbone.share_text_prefix = share
    context = context.clone().requires_grad_(True)
    features = layout.encode(backbone, context)
    (features * torch.linspace(-1, 1, features.numel()).view_as(features)).sum().backward()
    return features.detach(), context.grad


def assert_shared_equals_full(backbone, layout, context, tolerance=1e-5):
    """Features and the context's gradient agree to ``tolerance`` of their largest entry."""
    capable = backbone.share_text_prefix
    try:
        shared, shared_grad = features_and_gradient(backbone, layout, context, share=True)
        full, full_grad = features_and_gradient(backbone, layout, context, share=False)
    finally:
        backbone.share_text_prefix = capable
    for a, b in ((shared, full), (shared_grad, full_grad)):
        assert b.abs().max() > 0
        assert (a - b).abs().max() <= tolerance * b.abs().max(), float((a - b).abs().max() / b.abs().max())


@pytest.mark.parametrize("position,prefix", [("end", 1 + 4), ("middle", 1 + 2)])
def test_shared_prefix_equals_the_full_prompts(tiny_backbone, position, prefix):
    assert tiny_backbone.share_text_prefix
    layout = PromptLayout(tiny_backbone, CLASSNAMES, n_ctx=4, position=position)
    assert layout.shared_prefix == prefix  # [SOS] and the context before the class name
    context = torch.randn(3, 4, tiny_backbone.text_width, generator=torch.Generator().manual_seed(0)) * 0.5
    assert_shared_equals_full(tiny_backbone, layout, context)


def test_full_size_vit_b_16_text_tower():
    backbone = FrozenCLIP.load("ViT-B-16", None)  # random weights: the maths, not the accuracy
    assert backbone.share_text_prefix
    layout = PromptLayout(backbone, CLASSNAMES, n_ctx=16)
    assert layout.shared_prefix == 17
    context = torch.randn(2, 16, backbone.text_width, generator=torch.Generator().manual_seed(1)) * 0.02
    assert_shared_equals_full(backbone, layout, context)


def test_blocks_with_layer_scale():
    # open_clip's text tower with LayerScale (ls_init_value), as some of its configs build it.
    model = CLIP(64, vision_cfg={"image_size": 32, "layers": 1, "width": 64, "patch_size": 16},
                 text_cfg={"context_length": 77, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2,
                           "ls_init_value": 0.5})
    backbone = FrozenCLIP(model, None, "fedvlm-tiny", None)
    assert backbone.share_text_prefix
    layout = PromptLayout(backbone, CLASSNAMES, n_ctx=3)
    assert_shared_equals_full(backbone, layout, torch.randn(2, 3, 64, generator=torch.Generator().manual_seed(2)))


def test_a_tower_without_causal_mask_takes_the_full_path():
    backbone = FrozenCLIP.load("fedvlm-tiny", None)  # its own: the shared fixture keeps its mask
    backbone.text_tower.attn_mask = None
    backbone.can_trim_text = False
    rebuilt = FrozenCLIP(backbone.model, backbone.preprocess, backbone.name, None)
    assert not rebuilt.share_text_prefix
    with pytest.raises(ValueError, match="causal text tower"):
        rebuilt.encode_with_shared_prefix(torch.zeros(1, 2, 96), torch.zeros(1, 2, 3, 96), torch.tensor([3, 4]))


def test_class_specific_contexts_share_nothing(tiny_backbone, monkeypatch):
    layout = PromptLayout(tiny_backbone, CLASSNAMES, n_ctx=4)
    calls = []
    monkeypatch.setattr(tiny_backbone, "encode_with_shared_prefix", lambda *args: calls.append(args))
    context = torch.randn(2, len(CLASSNAMES), 4, tiny_backbone.text_width)  # CoOp's CSC: one per class
    features = layout.encode(tiny_backbone, context)
    assert features.shape == (2, len(CLASSNAMES), tiny_backbone.embed_dim) and not calls


def test_fedmpt_condition_prompts_share_a_prefix_per_condition(tiny_backbone):
    from fedvlm.heads.fedmpt import ConditionPromptLayout

    # conditions of 1 and 3 tokens: the common prefix stops at the shorter one's end
    layout = ConditionPromptLayout(tiny_backbone, ["sunny", "in heavy fog"], CLASSNAMES, condition_tokens=2,
                                   class_tokens=3)
    assert layout.shared_prefix == 1 + 2 + 1 + 3  # [SOS] [L]x2 <sunny> [G]x3
    context = torch.randn(2, 2, 5, tiny_backbone.text_width, generator=torch.Generator().manual_seed(3)) * 0.5
    assert_shared_equals_full(tiny_backbone, layout, context)


def test_deep_prompts_are_injected_into_the_shared_prefix(tiny_backbone):
    # MaPLe / OTDPP: layer prompts replace the context positions before blocks 1 .. J - 1
    layout = PromptLayout(tiny_backbone, CLASSNAMES, n_ctx=2)
    generator = torch.Generator().manual_seed(4)
    context = torch.randn(3, 2, tiny_backbone.text_width, generator=generator) * 0.5
    layers = (torch.randn(3, 2, 2, tiny_backbone.text_width, generator=generator) * 0.5).requires_grad_(True)
    capable = tiny_backbone.share_text_prefix
    results = {}
    try:
        for share in (True, False):
            tiny_backbone.share_text_prefix = share
            layers.grad = None
            features = layout.encode_deep(tiny_backbone, context, layers)
            (features * torch.linspace(-1, 1, features.numel()).view_as(features)).sum().backward()
            results[share] = (features.detach(), layers.grad.clone())
    finally:
        tiny_backbone.share_text_prefix = capable
    for a, b in zip(results[True], results[False]):
        assert b.abs().max() > 0 and (a - b).abs().max() <= 1e-5 * b.abs().max()
