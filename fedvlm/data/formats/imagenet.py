"""ImageNet and its distribution-shift test sets as CoOp lays them out.

* ``imagenet/{classnames.txt, images/train/<wnid>/, images/val/<wnid>/}``: ``classnames.txt``
  holds ``<wnid> <class name>`` per line (CoOp's cleaned CLIP names), 1,000 lines in ImageNet
  order; labels follow the sorted wnid folders (ImageNet order is sorted wnid order).
* ImageNet-V2 ``imagenetv2/imagenetv2-matched-frequency-format-val/<0..999>/``: folders are
  label numbers, in ``classnames.txt`` order.
* ImageNet-Sketch ``imagenet-sketch/images/<wnid>/`` (the release's ``sketch/`` folder is read too).
* ImageNet-A ``imagenet-adversarial/imagenet-a/<wnid>/`` and ImageNet-R
  ``imagenet-rendition/imagenet-r/<wnid>/``: 200-class subsets. As in CoOp, their labels are
  0..199 over the sorted wnid folders present, named from ``classnames.txt``
  (``README.txt`` in the release is not a class).

Each variant has its own copy of ``classnames.txt`` (CoOp's instructions copy ImageNet's).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from fedvlm.data.folders import scan_image_folder
from fedvlm.data.formats.common import require_dir, require_file
from fedvlm.errors import DataError
from fedvlm.files import read_lines

if TYPE_CHECKING:
    from fedvlm.data.synthetic.render import RenderedScene


def read_classnames(path: Path, expected: str) -> dict[str, str]:
    """``classnames.txt`` -> {wnid: class name}, in file order."""
    require_file(path, expected)
    names: dict[str, str] = {}
    for number, line in enumerate(read_lines(path, "ImageNet class-name file", "<wnid> <class name> per line"), 1):
        wnid, _, name = line.partition(" ")
        if not name.strip():
            raise DataError(f"ImageNet class-name file {path}:{number} is {line!r}; expected '<wnid> <class name>'")
        if wnid in names:
            raise DataError(f"ImageNet class-name file {path}:{number} repeats {wnid}; expected each wnid once")
        names[wnid] = name.strip()
    return names


def _named(folders: list[str], names: dict[str, str], where: Path) -> list[str]:
    unknown = [f for f in folders if f not in names]
    if unknown:
        raise DataError(f"folder {where / unknown[0]} is not a wnid listed in {where.parent / 'classnames.txt'} "
                        f"({len(unknown)} such folders); expected one folder per listed wnid")
    return [names[f] for f in folders]


def read_imagenet(location: Path, expected: str) -> tuple[list[Path], np.ndarray, list[str], dict[str, np.ndarray]]:
    """(paths, labels, classnames, {"train", "test"} rows): ``images/train`` for training and
    ``images/val`` for testing, as CoOp (and CLIP) evaluate on the validation set."""
    names = read_classnames(location / "classnames.txt", expected)
    train, train_labels, folders = scan_image_folder(require_dir(location / "images" / "train", expected), expected)
    test, test_labels, test_folders = scan_image_folder(require_dir(location / "images" / "val", expected), expected)
    if test_folders != folders:
        odd = sorted(set(test_folders) ^ set(folders))[0]
        raise DataError(f"ImageNet {location / 'images'}: train/ and val/ hold different class folders ({odd} is in "
                        f"one only); expected the same wnid folders in both")
    rows = np.arange(len(train) + len(test))
    return (train + test, np.asarray(train_labels + test_labels, dtype=np.int64),
            _named(folders, names, location / "images" / "train"),
            {"train": rows[: len(train)], "test": rows[len(train):]})


def read_imagenet_v2(location: Path, image_dir: str, expected: str) -> tuple[list[Path], np.ndarray, list[str]]:
    """Folders ``0`` .. ``C-1`` hold label c, the c-th class of ``classnames.txt``."""
    names = list(read_classnames(location / "classnames.txt", expected).values())
    paths, labels, folders = scan_image_folder(require_dir(location / image_dir, expected), expected)
    if any(not f.isdigit() or int(f) >= len(names) for f in folders):
        odd = next(f for f in folders if not f.isdigit() or int(f) >= len(names))
        raise DataError(f"ImageNet-V2 folder {location / image_dir / odd} is not a label 0..{len(names) - 1}; "
                        f"expected {expected}")
    label_of_folder = np.asarray([int(f) for f in folders], dtype=np.int64)
    return paths, label_of_folder[np.asarray(labels, dtype=np.int64)], names


def read_wnid_folders(location: Path, image_dirs: tuple[str, ...], expected: str
                      ) -> tuple[list[Path], np.ndarray, list[str]]:
    """ImageNet-Sketch / -A / -R: ``<image_dir>/<wnid>/<image>``, labels over the sorted wnid
    folders present (all 1,000 for Sketch, 200 for A and R). The first of ``image_dirs`` that
    exists is read. Only folders are classes, so the release's README.txt is passed over."""
    names = read_classnames(location / "classnames.txt", expected)
    folder = next((location / d for d in image_dirs if (location / d).is_dir()), location / image_dirs[0])
    paths, labels, folders = scan_image_folder(require_dir(folder, expected), expected)
    return paths, np.asarray(labels, dtype=np.int64), _named(folders, names, folder)


def synthetic_wnid(label: int) -> str:
    """The synthetic world's stand-in for class ``label``'s WordNet id."""
    return f"n{label:08d}"


class ImageNetWriter:
    """Writes synthetic scenes as ImageNet (train / val) and its four shifted test sets.

    Sketch, -A and -R get the same scenes as val (a real shift is the renderer's job, not the
    layout's); -A and -R keep only the first half of the classes, so their subset labelling is
    exercised.
    """

    VARIANTS = {"imagenetv2": "imagenetv2-matched-frequency-format-val", "imagenet-sketch": "images",
                "imagenet-adversarial": "imagenet-a", "imagenet-rendition": "imagenet-r"}

    def __init__(self, out: Path, classnames: list[str]):
        self.out = Path(out)
        self.classnames = classnames

    def add(self, sample_id: int, scene: "RenderedScene", split: str) -> str:
        wnid = synthetic_wnid(scene.label)
        image = Image.fromarray(scene.rgb)
        targets = [self.out / "imagenet" / "images" / ("train" if split == "train" else "val") / wnid]
        if split != "train":
            subset = scene.label < (len(self.classnames) + 1) // 2
            targets.append(self.out / "imagenetv2" / self.VARIANTS["imagenetv2"] / str(scene.label))
            targets.append(self.out / "imagenet-sketch" / "images" / wnid)
            if subset:
                targets += [self.out / "imagenet-adversarial" / "imagenet-a" / wnid,
                            self.out / "imagenet-rendition" / "imagenet-r" / wnid]
        for folder in targets:
            folder.mkdir(parents=True, exist_ok=True)
            image.save(folder / f"{wnid}_{sample_id:06d}.JPEG", format="JPEG", quality=95)
        return (targets[0] / f"{wnid}_{sample_id:06d}.JPEG").relative_to(self.out).as_posix()

    def close(self) -> None:
        text = "".join(f"{synthetic_wnid(label)} {name}\n" for label, name in enumerate(self.classnames))
        for dataset in ("imagenet", *self.VARIANTS):
            (self.out / dataset).mkdir(parents=True, exist_ok=True)
            (self.out / dataset / "classnames.txt").write_text(text)
        (self.out / "imagenet-adversarial" / "imagenet-a" / "README.txt").write_text("not a class folder\n")
