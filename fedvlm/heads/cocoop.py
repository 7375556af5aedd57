"""CoCoOp: CoOp's context shifted per image by a small meta-network (Zhou et al., "Conditional prompt
learning for vision-language models", CVPR 2022; code KaiyangZhou/CoOp ``trainers/cocoop.py``).

For image x (its pooled feature, normalised: the code normalises before the meta-net) the
Meta-Net h_theta, Linear(D, D/16) - ReLU - Linear(D/16, d_t), gives one bias pi(x) that is added
to every context token, and each class prompt is built from the shifted context::

    pi(x)     = W_2 ReLU(W_1 x + b_1) + b_2                     (the Meta-Net, [d_t])
    v_m(x)    = v_m + pi(x),  m = 1 .. n_ctx                    (CoCoOp Sec. 4)
    t_c(x)    = [SOS] v_1(x) .. v_n(x) <class c> . [EOT]
    p(y|x)    = softmax_c( logit_scale * cos(x, g(t_c(x))) )    (Eq. 3; cross-entropy)

Defaults are the paper's: n_ctx 4 initialised from "a photo of a", reduction 16 (512 -> 32 -> 512
on ViT-B/16). Federated (FedMPT Sec. 5) the context and the Meta-Net are all shared and averaged
with FedAvg: 2,048 + (512 x 32 + 32) + (32 x 512 + 512) = 35,360 parameters on ViT-B/16.

Cost: every image has its own prompts, so a batch of B images runs B x C prompts through the text
encoder (CoOp runs C per client): with C = 100 classes and batch 8, 800 sequences per step, and
``eval.batch_size`` x C at evaluation (the shared-prefix path runs [SOS] + context once per image).
The Meta-Net's parameters are slot-stacked like the context (``[S, D, D/16]`` ...): each image
reads its own slot's Meta-Net through ``batch.slot``, so a sample's prompts depend only on its
slot and clients in one batch stay independent.

Reading choices: the Meta-Net layers start as ``torch.nn.Linear`` does (uniform in
+-1/sqrt(fan_in), the code's default), drawn from the head's seeded generator; the class token
sits at the end (the code has no other position).
"""

from __future__ import annotations

import math

import torch
from pydantic import Field

from fedvlm.heads.base import Batch, Head, HeadConfig, normalize
from fedvlm.heads.prompts import PromptLayout, context_init
from fedvlm.heads.registry import HEADS


class CoCoOpConfig(HeadConfig):
    n_ctx: int = Field(4, gt=0)
    ctx_init: str | None = "a photo of a"
    reduction: int = Field(16, gt=0)  # Meta-Net hidden width = image feature width // reduction


def meta_net_bias(image: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
                  b2: torch.Tensor) -> torch.Tensor:
    """pi(x) per image, each with its own slot's Meta-Net: ``image [B, D]``, ``w1 [B, D, H]``,
    ``b1 [B, H]``, ``w2 [B, H, d_t]``, ``b2 [B, d_t]`` -> ``[B, d_t]``."""
    hidden = torch.relu(torch.einsum("bd,bdh->bh", image, w1) + b1)
    return torch.einsum("bh,bht->bt", hidden, w2) + b2


@HEADS.register("cocoop")
class CoCoOpHead(Head):
    Config = CoCoOpConfig
    text_per_image = True  # B x C prompts per batch: nothing for evaluation's text memo to reuse

    def __init__(self, config: CoCoOpConfig, backbone, classnames, template, num_slots=1, seed=0):
        super().__init__(config, backbone, classnames, template, num_slots, seed)
        self.layout = PromptLayout(backbone, classnames, config.n_ctx, "end")
        self.context = self.slot_parameter(context_init(backbone, config.n_ctx, config.ctx_init, self.generator))
        width, hidden, text_width = backbone.embed_dim, max(1, backbone.embed_dim // config.reduction), \
            backbone.text_width

        def linear_init(*shape: int, fan_in: int) -> torch.Tensor:  # torch.nn.Linear's default range
            bound = 1 / math.sqrt(fan_in)
            return (torch.rand(*shape, generator=self.generator) * 2 - 1) * bound

        # stored [in, out] (x @ W), one Meta-Net per slot
        self.meta_weight1 = self.slot_parameter(linear_init(width, hidden, fan_in=width))  # [S, D, H]
        self.meta_bias1 = self.slot_parameter(linear_init(hidden, fan_in=width))  # [S, H]
        self.meta_weight2 = self.slot_parameter(linear_init(hidden, text_width, fan_in=hidden))  # [S, H, d_t]
        self.meta_bias2 = self.slot_parameter(linear_init(text_width, fan_in=hidden))  # [S, d_t]

    def conditional_context(self, image: torch.Tensor, slot: torch.Tensor) -> torch.Tensor:
        """Each image's context v_m + pi(x): ``image [B, D]`` normalised, ``slot [B]`` -> ``[B, n_ctx, d_t]``."""
        bias = meta_net_bias(image, self.meta_weight1[slot], self.meta_bias1[slot], self.meta_weight2[slot],
                             self.meta_bias2[slot])
        return self.context[slot] + bias.unsqueeze(1)

    def forward(self, batch: Batch) -> torch.Tensor:
        image = normalize(batch.image)  # [B, D]
        text = normalize(self.layout.encode(self.backbone, self.conditional_context(image, batch.slot)))  # [B, C, D]
        return self.backbone.logit_scale * torch.einsum("bd,bcd->bc", image, text)
