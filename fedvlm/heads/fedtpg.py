"""FedTPG: a text-driven prompt generator shared by the clients (Qiu et al., ICLR 2024, "Text-driven
prompt generation for vision-language models in federated learning"; code boschresearch/FedTPG,
``model/FedTPG.py``, ``model/prompt_net.py``, ``config/defaults.py``).

Instead of learning the context vectors themselves, every client learns a network that
*generates* them from the class names' CLIP text embeddings, so the prompts follow the classes a
client (or a test set) has::

    t_c   = normalize(E_t("<class c>"))                       frozen, [C, D] (the bare class name)
    Q     = soft prompt                                        learnable queries [n_ctx d_ctx, d_t], N(0, 0.02^2)
    A     = MHA(LN_q(Q), LN_kv(t), LN_kv(t))                   cross-attention, 4 heads; no residual (the code's)
    P     = FF(A) + A,  FF = LN -> Linear(d_t, 8 d_t) -> GEGLU -> Linear(4 d_t, d_t)
    P     -> [d_ctx, n_ctx, d_t]: P[0] is the context of "[SOS] [V]_1..[V]_n <class c> . [EOT]",
             P[1:] replace it before the text blocks 1 .. d_ctx-1 (MaPLe-style)
    logits = logit_scale cos(f(x), E_t(prompt_c)),  loss CE (ASL on multi-hot labels)

The image encoder is not prompted (the code generates ``vis_ctx`` and never uses it), so the
head reads the cached image features. The defaults are ``config/defaults.py``'s: n_ctx 4, d_ctx 1,
no self-attention layers after the cross-attention (``MODEL.DEPTH = 0``, which fedvlm does not
implement: the only setting the paper's counts and the released checkpoints use).

The generator is shared and FedAvg-aggregated (FedTPG Algorithm 1); nothing is private. On
ViT-B/16 (d_t = D = 512) it has 4 x 512 (queries) + 2 x 2 x 512 (the two pre-norms) + 4 x 512 x 512
+ 4 x 512 (attention) + 2 x 512 + 512 x 4,096 + 4,096 + 2,048 x 512 + 512 (feed-forward) =
4,206,080 parameters: FedMPT Table 5's 4.21 M.

The attention is written out per slot (``generate_context``) so each client's generator reads its
own weights; the keys and values are the class embeddings of the head's classes (FedTPG's
cross-class setting gives each client its own classes; here every client holds the dataset's).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from pydantic import Field

from fedvlm.heads.base import Batch, Head, HeadConfig, normalize
from fedvlm.heads.maple import check_depth, linear_init
from fedvlm.heads.prompts import PromptLayout
from fedvlm.heads.registry import HEADS


class FedTPGConfig(HeadConfig):
    n_ctx: int = Field(4, gt=0)  # MODEL.N_CTX
    prompt_depth: int = Field(1, gt=0)  # MODEL.D_CTX: text blocks that receive generated context
    heads: int = Field(4, gt=0)  # cross_heads
    ff_mult: int = Field(4, gt=0)  # FeedForward(mult=4)


def layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``nn.LayerNorm`` (eps 1e-5) with per-slot affine ``weight``, ``bias`` ``[U, d]`` on ``x [U, ..., d]``."""
    shape = (weight.shape[0],) + (1,) * (x.dim() - 2) + (weight.shape[1],)
    return F.layer_norm(x, x.shape[-1:]) * weight.view(shape) + bias.view(shape)


def generate_context(queries: torch.Tensor, keys: torch.Tensor, p: dict[str, torch.Tensor], heads: int
                     ) -> torch.Tensor:
    """The prompt generator for U slots: ``queries [U, Q, d]``, class embeddings ``keys [C, D]``,
    the slots' weights ``p`` (``[U, ...]`` each) -> context ``[U, Q, d]``."""
    q = layer_norm(queries, p["query_norm_weight"], p["query_norm_bias"])
    kv = layer_norm(keys.unsqueeze(0).expand(q.shape[0], -1, -1), p["key_norm_weight"], p["key_norm_bias"])
    split = lambda x: x.unflatten(-1, (heads, -1)).transpose(1, 2)  # noqa: E731  [U, h, n, d/h]
    query = split(torch.einsum("uqd,ude->uqe", q, p["query_weight"]) + p["query_bias"][:, None])
    key = split(torch.einsum("ucd,ude->uce", kv, p["key_weight"]) + p["key_bias"][:, None])
    value = split(torch.einsum("ucd,ude->uce", kv, p["value_weight"]) + p["value_bias"][:, None])
    attention = torch.softmax(query @ key.transpose(-1, -2) / math.sqrt(query.shape[-1]), dim=-1)
    mixed = (attention @ value).transpose(1, 2).flatten(2)  # [U, Q, d]
    x = torch.einsum("uqd,ude->uqe", mixed, p["out_weight"]) + p["out_bias"][:, None]  # no residual
    hidden = torch.einsum("uqd,ude->uqe", layer_norm(x, p["ff_norm_weight"], p["ff_norm_bias"]), p["ff_weight1"])
    hidden, gates = (hidden + p["ff_bias1"][:, None]).chunk(2, dim=-1)
    return torch.einsum("uqd,ude->uqe", hidden * F.gelu(gates), p["ff_weight2"]) + p["ff_bias2"][:, None] + x


def xavier_uniform(generator: torch.Generator, fan_in: int, fan_out: int, stacked: int = 1) -> torch.Tensor:
    """``nn.MultiheadAttention``'s projection initialisation, one ``[fan_in, fan_out]`` block
    (applied as x @ W): xavier-uniform over the packed ``[3 d, d]`` ``in_proj_weight`` when
    ``stacked`` = 3 (kdim = vdim = d), over each ``[d, kdim]`` matrix when 1."""
    bound = math.sqrt(6 / (fan_in + stacked * fan_out))
    return (torch.rand(fan_in, fan_out, generator=generator) * 2 - 1) * bound


@HEADS.register("fedtpg")
class FedTPGHead(Head):
    Config = FedTPGConfig

    def __init__(self, config: FedTPGConfig, backbone, classnames, template, num_slots=1, seed=0):
        super().__init__(config, backbone, classnames, template, num_slots, seed)
        check_depth(backbone, config.prompt_depth)
        width = backbone.text_width
        self.layout = PromptLayout(backbone, classnames, config.n_ctx, "end")
        with torch.no_grad():
            names = normalize(backbone.encode_text(list(classnames)))  # the code tokenises the bare names
        self.register_buffer("class_embeddings", names, persistent=False)  # [C, D]
        embed, g = names.shape[1], self.generator
        stacked = 3 if embed == width else 1  # torch packs q, k, v into one [3 d, d] matrix when kdim == d
        ones, zeros = torch.ones, torch.zeros
        queries = torch.randn(config.prompt_depth * config.n_ctx, width, generator=g) * 0.02
        self.soft_prompt = self.slot_parameter(queries)  # [S, d_ctx n_ctx, d_t]
        initial = {
            "query_norm_weight": ones(width), "query_norm_bias": zeros(width),
            "key_norm_weight": ones(embed), "key_norm_bias": zeros(embed),
            "query_weight": xavier_uniform(g, width, width, stacked), "query_bias": zeros(width),
            "key_weight": xavier_uniform(g, embed, width, stacked), "key_bias": zeros(width),
            "value_weight": xavier_uniform(g, embed, width, stacked), "value_bias": zeros(width),
            "out_weight": linear_init(g, 1, width, width)[0][0], "out_bias": zeros(width),
            "ff_norm_weight": ones(width), "ff_norm_bias": zeros(width)}
        first, first_bias = linear_init(g, 1, width, 2 * config.ff_mult * width)
        second, second_bias = linear_init(g, 1, config.ff_mult * width, width)
        initial.update(ff_weight1=first[0], ff_bias1=first_bias[0], ff_weight2=second[0], ff_bias2=second_bias[0])
        self.generator_names = list(initial)
        for name, value in initial.items():
            setattr(self, name, self.slot_parameter(value))

    def generated_context(self, slots: torch.Tensor) -> torch.Tensor:
        """``[U, d_ctx, n_ctx, d_t]``: the context each slot's generator makes from the class names."""
        weights = {name: getattr(self, name)[slots] for name in self.generator_names}
        context = generate_context(self.soft_prompt[slots], self.class_embeddings, weights, self.config.heads)
        return context.unflatten(1, (self.config.prompt_depth, self.config.n_ctx))

    def text_features(self, slots: torch.Tensor) -> torch.Tensor:
        context = self.generated_context(slots)
        return normalize(self.layout.encode_deep(self.backbone, context[:, 0], context[:, 1:]))

    def forward(self, batch: Batch) -> torch.Tensor:
        slots, position = batch.present_slots()
        text = self.text_features(slots)
        return self.backbone.logit_scale * torch.einsum("bd,bcd->bc", normalize(batch.image), text[position])
