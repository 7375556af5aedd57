"""CoOp's split files: ``split_zhou_<Dataset>.json`` beside the images (OxfordPets, Food101,
StanfordCars, SUN397, UCF101, as CoOp, CoCoOp, PromptFL, FedOTP and FedTPG read them).

A split file is ``{"train": [[path, label, classname], ...], "val": [...], "test": [...]}`` with
``path`` relative to the dataset's image folder (CoOp's ``read_split(filepath, path_prefix)``).
The file fixes both the split and the class names (``label`` -> ``classname``), so every paper
that reads it sees the same images in the same split under the same names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from fedvlm.data.formats.common import require_dir, require_file, require_images
from fedvlm.errors import DataError, shown
from fedvlm.files import read_json

if TYPE_CHECKING:
    from fedvlm.data.synthetic.render import RenderedScene

SPLITS = ("train", "val", "test")


def read_coop_split(split_file: Path, image_dir: Path, expected: str
                    ) -> tuple[list[Path], np.ndarray, list[str], dict[str, np.ndarray]]:
    """(paths, labels [N], classnames by label, {"train"|"val"|"test": rows}) of a CoOp split file.

    Labels must be 0..C-1 with one class name each: a label named two ways, or a gap, would give
    a class without a prompt or two prompts for one class.
    """
    require_dir(image_dir, expected)
    require_file(split_file, expected)
    table = read_json(split_file, "CoOp split file",
                      '{"train": [[path, label, classname], ...], "val": ..., "test": ...}')
    if not isinstance(table, dict) or any(not isinstance(table.get(name), list) for name in SPLITS):
        raise DataError(f"CoOp split file {split_file} does not hold the lists train, val and test; expected "
                        '{"train": [[path, label, classname], ...], "val": [...], "test": [...]}')
    paths: list[Path] = []
    labels: list[int] = []
    names: dict[int, str] = {}
    rows: dict[str, np.ndarray] = {}
    for name in SPLITS:
        start = len(paths)
        for number, item in enumerate(table[name]):
            if not (isinstance(item, list) and len(item) == 3 and isinstance(item[0], str)
                    and type(item[1]) is int and item[1] >= 0 and isinstance(item[2], str)):
                raise DataError(f"CoOp split file {split_file}: {name}[{number}] is {shown(item)}; expected "
                                "[image path, label >= 0, class name]")
            path, label, classname = item
            if names.setdefault(label, classname) != classname:
                raise DataError(f"CoOp split file {split_file}: label {label} is named both {names[label]!r} and "
                                f"{classname!r}; expected one class name per label")
            paths.append(image_dir / path)
            labels.append(label)
        rows[name] = np.arange(start, len(paths))
    if not names or sorted(names) != list(range(len(names))):
        missing = sorted(set(range(max(names, default=-1) + 1)) - set(names))
        raise DataError(f"CoOp split file {split_file}: labels are not 0..C-1 (label {missing[0] if missing else 0} "
                        "has no image); expected every class to appear")
    require_images(paths, str(split_file), expected)
    return paths, np.asarray(labels, dtype=np.int64), [names[c] for c in range(len(names))], rows


class CoOpSplitWriter:
    """Writes synthetic scenes in one CoOp dataset's tree and its split file on ``close()``.

    ``place(scene_class, sample_id, split)`` gives an image's path relative to the image folder
    (each dataset names its files its own way: flat ``Abyssinian_12.jpg`` for Pets,
    ``<letter>/<class>/`` for SUN397, ``cars_train/`` and ``cars_test/`` for StanfordCars).
    """

    def __init__(self, image_dir: Path, split_file: Path, place, classnames: list[str]):
        self.image_dir, self.split_file, self.place = Path(image_dir), Path(split_file), place
        self.label = {name: i for i, name in enumerate(classnames)}
        self.table: dict[str, list] = {name: [] for name in SPLITS}

    def add(self, sample_id: int, scene: "RenderedScene", split: str) -> str:
        relative = self.place(scene.scene_class, sample_id, split)
        path = self.image_dir / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(scene.rgb).save(path, quality=95)
        self.table[split].append([relative, self.label[scene.scene_class], scene.scene_class.replace(" ", "_")])
        return relative

    def close(self) -> None:
        self.split_file.parent.mkdir(parents=True, exist_ok=True)
        self.split_file.write_text(json.dumps(self.table, indent=1))
