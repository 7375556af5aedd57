"""TCP (fedvlm/heads/tcp.py): its text features against an independent forward through the tiny
CLIP's text tower (the TKE written with nn.Linear, the class-aware tokens replacing the context
before block ``insert_layer``), its loss (CE + weight x (1 - mean cos to the hand-crafted
prompt's features)), and its parameter count on ViT-B-16."""

import pytest
import torch
import torch.nn.functional as F

from head_checks import CLASSES, TEMPLATE, TensorBatches
from fedvlm.heads import HEADS
from fedvlm.heads.base import Batch

pytestmark = pytest.mark.usefixtures("one_thread")


def _head(backbone, slots=2, **options):
    config = HEADS.get("tcp").Config(name="tcp", insert_layer=2, **options)
    return HEADS.get("tcp")(config, backbone, CLASSES, TEMPLATE, num_slots=slots, seed=3)


def _reference_text(backbone, head, slot):
    """TCP's TextEncoder.forward, written out on open_clip's text tower for one slot."""
    tower = backbone.text_tower
    n_ctx = head.config.n_ctx
    knowledge = F.normalize(backbone.encode_text([TEMPLATE.format(c) for c in CLASSES]), dim=-1)
    linear1, linear2 = torch.nn.Linear(*head.tke_weight1.shape[1:]), torch.nn.Linear(*head.tke_weight2.shape[1:])
    with torch.no_grad():
        linear1.weight.copy_(head.tke_weight1[slot].T), linear1.bias.copy_(head.tke_bias1[slot])
        linear2.weight.copy_(head.tke_weight2[slot].T), linear2.bias.copy_(head.tke_bias2[slot])
    hidden = linear1(knowledge)
    class_tokens = linear2(hidden * torch.sigmoid(1.702 * hidden)).reshape(len(CLASSES), n_ctx, -1)
    ids = backbone.tokenize([" ".join(["X"] * n_ctx) + f" {c}." for c in CLASSES])
    eot = ids.argmax(-1)  # the EOT token has the largest id
    x = tower.token_embedding(ids)
    x = torch.cat([x[:, :1], head.context[slot].expand(len(CLASSES), -1, -1), x[:, 1 + n_ctx:]], dim=1)
    x = x + tower.positional_embedding
    for j, block in enumerate(tower.transformer.resblocks):
        if j == head.config.insert_layer:
            x = torch.cat([x[:, :1], class_tokens, x[:, 1 + n_ctx:]], dim=1)
        x = block(x, attn_mask=tower.attn_mask)
    x = tower.ln_final(x)[torch.arange(len(CLASSES)), eot] @ tower.text_projection
    return F.normalize(x, dim=-1), knowledge


def test_text_features_and_loss_equal_an_independent_forward(tiny_backbone):
    head = _head(tiny_backbone)
    with torch.no_grad():
        head.context[1] += 0.05 * torch.randn(head.context[1].shape, generator=torch.Generator().manual_seed(0))
        head.tke_bias2[1] += 0.1
    data = TensorBatches(tiny_backbone, count=6)
    batch = data.batch(range(6), [0, 1, 1, 0, 1, 0])
    loss = head.training_loss(batch)
    for slot in (0, 1):
        with torch.no_grad():
            text, knowledge = _reference_text(tiny_backbone, head, slot)
        torch.testing.assert_close(head.text_features(torch.tensor([slot]))[0].detach(), text, atol=2e-5, rtol=1e-4)
        rows = batch.slot == slot
        logits = tiny_backbone.logit_scale * F.normalize(batch.image[rows], dim=-1) @ text.T
        expected = F.cross_entropy(logits, batch.labels[rows]) + 8.0 * (1 - F.cosine_similarity(text, knowledge).mean())
        torch.testing.assert_close(loss[slot].detach(), expected, atol=1e-4, rtol=1e-4)
    # the class-aware tokens matter: other TKE weights give other text features
    before = head.text_features(torch.tensor([0])).detach()
    with torch.no_grad():
        head.tke_weight2[0] *= 1.5
    assert (head.text_features(torch.tensor([0])).detach() - before).abs().max() > 1e-4


def test_insert_layer_must_lie_inside_the_text_encoder(tiny_backbone):
    from fedvlm.errors import ConfigError

    with pytest.raises(ConfigError, match="head.insert_layer: 4 must be below the 4 blocks"):
        HEADS.get("tcp")(
            HEADS.get("tcp").Config(name="tcp", insert_layer=4), tiny_backbone, CLASSES, TEMPLATE)


def test_vit_b16_counts_the_context_and_the_tke():
    """4 x 512 + (512 x 128 + 128) + (128 x 2,048 + 2,048) = 331,904, all shared (Fed-TCP)."""
    from fedvlm.config import load_configs
    from fedvlm.describe import describe

    counts = describe(load_configs("experiments/otdpp/tcp.yaml")[0])
    assert counts["model"] == "ViT-B-16"
    assert counts["trainable_parameters"] == counts["transmitted_parameters"] == 331_904
    assert counts["private_parameters"] == 0
