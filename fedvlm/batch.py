"""The batch every head reads: a ground-floor type, so batch sources and heads share it without
either importing the other.

A batch mixes the samples of several clients; ``slot [B]`` says which client slot each sample
belongs to (:mod:`fedvlm.heads.base`), and :func:`slot_mean` reduces per-sample values to one
value per slot.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class Batch:
    """A training or evaluation batch of cached features (or pixels for heads that need them)."""

    labels: torch.Tensor  # [B] class indices
    slot: torch.Tensor  # [B] which client slot each sample belongs to
    image: torch.Tensor | None = None  # [B, D] pooled image embeddings
    patches: torch.Tensor | None = None  # [B, M, D] projected patch tokens
    pixels: torch.Tensor | None = None  # [B, 3, H, W] for heads that run the image encoder
    extras: dict = field(default_factory=dict)

    def to(self, device) -> "Batch":
        move = lambda t: t.to(device, non_blocking=True) if isinstance(t, torch.Tensor) else t  # noqa: E731
        return Batch(move(self.labels), move(self.slot), move(self.image), move(self.patches), move(self.pixels),
                     {k: move(v) for k, v in self.extras.items()})


def slot_mean(values: torch.Tensor, slot: torch.Tensor, num_slots: int) -> torch.Tensor:
    """Mean of per-sample ``values [B]`` within each slot -> ``[S]`` (0 for slots with no sample)."""
    sums = torch.zeros(num_slots, dtype=values.dtype, device=values.device).index_add(0, slot, values)
    counts = torch.zeros(num_slots, dtype=values.dtype, device=values.device).index_add(
        0, slot, torch.ones_like(values))
    return sums / counts.clamp(min=1)
