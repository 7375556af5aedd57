"""CLIP-Adapter (Gao et al., IJCV 2023) as a retrieval baseline (RDB Table 1's "CLIP-Adapter" row).

A two-layer bottleneck MLP on the frozen pooled embedding, blended residually::

    A(f) = ReLU(W_2 ReLU(W_1 f))          W_1: D -> D / reduction, W_2: D / reduction -> D, no bias
    f'   = normalise(ratio * A(f) + (1 - ratio) * f)

with the reference code's settings: reduction 4, residual ratio 0.2, bias-free layers.
``adapt`` says which side gets an adapter: the image side only (CLIP-Adapter's default, the
visual adapter) or both. Trained with RDB's triplet loss alone by default (``loss.terms:
[cross]``); every DTCL term is available (fedvlm/heads/retrieval.py). All weights are shared.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from fedvlm.heads.base import Batch, normalize
from fedvlm.heads.registry import HEADS
from fedvlm.heads.retrieval import RetrievalHead, RetrievalHeadConfig, RetrievalLoss
from fedvlm.retrieval.layers import slot_linear


class CLIPAdapterConfig(RetrievalHeadConfig):
    reduction: int = Field(4, gt=0)
    ratio: float = Field(0.2, ge=0, le=1)  # residual ratio alpha
    adapt: list[Literal["image", "text"]] = ["image"]
    loss: RetrievalLoss = RetrievalLoss(terms=["cross"], weighting="sum")


@HEADS.register("clip_adapter")
class CLIPAdapterHead(RetrievalHead):
    Config = CLIPAdapterConfig

    def __init__(self, config: CLIPAdapterConfig, backbone, classnames, template, num_slots=1, seed=0):
        super().__init__(config, backbone, classnames, template, num_slots, seed)
        self.options = config
        dim = backbone.embed_dim
        hidden = max(1, dim // config.reduction)
        for side in config.adapt:
            setattr(self, f"{side}_fc1", self._uniform((dim, hidden), dim))
            setattr(self, f"{side}_fc2", self._uniform((hidden, dim), hidden))

    def _adapt(self, feature: torch.Tensor, side: str, slot: torch.Tensor, weights) -> torch.Tensor:
        if side not in self.options.adapt:
            return normalize(feature)
        hidden = torch.relu(slot_linear(feature, weights[f"{side}_fc1"], None, slot))
        adapted = torch.relu(slot_linear(hidden, weights[f"{side}_fc2"], None, slot))
        ratio = self.options.ratio
        return normalize(ratio * adapted + (1 - ratio) * feature)

    def embed_images(self, batch: Batch, weights) -> torch.Tensor:
        return self._adapt(batch.image, "image", batch.slot, weights)

    def embed_captions(self, captions, slot, weights, train: bool, present=None) -> torch.Tensor:
        return self._adapt(captions["caption_pooled"], "text", slot, weights)
