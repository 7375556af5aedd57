"""RAM (Tan et al., CVPR 2025, "Recover and Match: Open-Vocabulary Multi-Label Recognition through
Knowledge-Constrained Optimal Transport"; code EricTan7/RAM): local image features matched to
label prompts by a knowledge-constrained optimal transport (KCOT), next to the global CLIP score
(the "Fed-RAM" rows of FedMPT Tables 1-3, trained with ASL and FedAvg).

Per image, with regions m = 1..M (the projected patch tokens, after the local adapter), classes
c = 1..C, prompt text features t_c (learnable label prompt, 4 tokens from "a photo of a") and the
backbone's logit scale s (100 on OpenAI CLIP); all features normalised (the authors'
``RAM_Model.forward``)::

    global    g[c]      = cos(image, t_c) / tau_g                     tau_g learnable, from 1 / s
    local     S[m, c]   = cos(x_m, t_c),   x = LocalAdapter(patches)
    cost      C[m, c]   = 1 - softmax_c(s S[m, :])
    LPD       u[m]      = softmax_m(max_c S[m, c] / 0.1)               (label presence detection; no gradient)
              v[c]      = 1 / C
    TKT       P[m, c]   = softmax_m(20 softmax_c(s cos(p_m, z_c)))     (frozen patches p, frozen "A photo of a {c}." z)
              P[m, c]  <- min P wherever class c is not a labelled positive
              C_train   = C - 0.05 log P,   eps_train = 0.1 + 0.05      (training only; evaluation: C, eps = 0.1)
    plan      T         = Sinkhorn(u, v, C, eps), fixed (no gradient)
    local     l[c]      = sum_m T[m, c] S[m, c] / tau_l                 tau_l learnable, from 2e-3
    loss      ASL(g) + ASL(l)                                          (the code's criterion on both branches)
    output    (g + l) / 2

Choices where the code cannot be followed on fedvlm's frozen, cached features, each on purpose:

- **Ladder Local Adapter.** The code recovers local semantics inside the image tower: a second,
  value-value attention stream through every block and, in blocks 9-11, a ``LocalAdapter``
  (``clip/adapters.py``, imported by the code but absent from its public repository) with 8 extra
  tokens each, plus 4 deep text tokens in text blocks 9-11. fedvlm reads the frozen tower's cached
  last-layer patch tokens, so its local adapter works on those: on the sqrt(M) x sqrt(M) patch grid,
  x = p + Up(Conv_kxk(Down(p))) with Down D -> h, h = round(adapter_ratio x D) (the code's
  ``ADAPTER_RATIO`` 0.2), k = 3 (``KERNEL_SIZE``), Up h -> D starting at zero (x = p at start).
  The learnable label prompt replaces the deep text tokens (a CoOp context at the input).
- **FedMPT's 13.02 M.** Without the LocalAdapter's source its size is unknown, and the in-tower
  adapters act on the 768-wide tokens of three blocks; fedvlm's stand-in holds far fewer
  parameters (ViT-B/16: 2,048 prompt + 198,800 adapter + 2 temperatures = 200,850).
- **The knowledge mask's minimum**: the code takes min P over the whole batch; fedvlm over the
  image's own M x C entries, so an image's plan does not depend on its batch (batched ==
  sequential clients). Unknown labels (-1) count as not positive, like negatives.
- **Sinkhorn**: always ``ot_iterations`` = 100 iterations (the code's ``max_iter``; its early stop
  at a mean change of 1e-3 depends on the batch), ``fedvlm.ot.sinkhorn``.
- **Output**: the code averages the two branches' softmax scores (its open-vocabulary MMC loss);
  with ASL's per-class sigmoid fedvlm averages the two logits.
- The two temperatures are learned as their logarithms (the code learns them directly; a step on
  tau_l = 2e-3 can make it negative, its gradient being -l / tau_l).
- The code keeps an EMA of the model for evaluation; fedvlm evaluates the trained parameters.

Everything is shared (FedAvg of the learnable modules, FedMPT Sec. 5).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field

from fedvlm.errors import ConfigError
from fedvlm.heads.base import Batch, Head, HeadConfig, normalize, slot_mean
from fedvlm.heads.prompts import PromptLayout, context_init
from fedvlm.heads.registry import HEADS
from fedvlm.ot import sinkhorn


def presence_marginal(similarity: torch.Tensor, temperature: float) -> torch.Tensor:
    """LPD: ``u [..., M]`` = softmax over regions of the best class similarity / temperature
    (the code's ``build_weights``), from ``similarity [..., M, C]``; no gradient."""
    with torch.no_grad():
        return torch.softmax(similarity.amax(dim=-1) / temperature, dim=-1)


def knowledge_distribution(teacher_similarity: torch.Tensor, labels: torch.Tensor, logit_scale: float,
                           sharpness: float) -> torch.Tensor:
    """TKT: the frozen model's distribution over regions for each class ``[B, M, C]``, from the
    frozen patch-text cosines ``[B, M, C]``, set to the image's minimum for classes that are not
    labelled positive (``labels [B, C]`` in {1, 0, -1})."""
    with torch.no_grad():
        local = torch.softmax(logit_scale * teacher_similarity, dim=-1)
        prob = torch.softmax(sharpness * local, dim=-2)
        low = prob.amin(dim=(-2, -1), keepdim=True).expand_as(prob)
        return torch.where((labels == 1).unsqueeze(1), prob, low)


class RAMConfig(HeadConfig):
    n_ctx: int = Field(4, gt=0)  # the learnable label prompt (the code's TEXT_CTX = 4)
    ctx_init: str | None = "a photo of a"  # the code's template "A photo of a {}."
    teacher_template: str = "A photo of a {}."  # the frozen teacher's text (TKT)
    local_adapter: bool = True
    adapter_ratio: float = Field(0.2, gt=0, le=1)  # ADAPTER_RATIO
    kernel_size: int = Field(3, gt=0)  # KERNEL_SIZE
    temperature: float = Field(2e-3, gt=0)  # TEMPERATURE: tau_l's start
    ot_epsilon: float = Field(0.1, gt=0)  # OT_REG
    knowledge_epsilon: float = Field(0.05, ge=0)  # OT_REGSC: weight of -log P and extra eps in training
    presence_temperature: float = Field(0.1, gt=0)  # build_weights(temperature=0.1)
    teacher_sharpness: float = Field(20.0, gt=0)  # (local_similarity * 20).softmax over regions
    ot_iterations: int = Field(100, gt=0)  # Sinkhorn max_iter


@HEADS.register("ram")
class RAMHead(Head):
    Config = RAMConfig
    inputs = frozenset({"image", "patches"})

    def __init__(self, config: RAMConfig, backbone, classnames, template, num_slots=1, seed=0):
        super().__init__(config, backbone, classnames, template, num_slots, seed)
        self.layout = PromptLayout(backbone, classnames, config.n_ctx, "end")
        self.context = self.slot_parameter(context_init(backbone, config.n_ctx, config.ctx_init, self.generator))
        teacher = normalize(backbone.encode_text([config.teacher_template.format(c) for c in classnames]).float())
        self.register_buffer("teacher_text", teacher, persistent=False)
        self.logit_scale = float(backbone.logit_scale)
        # (tau_g, tau_l) learned as logarithms: they stay positive under any step
        initial = [-math.log(self.logit_scale), math.log(config.temperature)]
        self.log_temperatures = self.slot_parameter(torch.tensor(initial))
        if config.local_adapter:
            width, k = backbone.embed_dim, config.kernel_size
            hidden = max(1, round(config.adapter_ratio * width))

            def uniform(fan_in: int, *shape: int) -> torch.Tensor:  # nn.Linear / nn.Conv2d's default bound
                return (torch.rand(*shape, generator=self.generator) * 2 - 1) / math.sqrt(fan_in)

            self.adapter_down_weight = self.slot_parameter(uniform(width, hidden, width))
            self.adapter_down_bias = self.slot_parameter(uniform(width, hidden))
            self.adapter_conv_weight = self.slot_parameter(uniform(hidden * k * k, hidden, hidden, k, k))
            self.adapter_conv_bias = self.slot_parameter(uniform(hidden * k * k, hidden))
            self.adapter_up_weight = self.slot_parameter(torch.zeros(width, hidden))  # x = p at start
            self.adapter_up_bias = self.slot_parameter(torch.zeros(width))

    def local_features(self, batch: Batch) -> torch.Tensor:
        """The patch tokens after each sample's own slot's local adapter ``[B, M, D]``."""
        patches = batch.patches
        if not self.config.local_adapter:
            return patches
        side = math.isqrt(patches.shape[1])
        if side * side != patches.shape[1]:
            raise ConfigError(f"head.local_adapter: {patches.shape[1]} patch tokens do not form a square grid; "
                              "set head.local_adapter=false")
        slot = batch.slot
        hidden = torch.einsum("bmd,bhd->bmh", patches, self.adapter_down_weight[slot])
        hidden = hidden + self.adapter_down_bias[slot][:, None]
        grid = hidden.transpose(1, 2).unflatten(2, (side, side))  # [B, h, g, g]
        # each sample its own slot's kernel: the batch as groups of one convolution
        weight = self.adapter_conv_weight[slot].flatten(0, 1)  # [B h, h, k, k]
        conv = F.conv2d(grid.flatten(0, 1)[None], weight, self.adapter_conv_bias[slot].flatten(),
                        padding=self.config.kernel_size // 2, groups=len(slot))[0]
        conv = conv.unflatten(0, grid.shape[:2]).flatten(2).transpose(1, 2)  # [B, M, h]
        up = torch.einsum("bmh,bdh->bmd", conv, self.adapter_up_weight[slot]) + self.adapter_up_bias[slot][:, None]
        return patches + up

    def branch_logits(self, batch: Batch, knowledge: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(global ``[B, C]``, local ``[B, C]``) logits; ``knowledge``: KCOT's training cost with
        the teacher's constraint (needs labels), else the evaluation cost."""
        config = self.config
        slots, position = batch.present_slots()
        text = normalize(self.layout.encode(self.backbone, self.context[slots]))[position]  # [B, C, D]
        temperatures = self.log_temperatures[batch.slot].exp()  # [B, 2]
        global_logits = torch.einsum("bd,bcd->bc", normalize(batch.image), text) / temperatures[:, :1]
        similarity = torch.einsum("bmd,bcd->bmc", normalize(self.local_features(batch)), text)  # [B, M, C]
        cost = 1 - torch.softmax(self.logit_scale * similarity, dim=-1)
        eps = config.ot_epsilon
        if knowledge:
            teacher = torch.einsum("bmd,cd->bmc", normalize(batch.patches), self.teacher_text)
            prior = knowledge_distribution(teacher, batch.labels, self.logit_scale, config.teacher_sharpness)
            cost = cost - config.knowledge_epsilon * torch.log(prior)
            eps = eps + config.knowledge_epsilon
        rows = presence_marginal(similarity, config.presence_temperature)
        plan = sinkhorn(cost, rows, None, eps=eps, max_iter=config.ot_iterations, tol=0.0)
        local_logits = (plan * similarity).sum(dim=1) / temperatures[:, 1:]
        return global_logits, local_logits

    def forward(self, batch: Batch) -> torch.Tensor:
        global_logits, local_logits = self.branch_logits(batch, knowledge=False)
        return (global_logits + local_logits) / 2

    def training_loss(self, batch: Batch) -> torch.Tensor:
        knowledge = batch.labels.dim() == 2  # the constraint reads multi-hot labels
        global_logits, local_logits = self.branch_logits(batch, knowledge)
        loss = self.sample_loss(global_logits, batch.labels) + self.sample_loss(local_logits, batch.labels)
        return slot_mean(loss, batch.slot, self.num_slots)
