"""Batch sources: turn rows of the run's image table and client slots into a :class:`Batch`.

``FeatureBatches`` serves cached encoder outputs (every head that leaves the image encoder
unchanged); ``PixelBatches`` decodes and preprocesses images for heads that run the image encoder
themselves (deep visual prompts, full fine-tuning). Training batches may carry different labels
from evaluation ones: the part-annotation benchmark hides some training labels (-1, unknown).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fedvlm.backbone.cache import open_image
from fedvlm.errors import DataError
from fedvlm.batch import Batch


def table_device(placement: str, tensors: list[torch.Tensor | None], device) -> torch.device:
    """Where the feature table lives (``runtime.feature_table``): ``host``, ``device``, or
    ``auto``: the accelerator when every tensor of the table together takes at most half of its
    free memory (the rest is the heads', activations' and optimizer's), else the host. A CPU run
    has one memory: the answer is the CPU."""
    device = torch.device(device)
    if device.type == "cpu" or placement == "host":
        return torch.device("cpu")
    if placement == "device":
        return device
    size = sum(t.numel() * t.element_size() for t in tensors if t is not None)
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else 0
    return device if size <= free // 2 else torch.device("cpu")


class FeatureBatches:
    """Cached features. With augmented views (``view_pooled [V, N, D]``), a training batch takes
    each sample's features from the view given in ``views``; evaluation uses the clean features.

    ``placement`` (``runtime.feature_table``, :func:`table_device`): on the accelerator the table
    is copied there once, and a batch is a gather on the device: the only per-step transfer is
    the row indices (and the CPU-built slot ids, whose present slots :class:`Batch` computes
    before the copy)."""

    def __init__(self, pooled: torch.Tensor, patches: torch.Tensor | None, labels: torch.Tensor, device,
                 train_labels: torch.Tensor | None = None, view_pooled: torch.Tensor | None = None,
                 view_patches: torch.Tensor | None = None, placement: str = "host"):
        self.device = device
        train_labels = train_labels if train_labels is not None else labels
        self.table_device = table_device(placement, [pooled, patches, view_pooled, view_patches], device)
        move = lambda t: None if t is None else t.to(self.table_device)  # noqa: E731  (no copy on the host)
        self.pooled, self.patches = move(pooled), move(patches)
        self.view_pooled, self.view_patches = move(view_pooled), move(view_patches)
        self.labels, self.train_labels = move(labels), move(train_labels)

    @property
    def num_views(self) -> int:
        return 0 if self.view_pooled is None else self.view_pooled.shape[0]

    def _labels(self, index: torch.Tensor, train: bool) -> torch.Tensor:
        return (self.train_labels if train else self.labels)[index]

    def batch(self, rows: np.ndarray, slot: np.ndarray, train: bool = True, views: np.ndarray | None = None) -> Batch:
        index = torch.from_numpy(np.asarray(rows)).to(self.table_device, non_blocking=True)
        if views is not None and self.num_views:
            view = torch.from_numpy(np.asarray(views)).to(self.table_device, non_blocking=True)
            image = self.view_pooled[view, index].float()
            patches = self.view_patches[view, index].float() if self.view_patches is not None else None
        else:
            image = self.pooled[index].float()
            patches = self.patches[index].float() if self.patches is not None else None
        return Batch(labels=self._labels(index, train), slot=torch.from_numpy(np.asarray(slot)),
                     image=image, patches=patches).to(self.device)


class PixelBatches(FeatureBatches):
    """Preprocessed pixels ``[B, 3, H, W]`` (plus the cached pooled features, which partitions and
    some heads still use)."""

    def __init__(self, paths: list[Path], preprocess, pooled: torch.Tensor, labels: torch.Tensor, device,
                 train_labels: torch.Tensor | None = None):
        super().__init__(pooled, None, labels, device, train_labels)
        self.paths, self.preprocess = paths, preprocess

    def _pixels(self, rows: np.ndarray) -> torch.Tensor:
        images = []
        for row in rows:
            try:
                with open_image(self.paths[row]) as image:  # a file, or a dataset row (fedvlm.data.hub)
                    images.append(self.preprocess(image.convert("RGB")))
            except Exception as error:
                raise DataError(f"cannot read image {self.paths[row]}: {type(error).__name__}") from None
        return torch.stack(images)

    def batch(self, rows: np.ndarray, slot: np.ndarray, train: bool = True, views: np.ndarray | None = None) -> Batch:
        batch = super().batch(rows, slot, train)
        batch.pixels = self._pixels(np.asarray(rows)).to(self.device)
        return batch
