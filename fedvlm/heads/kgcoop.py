"""KgCoOp: CoOp with a knowledge-guided pull toward the hand-crafted prompt (Yao et al., "Visual-language
prompt tuning with knowledge-guided context optimization", CVPR 2023; code htyao89/KgCoOp).

The prompt is CoOp's (``[SOS] [V]_1 .. [V]_n <class> . [EOT]``, context initialised from "a photo
of a"), the logits CoOp's: logit_scale * cos(image, w_c). The loss adds, per client, the distance
of the learned class text features w_c to those of the hand-crafted prompt, w_c^clip (the frozen
encoder on e.g. "a photo of a {class}."), which keeps the prompt near CLIP's general knowledge::

    L_kg  = 1/N_c sum_c || w_c - w_c^clip ||_2^2           (KgCoOp Eq. 5; w, w^clip normalised)
    L     = L_ce + lambda * L_kg,   lambda = 8.0            (Eq. 6; the code's TRAINER.COOP.W = 8.0)

Federated (FedMPT Sec. 5): the context is the only learnable part, shared and averaged with FedAvg
(4 x 512 = 2,048 parameters on ViT-B/16, the same as CoOp); the regulariser is each client's own
(its own slot's w against the frozen w^clip), so a slot's loss reads only its slot.

Reading choices:

* ``anchor_distance``: ``squared_l2`` is Eq. 5 (fedvlm's default). The authors' code computes
  ``1 - mean_c cos(w_c, w_c^clip)`` instead, which for unit vectors is exactly half of Eq. 5
  (||a - b||^2 = 2 - 2 cos): ``cosine`` gives the code's term (so lambda = 8 there weighs the
  distance half as much as lambda = 8 in Eq. 5).
* The hand-crafted prompt is the dataset's template (``data.template`` when set), the same
  per-dataset templates as the code's ``CUSTOM_TEMPLATES`` except DTD (the code: "a photo of a {},
  a type of texture."; fedvlm's DTD template is CoOp's "{} texture."); ``anchor_template``
  overrides it. One template, no ensemble, as in the code.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import nn

from fedvlm.heads.base import Batch, normalize, slot_mean
from fedvlm.heads.coop import CoOpConfig, CoOpHead
from fedvlm.heads.registry import HEADS


class KgCoOpConfig(CoOpConfig):
    n_ctx: int = Field(4, gt=0)
    ctx_init: str | None = "a photo of a"  # the code initialises from these words (CTX_INIT: True)
    weight: float = Field(8.0, ge=0)  # lambda of Eq. 6 (the code's TRAINER.COOP.W)
    anchor_distance: Literal["squared_l2", "cosine"] = "squared_l2"
    anchor_template: str | None = None  # null: the dataset's template


class HandCraftedPrompts(nn.Module):
    """The frozen text features of a hand-crafted prompt per class, ``[C, D]`` normalised: what
    zero-shot CLIP reads (KgCoOp's w^clip, ProGrad's zero-shot teacher). Encoded on first use
    (``fedvlm describe`` builds heads without running the text encoder) and kept as a buffer that
    follows the head's device, never saved (it is recomputed from the frozen backbone)."""

    def __init__(self, backbone, classnames: list[str], template: str):
        super().__init__()
        object.__setattr__(self, "backbone", backbone)  # frozen, shared: not a submodule
        self.texts = [template.format(name) for name in classnames]
        self.register_buffer("_features", torch.zeros(0), persistent=False)

    def features(self) -> torch.Tensor:
        if self._features.numel() == 0:
            self._features = normalize(self.backbone.encode_text(self.texts)).to(self._features.device)
        return self._features


def knowledge_guidance(text: torch.Tensor, anchor: torch.Tensor, distance: str = "squared_l2") -> torch.Tensor:
    """KgCoOp's L_kg per client: ``text [U, C, D]`` (each client's normalised class features) and
    ``anchor [C, D]`` (the hand-crafted prompt's, normalised) -> ``[U]``.

    ``squared_l2``: mean_c ||w_c - w_c^clip||^2 (Eq. 5); ``cosine``: 1 - mean_c cos(w_c, w_c^clip)
    (the authors' code; half of Eq. 5 for unit vectors)."""
    if distance == "cosine":
        return 1 - (text * anchor).sum(-1).mean(-1)
    return (text - anchor).pow(2).sum(-1).mean(-1)


@HEADS.register("kgcoop")
class KgCoOpHead(CoOpHead):
    Config = KgCoOpConfig

    def __init__(self, config: KgCoOpConfig, backbone, classnames, template, num_slots=1, seed=0):
        super().__init__(config, backbone, classnames, template, num_slots, seed)
        self.anchor = HandCraftedPrompts(backbone, classnames, config.anchor_template or template)

    def training_loss(self, batch: Batch) -> torch.Tensor:
        slots, position = batch.present_slots()
        text = self.text_features(slots)  # [U, C, D], one text-encoder call for every client
        logits = self.backbone.logit_scale * torch.einsum("bd,bcd->bc", normalize(batch.image), text[position])
        loss = slot_mean(self.sample_loss(logits, batch.labels), batch.slot, self.num_slots)
        if self.config.weight:
            guidance = knowledge_guidance(text, self.anchor.features(), self.config.anchor_distance)
            loss = loss.index_add(0, slots, self.config.weight * guidance)
        return loss
