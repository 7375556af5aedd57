"""RDB: the Cross-Modal Asymmetric Adapter (CMAA) on a frozen CLIP, trained with DTCL
(papers/rdb_retrieval.txt Sec. 3.2; the loss is in fedvlm/heads/retrieval.py).

Both modalities start from the frozen encoders' outputs in the joint space (width D): the image
side from the pooled embedding and the projected patch tokens (cached), the text side from every
token's projected output (cached once, fedvlm.backbone.text_cache). Then (Sec. 3.2, Fig. 3b)::

    x_m   = GELU(W_down_m E_m)                      down-projection per modality (D -> r)
    image: h_I = [x + DiffAttn(x)]_cls              Visual Enhancement Adapter, Eq. 2-3
    text : h_T = HA(x)                              Text Semantic Adapter, Eq. 4-9
    s_m   = GELU(W_shared h_m)                      shared layer (one weight for both modalities)
    g_m   = sigmoid(W_gate [h_m ; s_m])             gate (shared): how much cross-modal signal enters
    z_m   = g_m * s_m + (1 - g_m) * h_m
    f_m   = normalise(E_m,pooled + W_up_m z_m)      up-projection per modality (r -> D), residual

Choices where the paper is silent (options in :class:`RDBConfig`):

* Eq. 2 is applied with ``attention_heads`` heads over the token sequence [CLS; patches], each
  head splitting its queries and keys in two halves of width d = r / (2 H) and reading values of
  width r / H; one lambda per client (Eq. 3), ``lambda_init`` 0.8 (Differential Transformer's
  0.8 - 0.6 exp(-0.3 (l - 1)) is 0.78 for the 12th block, where the adapter sits), the
  reparameterisation vectors drawn from N(0, 0.1). The VEA is residual (x + DiffAttn(x)) and is
  read at the CLS position (``image_pool: mean`` averages the tokens instead).
* The HA runs HAN (Yang et al. 2016) on one caption: sentences are split at ``. ! ? ;``; a word
  BiGRU (hidden r/2 per direction) and word attention (Eq. 4-6) make sentence vectors; a
  sentence BiGRU and sentence attention (Eq. 7-9) make the text vector. The EOT token (CLIP's
  summary of the caption) is the last word of the last sentence.
* The up-projections start at zero, so the untrained head is zero-shot CLIP; the residual keeps
  the frozen embedding as the base the adapter corrects.
* Dropout 0.2 (Sec. 4.2) on the bottleneck vector h_m, with masks drawn per client (see
  RetrievalHead.slot_dropout) so batched and sequential training agree.

``image_branch: mlp`` / ``text_branch: mlp`` replace a modality's attention by the plain
bottleneck on the pooled embedding; both at once is the symmetric ``cross_modal_adapter``.
Everything but the loss weights sigma is shared (aggregated): "the adapters are the shared
parameters" of the federated retrieval.
"""

from __future__ import annotations

from typing import Literal

import torch
from einops import pack, rearrange
from pydantic import Field

from fedvlm.errors import ConfigError
from fedvlm.heads.base import Batch, normalize
from fedvlm.heads.registry import HEADS
from fedvlm.heads.retrieval import RetrievalHead, RetrievalHeadConfig, RetrievalLoss
from fedvlm.retrieval.layers import (attention_pool, bigru, differential_attention, reparameterized_lambda,
                                     slot_linear)

gelu = torch.nn.functional.gelu


class RDBConfig(RetrievalHeadConfig):
    bottleneck: int = Field(64, gt=1)  # r
    image_branch: Literal["differential_attention", "mlp"] = "differential_attention"
    text_branch: Literal["hierarchical_attention", "mlp"] = "hierarchical_attention"
    attention_heads: int = Field(1, gt=0)
    lambda_init: float = Field(0.8, gt=0, lt=1)
    image_pool: Literal["cls", "mean"] = "cls"
    shared_layer: bool = True
    gate: bool = True
    dropout: float = Field(0.2, ge=0, lt=1)


@HEADS.register("rdb")
class RDBHead(RetrievalHead):
    Config = RDBConfig
    inputs = frozenset({"image", "patches", "captions", "caption_tokens"})

    def __init__(self, config: RDBConfig, backbone, classnames, template, num_slots=1, seed=0):
        super().__init__(config, backbone, classnames, template, num_slots, seed)
        dim, r = backbone.embed_dim, config.bottleneck
        self.options = config
        if config.image_branch == "differential_attention" and "patches" not in self.inputs:
            raise ConfigError(f"head.image_branch: {config.name} is registered without patch tokens; use head rdb")
        if config.text_branch == "hierarchical_attention" and "caption_tokens" not in self.inputs:
            raise ConfigError(f"head.text_branch: {config.name} is registered without token features; use head rdb")
        self._linear("image_down", dim, r)
        self._linear("text_down", dim, r)
        if config.image_branch == "differential_attention":
            heads = config.attention_heads
            if r % (2 * heads):
                raise ConfigError(f"head.bottleneck: {r} must split into 2 x {heads} attention heads")
            half = r // (2 * heads)
            self._linear("diff_query", r, 2 * heads * half, bias=False)
            self._linear("diff_key", r, 2 * heads * half, bias=False)
            self._linear("diff_value", r, r, bias=False)
            for name in ("lambda_q1", "lambda_k1", "lambda_q2", "lambda_k2"):
                setattr(self, name, self.slot_parameter(0.1 * torch.randn(half, generator=self.generator)))
        if config.text_branch == "hierarchical_attention":
            if r % 2:
                raise ConfigError(f"head.bottleneck: {r} must be even (a BiGRU of r/2 per direction)")
            for level in ("word", "sentence"):
                for direction in ("forward", "backward"):
                    self._gru(f"{level}_{direction}", r, r // 2)
                self._linear(f"{level}_attention", r, r)
                setattr(self, f"{level}_context", self._uniform((r,), r))
        if config.shared_layer:
            self._linear("shared", r, r)
            if config.gate:
                self._linear("gate", 2 * r, r)
        self._linear("image_up", r, dim, zero=True)
        self._linear("text_up", r, dim, zero=True)

    # ------------------------------------------------------------------------- parameters

    def _linear(self, name: str, fan_in: int, fan_out: int, bias: bool = True, zero: bool = False) -> None:
        """``{name}_weight [S, in, out]`` (+ ``{name}_bias [S, out]``)."""
        make = (lambda shape: self.slot_parameter(torch.zeros(shape))) if zero else \
            (lambda shape: self._uniform(shape, fan_in))
        setattr(self, f"{name}_weight", make((fan_in, fan_out)))
        if bias:
            setattr(self, f"{name}_bias", make((fan_out,)))

    def _gru(self, name: str, fan_in: int, hidden: int) -> None:
        """torch.nn.GRU's layout: ``_ih [S, 3h, in]``, ``_hh [S, 3h, h]``, biases ``[S, 3h]``."""
        for part, shape in (("ih", (3 * hidden, fan_in)), ("hh", (3 * hidden, hidden)),
                            ("bias_ih", (3 * hidden,)), ("bias_hh", (3 * hidden,))):
            setattr(self, f"{name}_{part}", self._uniform(shape, hidden))

    @staticmethod
    def _gru_weights(weights, name: str, slot: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(weights[f"{name}_{part}"][slot] for part in ("ih", "hh", "bias_ih", "bias_hh"))

    # ------------------------------------------------------------------------ the branches

    def embed_images(self, batch: Batch, weights) -> torch.Tensor:
        slot, options = batch.slot, self.options
        if options.image_branch == "mlp":
            hidden = gelu(slot_linear(batch.image, weights["image_down_weight"], weights["image_down_bias"], slot))
        else:
            tokens, _ = pack([batch.image, batch.patches], "b * d")  # [B, 1 + M, D]: row 0 the pooled embedding
            x = gelu(slot_linear(tokens, weights["image_down_weight"], weights["image_down_bias"], slot))
            hidden_tokens = x + self._differential_attention(x, slot, weights)  # VEA, residual
            hidden = hidden_tokens[:, 0] if options.image_pool == "cls" else hidden_tokens.mean(1)
        return self._bridge(hidden, batch.image, "image", slot, weights, dropout=True,
                            present=batch.present_slot_ids())

    def _differential_attention(self, x: torch.Tensor, slot: torch.Tensor, weights) -> torch.Tensor:
        """Eq. 2-3 over ``x [B, N, r]`` -> ``[B, N, r]``."""
        heads = self.options.attention_heads
        # Each projection holds both maps of the pair (q1|q2, k1|k2), each split into heads.
        q1, q2 = rearrange(slot_linear(x, weights["diff_query_weight"], None, slot),
                           "b n (pair h d) -> pair b h n d", pair=2, h=heads)
        k1, k2 = rearrange(slot_linear(x, weights["diff_key_weight"], None, slot),
                           "b n (pair h d) -> pair b h n d", pair=2, h=heads)
        v = rearrange(slot_linear(x, weights["diff_value_weight"], None, slot), "b n (h d) -> b h n d", h=heads)
        lam = reparameterized_lambda(weights["lambda_q1"][slot], weights["lambda_k1"][slot],
                                     weights["lambda_q2"][slot], weights["lambda_k2"][slot], self.options.lambda_init)
        out = differential_attention(q1, k1, q2, k2, v, lam)  # [B, H, N, r / H]
        return rearrange(out, "b h n d -> b n (h d)")

    def embed_captions(self, captions, slot, weights, train: bool, present=None) -> torch.Tensor:
        pooled = captions["caption_pooled"]
        down = (weights["text_down_weight"], weights["text_down_bias"])
        if self.options.text_branch == "mlp":
            hidden = gelu(slot_linear(pooled, *down, slot))
        else:
            x = gelu(slot_linear(captions["caption_tokens"], *down, slot))  # [T, L, r]
            hidden = self._hierarchical_attention(x, captions, slot, weights)
        return self._bridge(hidden, pooled, "text", slot, weights, dropout=train, present=present)

    def _hierarchical_attention(self, x: torch.Tensor, captions, slot: torch.Tensor, weights) -> torch.Tensor:
        """Eq. 4-9: words -> sentence vectors -> text vector ``[T, r]``."""
        word_index, word_count = captions["word_index"], captions["word_count"]
        sentence_count = captions["sentence_count"]
        count, sentences, words = word_index.shape
        width = x.shape[-1]
        gathered = x.gather(1, word_index.clamp(min=0).view(count, -1, 1).expand(-1, -1, width))
        gathered = gathered.view(count * sentences, words, width)
        word_slot = slot.repeat_interleave(sentences)
        lengths = word_count.reshape(-1)
        annotations = bigru(gathered, lengths, self._gru_weights(weights, "word_forward", word_slot),
                            self._gru_weights(weights, "word_backward", word_slot))  # h_it
        word_mask = torch.arange(words, device=x.device).unsqueeze(0) < lengths.unsqueeze(1)
        sentence_vectors = attention_pool(annotations, word_mask, weights["word_attention_weight"][word_slot],
                                          weights["word_attention_bias"][word_slot],
                                          weights["word_context"][word_slot]).view(count, sentences, width)  # s_i
        sentence_annotations = bigru(sentence_vectors, sentence_count,
                                     self._gru_weights(weights, "sentence_forward", slot),
                                     self._gru_weights(weights, "sentence_backward", slot))  # h_i
        sentence_mask = torch.arange(sentences, device=x.device).unsqueeze(0) < sentence_count.unsqueeze(1)
        return attention_pool(sentence_annotations, sentence_mask, weights["sentence_attention_weight"][slot],
                              weights["sentence_attention_bias"][slot], weights["sentence_context"][slot])  # v

    def _bridge(self, hidden: torch.Tensor, pooled: torch.Tensor, modality: str, slot: torch.Tensor, weights,
                dropout: bool, present: tuple[int, ...] | None = None) -> torch.Tensor:
        """Shared layer, gate and the modality's up-projection onto the frozen embedding."""
        if dropout:
            hidden = self.slot_dropout(hidden, slot, self.options.dropout, present)
        mixed = hidden
        if self.options.shared_layer:
            shared = gelu(slot_linear(hidden, weights["shared_weight"], weights["shared_bias"], slot))
            mixed = shared
            if self.options.gate:
                gate = torch.sigmoid(slot_linear(torch.cat([hidden, shared], -1), weights["gate_weight"],
                                                 weights["gate_bias"], slot))
                mixed = gate * shared + (1 - gate) * hidden
        up = slot_linear(mixed, weights[f"{modality}_up_weight"], weights[f"{modality}_up_bias"], slot)
        return normalize(pooled + up)


class CrossModalAdapterConfig(RDBConfig):
    image_branch: Literal["differential_attention", "mlp"] = "mlp"
    text_branch: Literal["hierarchical_attention", "mlp"] = "mlp"
    loss: RetrievalLoss = RetrievalLoss(terms=["cross"], weighting="sum")


@HEADS.register("cross_modal_adapter")
class CrossModalAdapterHead(RDBHead):
    """The symmetric baseline: the same bottleneck adapter on both pooled embeddings with a
    weight-shared middle layer (Cross-Modal Adapter, Jiang et al. 2022, in RDB's Table 1), trained
    with the triplet loss alone. Setting both branches back to attention gives RDB's CMAA."""

    Config = CrossModalAdapterConfig
    inputs = frozenset({"image", "captions"})
