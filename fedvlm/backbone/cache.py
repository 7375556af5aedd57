"""Image features computed once and reused: the frozen encoder's output cannot change.

:func:`image_features` returns the pooled embeddings ``[N, D]`` (and projected patch tokens
``[N, M, D]`` when a head needs them) of a list of image files, from

* the in-process memory cache (repeated runs in a notebook or test session), else
* the disk cache ``<cache_dir>/features/<key>/`` (``.npy`` files read memory-mapped), else
* the encoder, once, after which both caches are filled.

Papers that train with augmentation can still use the cache: ``views`` precomputes that many
augmented views of every image (random resized crop and flip, seeded by image and view), and
training draws one view per sample per step (``data.augment_views``).

The key hashes everything the features depend on: model name, weights (tag, or checkpoint path
with size and modification time), precision, the preprocessing pipeline, the file list (paths,
sizes, modification times) and whether patch tokens are included. An image need not be a file:
an item with ``open_image()`` and ``cache_identity`` (a row of a Hugging Face dataset,
:class:`fedvlm.data.hub.HubImage`) is opened by that method and keyed by that identity (the
dataset's fingerprint, split, column and row) instead of its path and times. Extraction is split over
processes in fixed batches (so the numbers do not depend on the process count) and combined with
one all-reduce; a disk entry is written to a temporary folder and renamed when complete, so a
killed extraction never leaves a half-written cache.

Every disk cache (these features, the caption features of :mod:`fedvlm.backbone.text_cache`)
goes through :func:`write_arrays` / :func:`read_arrays`: meta.json records each array's dtype,
shape and content checksum, verified on every load; a damaged entry (altered, truncated, its
metadata gone) is rebuilt with one :class:`CacheWarning` naming it (docs/RELIABILITY.md, 3a).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from fedvlm.backbone.clip import FrozenCLIP
from fedvlm.errors import DataError
from fedvlm.paths import cache_root


@dataclass
class FeatureTable:
    """Features of N images, row i for file i."""

    pooled: torch.Tensor  # [N, D] of the evaluation preprocessing (resize + centre crop)
    patches: torch.Tensor | None  # [N, M, D]
    view_pooled: torch.Tensor | None = None  # [V, N, D] of V fixed augmented views (training)
    view_patches: torch.Tensor | None = None  # [V, N, M, D]

    @property
    def num_views(self) -> int:
        return 0 if self.view_pooled is None else self.view_pooled.shape[0]


def augmentation(backbone: FrozenCLIP):
    """The training augmentation of augmented views: random resized crop (scale 0.5-1) and
    horizontal flip, as CoOp-style prompt learning trains, with the model's own normalisation."""
    from torchvision import transforms

    normalize = next(t for t in backbone.preprocess.transforms if isinstance(t, transforms.Normalize))
    return transforms.Compose([
        transforms.RandomResizedCrop(backbone.image_size, scale=(0.5, 1.0),
                                     interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        normalize,
    ])


_MEMORY: dict[str, FeatureTable] = {}


# The cache root, fedvlm.paths.cache_root, under its old name (text_cache, config and probe import it from here).
default_cache_dir = cache_root


def cache_key(backbone: FrozenCLIP, paths: list[Path], patches: bool, views: int = 0) -> str:
    digest = hashlib.sha256()
    augment = f"|views={views}|{augmentation(backbone)}" if views else ""
    digest.update(f"{backbone.identity()}|patches={patches}{augment}|v1".encode())
    for path in paths:
        identity = getattr(path, "cache_identity", None)
        if identity is not None:  # not a file: the item names its own content
            digest.update(f"{identity}\n".encode())
            continue
        try:
            stat = os.stat(path)
        except OSError:
            raise DataError(f"image file {path} is missing") from None
        digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:24]


def open_image(item) -> Image.Image:
    """An image file's path, or an item that opens itself (``item.open_image()``), as a PIL image."""
    opener = getattr(item, "open_image", None)
    return opener() if callable(opener) else Image.open(item)


class _ImageFiles(Dataset):
    """Preprocessed images; with ``view`` > 0 the random augmentation is seeded by (image, view),
    so augmented view v of an image is the same in every run and process."""

    def __init__(self, paths: list[Path], preprocess, view: int = 0):
        self.paths = paths
        self.preprocess = preprocess
        self.view = view

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        # Errors travel back as text: a worker's exception would arrive as a multi-line wrapper.
        try:
            with open_image(self.paths[index]) as image, torch.random.fork_rng():
                torch.manual_seed(index * 1009 + self.view)
                return self.preprocess(image.convert("RGB")), ""
        except Exception as error:  # corrupt, truncated or not an image
            return torch.zeros(0), f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"


def _collate(items):
    pixels, errors = zip(*items)
    return (None if any(errors) else torch.stack(pixels)), list(errors)


@torch.no_grad()
def extract(backbone: FrozenCLIP, paths: list[Path], patches: bool, batch_size: int = 64, num_workers: int = 0,
            device: torch.device | str = "cpu", rank: int = 0, world_size: int = 1,
            all_reduce: Callable[[torch.Tensor], torch.Tensor] | None = None, views: int = 0) -> FeatureTable:
    """Run the image encoder over ``paths`` (and ``views`` augmented views of each); batch b is
    computed by process ``b % world_size``."""
    table = _extract_pass(backbone, paths, patches, backbone.preprocess, 0, batch_size, num_workers, device, rank,
                          world_size, all_reduce)
    if views:
        augmented = [_extract_pass(backbone, paths, patches, augmentation(backbone), v, batch_size, num_workers,
                                   device, rank, world_size, all_reduce) for v in range(1, views + 1)]
        table.view_pooled = torch.stack([t.pooled for t in augmented])
        table.view_patches = torch.stack([t.patches for t in augmented]) if patches else None
    return table


def _extract_pass(backbone, paths, patches, preprocess, view, batch_size, num_workers, device, rank, world_size,
                  all_reduce) -> FeatureTable:
    mine = [list(range(b, min(b + batch_size, len(paths)))) for b in range(0, len(paths), batch_size)]
    mine = mine[rank::world_size]  # batch b belongs to rank b % world_size
    loader = DataLoader(_ImageFiles(paths, preprocess, view), batch_sampler=mine, num_workers=num_workers,
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
                   device="cpu", rank: int = 0, world_size: int = 1, all_reduce=None, barrier=None,
                   views: int = 0) -> FeatureTable:
    """Cached features of ``paths`` (see the module docstring). ``mode``: 'memory' or 'disk';
    ``views``: number of augmented views per image to precompute for training."""
    key = cache_key(backbone, paths, patches, views)
    if key in _MEMORY:
        return _MEMORY[key]
    folder = default_cache_dir(str(cache_dir) if cache_dir else None) / "features" / key
    table = _read(folder, patches, views) if mode == "disk" else None
    if table is None:
        table = extract(backbone, paths, patches, batch_size, num_workers, device, rank, world_size, all_reduce,
                        views)
        if mode == "disk" and rank == 0:
            _write(folder, table, backbone, len(paths))
        if barrier is not None:
            barrier()
    _MEMORY[key] = table
    return table


_ARRAYS = ("pooled", "patches", "view_pooled", "view_patches")


def _read(folder: Path, patches: bool, views: int) -> FeatureTable | None:
    wanted = ["pooled"] + (["patches"] if patches else []) + (["view_pooled"] if views else []) + \
        (["view_patches"] if views and patches else [])
    arrays = read_arrays(folder, wanted)
    return None if arrays is None else FeatureTable(**{"patches": None, **arrays})


def _write(folder: Path, table: FeatureTable, backbone: FrozenCLIP, count: int) -> None:
    write_arrays(folder, {name: getattr(table, name) for name in _ARRAYS},
                 {"model": backbone.name, "pretrained": backbone.pretrained, "images": count})


class CacheWarning(UserWarning):
    """A damaged cache entry was found and is being rebuilt."""


# The meta.json format of a cache entry; an entry in another format (an older fedvlm's, without
# checksums) is rebuilt like a damaged one.
CACHE_FORMAT = "fedvlm-cache/2"
# dtypes a cache may hold: plain numbers only (an object array would need pickle to load).
_ALLOWED_DTYPES = ("float16", "float32", "float64", "int64", "int32", "bool")


def array_checksum(array: np.ndarray) -> str:
    """Content checksum of an array's bytes (C order): CRC-32 (zlib), as 8 hex digits.

    Why CRC-32: it is in the standard library and the fastest checksum there (about 2 GB/s on one
    core; BLAKE2b runs at about 0.45 GB/s, SHA-256 at 0.9 GB/s only where the CPU has SHA
    instructions), so verifying a warm start stays a small part of it (docs/PERFORMANCE.md: 166 MB
    of patch tokens, 10k x 65 x 128 fp16, verified in about 0.1 s). It catches every change of up
    to 32 consecutive bits (any one altered value) and misses a random alteration with
    probability 2^-32. It guards against damage, not against someone who can also rewrite
    meta.json: no checksum stored beside the data could.
    """
    return f"{zlib.crc32(np.ascontiguousarray(array).reshape(-1).view(np.uint8)):08x}"


def read_arrays(folder: Path, wanted: list[str]) -> dict[str, torch.Tensor] | None:
    """The ``wanted`` arrays of a cache folder (memory-mapped, copy on write), or None.

    None when the folder was never written (a plain miss), and, with one :class:`CacheWarning`
    naming the entry, when it is damaged: meta.json missing, unreadable or not of the expected
    schema, an array missing, truncated, of another shape or dtype than recorded, or whose
    content checksum differs from the one written with it. The caller then rebuilds the entry.
    Nothing read can run code: meta.json is JSON, arrays load with ``allow_pickle=False``.
    """
    if not folder.is_dir():
        return None
    problem, arrays = _checked_arrays(folder, wanted)
    if problem is not None:
        warnings.warn(f"cache entry {folder} is damaged ({problem}); rebuilding it", CacheWarning,
                      stacklevel=3)
        return None
    return arrays


def _checked_arrays(folder: Path, wanted: list[str]) -> tuple[str | None, dict[str, torch.Tensor]]:
    """(None, arrays) when every wanted array matches meta.json, else (what is wrong, {})."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except FileNotFoundError:
        return "meta.json is missing", {}
    except (OSError, UnicodeDecodeError, ValueError):
        return "meta.json is not valid JSON", {}
    records = meta.get("arrays") if isinstance(meta, dict) and meta.get("format") == CACHE_FORMAT else None
    if not isinstance(records, dict):
        return f"meta.json is not a {CACHE_FORMAT} record", {}
    arrays = {}
    for name in wanted:
        record = records.get(name)
        if not _valid_record(record):
            return f"meta.json has no valid record of {name}", {}
        try:
            array = np.load(folder / f"{name}.npy", mmap_mode="c", allow_pickle=False)
        except FileNotFoundError:
            return f"{name}.npy is missing", {}
        except (OSError, ValueError, EOFError) as error:  # truncated, not .npy, or an object array
            reason = str(error).splitlines()[0] if str(error) else type(error).__name__
            return f"{name}.npy cannot be read: {reason}", {}
        if str(array.dtype) != record["dtype"] or list(array.shape) != record["shape"]:
            found, recorded = f"{array.dtype} {list(array.shape)}", f"{record['dtype']} {record['shape']}"
            return f"{name}.npy is {found}, meta.json says {recorded}", {}
        if array_checksum(array) != record["crc32"]:
            return f"{name}.npy does not match its checksum", {}
        arrays[name] = torch.from_numpy(array)
    return None, arrays


def _valid_record(record) -> bool:
    return (isinstance(record, dict) and record.get("dtype") in _ALLOWED_DTYPES
            and isinstance(record.get("shape"), list)
            and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in record["shape"])
            and isinstance(record.get("crc32"), str))


def write_arrays(folder: Path, arrays: dict[str, torch.Tensor | None], meta: dict) -> None:
    """Write a cache folder atomically: into a temporary sibling, then renamed over ``folder``, so
    a reader never sees half a cache (None arrays are skipped). meta.json records each array's
    dtype, shape and content checksum (:func:`array_checksum`), which :func:`read_arrays` verifies."""
    temporary = folder.with_name(folder.name + f".tmp-{os.getpid()}")
    temporary.mkdir(parents=True, exist_ok=True)
    records = {}
    for name, array in arrays.items():
        if array is not None:
            values = np.ascontiguousarray(array.numpy())
            np.save(temporary / f"{name}.npy", values, allow_pickle=False)
            records[name] = {"dtype": str(values.dtype), "shape": list(values.shape), "crc32": array_checksum(values)}
    (temporary / "meta.json").write_text(json.dumps({"format": CACHE_FORMAT, "arrays": records, "info": meta}))
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(temporary, folder)


def clear_memory_cache() -> None:
    _MEMORY.clear()
