"""Image-caption datasets for retrieval (RSICD, RSITMD and the synthetic world's caption layouts).

A caption dataset is a :class:`~fedvlm.data.datasets.LabelledImages` (one row per image, so splits,
partitions and the image feature cache work unchanged) that also carries its captions:
``captions[t]`` describes image ``caption_image[t]`` (five per image in RSICD and RSITMD). The
image label is the scene class read from the file name (``denseresidential_12.jpg`` ->
"dense residential"), which RDB's classification term (Eq. 12) and the Dirichlet partition over
scene labels use. A file name without a class prefix (digits only) gets the class "unlabelled".

The datasets' own train/val/test assignment (80/10/10) is kept as ``official_splits``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedvlm.data.types import DatasetSpec, LabelledImages
from fedvlm.errors import DataError

UNLABELLED = "unlabelled"


@dataclass(frozen=True)
class CaptionedImages(LabelledImages):
    """``LabelledImages`` plus captions: ``captions[t]`` belongs to image row ``caption_image[t]``."""

    captions: list[str] = field(default_factory=list)
    caption_image: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))

    def captions_of(self) -> list[np.ndarray]:
        """Caption indices of every image, in caption order: ``[N]`` arrays."""
        order = np.argsort(self.caption_image, kind="stable")
        bounds = np.searchsorted(self.caption_image[order], np.arange(len(self.paths) + 1))
        return [order[bounds[i] : bounds[i + 1]] for i in range(len(self.paths))]


def scene_of(filename: str) -> str:
    """The class prefix of a file name: ``"storagetanks_33.jpg"`` -> ``"storagetanks"``."""
    stem = Path(filename).stem
    match = re.match(r"^(.*?)[_\-\s]*\d+$", stem)
    prefix = (match.group(1) if match else stem).strip("_- ")
    return prefix.lower() or UNLABELLED


def read_caption_images(location: Path, spec: DatasetSpec) -> CaptionedImages:
    """An RSICD/RSITMD-style folder (``dataset_*.json`` + image folder) as one table of images."""
    from fedvlm.data.formats.captions import read_caption_dataset

    data = read_caption_dataset(location)
    if not data.image_paths:
        raise DataError(f"dataset {spec.name}: {location} lists no images; expected {spec.layout}")
    missing = [p for p in data.image_paths if not p.exists()]
    if missing:
        raise DataError(f"dataset {spec.name}: image {missing[0]} listed in the caption JSON is missing "
                        f"({len(missing)} missing); expected {spec.layout}")
    without = np.setdiff1d(np.arange(len(data.image_paths)), data.caption_image)
    if len(without):
        raise DataError(f"dataset {spec.name}: image {data.filenames[without[0]]} has no caption; every image "
                        "needs at least one for retrieval")
    scenes = [scene_of(name) for name in data.filenames]
    folders = sorted(set(scenes))
    index = {name: i for i, name in enumerate(folders)}
    labels = np.asarray([index[s] for s in scenes], dtype=np.int64)
    rows = np.arange(len(scenes))
    splits = np.asarray(data.splits)
    official = {name: rows[splits == name] for name in ("train", "val", "test") if (splits == name).any()}
    if "train" not in official or "test" not in official:
        official = None  # no usable official split: the dataset's default fractions apply
    return CaptionedImages(list(data.image_paths), labels, [spec.classname(f) for f in folders], official,
                           captions=list(data.captions), caption_image=np.asarray(data.caption_image, dtype=np.int64))
