"""PromptSRC: prompting with self-regulating constraints (Khattak et al., ICCV 2023; code
muzairkhattak/PromptSRC, ``trainers/promptsrc.py`` and its configs).

Independent vision-language prompting (IVLP): deep prompts in both encoders with no coupling.
Text: ``n_ctx`` context vectors from "a photo of a" enter with the word embeddings and, before
each block 1 .. J-1, the context positions are replaced by that block's own prompts (N(0,
0.02^2)); vision: ``n_ctx_vision`` prompts (N(0, 0.02^2)) appended to the patch tokens, replaced
before blocks 1 .. J-1 (``FrozenCLIP.encode_prompted_images``). J = 9 in both encoders. Logits
``z = logit_scale cos(f~(x), g~_c)`` on the prompted features.

Mutual agreement with the frozen CLIP (paper Eq. 1-3, the code's weights)::

    L = CE(z, y) + lambda_1 L1(g~, g) + lambda_2 L1(f~, f) + KL(softmax(z_zs) || softmax(z))
    g   = normalize(mean_t E_t(template_t(c)))    frozen text features over several templates
    f   = normalize(f(x))                          the frozen image feature (the cached pooled one)
    z_zs = logit_scale cos(f, g)

with lambda_1 = 25 (TEXT_LOSS_WEIGHT), lambda_2 = 10 (IMAGE_LOSS_WEIGHT), L1 the mean absolute
difference over every element, the KL summed and divided by the number of logits (the code's
``reduction='sum' / logits.numel()``), all per client (slot) here. On multi-hot labels CE is the
base head's ASL (the KL term keeps the softmax, as the code).

Textual diversity: ``g`` averages the raw text features of every template before normalising
(the code's ``fixed_embeddings``). The authors use 60 ImageNet templates; fedvlm's default is
the dataset's template plus the seven-template CLIP ensemble below (``templates`` takes any list,
e.g. the 60).

Gaussian prompt aggregation (GPA, paper Eq. 4: the final prompts are sum_e w_e P_e with w_e a
Gaussian over epochs e, mean 15 and std 1 of 20 in base-to-new) is **not** implemented: in the
federated protocol a client runs one local epoch per round (GPA over it is the identity), and
GPA over rounds would be a server-side average of the global prompts across rounds, which the
head cannot hold (it is not checkpointed server state). ``docs/EXPERIMENTS.md`` says so.

Federated every prompt is shared (aggregated): on ViT-B/16 with 4 + 4 tokens and depth 9 that is
9 x 4 x 512 (text) + 9 x 4 x 768 (vision) = 46,080 parameters.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from fedvlm.heads.base import Batch, Head, HeadConfig, normalize, slot_mean
from fedvlm.heads.maple import check_depth, visual_width
from fedvlm.heads.prompts import PromptLayout, context_init
from fedvlm.heads.registry import HEADS

# CLIP's seven-template ImageNet ensemble (Radford et al. 2021, the prompt-engineering notebook)
CLIP_ENSEMBLE = ("itap of a {}.", "a bad photo of the {}.", "a origami {}.", "a photo of the large {}.",
                 "a {} in a video game.", "art of the {}.", "a photo of the small {}.")


class PromptSRCConfig(HeadConfig):
    n_ctx: int = Field(4, gt=0)  # N_CTX_TEXT
    n_ctx_vision: int = Field(4, gt=0)  # N_CTX_VISION
    ctx_init: str | None = "a photo of a"
    prompt_depth: int = Field(9, gt=0)  # PROMPT_DEPTH_TEXT = PROMPT_DEPTH_VISION
    text_loss_weight: float = Field(25.0, ge=0)  # lambda_1
    image_loss_weight: float = Field(10.0, ge=0)  # lambda_2
    logits_loss_weight: float = Field(1.0, ge=0)  # the KL term's weight (1 in the code)
    templates: list[str] | None = None  # null: the dataset's template + CLIP_ENSEMBLE


def mutual_agreement(logits: torch.Tensor, zero_shot_logits: torch.Tensor, image: torch.Tensor,
                     zero_shot_image: torch.Tensor, slot: torch.Tensor, num_slots: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-slot ``(L1(f~, f), KL(softmax(z_zs) || softmax(z)))`` ``[S]`` each: ``logits``,
    ``zero_shot_logits [B, C]``, prompted and frozen normalised image features ``[B, D]``; the
    L1 is the mean over the slot's elements, the KL the sum over them divided by their count."""
    l1 = slot_mean((image - zero_shot_image).abs().mean(-1), slot, num_slots)
    target = F.log_softmax(zero_shot_logits, dim=-1)
    kl = (target.exp() * (target - F.log_softmax(logits, dim=-1))).sum(-1)  # [B]
    return l1, slot_mean(kl, slot, num_slots) / logits.shape[-1]


@HEADS.register("promptsrc")
class PromptSRCHead(Head):
    Config = PromptSRCConfig
    inputs = frozenset({"pixels"})

    def __init__(self, config: PromptSRCConfig, backbone, classnames, template, num_slots=1, seed=0):
        super().__init__(config, backbone, classnames, template, num_slots, seed)
        check_depth(backbone, config.prompt_depth)
        self.layout = PromptLayout(backbone, classnames, config.n_ctx, "end")
        depth, width_t, width_v = config.prompt_depth, backbone.text_width, visual_width(backbone)
        self.context = self.slot_parameter(context_init(backbone, config.n_ctx, config.ctx_init, self.generator))
        self.deep_context = self.slot_parameter(
            torch.randn(depth - 1, config.n_ctx, width_t, generator=self.generator) * 0.02)  # [S, J-1, n, d_t]
        self.vision_prompts = self.slot_parameter(
            torch.randn(depth, config.n_ctx_vision, width_v, generator=self.generator) * 0.02)  # [S, J, n_v, d_v]
        templates = config.templates or [template, *CLIP_ENSEMBLE]
        with torch.no_grad():
            raw = torch.stack([backbone.encode_text([t.format(c) for c in classnames]) for t in templates])
        self.register_buffer("frozen_text", normalize(raw.mean(0)), persistent=False)  # g [C, D]

    def features(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(prompted text ``[U, C, D]``, prompted image ``[B, D]``, both normalised; positions ``[B]``)."""
        slots, position = batch.present_slots()
        text = normalize(self.layout.encode_deep(self.backbone, self.context[slots], self.deep_context[slots]))
        vision = self.vision_prompts[slots][position]  # [B, J, n_v, d_v]: each sample its client's
        image = normalize(self.backbone.encode_prompted_images(batch.pixels, vision).pooled)
        return text, image, position

    def forward(self, batch: Batch) -> torch.Tensor:
        text, image, position = self.features(batch)
        return self.backbone.logit_scale * torch.einsum("bd,bcd->bc", image, text[position])

    def training_loss(self, batch: Batch) -> torch.Tensor:
        config = self.config
        text, image, position = self.features(batch)
        logits = self.backbone.logit_scale * torch.einsum("bd,bcd->bc", image, text[position])
        frozen_image = normalize(batch.image)
        zero_shot = self.backbone.logit_scale * frozen_image @ self.frozen_text.T
        loss = slot_mean(self.sample_loss(logits, batch.labels), batch.slot, self.num_slots)
        image_l1, kl = mutual_agreement(logits, zero_shot, image, frozen_image, batch.slot, self.num_slots)
        text_l1 = (text - self.frozen_text.unsqueeze(0)).abs().mean((1, 2))  # [U]
        slots, _ = batch.present_slots()
        loss = loss + config.image_loss_weight * image_l1 + config.logits_loss_weight * kl
        return loss.index_add(0, slots, config.text_loss_weight * text_l1)
