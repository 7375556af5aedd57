"""Deep prompts in both encoders (MaPLe, OTDPP) against open_clip's own forward passes."""

import pytest
import torch

from fedvlm.backbone.clip import _run_block

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread is faster

PROMPTS = ["a photo of a cat.", "a photo of a dense residential area."]


def _hidden_states(transformer, x, mask=None):
    """Inputs of every block, [x_0 (input), x_1 (= output of block 0), ...], from open_clip's own
    ``forward_intermediates`` (which returns every block's output)."""
    _, outputs = transformer.forward_intermediates(x, attn_mask=mask)
    return [x] + list(outputs)


def test_text_without_layer_prompts_is_the_plain_text_path(tiny_backbone):
    ids = tiny_backbone.tokenize(PROMPTS)
    embeddings, eot = tiny_backbone.token_embeddings(ids), tiny_backbone.eot_positions(ids)
    torch.testing.assert_close(tiny_backbone.encode_deep_prompted_text(embeddings, eot),
                               tiny_backbone.model.encode_text(ids), atol=1e-5, rtol=1e-5)


def test_injecting_the_true_hidden_states_reproduces_encode_text(tiny_backbone):
    """Replacing the context positions before blocks 1..J-1 by exactly the values they have in an
    unprompted pass must change nothing; any other layer or position would."""
    ids = tiny_backbone.tokenize(PROMPTS)
    embeddings, eot = tiny_backbone.token_embeddings(ids), tiny_backbone.eot_positions(ids)
    tower = tiny_backbone.text_tower
    x = embeddings + tower.positional_embedding
    states = _hidden_states(tower.transformer, x, tower.attn_mask)
    positions = torch.tensor([1, 2, 3, 4])  # "a photo of a"
    index = torch.full(ids.shape, -1)
    index[:, positions] = torch.arange(4)
    depth = 3
    layer_prompts = torch.stack([states[j][:, positions] for j in range(1, depth)], dim=1)  # [N, J-1, 4, d]
    ours = tiny_backbone.encode_deep_prompted_text(embeddings, eot, layer_prompts, index)
    torch.testing.assert_close(ours, tiny_backbone.model.encode_text(ids), atol=1e-5, rtol=1e-5)

    shifted = torch.stack([states[j + 1][:, positions] for j in range(1, depth)], dim=1)  # one block late
    assert not torch.allclose(tiny_backbone.encode_deep_prompted_text(embeddings, eot, shifted, index), ours, atol=1e-4)
    layer_prompts = layer_prompts.clone().requires_grad_(True)
    tiny_backbone.encode_deep_prompted_text(embeddings, eot, layer_prompts, index).sum().backward()
    assert layer_prompts.grad[:, 1].abs().sum() > 0  # the deepest injected prompts are used


def _pixels(count=2, seed=0):
    return torch.randn(count, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


def _maple_input(visual, pixels, prompts):
    """MaPLe's vision input written out: patches, class token, positions, prompts appended, ln_pre."""
    x = visual.conv1(pixels).flatten(2).transpose(1, 2)
    x = torch.cat([visual.class_embedding.expand(x.shape[0], 1, -1), x], dim=1) + visual.positional_embedding
    return visual.ln_pre(torch.cat([x, prompts], dim=1))


def test_images_without_prompts_equal_encode_images(tiny_backbone):
    pixels = _pixels()
    plain = tiny_backbone.encode_images(pixels, patches=True)
    ours = tiny_backbone.encode_prompted_images(pixels, None)
    torch.testing.assert_close(ours.pooled, tiny_backbone.model.encode_image(pixels), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.patches, plain.patches, atol=1e-5, rtol=1e-5)
    empty = tiny_backbone.encode_prompted_images(pixels, torch.zeros(2, 3, 0, 128))
    torch.testing.assert_close(empty.pooled, ours.pooled)


def test_first_layer_visual_prompts_follow_maples_input(tiny_backbone):
    visual = tiny_backbone.model.visual
    pixels = _pixels()
    prompts = torch.randn(2, 1, 3, 128, generator=torch.Generator().manual_seed(1))
    x = visual.transformer(_maple_input(visual, pixels, prompts[:, 0]))[:, :-3]
    x = visual.ln_post(x)
    ours = tiny_backbone.encode_prompted_images(pixels, prompts)
    torch.testing.assert_close(ours.pooled, x[:, 0] @ visual.proj, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.patches, x[:, 1:] @ visual.proj, atol=1e-5, rtol=1e-5)
    assert ours.patches.shape == (2, 64, tiny_backbone.embed_dim)  # the prompt tokens are not patches
    assert not torch.allclose(ours.pooled, tiny_backbone.encode_images(pixels).pooled, atol=1e-3)


def test_deeper_visual_prompts_replace_the_last_tokens_before_each_block(tiny_backbone):
    """Prompts equal to the tokens' own hidden states at blocks 1..J-1 change nothing."""
    visual = tiny_backbone.model.visual
    pixels = _pixels()
    first = torch.randn(2, 3, 128, generator=torch.Generator().manual_seed(2))
    states = _hidden_states(visual.transformer, _maple_input(visual, pixels, first))
    depth = 4
    prompts = torch.stack([first] + [states[j][:, -3:] for j in range(1, depth)], dim=1)  # [B, J, 3, d_v]
    shallow = tiny_backbone.encode_prompted_images(pixels, prompts[:, :1])
    deep = tiny_backbone.encode_prompted_images(pixels, prompts)
    torch.testing.assert_close(deep.pooled, shallow.pooled, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(deep.patches, shallow.patches, atol=1e-5, rtol=1e-5)
    other = prompts.clone()
    # (a constant shift would vanish in ln_1)
    other[:, 3] += torch.randn(2, 3, 128, generator=torch.Generator().manual_seed(4))
    assert not torch.allclose(tiny_backbone.encode_prompted_images(pixels, other).pooled, deep.pooled, atol=1e-4)
    prompts = prompts.clone().requires_grad_(True)
    tiny_backbone.encode_prompted_images(pixels, prompts).patches.sum().backward()
    assert prompts.grad[:, depth - 1].abs().sum() > 0
    assert all(p.grad is None for p in tiny_backbone.parameters())


def test_run_block_handles_sequence_first_transformers(tiny_backbone):
    block = tiny_backbone.model.visual.transformer.resblocks[0]
    x = torch.randn(2, 5, 128, generator=torch.Generator().manual_seed(3))
    block.attn.batch_first = False
    try:
        sequence_first = _run_block(block, x, None, batch_first=False)
    finally:
        block.attn.batch_first = True
    torch.testing.assert_close(sequence_first, _run_block(block, x, None, batch_first=True), atol=1e-5, rtol=1e-5)
