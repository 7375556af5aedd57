"""Multispectral bands beside the image batches: the alignment student's input.

:class:`BandBatches` wraps the run's image batch source (whose pooled features, computed by the
frozen, patched CLIP on the RGB images, are the teacher embeddings) and adds
``batch.extras["bands"] [B, bands, size, size]``: each scene's bands read by the dataset's band
reader, standardised per band and resized (bilinear) to the student's input size. Per-band mean
and standard deviation are measured once on up to ``statistics_images`` of the run's images
(evenly spaced rows, so the same in every process). Bands already read are kept in memory.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fedvlm.data.multispectral import MultispectralImages
from fedvlm.errors import ConfigError


class BandBatches:
    def __init__(self, images, dataset, rows, size: int, device, statistics_images: int = 256):
        self.images, self.dataset, self.size, self.device = images, dataset, int(size), device
        self.rows = np.asarray(rows)  # table row -> dataset row
        self._cache: dict[int, torch.Tensor] = {}
        sample = np.unique(np.linspace(0, len(self.rows) - 1, min(statistics_images, len(self.rows))).astype(int))
        stacked = torch.cat([self._raw(int(r)).flatten(1) for r in sample], dim=1)  # [bands, pixels]
        self.mean = stacked.mean(1).view(-1, 1, 1)
        self.std = stacked.std(1).clamp(min=1e-6).view(-1, 1, 1)

    @property
    def num_views(self) -> int:
        return getattr(self.images, "num_views", 0)

    def _raw(self, row: int) -> torch.Tensor:
        """``[bands, size, size]`` reflectance of table row ``row`` (read once)."""
        if row not in self._cache:
            bands = torch.from_numpy(np.ascontiguousarray(self.dataset.load_bands(int(self.rows[row])))).float()
            bands = bands.permute(2, 0, 1).unsqueeze(0)  # [1, B, H, W]
            if bands.shape[-1] != self.size or bands.shape[-2] != self.size:
                bands = F.interpolate(bands, size=(self.size, self.size), mode="bilinear", align_corners=False)
            self._cache[row] = bands[0]
        return self._cache[row]

    def bands(self, rows) -> torch.Tensor:
        return torch.stack([(self._raw(int(r)) - self.mean) / self.std for r in rows])

    def batch(self, rows, slot, train: bool = True, views=None):
        batch = self.images.batch(rows, slot, train, views)
        batch.extras["bands"] = self.bands(np.asarray(rows)).to(self.device)
        return batch


def band_batches(images, dataset, rows, device, *, dataset_name: str, channels: int, size: int,
                 channels_key: str) -> BandBatches:
    """The band source over ``images`` for a student that reads ``channels`` bands at ``size``
    pixels; refuses, in one line each, a dataset without bands and one with another band count
    (``channels_key``: the config key that set ``channels``, named in the error)."""
    if not isinstance(dataset, MultispectralImages):
        raise ConfigError(f"data.dataset: {dataset_name} has no multispectral bands; the ms_student "
                          "head needs one (eurosat_ms, bigearthnet, bigearthnet19, synthetic_eurosat_ms, "
                          "synthetic_bigearthnet)")
    if len(dataset.band_names) != channels:
        raise ConfigError(f"{channels_key}: {channels}, but {dataset_name} has {len(dataset.band_names)} bands")
    return BandBatches(images, dataset, rows, size, device)
