"""Sums over clients that come out bitwise the same however the clients are spread over processes.

A round's server step needs sums over the round's clients (FedAvg's ``sum_i n_i theta_i``,
SCAFFOLD's ``sum_i dc_i``, DP-FedAvg's sum of clipped deltas). Each process sums the terms of the
clients it trained and one all-reduce adds the processes' partial sums. Floating-point addition
is not associative, so a float all-reduce would give numbers that depend on the number of
processes (and, with NCCL, on its ring). fedvlm sums in *fixed point* instead: integer addition is
associative, so the sum is the same in any order and any grouping.

For every element (of every term key), over the ``count`` terms of the round::

    bound   B  = max_i |t_i|                      one all-reduce (max: exact, order-free)
    E          = the exponent with B < 2^E          (frexp)
    shift   s  = b - E,   b = 62 - ceil(log2 count) bits for each term
    q_i        = round(t_i * 2^s)   int64, |q_i| <= 2^b    (scaling by 2^s is exact; rounding is per term)
    Q          = sum_i q_i          int64, |Q| <= 2^62      one all-reduce (sum: exact, order-free)
    sum        = Q * 2^-s           float64

Every q_i depends on t_i and the global B only, and Q is an exact integer sum, so the result is
a function of the *set* of terms: identical on 1, 2 or 4 processes and for any client order. The
one rounding per term is of at most 2^(E - b - 1) <= B 2^-(62 - ceil(log2 count)), about 1e-17 B
for a few hundred clients: far below the float32 resolution of the parameters being averaged
(a Kahan-compensated float sum would still depend on the grouping). Two all-reduces of the
size of the terms, whatever the number of clients: the bound (float64) and the sum (int64).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

Tensors = dict[str, torch.Tensor]
Collective = Callable[[torch.Tensor], torch.Tensor]

_INT_BITS = 62  # of int64's 63 magnitude bits, one spare for the rounding of a term to 2^b


def term_bits(count: int) -> int:
    """``b``: the bits each of ``count`` terms may use so that their integer sum fits int64."""
    return _INT_BITS - math.ceil(math.log2(max(count, 1)))


def _ldexp(values: torch.Tensor, exponents: torch.Tensor) -> torch.Tensor:
    """``values * 2^exponents``, exact (torch.ldexp multiplies by ``2.0 ** e``, which overflows
    past 2^1023: the shift is applied in two halves, each a representable power of two)."""
    half = torch.div(exponents, 2, rounding_mode="floor")
    return torch.ldexp(torch.ldexp(values, half.double()), (exponents - half).double())


def flat(tensors: Tensors, layout: Tensors) -> torch.Tensor:
    """The tensors of ``layout``'s keys, in its order, as one float64 vector ``[sum numel]``."""
    if not layout:
        return torch.zeros(0, dtype=torch.float64)
    return torch.cat([tensors[key].double().flatten() for key in layout])


def unflat(vector: torch.Tensor, layout: Tensors) -> Tensors:
    """Inverse of :func:`flat`: ``{key: [shape of layout[key]]}``, float64."""
    result, offset = {}, 0
    for key, example in layout.items():
        result[key] = vector[offset : offset + example.numel()].reshape(example.shape)
        offset += example.numel()
    return result


def fixed_point_sum(terms: list[torch.Tensor], size: int, count: int, all_reduce_max: Collective | None = None,
                    all_reduce_sum: Collective | None = None, device=None) -> torch.Tensor:
    """``sum_i terms_i`` over every process's terms (each a float64 vector ``[size]``), exact up
    to one rounding per term and independent of order and grouping (the module docstring).

    ``count`` is the number of terms over all processes (the same on every process: it fixes the
    bits per term); the collectives are None on one process. A process without terms passes
    ``[]`` and still joins both collectives.
    """
    if terms:
        stacked = torch.stack(terms)  # [n, size]
        if not torch.isfinite(stacked).all():
            raise ValueError("fixed_point_sum: a term is not finite (non-finite clients are left out before)")
        bound = stacked.abs().amax(0)
    else:
        stacked = None
        bound = torch.zeros(size, dtype=torch.float64, device=device)
    if all_reduce_max is not None:
        bound = all_reduce_max(bound)
    _, exponent = torch.frexp(bound)  # bound < 2^exponent (0 for a zero bound)
    shift = term_bits(count) - exponent.long()
    total = torch.zeros(size, dtype=torch.int64, device=bound.device)
    if stacked is not None:
        for term in stacked:  # exact integer additions: their order does not matter
            total += torch.round(_ldexp(term, shift)).long()
    if all_reduce_sum is not None:
        total = all_reduce_sum(total)
    return _ldexp(total.double(), -shift)


def sum_terms(terms: list[Tensors], layout: Tensors, count: int | None = None,
              all_reduce_max: Collective | None = None, all_reduce_sum: Collective | None = None) -> Tensors:
    """:func:`fixed_point_sum` over mappings ``{key: tensor}`` shaped like ``layout``: one vector,
    so one collective of each kind for every key together. ``count`` defaults to ``len(terms)``
    (one process)."""
    size = sum(example.numel() for example in layout.values())
    device = next(iter(layout.values())).device if layout else None
    vectors = [flat(term, layout).to(device) for term in terms]
    total = fixed_point_sum(vectors, size, len(terms) if count is None else count, all_reduce_max, all_reduce_sum,
                            device)
    return unflat(total, layout)
