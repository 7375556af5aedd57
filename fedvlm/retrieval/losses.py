"""RDB's Dual-Task Consistency Loss (DTCL, Sec. 3.3): its three terms and their combination.

Every term is per sample ``[B]`` so a head can average it per client slot; the triplet term only
compares pairs of the same group (client slot), so clients trained in one pass never see each
other's samples as negatives.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor


def bidirectional_triplet(similarity: Tensor, groups: Tensor, margin: float = 0.2,
                          negatives: Literal["sum", "hardest"] = "sum") -> Tensor:
    """RDB Eq. 10, per matched pair: ``sum_T^ [mu - cos(I, T) + cos(I, T^)]_+ +
    sum_I^ [mu - cos(I, T) + cos(I^, T)]_+``.

    similarity: ``[B, B]`` with ``similarity[i, j] = cos(I_i, T_j)``; pair i is (I_i, T_i).
    groups: ``[B]``; only pairs of the same group are negatives of each other. ``negatives``:
    "sum" over every negative (Eq. 10 as printed) or only the "hardest" one in each direction
    (VSE++'s max-of-hinges). Returns ``[B]``.
    """
    positive = similarity.diagonal()
    same_group = groups.unsqueeze(0) == groups.unsqueeze(1)
    negative = same_group & ~torch.eye(len(groups), dtype=torch.bool, device=similarity.device)
    # row i: image I_i against texts T_j; column i: text T_i against images I_j
    cost_text = (margin - positive.unsqueeze(1) + similarity).clamp(min=0) * negative
    cost_image = (margin - positive.unsqueeze(0) + similarity).clamp(min=0) * negative
    if negatives == "hardest":
        return cost_text.amax(dim=1) + cost_image.amax(dim=0)
    return cost_text.sum(dim=1) + cost_image.sum(dim=0)


def consistency(student: Tensor, teacher: Tensor) -> Tensor:
    """RDB Eq. 13 per sample: ``(y_I - y_T)^2`` summed over the embedding -> ``[B]`` (the mean
    over samples is Eq. 13's 1/n sum)."""
    return ((student - teacher) ** 2).sum(-1)


def uncertainty_weighted(losses: Tensor, sigma: Tensor) -> Tensor:
    """RDB Eq. 14 (Liebel & Koerner 2018): ``sum_i 1 / (2 sigma_i^2) L_i + log(1 + sigma_i^2)``.

    losses: ``[S, n]`` (n loss terms per slot); sigma: ``[S, n]`` learnable. Returns ``[S]``.
    """
    variance = sigma ** 2
    return (losses / (2 * variance) + torch.log1p(variance)).sum(-1)
