"""What every image-text retrieval head shares: the caption inputs it declares, evaluation output, and RDB's
Dual-Task Consistency Loss (DTCL, papers/rdb_retrieval.txt Sec. 3.3) with every term switchable.

A retrieval head embeds images and captions into the joint space; subclasses implement
:meth:`RetrievalHead.embed_images` and :meth:`RetrievalHead.embed_captions` over a weight table
(the live parameters, or the EMA teacher's copy of them). Evaluation (``forward``) returns per
image row ``[1 + K, D]``: the normalised image embedding then its K captions' (zeros where an
image has fewer), which the ``retrieval`` task turns into R@K and mR (fedvlm.tasks).

Training, per client slot (``loss.terms`` picks the terms, the ablation of RDB Table 3):

* ``cross`` (Eq. 10): bidirectional hinge triplet loss with margin mu = 0.2 over the pairs of the
  client's batch; ``loss.negatives`` "sum" (Eq. 10 as printed) or "hardest" (VSE++).
* ``classification`` (Eq. 12): cross-entropy of the scene label from the image embedding and
  from the caption embedding (``loss.classify``), through a cosine classifier at CLIP's
  temperature initialised with the class-name prompts' text features (shared, like the adapters).
* ``consistency`` (Eq. 13): MSE between the image embedding (student) and the caption embedding
  of an EMA teacher of the text branch ("the text encoder plays the role of the teacher"). The
  teacher is an exponential moving average (``loss.ema_decay``) of the head's parameters, updated
  after every local optimizer step and reset to the model the client received whenever a client
  is loaded into a slot: a per-round mean teacher, which needs no state kept across rounds.
  ``loss.teacher: online`` uses the current text branch without gradient instead.
* ``loss.weighting: uncertainty`` combines the terms with learnable sigma_i (Eq. 14,
  ``1/(2 sigma_i^2) L_i + log(1 + sigma_i^2)``, sigma_i initialised to 1 as in Liebel & Koerner's
  code); "sum" adds them unweighted (with one term: the plain loss, e.g. "w/o DTCL").

The sigma_i describe a client's own loss scales and stay private; everything else is shared.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from einops import pack
from pydantic import Field

from fedvlm.sections import Section
from fedvlm.errors import ConfigError
from fedvlm.batch import per_slot, present_ids_of
from fedvlm.heads.base import Batch, Head, HeadConfig, normalize, slot_mean
from fedvlm.retrieval.losses import bidirectional_triplet, consistency, uncertainty_weighted

TERMS = ("cross", "classification", "consistency")


class RetrievalLoss(Section):
    terms: list[Literal["cross", "classification", "consistency"]] = ["cross", "classification", "consistency"]
    weighting: Literal["uncertainty", "sum"] = "uncertainty"
    margin: float = Field(0.2, ge=0)  # mu of Eq. 10
    negatives: Literal["sum", "hardest"] = "sum"
    classify: list[Literal["image", "text"]] = ["image", "text"]
    teacher: Literal["ema", "online"] = "ema"
    ema_decay: float = Field(0.99, ge=0, lt=1)


class RetrievalHeadConfig(HeadConfig):
    loss: RetrievalLoss = RetrievalLoss()


class RetrievalHead(Head):
    """Base of the retrieval heads (see the module docstring)."""

    Config = RetrievalHeadConfig
    output_kind = "embeddings"
    private = ("loss_sigma",)
    inputs = frozenset({"image", "captions"})  # + "caption_tokens" / "caption_token_ids" where read

    def __init__(self, config: RetrievalHeadConfig, backbone, classnames, template, num_slots=1, seed=0):
        super().__init__(config, backbone, classnames, template, num_slots, seed)
        self.loss_config = config.loss
        self._seed = int(seed)
        self.terms = [t for t in TERMS if t in config.loss.terms]
        if not self.terms:
            raise ConfigError("head.loss.terms: expected at least one of cross, classification, consistency")
        if "classification" in self.terms:
            if not config.loss.classify:
                raise ConfigError("head.loss.classify: the classification term needs image and/or text")
            prompts = normalize(backbone.encode_text([template.format(c) for c in classnames]))
            self.classifier = self.slot_parameter(prompts)  # [S, C, D]
        if config.loss.weighting == "uncertainty":
            self.loss_sigma = self.slot_parameter(torch.ones(len(self.terms)))  # [S, terms]
        else:  # no sigma: nothing private (a declared private name is a parameter the head has)
            self.private = ()
        self._teacher: dict[str, torch.Tensor] | None = None

    # ------------------------------------------------------------------ what subclasses embed

    def embed_images(self, batch: Batch, weights: dict[str, torch.Tensor]) -> torch.Tensor:
        """Normalised image embeddings ``[B, D]`` of ``batch`` with ``weights`` (``[S, ...]`` each)."""
        raise NotImplementedError

    def embed_captions(self, captions: dict[str, torch.Tensor], slot: torch.Tensor,
                       weights: dict[str, torch.Tensor], train: bool,
                       present: tuple[int, ...] | None = None) -> torch.Tensor:
        """Normalised caption embeddings ``[T, D]``; ``captions`` holds ``[T, ...]`` rows of the
        batch's caption inputs (``caption_pooled``, ``caption_tokens``, ...), ``slot [T]``;
        ``present`` the batch's present slot ids (a superset of the captions' slots; None: read
        from ``slot``, a device sync), for heads that loop over slots."""
        raise NotImplementedError

    def teacher_names(self) -> list[str]:
        """Parameters the EMA teacher averages: every one but the classifier and sigma, a superset
        of what the caption branch reads (a head whose image side is large leaves it out)."""
        return [n for n in self.trainable() if n not in ("classifier", "loss_sigma")]

    def _uniform(self, shape, fan_in: int) -> torch.nn.Parameter:
        """A slot parameter drawn from U(-1/sqrt(fan_in), 1/sqrt(fan_in)), torch.nn.Linear's and
        nn.GRU's default initialisation, from the head's generator."""
        bound = 1 / math.sqrt(fan_in)
        return self.slot_parameter((torch.rand(shape, generator=self.generator) * 2 - 1) * bound)

    # ----------------------------------------------------------------------------- plumbing

    def weights(self) -> dict[str, torch.Tensor]:
        return dict(self.trainable())

    @staticmethod
    def caption_inputs(batch: Batch) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """The batch's valid captions as flat rows: (inputs ``[T, ...]``, slot ``[T]``, valid ``[B, K]``)."""
        valid = batch.extras["caption_valid"]
        names = ("caption_pooled", "caption_tokens", "word_index", "word_count", "sentence_count",
                 "caption_token_ids")
        inputs = {name: batch.extras[name][valid] for name in names if name in batch.extras}
        slot = batch.slot.unsqueeze(1).expand_as(valid)[valid]
        return inputs, slot, valid

    def output_shape(self, data) -> tuple[int, ...]:
        return (1 + data.captions_per_image, self.backbone.embed_dim)

    def forward(self, batch: Batch) -> torch.Tensor:
        """``[B, 1 + K, D]``: each image's embedding, then its K captions' (zeros for missing)."""
        weights = self.weights()
        image = self.embed_images(batch, weights)
        inputs, slot, valid = self.caption_inputs(batch)
        captions = image.new_zeros(*valid.shape, image.shape[-1])
        captions[valid] = self.embed_captions(inputs, slot, weights, train=False, present=batch.present_slot_ids())
        return pack([image, captions], "b * d")[0]  # row 0: the image, then its K captions

    # -------------------------------------------------------------------------------- DTCL

    def training_loss(self, batch: Batch) -> torch.Tensor:
        weights = self.weights()
        image = self.embed_images(batch, weights)  # [B, D]
        inputs, slot, _ = self.caption_inputs(batch)  # one caption per image in training
        present = batch.present_slot_ids()
        text = self.embed_captions(inputs, slot, weights, train=True, present=present)  # [B, D]
        per_term = []
        for term in self.terms:
            if term == "cross":  # Eq. 10 within each client's batch
                values = bidirectional_triplet(image @ text.T, batch.slot, self.loss_config.margin,
                                               self.loss_config.negatives)
            elif term == "classification":  # Eq. 12
                values = sum(self._class_loss(x, batch) for x in
                             [image if "image" in self.loss_config.classify else None,
                              text if "text" in self.loss_config.classify else None] if x is not None)
                values = values / len(self.loss_config.classify)
            else:  # Eq. 13 against the teacher's caption embedding
                with torch.no_grad():
                    teacher = self.embed_captions(inputs, slot, self._teacher_weights(), train=False,
                                                  present=present)
                values = consistency(image, teacher)
            per_term.append(slot_mean(values, batch.slot, self.num_slots))
        losses = torch.stack(per_term, dim=-1)  # [S, terms]
        if self.loss_config.weighting == "uncertainty":
            return uncertainty_weighted(losses, self.loss_sigma)  # Eq. 14
        return losses.sum(-1)

    def _class_loss(self, embedding: torch.Tensor, batch: Batch) -> torch.Tensor:
        logits = self.backbone.logit_scale * torch.einsum("bd,bcd->bc", embedding, self.classifier[batch.slot])
        return F.cross_entropy(logits, batch.labels, reduction="none")

    # ----------------------------------------------------------------------- the EMA teacher

    def _teacher_weights(self) -> dict[str, torch.Tensor]:
        live = {n: p.detach() for n, p in self.trainable().items()}
        if self.loss_config.teacher == "online" or self._teacher is None:
            return live
        return {**live, **self._teacher}

    def _uses_ema(self) -> bool:
        return "consistency" in self.terms and self.loss_config.teacher == "ema"

    @torch.no_grad()
    def write_slot(self, slot: int, state: dict[str, torch.Tensor]) -> None:
        super().write_slot(slot, state)
        if self._uses_ema():  # a client loaded into a slot starts its teacher at its start model
            params = self.trainable()
            if self._teacher is None:
                self._teacher = {n: params[n].detach().clone() for n in self.teacher_names()}
            for name, teacher in self._teacher.items():
                teacher[slot].copy_(params[name][slot])

    @torch.no_grad()
    def after_step(self, active: torch.Tensor) -> None:
        if not self._uses_ema() or self._teacher is None:
            return
        decay = self.loss_config.ema_decay
        params = self.trainable()
        for name, teacher in self._teacher.items():
            keep = per_slot(active, teacher)
            teacher.copy_(torch.where(keep, decay * teacher + (1 - decay) * params[name], teacher))

    # ------------------------------------------------------------------- dropout per client

    def begin_round(self, context) -> None:
        self._round = context.round_index

    def begin_pass(self, clients: list[int]) -> None:
        """Dropout masks come from one generator per client, seeded by (seed, round, client): a
        client draws the same masks whether it trains alone or with others in the pass."""
        round_index = getattr(self, "_round", 0)
        seeds = [int(np.random.SeedSequence([self._seed, round_index, c, 0xD0]).generate_state(1)[0]) for c in clients]
        self._dropout_generators = [torch.Generator().manual_seed(s) for s in seeds]

    def slot_dropout(self, x: torch.Tensor, slot: torch.Tensor, rate: float,
                     present: tuple[int, ...] | None = None) -> torch.Tensor:
        """Inverted dropout on ``x [n, ...]`` with each row's mask drawn from its slot's generator;
        ``present``: the slot ids to draw for, in order (None: those in ``slot``)."""
        if not self.training or rate <= 0:
            return x
        generators = getattr(self, "_dropout_generators", None)
        keep = torch.empty_like(x)
        for s in present_ids_of(slot, present):
            rows = torch.nonzero(slot == s).flatten()
            if not len(rows):  # present in the batch but not among these rows: nothing to draw
                continue
            generator = generators[s] if generators and s < len(generators) else self.generator
            draw = torch.rand((len(rows), *x.shape[1:]), generator=generator).to(x.device)
            keep[rows] = (draw >= rate).to(x.dtype)
        return x * keep / (1 - rate)
