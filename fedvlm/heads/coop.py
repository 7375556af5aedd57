"""CoOp: learnable context vectors in the text prompt (Zhou et al., IJCV 2022).

Federated, this is PromptFL / the papers' "FedAvg-PL" row: the context is the shared part, so
4 context vectors of width 512 on ViT-B-16 are the 2,048 parameters sent per round (FedRSCLIP
Table II). Logits = logit_scale * cos(image, text_c) (FedRSCLIP Eq. 5).
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from fedvlm.heads.base import Batch, Head, HeadConfig, normalize
from fedvlm.heads.prompts import PromptLayout, context_init
from fedvlm.heads.registry import HEADS


class CoOpConfig(HeadConfig):
    n_ctx: int = Field(4, gt=0)
    ctx_init: str | None = None  # e.g. "a photo of a": start from these words' embeddings
    class_token_position: Literal["end", "middle", "front"] = "end"
    class_specific_context: bool = False  # CoOp's CSC variant: one context per class


@HEADS.register("coop")
class CoOpHead(Head):
    Config = CoOpConfig

    def __init__(self, config: CoOpConfig, backbone, classnames, template, num_slots=1, seed=0):
        super().__init__(config, backbone, classnames, template, num_slots, seed)
        self.layout = PromptLayout(backbone, classnames, config.n_ctx, config.class_token_position)
        initial = context_init(backbone, config.n_ctx, config.ctx_init, self.generator)
        if config.class_specific_context:
            initial = initial.unsqueeze(0).repeat(len(classnames), 1, 1)
        self.context = self.slot_parameter(initial)  # [S, n_ctx, d_t] or [S, C, n_ctx, d_t]

    def text_features(self, slots: torch.Tensor) -> torch.Tensor:
        """Normalised class text features of the given slots: ``[U, C, D]``."""
        return normalize(self.layout.encode(self.backbone, self.context[slots]))

    def forward(self, batch: Batch) -> torch.Tensor:
        # Only the slots present in the batch run the text encoder (clients that already
        # finished their local steps cost nothing).
        slots, position = batch.present_slots()
        text = self.text_features(slots)  # [U, C, D]
        image = normalize(batch.image)  # [B, D]
        return self.backbone.logit_scale * torch.einsum("bd,bcd->bc", image, text[position])
