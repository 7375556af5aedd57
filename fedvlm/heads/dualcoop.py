"""DualCoOp (Sun et al., NeurIPS 2022): a positive and a negative learnable prompt per class, scored
on every image region (the "Fed-DualCoOp" baseline of FedMPT Tables 1-3, trained with ASL).

Both prompts are CoOp contexts (``[V]_1..[V]_n [CLASS].``) whose text features are compared with
every region: the projected patch tokens and the pooled embedding (:func:`image_regions`).
Class-specific region aggregation (FedMPT Eq. 2; DualCoOp's code, REFERENCE-NOTES item 8)::

    s_pos[m, c] = 20 * cos(region_m, t_pos_c)       s_neg[m, c] = 20 * cos(region_m, t_neg_c)
    w[m, c]     = softmax over regions m of s_pos[m, c] / tau
    logit_pos   = 5 * sum_m w * s_pos                logit_neg = 5 * sum_m w * s_neg

The negative logit reuses the positive weights. DualCoOp turns the pair into a presence
probability with a softmax over (negative, positive), which equals sigmoid(logit_pos -
logit_neg): the head returns that difference as the class logit, so the base ASL on sigmoid is
DualCoOp's loss. FedMPT's Eq. 2 prints the softmax over classes c' instead of regions m;
``aggregate_over: classes`` is that reading (``patches``, the DualCoOp code, is the default).
The 5 is ``output_scale`` (see :func:`output_scale` for backbones other than OpenAI CLIP).
Everything is shared (FedAvg): 2 x 16 x 512 = 16,384 parameters on ViT-B/16 (Table 5's class of
"0.02 M" prompt methods).
"""

from __future__ import annotations

from typing import Literal

import torch
from einops import pack
from pydantic import Field

from fedvlm.heads.base import Batch, Head, HeadConfig, normalize
from fedvlm.heads.prompts import PromptLayout, context_init
from fedvlm.heads.registry import HEADS

Aggregation = Literal["patches", "classes"]


def region_scores(values: torch.Tensor, weight_logits: torch.Tensor, over: Aggregation = "patches") -> torch.Tensor:
    """Class-specific region aggregation (FedMPT Eq. 2, DualCoOp): ``sum_m w[m, c] * values[m, c]``.

    values, weight_logits: ``[..., M, C]`` (patches x classes); the weights are
    ``softmax(weight_logits)`` over patches (DualCoOp's code) or over classes (Eq. 2 as printed).
    -> ``[..., C]``.
    """
    weights = torch.softmax(weight_logits, dim=-2 if over == "patches" else -1)
    return (weights * values).sum(dim=-2)


def output_scale(configured: float | None, backbone, similarity_scale: float) -> float:
    """The logit multiplier: as configured, else ``logit_scale / similarity_scale`` of the
    backbone, i.e. DualCoOp's 5 on OpenAI CLIP (logit scale 100 = 5 x 20). The region weights
    keep the paper's sharpness (softmax of 20 cos) on any backbone, while the logits get the
    sharpness the backbone's own zero-shot logits have: a backbone trained to another logit
    scale (the synthetic world's tiny CLIP: ~15) would otherwise saturate the sigmoid of ASL."""
    return float(configured) if configured is not None else float(backbone.logit_scale) / similarity_scale


def image_regions(batch: Batch, global_region: bool = True) -> torch.Tensor:
    """The regions scored per class: the projected patch tokens ``[B, M, D]``, preceded by the
    pooled (class-token) embedding when ``global_region`` -> ``[B, 1 + M, D]``. The authors' ViT
    code (the public FedMPT repository's convclip: ln_post and proj over *all* tokens) and
    DualCoOp's ResNet attention-pool replacement (mean token prepended to the positions) both
    score a global token among the regions; CLIP trains only that token against text, so
    without it a frozen ViT's last-layer patch tokens may carry little text alignment."""
    if not global_region:
        return batch.patches
    return pack([batch.image.to(batch.patches.dtype), batch.patches], "b * d")[0]  # row 0: the pooled embedding


def patch_similarity(patches: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every patch with every class text: patches ``[B, M, D]``, text
    ``[B, C, D]`` (each sample its own slot's classes) -> ``[B, M, C]``."""
    return torch.einsum("bmd,bcd->bmc", normalize(patches), normalize(text))


class DualCoOpConfig(HeadConfig):
    n_ctx: int = Field(16, gt=0)  # DualCoOp's N_CTX_POS = N_CTX_NEG = 16
    ctx_init: str | None = None  # positive context start, e.g. "a photo of a" (n_ctx must match)
    negative_ctx_init: str | None = None
    class_specific_context: bool = False  # DualCoOp's CSC option: one context per class
    similarity_scale: float = Field(20.0, gt=0)  # s = 20 * cos (DualCoOp's LS)
    # the 5 in DualCoOp's "5 * (output * w).sum(-1)"; null: logit scale / 20 (5 on OpenAI CLIP,
    # whose logit scale is 100; see output_scale())
    output_scale: float | None = Field(None, gt=0)
    tau: float = Field(1.0, gt=0)  # temperature of the aggregation weights (Eq. 2)
    aggregate_over: Aggregation = "patches"
    global_region: bool = True  # score the pooled embedding as one more region (see image_regions)


@HEADS.register("dualcoop")
class DualCoOpHead(Head):
    Config = DualCoOpConfig
    inputs = frozenset({"image", "patches"})

    def __init__(self, config: DualCoOpConfig, backbone, classnames, template, num_slots=1, seed=0):
        super().__init__(config, backbone, classnames, template, num_slots, seed)
        self.layout = PromptLayout(backbone, classnames, config.n_ctx, "end")
        contexts = []
        for phrase in (config.ctx_init, config.negative_ctx_init):
            initial = context_init(backbone, config.n_ctx, phrase, self.generator)
            if config.class_specific_context:
                initial = initial.unsqueeze(0).repeat(len(classnames), 1, 1)
            contexts.append(initial)
        self.output_scale = output_scale(config.output_scale, backbone, config.similarity_scale)
        self.positive_context = self.slot_parameter(contexts[0])  # [S, n_ctx, d_t] or [S, C, n_ctx, d_t]
        self.negative_context = self.slot_parameter(contexts[1])

    def text_features(self, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Positive and negative class text features of the given slots, ``[U, C, D]`` each
        (one text-encoder call for both)."""
        both = self.layout.encode(self.backbone, torch.cat([self.positive_context[slots], self.negative_context[slots]]))
        return both[: len(slots)], both[len(slots):]

    def forward(self, batch: Batch) -> torch.Tensor:
        slots, position = batch.present_slots()
        positive, negative = self.text_features(slots)
        config = self.config
        regions = image_regions(batch, config.global_region)
        s_pos = config.similarity_scale * patch_similarity(regions, positive[position])  # [B, M, C]
        s_neg = config.similarity_scale * patch_similarity(regions, negative[position])
        weights = s_pos / config.tau
        logit_pos = region_scores(s_pos, weights, config.aggregate_over)
        logit_neg = region_scores(s_neg, weights, config.aggregate_over)
        return self.output_scale * (logit_pos - logit_neg)
