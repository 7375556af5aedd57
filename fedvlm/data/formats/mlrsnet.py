"""MLRSNet as it ships (Qi et al., ISPRS 2020; github.com/cugbrs/MLRSNet): per-category CSV label files.

The layout read here, under the dataset folder::

    labels/<category>.csv        one file per scene category (46 of them); "Labels/" is accepted too
    Images/<category>/<image>    the images of that category (e.g. Images/airplane/airplane_00001.jpg)

Every CSV starts with the header ``image,<label 1>,...,<label 60>`` (the same 60 labels, in the same
order, in every file) followed by one row per image: its file name and 60 values 0/1. Categories
only group the files; the multi-label targets are the 60 label columns. The dataset ships no
train/test split. Label names are kept as written in the header (including its typos, e.g.
"habor"); prompt wording is the dataset registration's business.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from fedvlm.data.formats.common import MultiLabelSet, binary_labels, require_images
from fedvlm.errors import DataError
from fedvlm.files import read_csv

LAYOUT = "MLRSNet/{labels/<category>.csv, Images/<category>/<image>.jpg}"


def _labels_folder(root: Path) -> Path:
    for name in ("labels", "Labels"):
        if (root / name).is_dir():
            return root / name
    raise DataError(f"MLRSNet: no labels/ folder under {root}; expected {LAYOUT}")


def read_mlrsnet(root: str | Path) -> MultiLabelSet:
    """Every image of every category: paths, ``[N, 60]`` 0/1 labels, the label names, image names."""
    root = Path(root)
    files = sorted(_labels_folder(root).glob("*.csv"))
    if not files:
        raise DataError(f"MLRSNet: {_labels_folder(root)} holds no <category>.csv file; expected {LAYOUT}")
    names: list[str] | None = None
    paths, rows, image_ids = [], [], []
    for file in files:
        table = read_csv(file, "MLRSNet label file", "a header 'image,<label>,...' and one row per image")
        if not table:
            raise DataError(f"MLRSNet: {file} is empty; expected a header 'image,<label>,...' and one row per image")
        header = [cell.strip() for cell in table[0][1:]]
        if names is None:
            names = header
        elif header != names:
            raise DataError(f"MLRSNet: {file} lists other labels than {files[0].name}; every CSV must share "
                            "one header")
        for number, row in enumerate(table[1:], start=2):
            if len(row) != len(names) + 1:
                raise DataError(f"MLRSNet: {file}:{number} has {len(row) - 1} label values, expected {len(names)}")
            image = row[0].strip()
            paths.append(root / "Images" / file.stem / image)
            image_ids.append(image)
            rows.append(row[1:])
    labels = binary_labels(rows, len(names), f"MLRSNet: a label file under {_labels_folder(root)}")
    require_images(paths, f"MLRSNet's {_labels_folder(root)}", LAYOUT)
    return MultiLabelSet(paths, labels, names, image_ids)


class MLRSNetWriter:
    """Writes images and per-category CSV files in the MLRSNet layout (tests, synthetic data)."""

    def __init__(self, root: str | Path, label_names: list[str]):
        self.root = Path(root)
        self.label_names = list(label_names)
        self.rows: dict[str, list[list[str]]] = {}

    def add(self, rgb: np.ndarray, labels: np.ndarray, category: str) -> Path:
        rows = self.rows.setdefault(category, [])
        name = f"{category}_{len(rows) + 1:05d}.jpg"
        path = self.root / "Images" / category / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rgb).save(path, quality=95)
        rows.append([name, *(str(int(v)) for v in labels)])
        return path

    def close(self) -> None:
        folder = self.root / "labels"
        folder.mkdir(parents=True, exist_ok=True)
        for category, rows in self.rows.items():
            with open(folder / f"{category}.csv", "w", newline="") as handle:
                writer = csv.writer(handle)
                writer.writerow(["image", *self.label_names])
                writer.writerows(rows)
