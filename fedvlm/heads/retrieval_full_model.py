"""Full fine-tuning for retrieval: the comparison row of RDB Tables 1-2 ("Full-FT CLIP").

Every client fine-tunes CLIP itself, the image tower and (``text_tower: finetune``, the default)
the text tower, and the server averages all of it: the classic FedAvg of the whole model. The
head runs the encoders on pixels and caption token ids (``inputs = {"pixels", "captions", "caption_token_ids"}``), one slot's copy of the
weights at a time (``torch.func.functional_call``), so use ``runtime.clients_per_pass: 1`` on
real models (a slot holds a whole CLIP and its optimizer state). ``text_tower: frozen`` tunes the
image tower only and reads the cached caption features. Trained with the triplet loss (Eq. 10)
by default; every DTCL term is available.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from fedvlm.batch import present_ids_of
from fedvlm.heads.base import Batch, normalize
from fedvlm.heads.registry import HEADS
from fedvlm.heads.retrieval import RetrievalHead, RetrievalHeadConfig, RetrievalLoss


class RetrievalFullModelConfig(RetrievalHeadConfig):
    text_tower: Literal["finetune", "frozen"] = "finetune"
    loss: RetrievalLoss = RetrievalLoss(terms=["cross"], weighting="sum")


@HEADS.register("retrieval_full_model")
class RetrievalFullModelHead(RetrievalHead):
    Config = RetrievalFullModelConfig
    inputs = frozenset({"pixels", "captions", "caption_token_ids"})

    def __init__(self, config: RetrievalFullModelConfig, backbone, classnames, template, num_slots=1, seed=0):
        super().__init__(config, backbone, classnames, template, num_slots, seed)
        model = backbone.model
        # ParameterDict keys may not contain dots.
        self._visual_names = {n.replace(".", "__"): n for n, _ in model.visual.named_parameters()}
        self.visual = nn.ParameterDict({k: self.slot_parameter(model.visual.get_parameter(n))
                                        for k, n in self._visual_names.items()})
        self._text_names = {}
        if config.text_tower == "finetune":
            self._text_names = {n.replace(".", "__"): n for n, _ in model.named_parameters()
                                if not n.startswith("visual.") and n not in ("logit_scale", "logit_bias")}
            self.text = nn.ParameterDict({k: self.slot_parameter(model.get_parameter(n))
                                          for k, n in self._text_names.items()})

    def teacher_names(self) -> list[str]:
        """The EMA teacher only embeds captions: a copy of the image tower would be dead weight."""
        return [n for n in super().teacher_names() if not n.startswith("visual.")]

    def embed_images(self, batch: Batch, weights) -> torch.Tensor:
        out = torch.zeros(len(batch.slot), self.backbone.embed_dim, device=batch.pixels.device)
        for slot in batch.present_slot_ids():
            rows = torch.nonzero(batch.slot == slot).flatten()
            params = {name: weights[f"visual.{key}"][slot] for key, name in self._visual_names.items()}
            with self.backbone._autocast(batch.pixels.device):
                out[rows] = functional_call(self.backbone.model.visual, params, (batch.pixels[rows],)).float()
        return normalize(out)

    def embed_captions(self, captions, slot, weights, train: bool, present=None) -> torch.Tensor:
        if not self._text_names:
            return normalize(captions["caption_pooled"])
        ids = captions["caption_token_ids"]
        ids = F.pad(ids, (0, self.backbone.context_length - ids.shape[1]))  # positions are added at full length
        out = torch.zeros(len(slot), self.backbone.embed_dim, device=ids.device)
        for s in present_ids_of(slot, present):
            rows = torch.nonzero(slot == s).flatten()
            if not len(rows):  # the slot's images have no caption here
                continue
            params = {name: weights[f"text.{key}"][s] for key, name in self._text_names.items()}
            with self.backbone._autocast(ids.device):
                features = functional_call(self.backbone.model, params, (), {"text": ids[rows]})
            features = features["text_features"] if isinstance(features, dict) else features[1]
            out[rows] = features.float()
        return normalize(out)
