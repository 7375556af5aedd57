"""TCP: Textual-based Class-aware Prompt tuning (Yao, Zhang and Xu, CVPR 2024; code
htyao89/Textual-based_Class-aware_prompt_tuning, ``trainers/tcp.py``).

CoOp's prompt ``[SOS] [V]_1 .. [V]_n <class c> . [EOT]`` (n = 4, random N(0, 0.02^2) init, the
code's ``CTX_INIT: False``) runs through the text encoder, and before block ``insert_layer`` (8 of
ViT-B/16's 12) the hidden states at the n context positions are *replaced* by class-aware tokens
generated from the hand-crafted prompt's frozen text feature of class c by the Textual Knowledge
Embedding (TKE)::

    w_c^clip = normalize(E_t("<template of class c>"))                    frozen, [C, D]
    T_c      = W_2 QuickGELU(W_1 w_c^clip + b_1) + b_2  -> [n, d_t]       TKE, W_1: D -> D/4, W_2: D/4 -> n d_t
    w_c      = normalize(E_t([SOS] [V]_1..[V]_n <class c> . ; T_c before block insert_layer))
    logits   = logit_scale cos(f(x), w_c)
    loss     = CE(logits, y) + weight (1 - 1/C sum_c cos(w_c, w_c^clip))  (KgCoOp's consistency, weight 8)

The code hard-codes the insertion at block 8 with mixing weight 1 (full replacement); fedvlm makes
the block ``insert_layer`` (checked against the encoder's depth; the tiny CLIP has 4 blocks). The
hand-crafted prompt is the dataset's template (the code's ``CUSTOM_TEMPLATES_ori``); the learnable
prompt ends in "." after the class name, not the code's per-dataset suffixes ("X X X X {}, a type of
pet."). On multi-hot labels the CE becomes the base head's ASL, FedMPT's "Fed-TCP".

Federated (FedMPT's Fed-TCP: the method's learnable modules averaged with FedAvg) everything is
shared: on ViT-B/16 with n = 4, 4 x 512 (context) + 512 x 128 + 128 + 128 x 2,048 + 2,048 (TKE) =
331,904 parameters. Every class has its own tokens at block ``insert_layer``, so the prompts share
no prefix there: the text encoder runs U x C sequences (no shared-prefix shortcut).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field

from fedvlm.errors import ConfigError
from fedvlm.heads.base import Batch, Head, HeadConfig, normalize, slot_mean
from fedvlm.heads.maple import linear_init
from fedvlm.heads.prompts import PromptLayout, context_init
from fedvlm.heads.registry import HEADS


class TCPConfig(HeadConfig):
    n_ctx: int = Field(4, gt=0)
    ctx_init: str | None = None  # the code's CTX_INIT: False (random context)
    insert_layer: int = Field(8, ge=1)  # the block before which the class-aware tokens replace the context
    weight: float = Field(8.0, ge=0)  # the consistency term's weight (base2new_train.sh: WEIGHT=8.0)
    tke_reduction: int = Field(4, ge=1)  # TKE hidden width D / reduction (the code's vis_dim // 4)


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(1.702 * x)


def class_aware_tokens(knowledge: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor,
                       b2: torch.Tensor, n_ctx: int) -> torch.Tensor:
    """The TKE per slot: frozen class text features ``knowledge [C, D]`` and the slots' weights
    ``w1 [U, D, H]``, ``b1 [U, H]``, ``w2 [U, H, n d_t]``, ``b2 [U, n d_t]`` -> ``[U, C, n, d_t]``."""
    hidden = quick_gelu(torch.einsum("cd,udh->uch", knowledge, w1) + b1[:, None])
    tokens = torch.einsum("uch,uho->uco", hidden, w2) + b2[:, None]
    return tokens.unflatten(-1, (n_ctx, -1))


@HEADS.register("tcp")
class TCPHead(Head):
    Config = TCPConfig

    def __init__(self, config: TCPConfig, backbone, classnames, template, num_slots=1, seed=0):
        super().__init__(config, backbone, classnames, template, num_slots, seed)
        blocks = len(backbone.text_tower.transformer.resblocks)
        if config.insert_layer >= blocks:
            raise ConfigError(f"head.insert_layer: {config.insert_layer} must be below the {blocks} blocks of "
                              f"{backbone.name}'s text encoder (TCP inserts before block 8 of 12)")
        self.layout = PromptLayout(backbone, classnames, config.n_ctx, "end")
        with torch.no_grad():
            knowledge = normalize(backbone.encode_text([template.format(name) for name in classnames]))
        self.register_buffer("knowledge", knowledge, persistent=False)  # w^clip [C, D]
        width, hidden = knowledge.shape[1], knowledge.shape[1] // config.tke_reduction
        self.context = self.slot_parameter(context_init(backbone, config.n_ctx, config.ctx_init, self.generator))
        w1, b1 = linear_init(self.generator, 1, width, hidden)
        w2, b2 = linear_init(self.generator, 1, hidden, config.n_ctx * backbone.text_width)
        self.tke_weight1, self.tke_bias1 = self.slot_parameter(w1[0]), self.slot_parameter(b1[0])  # [S, D, H], [S, H]
        self.tke_weight2, self.tke_bias2 = self.slot_parameter(w2[0]), self.slot_parameter(b2[0])  # [S, H, n d_t]

    def text_features(self, slots: torch.Tensor) -> torch.Tensor:
        """Normalised class text features of the given slots ``[U, C, D]``."""
        tokens = class_aware_tokens(self.knowledge, self.tke_weight1[slots], self.tke_bias1[slots],
                                    self.tke_weight2[slots], self.tke_bias2[slots], self.config.n_ctx)
        prompts = self.layout.splice(self.context[slots])  # [U, C, L, d_t]
        units, classes = prompts.shape[:2]
        features = self.backbone.encode_deep_prompted_text(
            prompts.flatten(0, 1), self.layout.eot.repeat(units), tokens.flatten(0, 1).unsqueeze(1),
            self.layout.context_index.repeat(units, 1), first_layer=self.config.insert_layer)
        return normalize(features.unflatten(0, (units, classes)))

    def _scores(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        slots, position = batch.present_slots()
        text = self.text_features(slots)
        scores = self.backbone.logit_scale * torch.einsum("bd,bcd->bc", normalize(batch.image), text[position])
        return scores, text, slots

    def forward(self, batch: Batch) -> torch.Tensor:
        return self._scores(batch)[0]

    def training_loss(self, batch: Batch) -> torch.Tensor:
        scores, text, slots = self._scores(batch)
        loss = slot_mean(self.sample_loss(scores, batch.labels), batch.slot, self.num_slots)
        consistency = 1 - F.cosine_similarity(text, self.knowledge.unsqueeze(0), dim=-1, eps=1e-7).mean(1)  # [U]
        return loss.index_add(0, slots, self.config.weight * consistency)
