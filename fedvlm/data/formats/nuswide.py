"""NUS-WIDE as it ships (Chua et al., CIVR 2009): the 81-concept ground truth and its train/test lists.

The layout read here, under the dataset folder::

    Concepts81.txt                                   81 concept names, one per line (label order)
    ImageList/TrainImagelist.txt                     161,789 training images, one per line
    ImageList/TestImagelist.txt                      107,859 test images
    Groundtruth/TrainTestLabels/Labels_<concept>_Train.txt   one 0/1 line per TrainImagelist line
    Groundtruth/TrainTestLabels/Labels_<concept>_Test.txt    one 0/1 line per TestImagelist line
    Flickr/<folder>/<image>.jpg                      the images

Image-list lines name an image by its Flickr sub-folder and file with Windows separators, e.g.
``actor\\0001_2124494179.jpg`` (some copies keep a longer prefix such as
``C:\\ImageData\\Flickr\\actor\\0001_2124494179.jpg``); the last two components are used. The
``TrainTestLabels`` folder is also accepted at the top level (``TrainTestLabels/...``), where the
Groundtruth archive is sometimes unpacked.

Many NUS-WIDE copies lack some images (they were downloaded from Flickr and several thousand have
disappeared). With ``skip_missing_images`` (the default) images absent from disk are left out with a
warning counting them; a copy with no image at all is an error.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

from fedvlm.data.formats.common import MultiLabelSet, require_file
from fedvlm.errors import DataError
from fedvlm.files import read_lines

LAYOUT = ("NUS-WIDE/{Concepts81.txt, ImageList/{Train,Test}Imagelist.txt, "
          "Groundtruth/TrainTestLabels/Labels_<concept>_{Train,Test}.txt, Flickr/<folder>/<image>.jpg}")
SPLITS = {"train": "Train", "test": "Test"}


def _lines(path: Path) -> list[str]:
    return read_lines(path, "NUS-WIDE list", LAYOUT)


def _labels_folder(root: Path) -> Path:
    for candidate in (root / "Groundtruth" / "TrainTestLabels", root / "TrainTestLabels"):
        if candidate.is_dir():
            return candidate
    raise DataError(f"NUS-WIDE: no Groundtruth/TrainTestLabels folder under {root}; expected {LAYOUT}")


def image_relative_path(line: str) -> str:
    """``actor\\0001_2124494179.jpg`` (or a longer Windows path) -> ``actor/0001_2124494179.jpg``."""
    parts = [p for p in line.replace("\\", "/").split("/") if p]
    return "/".join(parts[-2:])


def read_nuswide(root: str | Path, split: str = "train", skip_missing_images: bool = True) -> MultiLabelSet:
    """Image paths and ``[N, 81]`` 0/1 labels of the official NUS-WIDE ``split`` ("train" or "test")."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, not {split!r}")
    root = Path(root)
    concepts = _lines(require_file(root / "Concepts81.txt", LAYOUT))
    listing = require_file(root / "ImageList" / f"{SPLITS[split]}Imagelist.txt", LAYOUT)
    images = [image_relative_path(line) for line in _lines(listing)]
    labels_folder = _labels_folder(root)
    labels = np.zeros((len(images), len(concepts)), dtype=np.float32)
    for column, concept in enumerate(concepts):
        path = require_file(labels_folder / f"Labels_{concept}_{SPLITS[split]}.txt", LAYOUT)
        values = _lines(path)
        if len(values) != len(images):
            raise DataError(f"NUS-WIDE: {path} has {len(values)} lines but {listing} lists {len(images)} images; "
                            f"expected one 0/1 line per image")
        try:
            labels[:, column] = np.asarray(values, dtype=np.float32)
        except ValueError:
            raise DataError(f"NUS-WIDE: {path} holds a line that is not 0 or 1") from None
        if not np.isin(labels[:, column], (0, 1)).all():  # a stray -1 would silently mean "unknown"
            raise DataError(f"NUS-WIDE: {path} holds a line that is not 0 or 1")
    paths = [root / "Flickr" / relative for relative in images]
    if skip_missing_images:
        present = np.array([p.is_file() for p in paths], dtype=bool)
        if not present.any():
            raise DataError(f"NUS-WIDE: none of the {len(paths)} {split} images listed in {listing} exists "
                            f"(first: {paths[0] if paths else '-'}); expected {LAYOUT}")
        if not present.all():
            warnings.warn(f"NUS-WIDE: {int((~present).sum())} of {len(paths)} {split} images are missing "
                          f"under {root / 'Flickr'} and are left out", stacklevel=2)
            paths = [p for p, keep in zip(paths, present) if keep]
            images = [i for i, keep in zip(images, present) if keep]
            labels = labels[present]
    return MultiLabelSet(paths, labels, concepts, images)


class NUSWIDEWriter:
    """Writes images and the label files in the NUS-WIDE layout (tests, synthetic data)."""

    def __init__(self, root: str | Path, concepts: list[str], windows_prefix: str = ""):
        self.root = Path(root)
        self.concepts = list(concepts)
        self.prefix = windows_prefix  # e.g. "C:\\ImageData\\Flickr\\" as some copies have
        self.entries: dict[str, list[tuple[str, np.ndarray]]] = {s: [] for s in SPLITS}

    def add(self, rgb: np.ndarray, labels: np.ndarray, split: str, folder: str, name: str) -> Path:
        path = self.root / "Flickr" / folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(path, quality=95)
        self.entries[split].append((f"{self.prefix}{folder}\\{name}", np.asarray(labels)))
        return path

    def close(self) -> None:
        (self.root / "ImageList").mkdir(parents=True, exist_ok=True)
        labels_folder = self.root / "Groundtruth" / "TrainTestLabels"
        labels_folder.mkdir(parents=True, exist_ok=True)
        (self.root / "Concepts81.txt").write_text("".join(f"{c}\n" for c in self.concepts))
        for split, suffix in SPLITS.items():
            entries = self.entries[split]
            (self.root / "ImageList" / f"{suffix}Imagelist.txt").write_text("".join(f"{e[0]}\n" for e in entries))
            for column, concept in enumerate(self.concepts):
                (labels_folder / f"Labels_{concept}_{suffix}.txt").write_text(
                    "".join(f"{int(e[1][column])}\n" for e in entries))
