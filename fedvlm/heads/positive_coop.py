"""PositiveCoOp (Rawlekar et al., WACV 2025): a learned positive prompt, and a negative that is a
learned text-space embedding per class instead of a prompt ("Fed-PosCoOp" in FedMPT Tables 1-5).

Scoring is DualCoOp's region aggregation (see :mod:`fedvlm.heads.dualcoop`) with the negative
text features replaced by the learned embeddings ``e_neg [C, D]``::

    s_pos = 20 * cos(region_m, t_pos_c),  s_neg = 20 * cos(region_m, e_neg_c)
    logit = 5 * sum_m softmax_m(s_pos) * (s_pos - s_neg)

On ViT-B/16 with 16 context tokens and VOC's 20 classes that is 16 x 512 + 20 x 512 = 18,432
shared parameters: Table 5's "0.02 M". The authors' code also adds a learned per-class residual
to the positive text features (``txt_prompt_learn``, drawn from N(0, 1) there); ``positive_residual:
true`` turns it on, starting at zero (+C x D parameters). Everything is shared (FedAvg).
"""

from __future__ import annotations

import torch
from pydantic import Field

from fedvlm.heads.base import Batch, Head, HeadConfig
from fedvlm.heads.dualcoop import Aggregation, image_regions, output_scale, patch_similarity, region_scores
from fedvlm.heads.prompts import PromptLayout, context_init
from fedvlm.heads.registry import HEADS


class PositiveCoOpConfig(HeadConfig):
    n_ctx: int = Field(16, gt=0)
    ctx_init: str | None = None
    class_specific_context: bool = False
    positive_residual: bool = False  # the authors' code: learned per-class residual on t_pos
    similarity_scale: float = Field(20.0, gt=0)
    output_scale: float | None = Field(None, gt=0)  # null: logit scale / 20 (5 on OpenAI CLIP)
    tau: float = Field(1.0, gt=0)
    aggregate_over: Aggregation = "patches"
    global_region: bool = True  # score the pooled embedding as one more region (dualcoop.image_regions)


@HEADS.register("positive_coop")
class PositiveCoOpHead(Head):
    Config = PositiveCoOpConfig
    inputs = frozenset({"image", "patches"})

    def __init__(self, config: PositiveCoOpConfig, backbone, classnames, template, num_slots=1, seed=0):
        super().__init__(config, backbone, classnames, template, num_slots, seed)
        self.layout = PromptLayout(backbone, classnames, config.n_ctx, "end")
        self.output_scale = output_scale(config.output_scale, backbone, config.similarity_scale)
        initial = context_init(backbone, config.n_ctx, config.ctx_init, self.generator)
        if config.class_specific_context:
            initial = initial.unsqueeze(0).repeat(len(classnames), 1, 1)
        self.context = self.slot_parameter(initial)
        dims = (len(classnames), backbone.embed_dim)
        # The authors draw both embeddings from N(0, 1); only their direction matters (cosine).
        self.negative_embedding = self.slot_parameter(torch.randn(*dims, generator=self.generator))
        if config.positive_residual:
            self.positive_residual = self.slot_parameter(torch.zeros(dims))

    def forward(self, batch: Batch) -> torch.Tensor:
        slots, position = batch.present_slots()
        positive = self.layout.encode(self.backbone, self.context[slots])  # [U, C, D]
        if self.config.positive_residual:
            positive = positive + self.positive_residual[slots]
        config = self.config
        regions = image_regions(batch, config.global_region)
        s_pos = config.similarity_scale * patch_similarity(regions, positive[position])  # [B, M, C]
        s_neg = config.similarity_scale * patch_similarity(regions, self.negative_embedding[batch.slot])
        weights = s_pos / config.tau
        return self.output_scale * (region_scores(s_pos, weights, config.aggregate_over)
                                      - region_scores(s_neg, weights, config.aggregate_over))
