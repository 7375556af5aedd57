"""Image features computed once and reused: the frozen encoder's output cannot change.

:func:`image_features` returns the pooled embeddings ``[N, D]`` (and projected patch tokens
``[N, M, D]`` when a head needs them) of a list of image files, from

* the in-process memory cache (repeated runs in a notebook or test session), else
* the disk cache ``<cache_dir>/features/<key>/`` (``.npy`` files read memory-mapped), else
* the encoder, once, after which both caches are filled.

The key hashes everything the features depend on: model name, weights (tag, or checkpoint path
with size and modification time), precision, the preprocessing pipeline, the file list (paths,
sizes, modification times) and whether patch tokens are included. Extraction is split over
processes in fixed batches (so the numbers do not depend on the process count) and combined with
one all-reduce; a disk entry is written to a temporary folder and renamed when complete, so a
killed extraction never leaves a half-written cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from fedvlm.backbone.clip import FrozenCLIP
from fedvlm.errors import DataError


@dataclass
class FeatureTable:
    """Features of N images, row i for file i."""

    pooled: torch.Tensor  # [N, D]
    patches: torch.Tensor | None  # [N, M, D]


_MEMORY: dict[str, FeatureTable] = {}


def default_cache_dir(configured: str | None = None) -> Path:
    return Path(configured or os.environ.get("FEDVLM_CACHE") or Path.home() / ".cache" / "fedvlm")


def cache_key(backbone: FrozenCLIP, paths: list[Path], patches: bool) -> str:
    digest = hashlib.sha256()
    digest.update(f"{backbone.identity()}|patches={patches}|v1".encode())
    for path in paths:
        try:
            stat = os.stat(path)
        except OSError:
            raise DataError(f"image file {path} is missing") from None
        digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


class _ImageFiles(Dataset):
    def __init__(self, paths: list[Path], preprocess):
        self.paths = paths
        self.preprocess = preprocess

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        # Errors travel back as text: a worker's exception would arrive as a multi-line wrapper.
        try:
            with Image.open(self.paths[index]) as image:
                return self.preprocess(image.convert("RGB")), ""
        except Exception as error:  # corrupt, truncated or not an image
            return torch.zeros(0), f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


def _collate(items):
    pixels, errors = zip(*items)
    return (None if any(errors) else torch.stack(pixels)), list(errors)


@torch.no_grad()
def extract(backbone: FrozenCLIP, paths: list[Path], patches: bool, batch_size: int = 64, num_workers: int = 0,
            device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1,
            all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None) -> FeatureTable:
    """Run the image encoder over ``paths``; batch b is computed by process ``b % world_size``."""
    mine = [list(range(b, min(b + batch_size, len(paths)))) for b in range(0, len(paths), batch_size)]
    mine = mine[rank::world_size]  # batch b belongs to rank b % world_size
    loader = DataLoader(_ImageFiles(paths, backbone.preprocess), batch_sampler=mine, num_workers=num_workers,
                        collate_fn=_collate)
    pooled = patch_tokens = None
    for rows, (pixels, errors) in zip(mine, loader):
        for row, error in zip(rows, errors):
            if error:
                raise DataError(f"cannot read image {paths[row]}: {error}")
        features = backbone.encode_images(pixels.to(device), patches=patches)
        if pooled is None:
            pooled = torch.zeros(len(paths), features.pooled.shape[-1])
            if patches:
                patch_tokens = torch.zeros(len(paths), *features.patches.shape[1:])
        pooled[rows] = features.pooled.cpu()
        if patches:
            patch_tokens[rows] = features.patches.cpu()
    if world_size > 1:
        # Other ranks hold zeros in these rows, and x + 0 == x exactly: the sum is the table.
        shapes = _probe_shapes(backbone, patches, device) if pooled is None else None
        if pooled is None:
            pooled = torch.zeros(len(paths), shapes[0])
            patch_tokens = torch.zeros(len(paths), *shapes[1]) if patches else None
        pooled = all_reduce(pooled)
        patch_tokens = all_reduce(patch_tokens) if patches else None
    return FeatureTable(pooled, patch_tokens)


def _probe_shapes(backbone: FrozenCLIP, patches: bool, device) -> tuple:
    size = backbone.image_size
    probe = backbone.encode_images(torch.zeros(1, 3, size, size, device=device), patches=patches)
    return probe.pooled.shape[-1], (tuple(probe.patches.shape[1:]) if patches else None)


def image_features(backbone: FrozenCLIP, paths: list[Path], patches: bool, mode: str = "memory",
                   cache_dir: str | Path | None = None, batch_size: int = 64, num_workers: int = 0,
                   device="cpu", rank: int = 0, world_size: int = 1, all_reduce=None, barrier=None) -> FeatureTable:
    """Cached features of ``paths`` (see the module docstring). ``mode``: 'memory' or 'disk'."""
    key = cache_key(backbone, paths, patches)
    if key in _MEMORY:
        return _MEMORY[key]
    folder = default_cache_dir(str(cache_dir) if cache_dir else None) / "features" / key
    table = _read(folder, patches) if mode == "disk" else None
    if table is None:
        table = extract(backbone, paths, patches, batch_size, num_workers, device, rank, world_size, all_reduce)
        if mode == "disk" and rank == 0:
            _write(folder, table, backbone, len(paths))
        if barrier is not None:
            barrier()
    _MEMORY[key] = table
    return table


def _read(folder: Path, patches: bool) -> FeatureTable | None:
    if not (folder / "meta.json").exists() or (patches and not (folder / "patches.npy").exists()):
        return None
    pooled = torch.from_numpy(np.load(folder / "pooled.npy", mmap_mode="c"))
    patch_tokens = torch.from_numpy(np.load(folder / "patches.npy", mmap_mode="c")) if patches else None
    return FeatureTable(pooled, patch_tokens)


def _write(folder: Path, table: FeatureTable, backbone: FrozenCLIP, count: int) -> None:
    temporary = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    temporary.mkdir(parents=True, exist_ok=True)
    np.save(temporary / "pooled.npy", table.pooled.numpy())
    if table.patches is not None:
        np.save(temporary / "patches.npy", table.patches.numpy())
    (temporary / "meta.json").write_text(json.dumps({"model": backbone.name, "pretrained": backbone.pretrained,
                                                     "images": count}))
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(temporary, folder)


def clear_memory_cache() -> None:
    _MEMORY.clear()
