"""PLOT: N prompts per class matched to the image's patches by optimal transport (Chen et al., "PLOT:
prompt learning with optimal transport for vision-language models", ICLR 2023; code CHENGY12/PLOT
``plot-coop/trainers/plot.py``).

Every client learns N CoOp contexts (N = 4), so class c has N prompt features g_n,c; the image
gives M local features f_m (the frozen encoder's projected patch tokens). With the cost
C = 1 - cos(f_m, g_n,c) and uniform marginals a = 1/M, b = 1/N, the entropic OT plan
(eps = 0.1, Sinkhorn) is fixed (no gradient) and the logits are the transported similarity::

    T*_c  = argmin_T <T, C_c> - eps H(T),  T 1 = 1/M,  T^T 1 = 1/N      (PLOT Eq. 5-8)
    d_OT(c) = <T*_c, C_c>,   p(y = c | x) = softmax_c( (1 - d_OT(c)) / tau )  (Eq. 9)

which equals logit_scale * sum(T*_c * cos) (tau = 1/logit_scale; sum(T) = 1, so the two differ by
nothing), the code's ``logits2``; cross-entropy. The same balanced batched Sinkhorn of
``fedvlm.ot`` as FedOTP's ``ot: balanced`` (:func:`fedvlm.heads.fedotp.transport_similarity`):
FedOTP is PLOT with the prompts split into a shared global and a private local part, and
``plot`` equals ``fedotp`` with ``n_global: N, n_local: 0, ot: balanced``.

Defaults are the code's few-shot setting: N = 4 prompts of 16 context tokens, each drawn
N(0, 0.02^2) on its own, eps = 0.1, 100 iterations. Federated (FedMPT Sec. 5) every prompt is
shared and averaged with FedAvg, nothing private: 4 x 16 x 512 = 32,768 parameters on ViT-B/16.

Reading choices: the code stops Sinkhorn early once the row scaling changes by less than 1e-2
on average; fedvlm runs a fixed number of iterations (``ot_tol: 0``) so that an (image, class)
plan never depends on the rest of the batch (batched clients and any evaluation batch size give
the same numbers; set ``ot_tol`` for fedvlm's early stopping). PLOT on a ResNet reads the
attention pool's inputs; on a ViT the patch tokens, as FedOTP does.
"""

from __future__ import annotations

from typing import Literal

import torch
from einops import rearrange
from pydantic import Field

from fedvlm.heads.base import Batch, Head, HeadConfig, normalize
from fedvlm.heads.fedotp import transport_similarity
from fedvlm.heads.prompts import PromptLayout, context_init
from fedvlm.heads.registry import HEADS


class PLOTConfig(HeadConfig):
    n_prompts: int = Field(4, gt=0)  # N (the code's MODEL.N)
    n_ctx: int = Field(16, gt=0)
    ctx_init: str | None = None  # the code draws every prompt at random
    class_token_position: Literal["end", "middle", "front"] = "end"
    eps: float = Field(0.1, gt=0)  # entropic regularisation (the code's self.eps)
    ot_max_iter: int = Field(100, gt=0)
    ot_tol: float = Field(0.0, ge=0)  # 0: always ot_max_iter iterations (batch-independent plans)


@HEADS.register("plot")
class PLOTHead(Head):
    Config = PLOTConfig
    inputs = frozenset({"image", "patches"})

    def __init__(self, config: PLOTConfig, backbone, classnames, template, num_slots=1, seed=0):
        super().__init__(config, backbone, classnames, template, num_slots, seed)
        self.layout = PromptLayout(backbone, classnames, config.n_ctx, config.class_token_position)
        prompts = [context_init(backbone, config.n_ctx, config.ctx_init, self.generator)
                   for _ in range(config.n_prompts)]
        self.context = self.slot_parameter(torch.stack(prompts))  # [S, N, n_ctx, d_t]

    def text_features(self, slots: torch.Tensor) -> torch.Tensor:
        """Normalised prompt features ``[U, C, N, D]`` of the given slots (one text-encoder call:
        every (slot, prompt) pair is one context)."""
        contexts = self.context[slots]  # [U, N, n_ctx, d_t]
        features = self.layout.encode(self.backbone, rearrange(contexts, "u n l d -> (u n) l d"))
        return normalize(rearrange(features, "(u n) c d -> u c n d", u=contexts.shape[0]))

    def forward(self, batch: Batch) -> torch.Tensor:
        slots, position = batch.present_slots()
        text = self.text_features(slots)[position]  # [B, C, N, D]
        config = self.config
        similarity = transport_similarity(normalize(batch.patches), text, partial=False, eps=config.eps, mass=1.0,
                                          max_iter=config.ot_max_iter, tol=config.ot_tol)
        return self.backbone.logit_scale * similarity
