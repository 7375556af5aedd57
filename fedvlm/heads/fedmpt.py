"""FedMPT (papers/fedmpt.txt): condition prompts, condition-guided optimal transport over image
patches, and a gate that mixes the conditions' predictions; trained with ASL, all FedAvg-aggregated.

Notation: B images, M regions, N conditions, C classes, D joint width, d_t text width, r = D_s.
The regions f_v(v) are the projected patch tokens and, by default, the pooled class-token
embedding (``global_region``; see :func:`fedvlm.heads.dualcoop.image_regions`: the public FedMPT
code projects all ViT tokens, class token included).

1. Condition prompts (Sec. 4.1). For condition n and class c the prompt is
   ``[L_n,1 .. L_n,beta_cond] <condition n> [G_1 .. G_beta_cls] <class c>.``: the condition-level
   tokens L_n are per condition, the class-level tokens G are shared by every class (and every
   condition). Conditions come from a data file (``fedvlm/heads/conditions/<name>.txt``) or a
   list; text features t[n, c] = f_t(p_{n,c}) ``[N, C, D]``. ``class_specific_context: true``
   gives each class its own G (CoOp's CSC: C x beta_cls x d_t class tokens).
2. Adapters (Eq. 6). One LoRA-like adapter per condition on the projected patch features,
   ``A_n(f) = f + W_up,n W_down,n f`` with D -> r = 32 -> D. Eq. 6 prints the product alone
   (``W_up(W_down f)``); "LoRA-like" and LoRA's own form add it to f with W_up starting at zero,
   which keeps the frozen CLIP alignment at the start. ``adapter_residual: false`` is Eq. 6 as
   printed (both factors random, no identity path).
3. Similarity and cost (Eq. 7). s[n, m, c] = sim(A_n(f_m), t[n, c]) with sim = 20 * cos, the
   scaled cosine of the region aggregation FedMPT builds on (Eq. 2; DualCoOp's logit scale,
   REFERENCE-NOTES item 8; the public FedMPT code also scales by 20 before dividing by its
   temperature). With tau = 4 (Sec. 5, "as printed") the patch softmax is softmax_m(5 cos); on a
   raw cosine (``similarity_scale: 1``) tau = 4 would make the softmax over ~200 patches uniform
   to about 1e-3 and Eq. 7's cost constant. S = softmax over patches of s / tau, C = 1 - S.
4. Patch marginal (Eq. 8). a[n, m] = softmax over patches of H[n, m] / tau, H the self-entropy
   of patch m's similarity distribution over classes, softmax_c(s[n, m, :] / tau). As printed
   the sign is +H (more ambiguous patches get more mass); ``patch_marginal: negative_entropy``
   gives more mass to confident patches, ``uniform`` uses 1/M. The class marginal b is uniform.
5. Sinkhorn (Eq. 9-10) with lambda = 0.2, plan T ``[M, C]`` per image and condition, fixed (no
   gradient), solved by :func:`fedvlm.ot.sinkhorn`. Always ``ot_iterations`` = 30 iterations (no
   early stop on a batch-wide residual), so an image's plan never depends on which other
   images, or clients, share its batch; with lambda = 0.2 and costs in [0, 1], 30 iterations
   leave a marginal error of about 1e-6 even on 0/1 costs (float32 reaches its floor near 3e-7).
   ``ot_marginals`` says which marginals the plan joins (:func:`transport_weights`):
   ``patches_to_classes`` (default) is the plan above, between the patches and the classes per
   (image, condition); ``patches_to_conditions`` is the other reading of Eq. 9-10, a plan
   ``[M, N]`` between the patches and the N condition prompts per (image, class).
   :func:`effective_regions` measures how many regions each column of the plan spreads over.
6. Conditioned prediction psi[n, c] = sum_m T[m, c] S[m, c] (Eq. 10 and after). We read S here
   as the region-text similarity s (the paper calls S "the original region-text similarity"),
   with T scaled by C so every class carries unit mass: psi is then Eq. 2 with the softmax
   weights replaced by the transport plan, in logit units. ``prediction: softmax`` is the
   literal reading (S = 1 - C of Eq. 7); psi is then a transported softmax weight, reported as
   its log-ratio to the uniform plan's value 1 / (M C).
7. Gate (Eq. 11). omega = Omega(f_v) with Omega a LoRA-like router D -> r -> N applied to the
   patch features (averaged over patches; Omega is linear, so this is Omega of the mean),
   P' = sum_n softmax(omega)_n psi_n. W_up of the router starts at zero (uniform gate).
8. Loss (Eq. 12): the logits output_scale * P' go through the base ASL (sigmoid, unknown labels
   skipped). output_scale is DualCoOp's 5 on OpenAI CLIP (5 x 20 = CLIP's logit scale 100); by
   default it is the backbone's logit scale / 20, so that on a backbone trained to another
   logit scale (the synthetic world's tiny CLIP, ~15) the logits are as sharp as its zero-shot
   logits rather than saturating the sigmoid. Eq. 13: every parameter is shared.

Ablations (Table 4): ``modules`` lists what is used (default: all four). Without
``condition_prompts`` one plain prompt ``[G] <class>.`` is used (N = 1, one adapter, no gate);
without ``adapters`` f_v is used as is; without ``optimal_transport`` the patches are weighted by
S = softmax_m(s / tau) (Eq. 2/7 without OT); without ``gate`` the conditions are averaged.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import torch
from einops import rearrange, repeat
from pydantic import Field, field_validator
from torch import nn

from fedvlm.backbone.clip import FrozenCLIP
from fedvlm.errors import ConfigError, shown
from fedvlm.files import read_lines
from fedvlm.heads.base import Batch, Head, HeadConfig, normalize
from fedvlm.heads.dualcoop import image_regions, output_scale
from fedvlm.heads.prompts import PLACEHOLDER, context_init, shared_prefix_length
from fedvlm.heads.registry import HEADS
from fedvlm.ot import sinkhorn

CONDITIONS_DIR = Path(__file__).parent / "conditions"
Module = Literal["condition_prompts", "adapters", "optimal_transport", "gate"]
MODULES = ("condition_prompts", "adapters", "optimal_transport", "gate")


def load_conditions(source: str | list[str]) -> list[str]:
    """A list of conditions as given, or read from a file: a path, or the name of a file shipped in
    ``fedvlm/heads/conditions`` (``voc2007`` -> ``conditions/voc2007.txt``); '#' lines are comments."""
    if isinstance(source, list):
        conditions = [c.strip() for c in source if c.strip()]
    else:
        path = Path(source)
        if not path.is_file():
            path = CONDITIONS_DIR / f"{source}.txt"
        if not path.is_file():
            shipped = ", ".join(sorted(p.stem for p in CONDITIONS_DIR.glob("*.txt")))
            raise ConfigError(f"head.conditions: {shown(source)} is neither a file nor a shipped condition set; "
                              f"expected a path, a list, or one of: {shipped}")
        lines = read_lines(path, "head.conditions: condition file", "one condition per line ('#' lines are comments)",
                           ConfigError)
        conditions = [line for line in lines if line and not line.startswith("#")]
    if not conditions:
        raise ConfigError(f"head.conditions: {shown(source)} holds no condition")
    return conditions


# ---------------------------------------------------------------------------------- text side


class ConditionPromptLayout(nn.Module):
    """Frozen token embeddings of the N x C condition prompts and the positions of their
    learnable tokens (FedMPT Sec. 4.1).

    Row r = n * C + c is ``[SOS] [L]x beta_cond <condition n> [G]x beta_cls <class c>. [EOT]``.
    Buffers: ``token_embeddings [R, L, d_t]``, ``context_index [R, L]`` (-1 for frozen tokens,
    0 .. beta_cond - 1 for the row's condition tokens, beta_cond .. beta_cond + beta_cls - 1 for
    the class tokens), ``condition_of_row [R]`` and ``eot [R]``. ``conditions`` None builds the
    plain prompts ``[G]x beta_cls <class>.`` (N = 1). ``class_specific``: the class tokens G
    differ per class (CoOp's CSC), so the text encoder's shared prefix of a condition's prompts
    ends before them.
    """

    def __init__(self, backbone: FrozenCLIP, conditions: list[str] | None, classnames: list[str],
                 condition_tokens: int, class_tokens: int, class_specific: bool = False):
        super().__init__()
        if conditions is None:
            conditions, condition_tokens = [""], 0
        self.num_conditions, self.num_classes = len(conditions), len(classnames)

        # tokens each condition occupies ("" -> [SOS] [EOT] -> 0)
        condition_lengths = [int(n) - 1 for n in backbone.eot_positions(backbone.tokenize(conditions))]
        placeholders = lambda k: " ".join([PLACEHOLDER] * k)  # noqa: E731
        texts, positions, rows, class_starts = [], [], [], []
        for n, condition in enumerate(conditions):
            for c, name in enumerate(classnames):
                parts = (placeholders(condition_tokens), condition, placeholders(class_tokens), name)
                texts.append(" ".join(p for p in parts if p) + ".")
                class_start = 1 + condition_tokens + condition_lengths[n]
                positions.append(list(range(1, 1 + condition_tokens)) +
                                 list(range(class_start, class_start + class_tokens)))
                rows.append(n)
                class_starts.append(class_start)
        ids = backbone.tokenize(texts)
        eot = backbone.eot_positions(ids)
        if int(eot.max()) >= backbone.context_length - 1:
            raise ConfigError("head.conditions: a condition prompt (learnable tokens + condition + class name) exceeds "
                              f"the text encoder's {backbone.context_length} tokens; use fewer tokens or shorter conditions")
        placeholder_id = int(backbone.tokenize([PLACEHOLDER])[0, 1])
        index = torch.full(ids.shape, -1, dtype=torch.long)
        for row, where in enumerate(positions):
            if where and ids[row, where].ne(placeholder_id).any():
                raise ConfigError(f"head.conditions: cannot place learnable tokens in the prompt {texts[row]!r}")
            index[row, where] = torch.arange(len(where))
        length = int(eot.max()) + 1
        self.register_buffer("token_embeddings", backbone.token_embeddings(ids)[:, :length].clone(), persistent=False)
        self.register_buffer("context_index", index[:, :length], persistent=False)
        self.register_buffer("condition_of_row", torch.tensor(rows), persistent=False)
        self.register_buffer("eot", eot, persistent=False)
        self.shared_prefix = shared_prefix_length(ids[:, :length], index[:, :length], eot, groups=self.num_conditions)
        if class_specific:  # the same token ids, but each class its own G vectors
            self.shared_prefix = min(self.shared_prefix, min(class_starts))

    def splice(self, context: torch.Tensor) -> torch.Tensor:
        """``context [U, N, K, d_t]`` (per unit and condition, K = beta_cond + beta_cls) or
        ``[U, N, C, K, d_t]`` (per unit, condition and class: class-specific class tokens)
        -> prompt embeddings ``[U, R, L, d_t]``."""
        is_context = self.context_index.ge(0)[None, :, :, None]
        index = self.context_index.clamp(min=0)
        if context.dim() == 4:
            gathered = context[:, self.condition_of_row[:, None], index]  # [U, R, L, d]
        else:
            rows = torch.arange(index.shape[0], device=context.device)[:, None]
            gathered = context.flatten(1, 2)[:, rows, index]  # row n * C + c is (n, c)
        return torch.where(is_context, gathered, self.token_embeddings.unsqueeze(0))

    def encode(self, backbone: FrozenCLIP, context: torch.Tensor) -> torch.Tensor:
        """Text features ``[U, N, C, D]`` (not normalised)."""
        prompts = self.splice(context)
        units, conditions, classes, prefix = prompts.shape[0], self.num_conditions, self.num_classes, self.shared_prefix
        if backbone.share_text_prefix and classes > 1 and prefix > 1:
            # each condition's C prompts share [SOS] [L_n] <condition n> [G]: run it once per condition
            grouped = rearrange(prompts, "u (n c) l d -> u n c l d", n=conditions)
            prefixes = rearrange(grouped[:, :, 0, :prefix], "u n l d -> (u n) l d")
            suffixes = rearrange(grouped[:, :, :, prefix:], "u n c l d -> (u n) c l d")
            features = backbone.encode_with_shared_prefix(prefixes, suffixes,
                                                          repeat(self.eot, "(n c) -> (u n) c", n=conditions, u=units))
            return rearrange(features, "(u n) c d -> u n c d", u=units)  # [U*N, C, D]: one row per prompt set
        features = backbone.encode_token_embeddings(rearrange(prompts, "u r l d -> (u r) l d"),
                                                    repeat(self.eot, "r -> (u r)", u=units))
        return rearrange(features, "(u n c) d -> u n c d", u=units, n=conditions)  # [U*N*C, D]: one row per prompt


# --------------------------------------------------------------------------------- the maths


def lora(x: torch.Tensor, down: torch.Tensor, up: torch.Tensor, residual: bool = True) -> torch.Tensor:
    """Per-condition LoRA-like adapters (Eq. 6): x ``[B, M, D]``, down ``[B, N, D, r]``, up
    ``[B, N, r, D]`` (each sample its own client's) -> ``[B, N, M, D]``: x + x W_down W_up
    (``residual``) or x W_down W_up."""
    update = torch.einsum("bmd,bndr->bnmr", x, down)
    update = torch.einsum("bnmr,bnre->bnme", update, up)
    return x.unsqueeze(1) + update if residual else update


def condition_cost(similarity: torch.Tensor, tau: float) -> torch.Tensor:
    """Eq. 7: C = 1 - softmax over patches of similarity / tau. ``[..., M, C]`` -> ``[..., M, C]``."""
    return 1 - torch.softmax(similarity / tau, dim=-2)


def patch_marginal(similarity: torch.Tensor, tau: float,
                   mode: Literal["entropy", "negative_entropy", "uniform"] = "entropy") -> torch.Tensor:
    """Eq. 8: the patch marginal a ``[..., M]`` from ``similarity [..., M, C]``: softmax over
    patches of ±H / tau, H the entropy of softmax over classes of similarity / tau."""
    if mode == "uniform":
        return torch.full(similarity.shape[:-1], 1.0 / similarity.shape[-2], dtype=similarity.dtype,
                          device=similarity.device)
    log_q = torch.log_softmax(similarity / tau, dim=-1)
    entropy = -(log_q.exp() * log_q).sum(-1)  # [..., M]
    sign = 1.0 if mode == "entropy" else -1.0
    return torch.softmax(sign * entropy / tau, dim=-1)


OTMarginals = Literal["patches_to_classes", "patches_to_conditions"]


def transport_weights(similarity: torch.Tensor, tau: float, epsilon: float, iterations: int,
                      marginal_mode: Literal["entropy", "negative_entropy", "uniform"] = "entropy",
                      marginals: OTMarginals = "patches_to_classes") -> torch.Tensor:
    """Eq. 7-10: the region weights ``w [..., N, M, C]`` of the conditioned predictions
    psi[n, c] = sum_m w[n, m, c] s[n, m, c], from ``similarity`` s ``[..., N, M, C]``. Every
    (n, c) column of w sums to 1 over the M regions (like the softmax weights of Eq. 2); no
    gradient (the plan is fixed). Cost C = 1 - softmax_m(s / tau) (Eq. 7), patch marginal a
    (Eq. 8), Sinkhorn with lambda = ``epsilon`` for exactly ``iterations`` iterations.

    ``patches_to_classes`` (default): per (image, condition n) the plan T ``[M, C]`` from a[n]
    over the patches to the uniform 1/C over classes ("b uniform so that all categories yield
    equal chance to be detected"; "the OT applied across all classes for each conditioned
    prompt"); w = C T.
    ``patches_to_conditions``: per (image, class c) the plan T ``[M, N]`` from the patches to
    the uniform 1/N over the N condition prompts, cost C[m, n] of class c (Eq. 10's indices:
    u_m over patches, v_n over conditions, P in R^{M x N x C}); the patch marginal is Eq. 8's
    a[n, m] averaged over conditions, since one [M, N] plan has one row marginal; w = N T.
    """
    cost = condition_cost(similarity, tau)  # Eq. 7
    marginal = patch_marginal(similarity.detach(), tau, marginal_mode)  # Eq. 8, [..., N, M]
    if marginals == "patches_to_classes":
        plan = sinkhorn(cost, marginal, None, eps=epsilon, max_iter=iterations, tol=0.0)  # [..., N, M, C]
        return plan * similarity.shape[-1]
    per_class = cost.movedim(-1, -3).transpose(-1, -2)  # [..., C, M, N]
    rows = marginal.mean(dim=-2).unsqueeze(-2).expand(per_class.shape[:-1])  # [..., C, M]
    plan = sinkhorn(per_class, rows, None, eps=epsilon, max_iter=iterations, tol=0.0)  # [..., C, M, N]
    return plan.transpose(-1, -2).movedim(-3, -1) * similarity.shape[-3]  # [..., N, M, C]


def effective_regions(weights: torch.Tensor, dim: int = -2) -> torch.Tensor:
    """How many regions a column of transport weights spreads over: exp of the entropy of the
    column normalised to sum to 1 along ``dim`` (the perplexity, Hill's number of order 1):
    1 when all mass sits on one region, M for a uniform column, k for k equal regions.
    ``weights [..., M, ...]`` (non-negative) -> the same shape without ``dim``. FedMPT's
    :meth:`FedMPTHead.region_weights` ``[B, N, M, C]`` gives one value per (image, condition,
    class). An all-zero column counts as 0 regions."""
    total = weights.sum(dim=dim, keepdim=True)
    p = weights / total.clamp(min=torch.finfo(weights.dtype).tiny)
    entropy = -torch.special.xlogy(p, p).sum(dim=dim)
    return torch.where(total.squeeze(dim) > 0, entropy.exp(), torch.zeros_like(entropy))


def gate_weights(features: torch.Tensor, down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """Eq. 11: softmax over conditions of omega = features W_down W_up. features ``[B, D]``,
    down ``[B, D, r]``, up ``[B, r, N]`` -> ``[B, N]``."""
    omega = torch.einsum("bd,bdr,brn->bn", features, down, up)
    return torch.softmax(omega, dim=-1)


# ---------------------------------------------------------------------------------- the head


class FedMPTConfig(HeadConfig):
    # a shipped condition set (voc2007, coco2014, nuswide, mlrsnet, multiscene, synthetic_voc,
    # default), a path to such a file, or the list itself
    conditions: str | list[str] = "default"
    num_conditions: int | None = Field(None, gt=0)  # use the first N conditions (null: all)
    condition_tokens: int = Field(4, ge=0)  # beta_cond
    class_tokens: int = Field(4, gt=0)  # beta_cls
    ctx_init: str | None = None  # start the class tokens from these words (beta_cls of them)
    class_specific_context: bool = False  # CoOp's CSC: each class its own beta_cls class tokens G
    adapter_rank: int = Field(32, gt=0)  # D_s
    adapter_residual: bool = True
    tau: float = Field(4.0, gt=0)
    similarity_scale: float = Field(20.0, gt=0)
    ot_epsilon: float = Field(0.2, gt=0)  # lambda
    ot_iterations: int = Field(30, gt=0)
    # which marginals the plan joins: patches and classes per (image, condition), or patches and
    # condition prompts per (image, class) (see transport_weights; docs/MULTILABEL.md)
    ot_marginals: OTMarginals = "patches_to_classes"
    patch_marginal: Literal["entropy", "negative_entropy", "uniform"] = "entropy"
    prediction: Literal["similarity", "softmax"] = "similarity"
    output_scale: float | None = Field(None, gt=0)  # null: logit scale / 20 (5 on OpenAI CLIP)
    global_region: bool = True  # the pooled embedding is one more region (dualcoop.image_regions)
    # Table 4 ablation switches: the modules in use (all four is FedMPT)
    modules: list[Module] = list(MODULES)

    @field_validator("modules")
    @classmethod
    def _distinct(cls, value):
        if len(set(value)) != len(value):
            raise ValueError("expected each module at most once")
        return value

    def uses(self, module: str) -> bool:
        return module in self.modules


@HEADS.register("fedmpt")
class FedMPTHead(Head):
    Config = FedMPTConfig
    inputs = frozenset({"image", "patches"})

    def __init__(self, config: FedMPTConfig, backbone, classnames, template, num_slots=1, seed=0):
        super().__init__(config, backbone, classnames, template, num_slots, seed)
        conditions = load_conditions(config.conditions)[: config.num_conditions] if config.uses("condition_prompts") else None
        self.conditions = conditions or []
        condition_tokens = config.condition_tokens if conditions else 0
        self.layout = ConditionPromptLayout(backbone, conditions, classnames, condition_tokens, config.class_tokens,
                                            config.class_specific_context)
        self.output_scale = output_scale(config.output_scale, backbone, config.similarity_scale)
        n, width, rank = self.layout.num_conditions, backbone.embed_dim, config.adapter_rank
        g = self.generator
        if condition_tokens:
            self.condition_context = self.slot_parameter(torch.randn(n, condition_tokens, backbone.text_width, generator=g) * 0.02)
        class_context = context_init(backbone, config.class_tokens, config.ctx_init, g)  # [beta_cls, d_t]
        if config.class_specific_context:
            class_context = class_context.unsqueeze(0).repeat(len(classnames), 1, 1)  # [C, beta_cls, d_t]
        self.class_context = self.slot_parameter(class_context)
        bound = 1 / math.sqrt(width)  # LoRA's kaiming-uniform(a=sqrt(5)) range for W_down

        def uniform(*shape, limit):
            return (torch.rand(*shape, generator=g) * 2 - 1) * limit

        if config.uses("adapters"):
            self.adapter_down = self.slot_parameter(uniform(n, width, rank, limit=bound))  # [S, N, D, r]
            up = torch.zeros(n, rank, width) if config.adapter_residual else uniform(n, rank, width, limit=1 / math.sqrt(rank))
            self.adapter_up = self.slot_parameter(up)  # [S, N, r, D]
        if config.uses("gate") and n > 1:
            self.gate_down = self.slot_parameter(uniform(width, rank, limit=bound))  # [S, D, r]
            self.gate_up = self.slot_parameter(torch.zeros(rank, n))  # [S, r, N]

    @property
    def num_conditions(self) -> int:
        return self.layout.num_conditions

    def text_features(self, slots: torch.Tensor) -> torch.Tensor:
        """Normalised condition-prompt features of the given slots: ``[U, N, C, D]``."""
        n, classes = self.num_conditions, self.layout.num_classes
        class_context = self.class_context[slots]  # [U, beta_cls, d] or [U, C, beta_cls, d] (CSC)
        if self.config.class_specific_context:  # per (condition, class) contexts [U, N, C, K, d]
            class_context = repeat(class_context, "u c k d -> u n c k d", n=n)
            condition = repeat(self.condition_context[slots], "u n k d -> u n c k d", c=classes) \
                if hasattr(self, "condition_context") else None
        else:  # per condition contexts [U, N, K, d]
            class_context = repeat(class_context, "u k d -> u n k d", n=n)
            condition = self.condition_context[slots] if hasattr(self, "condition_context") else None
        context = class_context if condition is None else torch.cat([condition, class_context], dim=-2)
        return normalize(self.layout.encode(self.backbone, context))

    def region_similarity(self, batch: Batch) -> torch.Tensor:
        """s ``[B, N, M, C]`` = similarity_scale * cos(A_n(f_m), t[n, c]) (Eq. 6-7)."""
        config = self.config
        slots, position = batch.present_slots()
        text = self.text_features(slots)[position]  # [B, N, C, D]
        patches = image_regions(batch, config.global_region)  # [B, M, D] (M counts the global token)
        if config.uses("adapters"):
            adapted = lora(patches, self.adapter_down[batch.slot], self.adapter_up[batch.slot], config.adapter_residual)
        else:
            adapted = repeat(patches, "b m d -> b n m d", n=self.num_conditions)
        return config.similarity_scale * torch.einsum("bnmd,bncd->bnmc", normalize(adapted), text)

    def weights_for(self, similarity: torch.Tensor) -> torch.Tensor:
        """The region weights ``[B, N, M, C]`` (each (n, c) column sums to 1 over regions): the
        transport plan (:func:`transport_weights`), or softmax_m(s / tau) without OT."""
        config = self.config
        if config.uses("optimal_transport"):
            return transport_weights(similarity, config.tau, config.ot_epsilon, config.ot_iterations,
                                     config.patch_marginal, config.ot_marginals)
        return torch.softmax(similarity / config.tau, dim=-2)  # S = 1 - C of Eq. 7

    @torch.no_grad()
    def region_weights(self, batch: Batch) -> torch.Tensor:
        """Diagnostics: the weights ``[B, N, M, C]`` the prediction puts on each region, per
        image, condition and class (feed them to :func:`effective_regions`)."""
        return self.weights_for(self.region_similarity(batch))

    def condition_predictions(self, batch: Batch) -> torch.Tensor:
        """psi ``[B, N, C]``: one prediction per condition (Eq. 6-10), in units of s (logits / output_scale)."""
        similarity = self.region_similarity(batch)  # [B, N, M, C]
        weights = self.weights_for(similarity)
        softmax = torch.softmax(similarity / self.config.tau, dim=-2)  # S
        if self.config.prediction == "similarity":
            return (weights * similarity).sum(dim=-2)
        return similarity.shape[-2] * (weights * softmax).sum(dim=-2)  # M C psi: 1 for a uniform plan

    def forward(self, batch: Batch) -> torch.Tensor:
        config = self.config
        psi = self.condition_predictions(batch)  # [B, N, C]
        if hasattr(self, "gate_down"):
            regions = image_regions(batch, config.global_region)
            gate = gate_weights(regions.mean(dim=1), self.gate_down[batch.slot], self.gate_up[batch.slot])
        else:
            gate = torch.full(psi.shape[:2], 1.0 / psi.shape[1], dtype=psi.dtype, device=psi.device)
        mixed = torch.einsum("bn,bnc->bc", gate, psi)  # P' (Eq. 11)
        if config.prediction == "softmax":
            mixed = torch.log(mixed.clamp(min=1e-6))
        return self.output_scale * mixed
