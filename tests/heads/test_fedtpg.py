"""FedTPG (fedvlm/heads/fedtpg.py): the generated context against the authors' module structure
built from torch's own layers (nn.LayerNorm, nn.MultiheadAttention with kdim / vdim, the GEGLU
feed-forward), one slot at a time; the text features against encode_deep on that context; and
the parameter count on ViT-B-16 (FedMPT Table 5: 4.21 M)."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from head_checks import CLASSES, TEMPLATE
from fedvlm.heads import HEADS

pytestmark = pytest.mark.usefixtures("one_thread")


def _reference_generator(head, slot):
    """PreNorm(MHA) without residual, then FeedForward(x) + x, with the head's slot weights."""
    width, embed = head.soft_prompt.shape[-1], head.class_embeddings.shape[-1]
    norm_q, norm_kv, norm_ff = nn.LayerNorm(width), nn.LayerNorm(embed), nn.LayerNorm(width)
    attention = nn.MultiheadAttention(width, head.config.heads, kdim=embed, vdim=embed, batch_first=True)
    mult = head.config.ff_mult
    linear1, linear2 = nn.Linear(width, 2 * mult * width), nn.Linear(mult * width, width)
    p = {name: getattr(head, name)[slot].detach() for name in head.generator_names}
    with torch.no_grad():
        norm_q.weight.copy_(p["query_norm_weight"]), norm_q.bias.copy_(p["query_norm_bias"])
        norm_kv.weight.copy_(p["key_norm_weight"]), norm_kv.bias.copy_(p["key_norm_bias"])
        norm_ff.weight.copy_(p["ff_norm_weight"]), norm_ff.bias.copy_(p["ff_norm_bias"])
        if attention._qkv_same_embed_dim:
            attention.in_proj_weight.copy_(torch.cat([p["query_weight"].T, p["key_weight"].T, p["value_weight"].T]))
        else:
            attention.q_proj_weight.copy_(p["query_weight"].T)
            attention.k_proj_weight.copy_(p["key_weight"].T)
            attention.v_proj_weight.copy_(p["value_weight"].T)
        attention.in_proj_bias.copy_(torch.cat([p["query_bias"], p["key_bias"], p["value_bias"]]))
        attention.out_proj.weight.copy_(p["out_weight"].T), attention.out_proj.bias.copy_(p["out_bias"])
        linear1.weight.copy_(p["ff_weight1"].T), linear1.bias.copy_(p["ff_bias1"])
        linear2.weight.copy_(p["ff_weight2"].T), linear2.bias.copy_(p["ff_bias2"])

    def run(soft_prompt, class_embeddings):
        x, _ = attention(norm_q(soft_prompt[None]), norm_kv(class_embeddings[None]), norm_kv(class_embeddings[None]))
        hidden, gates = linear1(norm_ff(x)).chunk(2, dim=-1)
        return (linear2(hidden * F.gelu(gates)) + x)[0]

    return run


def test_generated_context_equals_torchs_attention_and_feeds_the_text_encoder(tiny_backbone):
    head = HEADS.get("fedtpg")(HEADS.get("fedtpg").Config(name="fedtpg", prompt_depth=2), tiny_backbone, CLASSES,
                               TEMPLATE, num_slots=2, seed=4)
    with torch.no_grad():
        for param in head.trainable().values():
            param[1] += 0.05 * torch.randn(param[1].shape, generator=torch.Generator().manual_seed(5))
    names = F.normalize(tiny_backbone.encode_text(CLASSES), dim=-1)
    torch.testing.assert_close(head.class_embeddings, names)
    context = head.generated_context(torch.tensor([0, 1])).detach()  # [2, d_ctx, n_ctx, d_t]
    for slot in (0, 1):
        with torch.no_grad():
            expected = _reference_generator(head, slot)(head.soft_prompt[slot], names)
        torch.testing.assert_close(context[slot].flatten(0, 1), expected, atol=1e-5, rtol=1e-5)
        text = head.text_features(torch.tensor([slot]))[0].detach()
        deep = head.layout.encode_deep(tiny_backbone, context[slot : slot + 1, 0], context[slot : slot + 1, 1:])[0]
        torch.testing.assert_close(text, F.normalize(deep, dim=-1))
    assert (context[0] - context[1]).abs().max() > 1e-4
    # the prompts follow the class names: other classes give another context
    other = HEADS.get("fedtpg")(HEADS.get("fedtpg").Config(name="fedtpg", prompt_depth=2), tiny_backbone,
                                ["a road", "a beach", "a mountain"], TEMPLATE, num_slots=2, seed=4)
    other.load_state_dict(head.state_dict())
    assert (other.generated_context(torch.tensor([0])).detach()[0] - context[0]).abs().max() > 1e-4


def test_vit_b16_generator_has_fedmpt_table_5s_4_21_million_parameters():
    from fedvlm.config import load_configs
    from fedvlm.describe import describe

    counts = describe(load_configs("experiments/otdpp/fedtpg.yaml")[0])
    assert counts["trainable_parameters"] == counts["transmitted_parameters"] == 4_206_080
    assert round(counts["trainable_parameters"] / 1e6, 2) == 4.21
    assert counts["private_parameters"] == 0
