"""Learnable text prompts: splicing context vectors into the token embeddings of class prompts.

CoOp's prompt for class c is ``[SOS] [V]_1 ... [V]_n  <class c tokens> . [EOT]`` where the
``[V]`` are learnable vectors of the text width. FedRSCLIP puts the class in the middle
(``[V]_1..[V]_{n/2} [CLASS] [V]_{n/2+1}..[V]_n``, Eq. 4). :class:`PromptLayout` tokenises every
class once with placeholder tokens, keeps the frozen token embeddings, and records which
positions take which context vector; :meth:`PromptLayout.splice` then builds the sequences for
any stack of contexts with one gather (no Python loop over classes or clients).
"""

from __future__ import annotations

from typing import Literal

import torch
from einops import rearrange, repeat
from torch import nn

from fedvlm.backbone.clip import FrozenCLIP
from fedvlm.errors import ConfigError

Position = Literal["end", "middle", "front"]
PLACEHOLDER = "X"


class PromptLayout(nn.Module):
    """Frozen class-prompt embeddings and the positions of ``n_ctx`` context vectors.

    Buffers: ``token_embeddings [C, L, d_t]`` (L trimmed after the longest EOT), ``context_index
    [C, L]`` (which context vector goes at each position, -1 for frozen tokens) and ``eot [C]``.
    """

    def __init__(self, backbone: FrozenCLIP, classnames: list[str], n_ctx: int, position: Position = "end",
                 suffix: str = "."):
        super().__init__()
        self.n_ctx = n_ctx
        name_lengths = [int(n) - 1 for n in backbone.eot_positions(backbone.tokenize(list(classnames)))]
        before = {"end": n_ctx, "middle": n_ctx // 2, "front": 0}[position]
        after = n_ctx - before
        placeholders = lambda k: " ".join([PLACEHOLDER] * k)  # noqa: E731
        texts = [" ".join(part for part in (placeholders(before), name, placeholders(after)) if part) + suffix
                 for name in classnames]
        ids = backbone.tokenize(texts)
        eot = backbone.eot_positions(ids)
        if int(eot.max()) >= backbone.context_length - 1:  # the tokenizer truncated a prompt
            raise ConfigError(f"head.n_ctx: {n_ctx} context tokens plus the longest class name exceed the text "
                              f"encoder's {backbone.context_length} tokens; use fewer context tokens")
        index = torch.full(ids.shape, -1, dtype=torch.long)
        placeholder_id = int(backbone.tokenize([PLACEHOLDER])[0, 1])
        for c, name_length in enumerate(name_lengths):
            positions = list(range(1, 1 + before)) + list(range(1 + before + name_length, 1 + n_ctx + name_length))
            if n_ctx and ids[c, positions].ne(placeholder_id).any():  # tokenisation did not split as expected
                raise ConfigError(f"data: cannot place context tokens around class name {classnames[c]!r}")
            index[c, positions] = torch.arange(n_ctx)
        length = int(eot.max()) + 1
        self.shared_prefix = shared_prefix_length(ids[:, :length], index[:, :length], eot)
        self.register_buffer("token_embeddings", backbone.token_embeddings(ids)[:, :length].clone(), persistent=False)
        self.register_buffer("context_index", index[:, :length], persistent=False)
        self.register_buffer("eot", eot, persistent=False)

    @property
    def num_classes(self) -> int:
        return self.token_embeddings.shape[0]

    def splice(self, context: torch.Tensor) -> torch.Tensor:
        """``context [U, n_ctx, d]`` (one per client) or ``[U, C, n_ctx, d]`` (class-specific)
        -> prompt embeddings ``[U, C, L, d]``."""
        is_context = self.context_index.ge(0)[None, :, :, None]  # [1, C, L, 1]
        index = self.context_index.clamp(min=0)  # [C, L]
        if context.dim() == 3:
            gathered = context[:, index]  # [U, C, L, d]
        else:
            classes = torch.arange(self.num_classes, device=context.device)[:, None]
            gathered = context[:, classes, index]  # [U, C, L, d]
        return torch.where(is_context, gathered, self.token_embeddings.unsqueeze(0))

    def encode(self, backbone: FrozenCLIP, context: torch.Tensor) -> torch.Tensor:
        """Text features of every class for every context: ``[U, C, D]`` (not normalised)."""
        prompts = self.splice(context)
        units, classes = prompts.shape[:2]
        prefix = self.shared_prefix
        if backbone.share_text_prefix and context.dim() == 3 and classes > 1 and prefix > 1:
            return backbone.encode_with_shared_prefix(prompts[:, 0, :prefix], prompts[:, :, prefix:], self.eot)
        features = backbone.encode_token_embeddings(rearrange(prompts, "u c l d -> (u c) l d"),
                                                    repeat(self.eot, "c -> (u c)", u=units))
        return rearrange(features, "(u c) d -> u c d", u=units)

    def encode_deep(self, backbone: FrozenCLIP, context: torch.Tensor, layer_context: torch.Tensor | None) -> torch.Tensor:
        """Text features with deep prompts (MaPLe): ``context [U, n_ctx, d]`` enters with the
        word embeddings, ``layer_context [U, J - 1, n_ctx, d]`` replaces the context positions
        before blocks 1 .. J - 1 (see ``FrozenCLIP.encode_deep_prompted_text``) -> ``[U, C, D]``.
        ``layer_context`` None (or J = 1) is :meth:`encode`."""
        if layer_context is None or layer_context.shape[1] == 0:
            return self.encode(backbone, context)
        prompts = self.splice(context)
        units, classes = prompts.shape[:2]
        prefix = self.shared_prefix
        positions = self.context_index[0].ge(0).nonzero().flatten()  # where the context sits
        if backbone.share_text_prefix and classes > 1 and prefix > 1 and 0 < len(positions) and \
                int(positions.max()) < prefix:
            # every context position lies in the common prefix: inject the layer prompts there once
            in_order = layer_context[:, :, self.context_index[0, positions]]  # [U, J-1, n_ctx, d] by position
            return backbone.encode_with_shared_prefix(prompts[:, 0, :prefix], prompts[:, :, prefix:], self.eot,
                                                      in_order, positions)
        per_sequence = repeat(layer_context, "u j t d -> (u c) j t d", c=classes)  # every class its slot's prompts
        features = backbone.encode_deep_prompted_text(rearrange(prompts, "u c l d -> (u c) l d"),
                                                      repeat(self.eot, "c -> (u c)", u=units), per_sequence,
                                                      repeat(self.context_index, "c l -> (u c) l", u=units))
        return rearrange(features, "(u c) d -> u c d", u=units)


def shared_prefix_length(ids: torch.Tensor, context_index: torch.Tensor, eot: torch.Tensor, groups: int = 1) -> int:
    """How many leading positions the prompts of each group have in common: ``ids [R, L]`` token
    ids, ``context_index [R, L]`` (-1: a frozen token), ``eot [R]``; rows form ``groups``
    consecutive groups of equal size (FedMPT: one per condition). Those positions ([SOS] and the
    context before the class name) give the same hidden states in every prompt of a group, so
    the text encoder runs them once per group (``FrozenCLIP.encode_with_shared_prefix``). At most
    the first EOT: the EOT must lie in every prompt's own part."""
    ids, context_index = ids.unflatten(0, (groups, -1)), context_index.unflatten(0, (groups, -1))  # [G, R/G, L]
    same = ((ids == ids[:, :1]) & (context_index == context_index[:, :1])).all(1)  # [G, L]
    return min(int(same.long().cumprod(1).sum(1).min()), int(eot.min()))


def context_init(backbone: FrozenCLIP, n_ctx: int, phrase: str | None, generator: torch.Generator,
                 std: float = 0.02) -> torch.Tensor:
    """``[n_ctx, d_t]`` initial context: the word embeddings of ``phrase`` ("a photo of a") when
    given (its token count must equal n_ctx), else N(0, std^2) as in CoOp."""
    if phrase:
        ids = backbone.tokenize([phrase])
        length = int(backbone.eot_positions(ids)[0]) - 1
        if length != n_ctx:
            raise ConfigError(f"head.ctx_init: {phrase!r} is {length} tokens but head.n_ctx is {n_ctx}; "
                              f"set head.n_ctx={length} or change the phrase")
        return backbone.token_embeddings(ids)[0, 1 : 1 + n_ctx].clone()
    return torch.randn(n_ctx, backbone.text_width, generator=generator) * std
