"""PAINT (Ilharco et al. 2022), the first stage of "Mind the Modality Gap" (Sec. III-A):
``W_patch = (1 - alpha) W_zs + alpha W_ft``, alpha chosen on held-out validation data.
"""

from __future__ import annotations

import torch


def interpolate(zero_shot: dict[str, torch.Tensor], fine_tuned: dict[str, torch.Tensor], alpha: float
                ) -> dict[str, torch.Tensor]:
    """Every key of ``zero_shot`` (parameters and buffers, REFERENCE-NOTES 10) mixed with the same
    key of ``fine_tuned``; a key the fine-tuning did not change (absent from ``fine_tuned``)
    keeps its value. Integer buffers are taken from ``zero_shot`` unchanged."""
    mixed = {}
    for key, start in zero_shot.items():
        end = fine_tuned.get(key, start)
        if not torch.is_floating_point(start):
            mixed[key] = start.clone()
            continue
        mixed[key] = ((1 - alpha) * start.double() + alpha * end.to(start.device).double()).to(start.dtype)
    return mixed


def choose_alpha(alphas: list[float], patch_validation: list[float], supported_validation: list[float]) -> float:
    """PAINT's choice: the alpha with the best mean of the patching and supported tasks'
    validation metrics (ties: the smallest alpha, the one closest to the zero-shot model)."""
    scores = [(p + s) / 2 for p, s in zip(patch_validation, supported_validation)]
    best = max(scores)
    return min(a for a, score in zip(alphas, scores) if score == best)
