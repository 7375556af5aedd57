"""The maths of RDB's Cross-Modal Asymmetric Adapter, over per-sample weights.

A head keeps every weight slot-stacked (``[S, ...]``, one copy per client in the pass); these
functions take weights already gathered per sample (``weight[slot]``, ``[B, ...]``), so each
sample only ever touches its own client's parameters and S clients run in one call.

Equations are those of "Representation Discrepancy Bridging Method for Remote Sensing Image-Text
Retrieval" (papers/rdb_retrieval.txt); the GRU is ``torch.nn.GRU``'s (Cho et al. 2014, with
the reset gate applied after the hidden projection, as cuDNN and PyTorch do).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fedvlm.batch import per_slot


def slot_linear(x: Tensor, weight: Tensor, bias: Tensor | None, slot: Tensor) -> Tensor:
    """``x [B, ..., i]`` through slot ``slot[b]``'s ``weight [S, i, o]`` and ``bias [S, o]`` -> ``[B, ..., o]``."""
    out = torch.einsum("b...i,bio->b...o", x, weight[slot])
    if bias is not None:
        out = out + per_slot(bias[slot], out)
    return out


def reparameterized_lambda(lambda_q1: Tensor, lambda_k1: Tensor, lambda_q2: Tensor, lambda_k2: Tensor,
                           lambda_init: float) -> Tensor:
    """RDB Eq. 3: lambda = exp(lambda_q1 . lambda_k1) - exp(lambda_q2 . lambda_k2) + lambda_init.

    The four learnable vectors are ``[..., d]``; returns ``[...]`` (one lambda per sample/slot).
    """
    return torch.exp((lambda_q1 * lambda_k1).sum(-1)) - torch.exp((lambda_q2 * lambda_k2).sum(-1)) + lambda_init


def differential_attention(q1: Tensor, k1: Tensor, q2: Tensor, k2: Tensor, v: Tensor, lam: Tensor,
                           mask: Tensor | None = None) -> Tensor:
    """RDB Eq. 2 (Differential Transformer, Ye et al. 2025):
    ``(softmax(Q1 K1^T / sqrt(d)) - lambda softmax(Q2 K2^T / sqrt(d))) V``.

    q1, k1, q2, k2: ``[B, H, N, d]``; v: ``[B, H, N, d_v]``; lam: ``[B]`` (one per sample);
    mask: ``[B, N]`` keys that may be attended (None: all). Returns ``[B, H, N, d_v]``.
    """
    scale = 1.0 / math.sqrt(q1.shape[-1])
    scores1 = q1 @ k1.transpose(-1, -2) * scale  # [B, H, N, N]
    scores2 = q2 @ k2.transpose(-1, -2) * scale
    if mask is not None:
        blocked = ~mask[:, None, None, :]
        scores1 = scores1.masked_fill(blocked, float("-inf"))
        scores2 = scores2.masked_fill(blocked, float("-inf"))
    attention = scores1.softmax(-1) - lam.view(-1, 1, 1, 1) * scores2.softmax(-1)
    return attention @ v


def gru(x: Tensor, lengths: Tensor, w_ih: Tensor, w_hh: Tensor, b_ih: Tensor, b_hh: Tensor,
        reverse: bool = False) -> Tensor:
    """One GRU direction over padded sequences, every sample with its own weights.

    x: ``[B, L, i]``; lengths: ``[B]`` (positions >= length are padding); w_ih ``[B, 3h, i]``,
    w_hh ``[B, 3h, h]``, b_ih and b_hh ``[B, 3h]`` in torch.nn.GRU's (r, z, n) order::

        r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)      z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
        n = tanh(W_in x + b_in + r * (W_hn h + b_hn))    h' = (1 - z) * n + z * h

    ``reverse`` runs each sequence from its last real position back to the first (the backward
    half of a bidirectional GRU). Returns ``[B, L, h]`` with zeros at padding positions.
    """
    batch, length, _ = x.shape
    hidden = w_hh.shape[-1]
    positions = torch.arange(length, device=x.device).unsqueeze(0)  # [1, L]
    valid = positions < lengths.unsqueeze(1)  # [B, L]
    if reverse:  # reverse each sequence inside its own length; padding stays where it is
        order = torch.where(valid, lengths.unsqueeze(1) - 1 - positions, positions)
        x = x.gather(1, order.unsqueeze(-1).expand_as(x))
    projected = torch.einsum("bli,bgi->blg", x, w_ih) + b_ih.unsqueeze(1)  # [B, L, 3h]
    state = x.new_zeros(batch, hidden)
    outputs = []
    for t in range(length):
        gates_x = projected[:, t].chunk(3, dim=-1)
        gates_h = (torch.einsum("bh,bgh->bg", state, w_hh) + b_hh).chunk(3, dim=-1)
        reset = torch.sigmoid(gates_x[0] + gates_h[0])
        update = torch.sigmoid(gates_x[1] + gates_h[1])
        candidate = torch.tanh(gates_x[2] + reset * gates_h[2])
        new_state = (1 - update) * candidate + update * state
        step_valid = valid[:, t].unsqueeze(-1)
        state = torch.where(step_valid, new_state, state)
        outputs.append(torch.where(step_valid, new_state, torch.zeros_like(new_state)))
    out = torch.stack(outputs, dim=1) if outputs else x.new_zeros(batch, 0, hidden)
    if reverse:
        out = out.gather(1, order.unsqueeze(-1).expand_as(out))  # the reversal is its own inverse
    return out


def bigru(x: Tensor, lengths: Tensor, forward: tuple[Tensor, ...], backward: tuple[Tensor, ...]) -> Tensor:
    """Bidirectional GRU: ``[forward outputs ; backward outputs]`` -> ``[B, L, 2h]`` (HAN's
    annotations h_it = [h_fwd; h_bwd]). ``forward``/``backward`` are (w_ih, w_hh, b_ih, b_hh)."""
    return torch.cat([gru(x, lengths, *forward), gru(x, lengths, *backward, reverse=True)], dim=-1)


def attention_pool(h: Tensor, mask: Tensor, weight: Tensor, bias: Tensor, context: Tensor) -> Tensor:
    """Hierarchical attention's pooling (RDB Eq. 4-6, and Eq. 7-9 at the sentence level):
    ``u_t = tanh(W h_t + b)``, ``alpha_t = softmax_t(u_t . u_w)`` over the valid positions,
    ``s = sum_t alpha_t h_t``.

    h: ``[B, L, e]``; mask: ``[B, L]`` valid positions; weight ``[B, e, a]``; bias ``[B, a]``;
    context (u_w) ``[B, a]``. Returns ``[B, e]`` (zeros for a sample with no valid position).
    """
    hidden = torch.tanh(torch.einsum("ble,bea->bla", h, weight) + bias.unsqueeze(1))  # Eq. 4
    scores = torch.einsum("bla,ba->bl", hidden, context).masked_fill(~mask, float("-inf"))
    any_valid = mask.any(-1, keepdim=True)
    scores = torch.where(any_valid, scores, torch.zeros_like(scores))  # no -inf-only row (NaN)
    alpha = scores.softmax(-1) * any_valid  # Eq. 5; a sample with no valid position pools to 0
    return torch.einsum("bl,ble->be", alpha, h)  # Eq. 6

