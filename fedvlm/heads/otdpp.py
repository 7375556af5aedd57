"""OTDPP: optimal transport with dual (global head + local tail) deep prompts (papers/otdpp.txt).

Prompts (Sec. 3.3-3.5). For every class k there are N prompts p_{k,j} = CoOp contexts (N x
``n_ctx`` vectors of width d_t, shared by all classes) around the class name. The text encoder
gives N prompt features per class; the prompted image encoder gives M patch features. Balanced
entropic OT with uniform marginals (a = 1/M, b = 1/N; Sinkhorn) between them, cost 1 - cos
(Eq. 2), gives D_OT(k) with a fixed plan, and

    q(y = k | x) = softmax_k((1 - D_OT(k)) / tau)                                   (Eq. 3)

trained with cross-entropy (Eq. 4). With a unit-mass plan 1 - D_OT = sum(T * cos), so the logits
are sum(T * cos) / tau; tau defaults to CLIP's temperature (1 / logit_scale).

Dual prompts (Eq. 6, Sec. 3.6): every prompt token is split 1:1 into a global head G (shared:
aggregated by sample-weighted FedAvg, Eq. 8) and a local tail L (private). The server model is
[G; placeholder]: the aggregated heads with every tail at its initial random value, which is the
fixed, untrained placeholder tail of Sec. 3.6; each client replaces it by its own tail
(``personalized/*`` metrics). ``split`` says how the 1:1 split is read:

* ``width`` (default): each token's first d_t/2 dimensions are G, the rest L, T = [G; L].
* ``prompts``: the first N/2 prompts are global, the rest local (FedOTP's layout, with the
  balanced OT of Sec. 3.3).

Both give the paper's count for context (N, n_ctx, d_t) = (2, 4, 512): 4,096 trainable, 2,048
transmitted (Sec. 4.6). ``dual: false`` is the single-prompt "OT" ablation (Fig. 3): all shared.

Deep prompts (Sec. 3.4, Eq. 5). Prompts enter the first J = ``prompt_depth`` blocks of both
encoders; from block J on, the prompt tokens propagate (Eq. 5). The paper counts only
(2, 4, 512) = 4,096 trainable parameters however deep the prompts go, which fixes two readings
(both options):

* ``deep_prompts: tied`` (default): the same learnable prompts are re-injected before each of the
  first J blocks (replacing the previous block's outputs at the prompt positions, as MaPLe does);
  ``per_layer``: each block has its own prompts (J x the parameters).
* ``vision_coupling: frozen`` (default): the visual prompt tokens are the text prompt tokens
  mapped to the vision width by CLIP's own frozen projections (x @ text_projection @
  visual.proj^T: into the joint space and back), with no parameter; ``linear``: MaPLe's
  trainable Linear(d_t -> d_v) per block (shared).

Each of the N x n_ctx prompt tokens gives one visual prompt token. Not stated in the paper
(fedvlm's choices): J = 9 (MaPLe's depth), eps = 0.1, 100 Sinkhorn iterations.
"""

from __future__ import annotations

from typing import Literal

import torch
from einops import rearrange, repeat
from pydantic import Field, model_validator

from fedvlm.errors import ConfigError
from fedvlm.heads.base import Batch, Head, HeadConfig, normalize
from fedvlm.heads.fedotp import transport_similarity
from fedvlm.heads.maple import check_depth, couple, linear_init, visual_width
from fedvlm.heads.prompts import PromptLayout, context_init
from fedvlm.heads.registry import HEADS


class OTDPPConfig(HeadConfig):
    n_prompts: int = Field(2, gt=0)  # N prompt features per class
    n_ctx: int = Field(4, gt=0)
    ctx_init: str | None = None
    class_token_position: Literal["end", "middle", "front"] = "end"
    dual: bool = True  # false: the single-prompt "OT" ablation (everything aggregated)
    split: Literal["width", "prompts"] = "width"  # how each prompt splits 1:1 into G and L
    prompt_depth: int = Field(9, gt=0)  # J
    deep_prompts: Literal["tied", "per_layer"] = "tied"
    vision_coupling: Literal["frozen", "linear"] = "frozen"
    eps: float = Field(0.1, gt=0)
    ot_max_iter: int = Field(100, gt=0)
    ot_tol: float = Field(0.0, ge=0)  # 0: always ot_max_iter iterations (batch-independent plans)
    temperature: float | None = Field(None, gt=0)  # tau in Eq. 3; null: CLIP's 1/logit_scale

    @model_validator(mode="after")
    def _even_split(self):
        if self.dual and self.split == "prompts" and self.n_prompts % 2:
            raise ValueError("split=prompts halves the prompts between global and local; n_prompts must be even")
        return self


@HEADS.register("otdpp")
class OTDPPHead(Head):
    Config = OTDPPConfig
    inputs = frozenset({"pixels"})

    def __init__(self, config: OTDPPConfig, backbone, classnames, template, num_slots=1, seed=0):
        super().__init__(config, backbone, classnames, template, num_slots, seed)
        check_depth(backbone, config.prompt_depth)
        width = backbone.text_width
        if config.dual and config.split == "width" and width % 2:
            raise ConfigError(f"head.split: width needs an even text width, {backbone.name} has {width}")
        self.layout = PromptLayout(backbone, classnames, config.n_ctx, config.class_token_position)
        depth, count = config.prompt_depth, config.n_prompts
        stored = depth if config.deep_prompts == "per_layer" else 1
        tokens = torch.stack([torch.stack([context_init(backbone, config.n_ctx, config.ctx_init, self.generator)
                                           for _ in range(count)]) for _ in range(stored)])  # [J', N, n_ctx, d_t]
        if not config.dual:
            self.global_head = self.slot_parameter(tokens)
        elif config.split == "width":
            self.global_head = self.slot_parameter(tokens[..., : width // 2])  # [S, J', N, n_ctx, d_t/2]
            self.local_tail = self.slot_parameter(tokens[..., width // 2 :])
        else:
            self.global_head = self.slot_parameter(tokens[:, : count // 2])  # [S, J', N/2, n_ctx, d_t]
            self.local_tail = self.slot_parameter(tokens[:, count // 2 :])
        self.private = ("local_tail",) if config.dual else ()
        if config.vision_coupling == "linear":
            weight, bias = linear_init(self.generator, depth, width, visual_width(backbone))
            self.coupling_weight = self.slot_parameter(weight)  # [S, J, d_t, d_v]
            self.coupling_bias = self.slot_parameter(bias)  # [S, J, d_v]
        else:
            tower, visual = backbone.text_tower, backbone.model.visual
            if not isinstance(tower.text_projection, torch.Tensor) or visual.proj is None:
                raise ConfigError(f"head.vision_coupling: frozen needs {backbone.name}'s text and visual projection "
                                  "matrices; use vision_coupling: linear")
            self.register_buffer("frozen_coupling", (tower.text_projection @ visual.proj.T).detach().clone(),
                                 persistent=False)  # [d_t, d_v]

    def prompt_tokens(self, slots: torch.Tensor) -> torch.Tensor:
        """Full prompt tokens T = [G; L] of every prompted layer: ``[U, J, N, n_ctx, d_t]``."""
        config = self.config
        if not config.dual:
            tokens = self.global_head[slots]
        else:
            dim = -1 if config.split == "width" else 2
            tokens = torch.cat([self.global_head[slots], self.local_tail[slots]], dim=dim)
        if config.deep_prompts == "tied":
            tokens = repeat(tokens, "u 1 n l d -> u j n l d", j=config.prompt_depth)
        return tokens

    def visual_prompts(self, tokens: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """``[U, J, N * n_ctx, d_v]``: one visual prompt token per text prompt token."""
        flat = rearrange(tokens, "u j n l d -> u j (n l) d")
        if self.config.vision_coupling == "linear":
            return couple(flat, self.coupling_weight[slots], self.coupling_bias[slots])
        return flat @ self.frozen_coupling

    def text_features(self, tokens: torch.Tensor) -> torch.Tensor:
        """Normalised prompt features ``[U, C, N, D]``."""
        # tokens [U, J, N, n_ctx, d_t]: each (slot, prompt) pair is one deep prompt of J layers.
        per_prompt = rearrange(tokens, "u j n l d -> (u n) j l d")
        features = self.layout.encode_deep(self.backbone, per_prompt[:, 0], per_prompt[:, 1:])  # [U*N, C, D]
        return normalize(rearrange(features, "(u n) c d -> u c n d", u=tokens.shape[0]))

    def forward(self, batch: Batch) -> torch.Tensor:
        slots, position = batch.present_slots()
        tokens = self.prompt_tokens(slots)
        text = self.text_features(tokens)[position]  # [B, C, N, D]
        visual = self.visual_prompts(tokens, slots)[position]  # [B, J, N*n_ctx, d_v]: each sample its slot's
        patches = self.backbone.encode_prompted_images(batch.pixels, visual).patches
        config = self.config
        similarity = transport_similarity(normalize(patches), text, partial=False, eps=config.eps, mass=1.0,
                                          max_iter=config.ot_max_iter, tol=config.ot_tol)  # 1 - D_OT(k)
        scale = 1 / config.temperature if config.temperature else self.backbone.logit_scale
        return scale * similarity
