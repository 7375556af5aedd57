"""MaPLe: multi-modal deep prompts with a vision-language coupling (Khattak et al., CVPR 2023).

Text side: ``n_ctx`` learnable context vectors enter with the word embeddings (CoOp) and, before
each of the blocks 1 .. J-1 of the text transformer, the context positions are *replaced* by that
layer's own learnable prompts (J = ``prompt_depth``). Vision side: the prompts of layer j are the
text prompts of layer j through the coupling function F_j = Linear(d_t -> d_v); layer 0's are
appended to the patch tokens, layers 1 .. J-1 replace them (REFERENCE-NOTES item 6). Logits are
logit_scale * cos(image, text_c) with both encoders prompted, so the image encoder runs on pixels
(``inputs = {"pixels"}``): every sample's vision prompts are its own slot's, gathered, and the encoder
runs once on the stacked batch.

Federated (the "MaPLe" rows of the OTDPP and FedMPT tables), every parameter is shared: on
ViT-B-16 with 2 context tokens and depth 9 that is 9 x (2 x 512 + 512 x 768 + 768) = 3,555,072.

MaPLe initialises the context from "a photo of a" with 2 learnable tokens: the first ``n_ctx``
words of ``ctx_init`` start the context and the remaining words stay fixed text before the class
name ("[V]1 [V]2 of a <class>."). Each coupling is initialised like ``nn.Linear``, deep text
prompts N(0, 0.02^2).
"""

from __future__ import annotations

import math

import torch
from pydantic import Field

from fedvlm.backbone.clip import FrozenCLIP
from fedvlm.errors import ConfigError
from fedvlm.heads.base import Batch, Head, HeadConfig, normalize
from fedvlm.heads.prompts import PromptLayout, context_init
from fedvlm.heads.registry import HEADS


class MaPLeConfig(HeadConfig):
    n_ctx: int = Field(2, gt=0)
    ctx_init: str | None = "a photo of a"
    prompt_depth: int = Field(9, gt=0)  # J: blocks of each encoder that receive prompts


def split_init_phrase(backbone: FrozenCLIP, phrase: str | None, n_ctx: int, generator: torch.Generator
                      ) -> tuple[torch.Tensor, str]:
    """``([n_ctx, d_t] initial context, fixed words)``: the first n_ctx words of ``phrase`` start
    the context, the rest stay fixed text before the class name (MaPLe's "a photo of a", 2 ctx)."""
    if not phrase:
        return context_init(backbone, n_ctx, None, generator), ""
    words = phrase.split()
    if len(words) < n_ctx:
        raise ConfigError(f"head.ctx_init: {phrase!r} has {len(words)} words, fewer than head.n_ctx={n_ctx}")
    return context_init(backbone, n_ctx, " ".join(words[:n_ctx]), generator), " ".join(words[n_ctx:])


def linear_init(generator: torch.Generator, layers: int, fan_in: int, fan_out: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """``nn.Linear``'s default initialisation (uniform in +-1/sqrt(fan_in)) for ``layers``
    maps: weight ``[layers, fan_in, fan_out]`` (applied as x @ W), bias ``[layers, fan_out]``."""
    bound = 1 / math.sqrt(fan_in)
    weight = (torch.rand(layers, fan_in, fan_out, generator=generator) * 2 - 1) * bound
    bias = (torch.rand(layers, fan_out, generator=generator) * 2 - 1) * bound
    return weight, bias


def couple(prompts: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """MaPLe's vision-language coupling, one linear map per slot and layer: text prompts
    ``[U, J, P, d_t]``, ``weight [U, J, d_t, d_v]``, ``bias [U, J, d_v]`` -> visual prompts ``[U, J, P, d_v]``."""
    return torch.einsum("ujpt,ujtv->ujpv", prompts, weight) + bias.unsqueeze(2)


def check_depth(backbone: FrozenCLIP, depth: int) -> None:
    layers = min(len(backbone.text_tower.transformer.resblocks), len(backbone.model.visual.transformer.resblocks))
    if depth > layers:
        raise ConfigError(f"head.prompt_depth: {depth} exceeds the {layers} blocks of {backbone.name}'s encoders")


def visual_width(backbone: FrozenCLIP) -> int:
    return int(backbone.model.visual.transformer.width)


@HEADS.register("maple")
class MaPLeHead(Head):
    Config = MaPLeConfig
    inputs = frozenset({"pixels"})

    def __init__(self, config: MaPLeConfig, backbone, classnames, template, num_slots=1, seed=0):
        super().__init__(config, backbone, classnames, template, num_slots, seed)
        check_depth(backbone, config.prompt_depth)
        initial, fixed_words = split_init_phrase(backbone, config.ctx_init, config.n_ctx, self.generator)
        names = [f"{fixed_words} {name}" if fixed_words else name for name in classnames]
        self.layout = PromptLayout(backbone, names, config.n_ctx, "end")
        depth, width_t, width_v = config.prompt_depth, backbone.text_width, visual_width(backbone)
        self.context = self.slot_parameter(initial)  # [S, n_ctx, d_t]
        self.deep_context = self.slot_parameter(
            torch.randn(depth - 1, config.n_ctx, width_t, generator=self.generator) * 0.02)  # [S, J-1, n_ctx, d_t]
        weight, bias = linear_init(self.generator, depth, width_t, width_v)
        self.coupling_weight = self.slot_parameter(weight)  # [S, J, d_t, d_v]
        self.coupling_bias = self.slot_parameter(bias)  # [S, J, d_v]

    def layer_prompts(self, slots: torch.Tensor) -> torch.Tensor:
        """Text prompts of every prompted layer ``[U, J, n_ctx, d_t]``."""
        return torch.cat([self.context[slots].unsqueeze(1), self.deep_context[slots]], dim=1)

    def forward(self, batch: Batch) -> torch.Tensor:
        slots, position = batch.present_slots()
        prompts = self.layer_prompts(slots)
        text = normalize(self.layout.encode_deep(self.backbone, prompts[:, 0], prompts[:, 1:]))  # [U, C, D]
        vision = couple(prompts, self.coupling_weight[slots], self.coupling_bias[slots])  # [U, J, n_ctx, d_v]
        image = normalize(self.backbone.encode_prompted_images(batch.pixels, vision[position]).pooled)  # [B, D]
        return self.backbone.logit_scale * torch.einsum("bd,bcd->bc", image, text[position])
