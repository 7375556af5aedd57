"""MultiScene-Clean (Hua et al., TGRS 2021): the 14,000 manually checked images of MultiScene.

The layout read here is the one the dataset's own code reads (github.com/Hua-YS/Multi-Scene-Recognition,
``utils/multiscene_clean.py``), under the dataset folder::

    Tra.csv              training images: a header row, then "<image name>,<36 values 0/1>" per image
    Test.csv             test images, same format
    images/<name>.jpg    the images (the CSV names them without the ".jpg")

The header's columns 2..37 name the 36 scene categories (Apron, BaseballField, ..., Sea, in the
order of the official ``SCENE_CATEGORY`` list); the reader takes the class names from the header
(CamelCase, with the release's spellings such as "OilFiled"). The full 100k-image MultiScene with
crowdsourced (noisy) labels is not what FedMPT Table 3 uses and is not read here.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from fedvlm.data.formats.common import MultiLabelSet, binary_labels, require_file, require_images
from fedvlm.errors import DataError
from fedvlm.files import read_csv

LAYOUT = "MultiScene-Clean/{Tra.csv, Test.csv, images/<name>.jpg}"
SPLITS = {"train": "Tra", "test": "Test"}


def read_multiscene(root: str | Path, split: str = "train") -> MultiLabelSet:
    """Image paths and ``[N, 36]`` 0/1 labels of the official MultiScene-Clean ``split``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {sorted(SPLITS)}, not {split!r}")
    root = Path(root)
    file = require_file(root / f"{SPLITS[split]}.csv", LAYOUT)
    table = read_csv(file, "MultiScene label file", "a header and '<name>,<36 values>' rows")
    if len(table) < 2:
        raise DataError(f"MultiScene: {file} has no image rows; expected a header and '<name>,<36 values>' rows")
    names = [cell.strip() for cell in table[0][1:]]
    paths, rows, image_ids = [], [], []
    for number, row in enumerate(table[1:], start=2):
        if len(row) != len(names) + 1:
            raise DataError(f"MultiScene: {file}:{number} has {len(row) - 1} label values, expected {len(names)}")
        image_ids.append(row[0].strip())
        paths.append(root / "images" / f"{row[0].strip()}.jpg")
        rows.append(row[1:])
    labels = binary_labels(rows, len(names), f"MultiScene: {file}")
    require_images(paths, f"MultiScene's {file.name}", LAYOUT)
    return MultiLabelSet(paths, labels, names, image_ids)


class MultiSceneWriter:
    """Writes images and Tra.csv / Test.csv in the MultiScene-Clean layout (tests, synthetic data)."""

    def __init__(self, root: str | Path, class_names: list[str]):
        self.root = Path(root)
        self.class_names = list(class_names)
        self.rows: dict[str, list[list[str]]] = {s: [] for s in SPLITS}

    def add(self, rgb: np.ndarray, labels: np.ndarray, split: str, name: str) -> Path:
        path = self.root / "images" / f"{name}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(path, quality=95)
        self.rows[split].append([name, *(str(int(v)) for v in labels)])
        return path

    def close(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        for split, stem in SPLITS.items():
            with open(self.root / f"{stem}.csv", "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["name", *self.class_names])
                writer.writerows(self.rows[split])
