"""FedPGP: a global prompt plus a private low-rank personalisation, with a contrastive term
(Cui et al., "Harmonizing generalization and personalization in federated prompt learning",
ICML 2024; described in the references of otdpp.txt and fedmpt.txt; REFERENCE-NOTES item 7).

fedvlm's reading, from the paper's description and its public code:

* Context (CoOp, class token at the end): ctx = U V + sigma with sigma ``[n_ctx, d_t]`` full rank
  and *shared* (FedAvg), U ``[n_ctx, r]`` and V ``[r, d_t]`` low rank and *private*; all three
  start N(0, 0.02^2). Logits: logit_scale * cos(image, text(ctx)).
* Loss: CE + mu * L_con. Per class c, with f_0 the frozen text features of the initial prompt
  "X X ... X <class>." (the placeholder words' own embeddings: CLIP's knowledge), f_sigma those
  of the global prompt sigma alone and f the full prompt's::

      L_con = mean_c CE([cos(f_0,c, f_sigma,c), cos(f_sigma,c, f_c)] / temperature, target 0)

  pulling the global prompt toward CLIP's knowledge (generalisation) and away from the
  personalised one. mu = 1, temperature 0.5, rank 4 (the code's defaults); n_ctx 16 (FedPGP's
  setting; set 4 for the 2,048-parameter comparison).
* ``global_model``: the server model uses sigma with the private part at its initial value
  (``initial_private``) or sigma alone (``shared_only``: U = 0, so U V = 0). FedPGP's code
  reports per-client accuracy (``personalized/*``).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from fedvlm.heads.base import Batch, Head, HeadConfig, normalize, slot_mean
from fedvlm.heads.prompts import PromptLayout
from fedvlm.heads.registry import HEADS


class FedPGPConfig(HeadConfig):
    n_ctx: int = Field(16, gt=0)
    rank: int = Field(4, gt=0)  # FedPGP's "bottleneck"
    mu: float = Field(1.0, ge=0)  # weight of the contrastive term
    temperature: float = Field(0.5, gt=0)
    class_token_position: Literal["end", "middle", "front"] = "end"
    global_model: Literal["initial_private", "shared_only"] = "initial_private"


def prompt_contrastive_loss(initial: torch.Tensor, global_: torch.Tensor, full: torch.Tensor,
                            temperature: float) -> torch.Tensor:
    """FedPGP's L_con: initial, global_, full ``[U, C, D]`` normalised -> ``[U]``.

    Per class, cross-entropy of [cos(f_0, f_sigma), cos(f_sigma, f)] / temperature with the
    first entry as the target; averaged over classes.
    """
    positive = (initial * global_).sum(-1)
    negative = (global_ * full).sum(-1)
    logits = torch.stack([positive, negative], dim=-1) / temperature  # [U, C, 2]
    return -F.log_softmax(logits, dim=-1)[..., 0].mean(-1)


@HEADS.register("fedpgp")
class FedPGPHead(Head):
    Config = FedPGPConfig
    private = ("low_rank_u", "low_rank_v")

    def __init__(self, config: FedPGPConfig, backbone, classnames, template, num_slots=1, seed=0):
        super().__init__(config, backbone, classnames, template, num_slots, seed)
        self.layout = PromptLayout(backbone, classnames, config.n_ctx, config.class_token_position)
        width = backbone.text_width
        normal = lambda *shape: torch.randn(*shape, generator=self.generator) * 0.02  # noqa: E731
        self.sigma = self.slot_parameter(normal(config.n_ctx, width))  # [S, n_ctx, d_t] shared
        self.low_rank_u = self.slot_parameter(normal(config.n_ctx, config.rank))  # [S, n_ctx, r] private
        self.low_rank_v = self.slot_parameter(normal(config.rank, width))  # [S, r, d_t] private
        # f_0, the frozen "X X ... X <class>." prompt's features [C, D]: encoded on first use
        # (``fedvlm describe`` builds heads without running the text encoder).
        self.register_buffer("_initial_features", torch.zeros(0), persistent=False)

    @property
    def initial_features(self) -> torch.Tensor:
        if self._initial_features.numel() == 0:
            with torch.no_grad():
                features = self.backbone.encode_token_embeddings(self.layout.token_embeddings, self.layout.eot)
            self._initial_features = normalize(features).to(self._initial_features.device)
        return self._initial_features

    def context(self, slots: torch.Tensor) -> torch.Tensor:
        return self.low_rank_u[slots] @ self.low_rank_v[slots] + self.sigma[slots]  # [U, n_ctx, d_t]

    def _logits(self, batch: Batch, text: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        return self.backbone.logit_scale * torch.einsum("bd,bcd->bc", normalize(batch.image), text[position])

    def forward(self, batch: Batch) -> torch.Tensor:
        slots, position = batch.present_slots()
        return self._logits(batch, normalize(self.layout.encode(self.backbone, self.context(slots))), position)

    def training_loss(self, batch: Batch) -> torch.Tensor:
        slots, position = batch.present_slots()
        full = normalize(self.layout.encode(self.backbone, self.context(slots)))  # [U, C, D]
        loss = slot_mean(self.sample_loss(self._logits(batch, full, position), batch.labels), batch.slot,
                         self.num_slots)
        if self.config.mu:
            global_ = normalize(self.layout.encode(self.backbone, self.sigma[slots]))
            contrastive = prompt_contrastive_loss(self.initial_features.unsqueeze(0), global_, full,
                                                  self.config.temperature)
            loss = loss.index_add(0, slots, self.config.mu * contrastive)
        return loss

    def server_model(self, initial, global_shared):
        state = super().server_model(initial, global_shared)
        if self.config.global_model == "shared_only":
            state["low_rank_u"] = torch.zeros_like(state["low_rank_u"])
        return state
