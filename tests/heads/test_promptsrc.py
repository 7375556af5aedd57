"""PromptSRC (fedvlm/heads/promptsrc.py): its loss against the code's formula written with
torch's own losses (F.cross_entropy, F.l1_loss, F.kl_div(reduction="sum") / numel), one client
at a time, the frozen text features as the template mean, and its parameter count on ViT-B-16."""

import pytest
import torch
import torch.nn.functional as F

from head_checks import CLASSES, TEMPLATE, TensorBatches
from fedvlm.heads import HEADS
from fedvlm.heads.promptsrc import CLIP_ENSEMBLE

pytestmark = pytest.mark.usefixtures("one_thread")


def test_loss_is_ce_plus_the_mutual_agreement_terms(tiny_backbone):
    head = HEADS.get("promptsrc")(HEADS.get("promptsrc").Config(name="promptsrc", prompt_depth=3), tiny_backbone,
                                  CLASSES, TEMPLATE, num_slots=2, seed=1)
    with torch.no_grad():
        for param in head.trainable().values():
            param[1] += 0.05 * torch.randn(param[1].shape, generator=torch.Generator().manual_seed(2))
    raw = torch.stack([tiny_backbone.encode_text([t.format(c) for c in CLASSES]) for t in [TEMPLATE, *CLIP_ENSEMBLE]])
    fixed = F.normalize(raw.mean(0), dim=-1)  # the code's fixed_embeddings: mean of raw features, normalised
    torch.testing.assert_close(head.frozen_text, fixed)
    data = TensorBatches(tiny_backbone, count=6)
    slot = [0, 1, 1, 0, 1, 1]
    batch = data.batch(range(6), slot)
    loss = head.training_loss(batch)
    for s in (0, 1):
        rows = [i for i in range(6) if slot[i] == s]
        alone = data.batch(rows, [0] * len(rows))
        with torch.no_grad():
            text, image, _ = head.features(data.batch(rows, [s] * len(rows)))
        text = text[0]
        logits = tiny_backbone.logit_scale * image @ text.T
        frozen = F.normalize(alone.image, dim=-1)
        zero_shot = tiny_backbone.logit_scale * frozen @ fixed.T
        expected = (F.cross_entropy(logits, alone.labels) + 25 * F.l1_loss(text, fixed) + 10 * F.l1_loss(image, frozen)
                    + F.kl_div(F.log_softmax(logits, 1), F.log_softmax(zero_shot, 1), reduction="sum",
                               log_target=True) / logits.numel())
        torch.testing.assert_close(loss[s].detach(), expected, atol=1e-4, rtol=1e-4)
    # the terms act: without them only the cross-entropy is left, and it is smaller
    plain = HEADS.get("promptsrc")(HEADS.get("promptsrc").Config(
        name="promptsrc", prompt_depth=3, text_loss_weight=0, image_loss_weight=0, logits_loss_weight=0),
        tiny_backbone, CLASSES, TEMPLATE, num_slots=2, seed=1)
    plain.load_state_dict(head.state_dict())
    assert (plain.training_loss(batch) < loss - 1e-4).all()


def test_vit_b16_counts_the_text_and_vision_prompts():
    """9 x 4 x 512 (text) + 9 x 4 x 768 (vision) = 46,080, all shared."""
    from fedvlm.config import load_configs
    from fedvlm.describe import describe

    counts = describe(load_configs("experiments/otdpp/promptsrc.yaml")[0])
    assert counts["trainable_parameters"] == counts["transmitted_parameters"] == 46_080
    assert counts["private_parameters"] == 0
