"""Full-model baseline: FedAvg of the whole CLIP image encoder with a linear classifier.

The "FedAvg (ViT-Base), 86.6 M transmitted" row of FedRSCLIP Table II: the classic federated
recipe, where every client fine-tunes the whole image network and the server averages all of it
(FedRSCLIP Eq. 2-3). Here the network is CLIP's own image encoder (ViT-B-16: 86,192,640
parameters including its output projection) plus a linear head on the normalised embedding,
logits = logit_scale * normalise(f(x)) W^T + b (a cosine classifier at CLIP's temperature), so
ViT-B-16 with C classes transmits 86,192,640 + 513 C parameters (86.21 M for Optimal-31's 31
classes; the paper's 86.6 M is a timm ViT-Base with its 1,000-class ImageNet head, 86.57 M).
Nothing is private.

``head_init``: ``random`` (the paper's "standard image classification network": W rows
N(0, 1/D), b = 0) or ``zeroshot`` (W = CLIP's normalised class-prompt features, b = 0, so round 0
is zero-shot CLIP).

The head runs the image encoder itself on pixels (``inputs = {"pixels"}``), one slot's copy of the
encoder at a time (``torch.func.functional_call``): a slot holds a whole encoder, so use
``runtime.clients_per_pass: 1`` (S copies of 86 M parameters and their optimizer state
otherwise).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn
from torch.func import functional_call

from fedvlm.heads.base import Batch, Head, HeadConfig, normalize
from fedvlm.heads.registry import HEADS


class FullModelConfig(HeadConfig):
    head_init: Literal["random", "zeroshot"] = "random"


@HEADS.register("full_model")
class FullModelHead(Head):
    Config = FullModelConfig
    inputs = frozenset({"pixels"})

    def __init__(self, config: FullModelConfig, backbone, classnames, template, num_slots=1, seed=0):
        super().__init__(config, backbone, classnames, template, num_slots, seed)
        visual = backbone.model.visual
        # Parameter names may not contain dots inside a ParameterDict.
        self._names = {name.replace(".", "__"): name for name, _ in visual.named_parameters()}
        self.encoder = nn.ParameterDict({key: self.slot_parameter(visual.get_parameter(name))
                                         for key, name in self._names.items()})
        dim = backbone.embed_dim
        if config.head_init == "zeroshot":
            weight = normalize(backbone.encode_text([template.format(c) for c in classnames]))
        else:
            weight = torch.randn(len(classnames), dim, generator=self.generator) / dim ** 0.5
        self.classifier_weight = self.slot_parameter(weight)  # [S, C, D]
        self.classifier_bias = self.slot_parameter(torch.zeros(len(classnames)))  # [S, C]

    def encode(self, pixels: torch.Tensor, slot: int) -> torch.Tensor:
        """Pooled embeddings ``[b, D]`` of ``pixels`` through slot ``slot``'s image encoder."""
        params = {name: self.encoder[key][slot] for key, name in self._names.items()}
        with self.backbone._autocast(pixels.device):
            return functional_call(self.backbone.model.visual, params, (pixels,)).float()

    def forward(self, batch: Batch) -> torch.Tensor:
        logits = []
        order = []
        for slot in batch.present_slot_ids():
            rows = torch.nonzero(batch.slot == slot).flatten()
            features = normalize(self.encode(batch.pixels[rows], slot))
            logits.append(self.backbone.logit_scale * features @ self.classifier_weight[slot].T
                          + self.classifier_bias[slot])
            order.append(rows)
        result = torch.cat(logits)
        return result[torch.argsort(torch.cat(order))]
