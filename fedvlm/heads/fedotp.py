"""FedOTP: global and local prompts cooperating through unbalanced optimal transport (Li et al., CVPR 2024).

Every client holds N = ``n_global + n_local`` CoOp contexts (FedOTP's ``ctx [N, n_ctx, d]``;
N = 2 in the paper): the first ``n_global`` are *shared* (FedAvg, Eq. 2 of FedRSCLIP), the rest
*private*. For image x and class c, the M patch features of the frozen image encoder and the N
prompts' text features of class c are matched by an entropic OT plan T (cost 1 - cos) with the
constraint set of FedRSCLIP Eq. 13 (T 1 <= a, T^T 1 = b; a = 1/M, b = rho/N, rho = ``mass``):
prompts may ignore irrelevant patches. The plan is fixed (no gradient) and the logits are

    logit_c = logit_scale * sum(T * cos(patch, prompt))        (FedOTP's code, REFERENCE-NOTES 3-4)

which equals FedRSCLIP Eq. 15's (1 - d_OT)/tau up to a constant per image (tau = 1/logit_scale,
sum(T) = rho for every class), so the softmax is the same.

Reading choices (config options):

* ``ot: partial`` is FedOTP's COT (Dykstra-style, :func:`fedvlm.ot.partial_sinkhorn`);
  ``balanced`` is its Sinkhorn variant (rho = 1, T 1 = a).
* The OT solver runs a fixed number of iterations by default (``ot_tol: 0``): each (image,
  class) plan then never depends on what else is in the batch, so batched clients and any
  evaluation batch size give the same numbers. FedOTP stops at a mean change < 1e-3 or 100
  iterations; set ``ot_tol`` for early stopping.
* ``global_model``: the server model FedOTP's code never evaluates (it reports per-client
  accuracy only). ``initial_local`` (fedvlm's default: aggregated global prompt, local prompt at
  its initial value) or ``global_only`` (the local prompt replaced by the global one: with
  identical columns the OT plan splits evenly, which is single-prompt OT with the global prompt).
"""

from __future__ import annotations

from typing import Literal

import torch
from einops import rearrange
from pydantic import Field, model_validator

from fedvlm.heads.base import Batch, Head, HeadConfig, normalize
from fedvlm.heads.prompts import PromptLayout, context_init
from fedvlm.heads.registry import HEADS
from fedvlm.ot import ot_similarity


class FedOTPConfig(HeadConfig):
    n_ctx: int = Field(4, gt=0)  # 4 x 512 = 2,048 transmitted on ViT-B-16 (FedRSCLIP Table II)
    n_global: int = Field(1, gt=0)  # FedOTP's avg_prompt
    n_local: int = Field(1, ge=0)  # FedOTP's num_prompt - avg_prompt
    ctx_init: str | None = None
    class_token_position: Literal["end", "middle", "front"] = "end"
    ot: Literal["partial", "balanced"] = "partial"
    mass: float = Field(0.8, gt=0, le=1)  # rho: share of patch mass the prompts receive
    eps: float = Field(0.1, gt=0)  # entropic regularisation lambda
    ot_max_iter: int = Field(100, gt=0)
    ot_tol: float = Field(0.0, ge=0)  # 0: always ot_max_iter iterations (batch-independent plans)
    global_model: Literal["initial_local", "global_only"] = "initial_local"

    @model_validator(mode="after")
    def _global_only_needs_matching_prompts(self):
        if self.global_model == "global_only" and self.n_local not in (0, self.n_global):
            raise ValueError("global_model=global_only replaces the local prompts by the global ones; "
                             "it needs n_local == n_global")
        return self


def transport_similarity(patches: torch.Tensor, prompts: torch.Tensor, *, partial: bool, eps: float, mass: float,
                         max_iter: int, tol: float) -> torch.Tensor:
    """sum(T * S) per image and class, T the fixed entropic OT plan for the cost 1 - S.

    patches ``[B, M, D]`` and prompts ``[B, C, N, D]`` (normalised) -> ``[B, C]``, where
    S = cos(patch m, prompt n) ``[B, C, M, N]``, marginals a = 1/M, b = mass/N (partial) or 1/N
    (balanced). FedRSCLIP Eq. 11-15, OTDPP Eq. 2-3, FedOTP.
    """
    similarity = torch.einsum("bmd,bcnd->bcmn", patches, prompts)
    return ot_similarity(similarity, eps=eps, max_iter=max_iter, tol=tol, partial=partial, mass=mass)


@HEADS.register("fedotp")
class FedOTPHead(Head):
    Config = FedOTPConfig
    private = ("local_context",)
    inputs = frozenset({"image", "patches"})

    def __init__(self, config: FedOTPConfig, backbone, classnames, template, num_slots=1, seed=0):
        super().__init__(config, backbone, classnames, template, num_slots, seed)
        self.layout = PromptLayout(backbone, classnames, config.n_ctx, config.class_token_position)

        def init(count: int) -> torch.Tensor:  # [count, n_ctx, d_t], each prompt drawn on its own
            return torch.stack([context_init(backbone, config.n_ctx, config.ctx_init, self.generator)
                                for _ in range(count)])

        self.global_context = self.slot_parameter(init(config.n_global))  # [S, n_global, n_ctx, d_t]
        if config.n_local:
            self.local_context = self.slot_parameter(init(config.n_local))  # [S, n_local, n_ctx, d_t]
        else:
            self.private = ()

    def prompt_contexts(self, slots: torch.Tensor) -> torch.Tensor:
        """``[U, N, n_ctx, d_t]``: global then local contexts of the given slots."""
        parts = [self.global_context[slots]]
        if self.config.n_local:
            parts.append(self.local_context[slots])
        return torch.cat(parts, dim=1)

    def text_features(self, slots: torch.Tensor) -> torch.Tensor:
        """Normalised text features ``[U, C, N, D]`` of every prompt of the given slots."""
        contexts = self.prompt_contexts(slots)  # [U, N, n_ctx, d_t]
        # Every (slot, prompt) pair is one context for the text encoder.
        features = self.layout.encode(self.backbone, rearrange(contexts, "u n l d -> (u n) l d"))
        return normalize(rearrange(features, "(u n) c d -> u c n d", u=contexts.shape[0]))

    def forward(self, batch: Batch) -> torch.Tensor:
        slots, position = batch.present_slots()
        text = self.text_features(slots)[position]  # [B, C, N, D]
        config = self.config
        similarity = transport_similarity(normalize(batch.patches), text, partial=config.ot == "partial",
                                          eps=config.eps, mass=config.mass if config.ot == "partial" else 1.0,
                                          max_iter=config.ot_max_iter, tol=config.ot_tol)
        return self.backbone.logit_scale * similarity

    def server_model(self, initial, global_shared):
        state = super().server_model(initial, global_shared)
        if self.config.global_model == "global_only" and self.config.n_local:
            state["local_context"] = global_shared["global_context"].clone()
        return state
