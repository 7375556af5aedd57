"""What the dataset readers return, and image loading that reports bad files by path."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from fedvlm.errors import DataError, shown


@dataclass
class MultiLabelSet:
    """A multi-label image dataset: ``labels`` [N, C] float32 multi-hot (-1 = unknown, if asked for)."""

    paths: list[Path]
    labels: np.ndarray
    class_names: list[str]
    image_ids: list[str] = field(default_factory=list)


@dataclass
class CaptionSet:
    """An image-caption dataset: every caption points at its image through ``caption_image`` [T]."""

    image_paths: list[Path]
    splits: list[str]  # per image: "train" / "val" / "test"
    captions: list[str]
    caption_image: np.ndarray  # int64 [T]: index into image_paths
    filenames: list[str]


@dataclass
class MultispectralSet:
    """A multispectral dataset: ``load(i)`` gives image i as [H, W, B] float32 reflectance.

    ``labels`` is int64 [N] (single-label) or float32 [N, C] multi-hot (multi-label);
    ``rgb_paths[i]``, when present, is the RGB image of the same scene (for cross-modal alignment).
    """

    paths: list[Path]
    labels: np.ndarray
    class_names: list[str]
    band_names: list[str]
    rgb_paths: list[Path] | None = None
    loader: object = None  # callable(path) -> [H, W, B]

    def __len__(self) -> int:
        return len(self.paths)

    def load(self, index: int) -> np.ndarray:
        return self.loader(self.paths[index])

    def stack(self) -> np.ndarray:
        """All images as one [N, H, W, B] array (they must share a size)."""
        return np.stack([self.load(i) for i in range(len(self))])


def load_rgb(path: str | Path) -> np.ndarray:
    """Read an image file as [H, W, 3] uint8; a missing or corrupt file raises DataError naming it."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except FileNotFoundError:
        raise DataError(f"image file {path} does not exist") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DataError(f"image file {path} is unreadable or corrupt ({error.__class__.__name__}: {error})") from None


def require_dir(path: Path, expected: str) -> Path:
    if not path.is_dir():
        raise DataError(f"dataset folder {path} does not exist; expected {expected}")
    return path


def require_file(path: Path, expected: str) -> Path:
    if not path.is_file():
        raise DataError(f"dataset file {path} does not exist; expected {expected}")
    return path


def binary_labels(rows: list, columns: int, where: str) -> np.ndarray:
    """Label rows read from a file as a ``[N, columns]`` 0/1 float array. Anything else is refused:
    a stray -1 would silently mean "unknown" (left out of the loss and the metrics)."""
    try:
        labels = np.asarray(rows, dtype=np.float32).reshape(len(rows), columns)
    except ValueError:
        labels = None
    if labels is None or not np.isin(labels, (0, 1)).all():
        raise DataError(f"{where} holds a label value that is not 0 or 1")
    return labels


def require_strings(values: list, where: Path | str, field: str) -> list[str]:
    """``values`` read from an annotation file are all text (a number or a list where a file or
    class name belongs would surface later as a traceback, or as a class called "3")."""
    for value in values:
        if not isinstance(value, str):
            raise DataError(f"{where}: {field} holds {shown(value)}, which is not text; expected a string")
    return values


def require_images(paths: list[Path], where: str, expected: str) -> None:
    """Every listed image is on disk; else one line naming the first missing one."""
    missing = next((p for p in paths if not p.is_file()), None)
    if missing is not None:
        raise DataError(f"image {missing} listed in {where} is missing; expected {expected}")
