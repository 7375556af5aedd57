"""The batch every head reads: a ground-floor type, so batch sources and heads share it without
either importing the other.

A batch mixes the samples of several clients; ``slot [B]`` says which client slot each sample
belongs to (:mod:`fedvlm.heads.base`), and :func:`slot_mean` reduces per-sample values to one
value per slot.

**Present slots.** Heads encode their prompts only for the slots that have samples in the batch
(a client that finished its local steps costs nothing), so they need ``present [P]`` (the sorted
slot ids of the batch) and ``position [B]`` (each sample's index into ``present``): what
``torch.unique(slot, return_inverse=True)`` gives. On a GPU that call waits for the device (its
output size depends on the data), once per step and head. The batch sources build ``slot`` on the
CPU and then call :meth:`Batch.to`, which computes both there, before the move, so the hot path
never asks the device. A batch built directly on the device without them (tests do this) falls
back to computing them once, on first use (:meth:`Batch.present_slots`), with that one sync.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields

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
    present: torch.Tensor | None = None  # [P] sorted ids of the slots with samples in the batch
    position: torch.Tensor | None = None  # [B] index of each sample's slot within ``present``
    present_ids: tuple[int, ...] | None = None  # ``present`` as Python ints, for loops over slots

    def to(self, device) -> "Batch":
        """The batch on ``device``, every field moved; the present slots are computed first while
        ``slot`` is still on the CPU (no device sync later)."""
        if self.present is None and self.slot.device.type == "cpu":
            self._find_present()

        def move(value):
            if isinstance(value, torch.Tensor):
                return value.to(device, non_blocking=True)
            if isinstance(value, dict):
                return {k: move(v) for k, v in value.items()}
            return value

        return Batch(**{f.name: move(getattr(self, f.name)) for f in fields(self)})

    def present_slots(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(present [P], position [B])``: ``torch.unique(slot, return_inverse=True)``, computed
        once (see the module docstring)."""
        if self.present is None:
            self._find_present()
        return self.present, self.position

    def present_slot_ids(self) -> tuple[int, ...]:
        """The present slots as Python ints (``present.tolist()``, read on the CPU when the batch
        source built the batch)."""
        if self.present_ids is None:
            self.present_ids = tuple(self.present_slots()[0].tolist())
        return self.present_ids

    def _find_present(self) -> None:
        present, position = torch.unique(self.slot, return_inverse=True)
        self.present, self.position = present, position
        if present.device.type == "cpu":
            self.present_ids = tuple(present.tolist())


def present_ids_of(slot: torch.Tensor, present: tuple[int, ...] | None = None) -> tuple[int, ...]:
    """``present`` when the caller knows it (a batch's :meth:`Batch.present_slot_ids`), else the
    sorted slot ids in ``slot`` (one device sync): for loops over the slots of rows derived from
    a batch, such as its captions."""
    return present if present is not None else tuple(torch.unique(slot).tolist())


def slot_mean(values: torch.Tensor, slot: torch.Tensor, num_slots: int) -> torch.Tensor:
    """Mean of per-sample ``values [B]`` within each slot -> ``[S]`` (0 for slots with no sample)."""
    sums = torch.zeros(num_slots, dtype=values.dtype, device=values.device).index_add(0, slot, values)
    counts = torch.zeros(num_slots, dtype=values.dtype, device=values.device).index_add(
        0, slot, torch.ones_like(values))
    return sums / counts.clamp(min=1)


def per_slot(values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``values [S, *tail]`` viewed as ``[S, 1, ..., 1, *tail]`` with as many axes as ``like``, so
    it broadcasts against ``like [S, ..., *tail]`` one slot (or sample) at a time: a mask ``[S]``
    over ``[S, ...]`` parameters, a bias ``[B, o]`` over outputs ``[B, ..., o]``, a map ``[U, D, D]``
    over features ``[U, ..., C, D]``."""
    return values.view(values.shape[0], *[1] * (like.dim() - values.dim()), *values.shape[1:])
