"""Zero-shot CLIP: hand-written prompts, no trainable parameter (the baseline every table starts from).

Class text features are the mean of the normalised features of every template (prompt
ensembling, as in CLIP), computed once: the text side never changes.
"""

from __future__ import annotations

import torch

from fedvlm.heads.base import Batch, Head, HeadConfig, normalize
from fedvlm.heads.registry import HEADS


class ZeroShotConfig(HeadConfig):
    templates: list[str] | None = None  # null: the dataset's template


@HEADS.register("zeroshot")
class ZeroShotHead(Head):
    Config = ZeroShotConfig

    def __init__(self, config: ZeroShotConfig, backbone, classnames, template, num_slots=1, seed=0):
        super().__init__(config, backbone, classnames, template, num_slots, seed)
        templates = config.templates or [template]
        per_template = torch.stack([normalize(backbone.encode_text([t.format(c) for c in classnames]))
                                    for t in templates])  # [T, C, D]
        self.register_buffer("class_features", normalize(per_template.mean(0)), persistent=False)

    def forward(self, batch: Batch) -> torch.Tensor:
        return self.backbone.logit_scale * normalize(batch.image) @ self.class_features.T
