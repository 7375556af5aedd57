"""ProGrad: CoOp whose update never fights zero-shot CLIP (Zhu et al., "Prompt-aligned gradient for
prompt tuning", ICCV 2023; code BeierZhu/Prompt-align ``trainers/prograd.py`` and its Dassl's
``prograd_backward_and_update``).

The prompt and logits are CoOp's. Each step two gradients of the context are taken, per client:
g of the cross-entropy, and g_kd of the distillation loss toward zero-shot CLIP (the hand-crafted
prompt's logits, fixed). Where they conflict, g loses its component along g_kd::

    L_kd = T^2 * KL( softmax(z_zs / T) || softmax(z / T) )            (the code's ProGradLoss, T = 1)
    g_proj = g - lambda * (g . g_kd / ||g_kd||^2) g_kd   if g . g_kd < 0
           = g                                          otherwise       (ProGrad Eq. 6; lambda = 1)

and the optimizer steps with g_proj. The dot product and norm are taken over one client's whole
context (the code: over each parameter tensor, and the context is its only one), so each slot is
projected with its own g and g_kd.

How the projection reaches the optimizer (no change to the training loop): ``training_loss``
returns the cross-entropy per slot, and while gradients are on it first takes g_kd =
d L_kd / d context (``torch.autograd.grad``, keeping the graph) and then registers a hook on this
step's context tensor that replaces whatever gradient flows into it by its projection. So any
driver's backward of the returned loss (``train_pass``, Lightning's Trainer) leaves g_proj in
``context.grad``, and the batched and sequential runs project the same per-slot gradients. The
algorithm's own terms do not pass through that tensor and are added unprojected: FedProx's
penalty on the parameters themselves, SCAFFOLD's correction after backward. Cost: one extra
backward through the text encoder per step (the code's two backward passes).

Defaults are the paper's few-shot setting: 16 context tokens, the last four initialised from
"a photo of a" and the first twelve at zero (the code's right-aligned ``CTX_INIT``), T = 1,
lambda = 1. Federated (FedMPT Sec. 5) the context is shared and averaged with FedAvg: 16 x 512 =
8,192 parameters on ViT-B/16.

Reading choices: the zero-shot teacher is the dataset's template (``teacher_template``
overrides it); the code's ``CUSTOM_TEMPLATES`` reorder a few (e.g. "a type of flower, a photo of
a {}."), fedvlm's templates are CoOp's. L_kd is the KL divergence itself; the code's
cross-entropy form differs from it by the teacher's entropy, a constant with the same gradient.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from fedvlm.backbone.clip import FrozenCLIP
from fedvlm.errors import ConfigError
from fedvlm.heads.base import Batch, Head, HeadConfig, normalize, slot_mean
from fedvlm.heads.kgcoop import HandCraftedPrompts
from fedvlm.heads.prompts import PromptLayout
from fedvlm.heads.registry import HEADS


class ProGradConfig(HeadConfig):
    n_ctx: int = Field(16, gt=0)
    ctx_init: str | None = "a photo of a"  # right-aligned: zeros before it (null: N(0, 0.02^2))
    class_token_position: Literal["end", "middle", "front"] = "end"
    temperature: float = Field(1.0, gt=0)  # T of the distillation loss (the code's LOSS.T)
    projection: float = Field(1.0, ge=0, le=1)  # lambda (the code's LOSS.LAMBDA; 0.8 for some of its runs)
    teacher_template: str | None = None  # null: the dataset's template


def right_aligned_context(backbone: FrozenCLIP, n_ctx: int, phrase: str | None, generator: torch.Generator,
                          std: float = 0.02) -> torch.Tensor:
    """``[n_ctx, d_t]``: zeros, then the word embeddings of ``phrase`` in the last positions
    (ProGrad's initialisation: "X X ... X a photo of a <class>." with the X at zero); N(0, std^2)
    without a phrase, as in CoOp."""
    if not phrase:
        return torch.randn(n_ctx, backbone.text_width, generator=generator) * std
    ids = backbone.tokenize([phrase])
    length = int(backbone.eot_positions(ids)[0]) - 1
    if length > n_ctx:
        raise ConfigError(f"head.ctx_init: {phrase!r} is {length} tokens, more than head.n_ctx={n_ctx}; "
                          f"set head.n_ctx to at least {length}")
    context = torch.zeros(n_ctx, backbone.text_width)
    context[n_ctx - length :] = backbone.token_embeddings(ids)[0, 1 : 1 + length]
    return context


def distillation_kl(logits: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """Per-sample T^2 * KL(softmax(teacher / T) || softmax(logits / T)): ``[B, C]`` x 2 -> ``[B]``."""
    return F.kl_div(F.log_softmax(logits / temperature, dim=-1), F.log_softmax(teacher / temperature, dim=-1),
                    log_target=True, reduction="none").sum(-1) * temperature ** 2


def project_conflicting(grad: torch.Tensor, reference: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """ProGrad's Eq. 6 for each leading index (client): ``grad``, ``reference [U, ...]`` -> ``[U, ...]``,
    ``grad - strength * (grad . ref / ||ref||^2) ref`` where ``grad . ref < 0``, else ``grad``."""
    dot = (grad * reference).flatten(1).sum(1)
    norm = reference.pow(2).flatten(1).sum(1).clamp(min=torch.finfo(reference.dtype).tiny)
    coefficient = torch.where(dot < 0, strength * dot / norm, torch.zeros_like(dot))
    return grad - coefficient.view(-1, *[1] * (grad.dim() - 1)) * reference


@HEADS.register("prograd")
class ProGradHead(Head):
    Config = ProGradConfig

    def __init__(self, config: ProGradConfig, backbone, classnames, template, num_slots=1, seed=0):
        super().__init__(config, backbone, classnames, template, num_slots, seed)
        self.layout = PromptLayout(backbone, classnames, config.n_ctx, config.class_token_position)
        self.context = self.slot_parameter(right_aligned_context(backbone, config.n_ctx, config.ctx_init,
                                                                 self.generator))  # [S, n_ctx, d_t]
        self.teacher = HandCraftedPrompts(backbone, classnames, config.teacher_template or template)

    def _logits(self, image: torch.Tensor, context: torch.Tensor, position: torch.Tensor) -> torch.Tensor:
        text = normalize(self.layout.encode(self.backbone, context))  # [U, C, D]
        return self.backbone.logit_scale * torch.einsum("bd,bcd->bc", image, text[position])

    def forward(self, batch: Batch) -> torch.Tensor:
        slots, position = batch.present_slots()
        return self._logits(normalize(batch.image), self.context[slots], position)

    def training_loss(self, batch: Batch) -> torch.Tensor:
        """The cross-entropy per slot ``[S]``, whose gradient reaching the context is projected
        (see the module docstring)."""
        slots, position = batch.present_slots()
        context = self.context[slots]  # [U, n_ctx, d_t]: this step's context, where the hook sits
        image = normalize(batch.image)
        logits = self._logits(image, context, position)
        loss = slot_mean(self.sample_loss(logits, batch.labels), batch.slot, self.num_slots)
        if torch.is_grad_enabled() and context.requires_grad:
            teacher = self.backbone.logit_scale * image @ self.teacher.features().T  # zero-shot CLIP [B, C]
            kl = slot_mean(distillation_kl(logits, teacher, self.config.temperature), batch.slot, self.num_slots)
            reference = torch.autograd.grad(kl.sum(), context, retain_graph=True)[0]  # g_kd per slot
            strength = self.config.projection
            context.register_hook(lambda grad: project_conflicting(grad, reference, strength))
        return loss
