"""Datasets in their real on-disk layouts, registered by name.

``data.root`` (or ``$FEDVLM_DATA``, else ``./data``) holds one folder per dataset, laid out as the
dataset ships. Each entry documents the tree it expects; a missing or malformed tree gives one
line naming the path and that tree. Class names are turned into prompt text ("denseresidential"
-> "dense residential") by each dataset's ``classnames`` table, the same wording CoOp-style code
uses.

==================  =====================================================================
name                expected tree under the data root
==================  =====================================================================
ucmerced            UCMerced_LandUse/Images/<class>/<class><NN>.tif   (21 classes x 100)
nwpu_resisc45       NWPU-RESISC45/<class>/<class>_<NNN>.jpg            (45 classes x 700)
optimal31           Optimal-31/Images/<class>/<image>.jpg             (31 classes x 60)
eurosat             EuroSAT/2750/<Class>/<Class>_<N>.jpg               (10 classes, RGB)
dtd                 dtd/images/<class>/<image>.jpg                     (47 classes)
caltech101          caltech-101/101_ObjectCategories/<class>/image_<NNNN>.jpg
                    (BACKGROUND_Google and Faces_easy are skipped, as in CoOp: 100 classes)
flowers102          oxford_flowers/{jpg/image_<NNNNN>.jpg, imagelabels.mat, cat_to_name.json}
fgvc_aircraft       fgvc-aircraft-2013b/data/{images/<id>.jpg, variants.txt,
                    images_variant_{train,val,test}.txt}
synthetic_scenes    synthetic_scenes/<class>/<image>.png  (made by ``fedvlm generate``)
==================  =====================================================================
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from fedvlm.data.folders import IMAGE_SUFFIXES, scan_image_folder
from fedvlm.errors import DataError
from fedvlm.registry import Registry


@dataclass(frozen=True)
class LabelledImages:
    """Images with labels: ``paths[i]`` has label ``labels[i]`` (``[N]`` class ids) or the
    multi-hot row ``labels[i]`` (``[N, C]`` in {1, 0, -1}) over ``classnames``."""

    paths: list[Path]
    labels: np.ndarray
    classnames: list[str]  # prompt text of every class, in label order
    # the dataset's own train/test rows when it ships a split (VOC trainval/test, COCO train/val)
    official_splits: dict[str, np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.paths)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    folder: str  # relative to the data root
    layout: str  # the expected tree, for docs and error messages
    read: Callable[[Path, "DatasetSpec"], LabelledImages]
    default_split: tuple[float, ...] = (0.5, 0.5)
    template: str = "a photo of a {}."
    num_classes: int | None = None  # checked when set
    rename: dict[str, str] = field(default_factory=dict)  # folder name -> prompt text
    skip: tuple[str, ...] = ()  # class folders that are not classes
    task: str = "classification"  # how predictions are scored (fedvlm.tasks)

    def classname(self, folder: str) -> str:
        return self.rename.get(folder, folder.replace("_", " "))


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def data_root(configured: str | None = None) -> Path:
    return Path(configured or os.environ.get("FEDVLM_DATA") or "data")


def load_dataset(name: str, root: str | Path | None = None) -> LabelledImages:
    """Read dataset ``name`` from ``root`` (the data root holding one folder per dataset)."""
    spec = DATASETS.get(name, key="data.dataset")
    location = data_root(str(root) if root is not None else None) / spec.folder
    if not location.exists():
        raise DataError(f"dataset {name}: {location} does not exist; expected {spec.layout} under the data root "
                        "(set data.root or FEDVLM_DATA)")
    dataset = spec.read(location, spec)
    if spec.num_classes is not None and len(dataset.classnames) != spec.num_classes:
        raise DataError(f"dataset {name}: {location} has {len(dataset.classnames)} classes, expected "
                        f"{spec.num_classes}; expected layout {spec.layout}")
    return dataset


def register(spec: DatasetSpec) -> DatasetSpec:
    return DATASETS.register(spec.name)(spec)


# --------------------------------------------------------------------------------- readers


def read_image_folder(location: Path, spec: DatasetSpec) -> LabelledImages:
    expected = f"{spec.layout} (under {location.parent})"
    paths, labels, folders = scan_image_folder(location, expected=expected)
    keep = [i for i, name in enumerate(folders) if name not in spec.skip]
    if len(keep) != len(folders):  # drop skipped folders and renumber the remaining classes
        remap = {old: new for new, old in enumerate(keep)}
        pairs = [(p, remap[label]) for p, label in zip(paths, labels) if label in remap]
        paths, labels = [p for p, _ in pairs], [label for _, label in pairs]
        folders = [folders[i] for i in keep]
    return LabelledImages(paths, np.asarray(labels, dtype=np.int64), [spec.classname(f) for f in folders])


def read_flowers102(location: Path, spec: DatasetSpec) -> LabelledImages:
    """Oxford Flowers: ``jpg/image_00001.jpg`` ... with 1-based labels in ``imagelabels.mat``."""
    from scipy.io import loadmat

    labels_file, names_file, images = location / "imagelabels.mat", location / "cat_to_name.json", location / "jpg"
    for required in (labels_file, names_file, images):
        if not required.exists():
            raise DataError(f"dataset flowers102: {required} is missing; expected {spec.layout}")
    try:
        labels = np.asarray(loadmat(labels_file)["labels"]).ravel().astype(np.int64) - 1
        names = json.loads(names_file.read_text())
    except Exception as error:  # a truncated .mat or .json
        raise DataError(f"dataset flowers102: cannot read {labels_file} or {names_file} ({error})") from None
    paths = [images / f"image_{i + 1:05d}.jpg" for i in range(len(labels))]
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise DataError(f"dataset flowers102: {missing[0]} is missing ({len(missing)} images listed in "
                        f"{labels_file.name} are absent); expected {spec.layout}")
    classnames = [names[str(c + 1)] for c in range(len(names))]
    return LabelledImages(paths, labels, classnames)


def read_fgvc_aircraft(location: Path, spec: DatasetSpec) -> LabelledImages:
    """FGVC-Aircraft 2013b: variants.txt lists the 100 variants; the three split files map
    image ids to variants ("<id> <variant name>"). All three are read; fedvlm draws its own split."""
    data = location / "data"
    variants_file = data / "variants.txt"
    if not variants_file.exists():
        raise DataError(f"dataset fgvc_aircraft: {variants_file} is missing; expected {spec.layout}")
    variants = [line.strip() for line in variants_file.read_text().splitlines() if line.strip()]
    index = {name: i for i, name in enumerate(variants)}
    paths, labels = [], []
    for split_name in ("train", "val", "test"):
        listing = data / f"images_variant_{split_name}.txt"
        if not listing.exists():
            raise DataError(f"dataset fgvc_aircraft: {listing} is missing; expected {spec.layout}")
        for number, line in enumerate(listing.read_text().splitlines(), start=1):
            if not line.strip():
                continue
            image_id, _, variant = line.strip().partition(" ")
            if variant not in index:
                raise DataError(f"dataset fgvc_aircraft: {listing}:{number} names variant {variant!r} "
                                f"absent from {variants_file.name}")
            paths.append(data / "images" / f"{image_id}.jpg")
            labels.append(index[variant])
    return LabelledImages(paths, np.asarray(labels, dtype=np.int64), variants)


# ------------------------------------------------------------------------------ the datasets

_UCM_NAMES = {
    "baseballdiamond": "baseball diamond", "denseresidential": "dense residential",
    "golfcourse": "golf course", "mediumresidential": "medium residential",
    "mobilehomepark": "mobile home park", "parkinglot": "parking lot",
    "sparseresidential": "sparse residential", "storagetanks": "storage tanks",
    "tenniscourt": "tennis court",
}
_EUROSAT_NAMES = {  # CoOp's wording
    "AnnualCrop": "Annual Crop Land", "Forest": "Forest", "HerbaceousVegetation": "Herbaceous Vegetation Land",
    "Highway": "Highway or Road", "Industrial": "Industrial Buildings", "Pasture": "Pasture Land",
    "PermanentCrop": "Permanent Crop Land", "Residential": "Residential Buildings", "River": "River",
    "SeaLake": "Sea or Lake",
}
_CALTECH_NAMES = {"airplanes": "airplane", "Faces": "face", "Leopards": "leopard", "Motorbikes": "motorbike"}

_REMOTE_SENSING_TEMPLATE = "a satellite photo of a {}."

register(DatasetSpec("ucmerced", "UCMerced_LandUse/Images", "UCMerced_LandUse/Images/<class>/<class><NN>.tif",
                     read_image_folder, (0.5, 0.5), _REMOTE_SENSING_TEMPLATE, 21, _UCM_NAMES))
register(DatasetSpec("nwpu_resisc45", "NWPU-RESISC45", "NWPU-RESISC45/<class>/<class>_<NNN>.jpg",
                     read_image_folder, (0.2, 0.8), _REMOTE_SENSING_TEMPLATE, 45))
register(DatasetSpec("optimal31", "Optimal-31/Images", "Optimal-31/Images/<class>/<image>.jpg",
                     read_image_folder, (0.5, 0.5), _REMOTE_SENSING_TEMPLATE, 31))
register(DatasetSpec("eurosat", "EuroSAT/2750", "EuroSAT/2750/<Class>/<Class>_<N>.jpg",
                     read_image_folder, (0.7, 0.15, 0.15), "a centered satellite photo of {}.", 10, _EUROSAT_NAMES))
register(DatasetSpec("dtd", "dtd/images", "dtd/images/<class>/<image>.jpg",
                     read_image_folder, (0.7, 0.15, 0.15), "{} texture.", 47))
register(DatasetSpec("caltech101", "caltech-101/101_ObjectCategories",
                     "caltech-101/101_ObjectCategories/<class>/image_<NNNN>.jpg",
                     read_image_folder, (0.7, 0.15, 0.15), "a photo of a {}.", 100, _CALTECH_NAMES,
                     skip=("BACKGROUND_Google", "Faces_easy")))
register(DatasetSpec("flowers102", "oxford_flowers",
                     "oxford_flowers/{jpg/image_<NNNNN>.jpg, imagelabels.mat, cat_to_name.json}",
                     read_flowers102, (0.7, 0.15, 0.15), "a photo of a {}, a type of flower.", 102))
register(DatasetSpec("fgvc_aircraft", "fgvc-aircraft-2013b",
                     "fgvc-aircraft-2013b/data/{images/<id>.jpg, variants.txt, images_variant_{train,val,test}.txt}",
                     read_fgvc_aircraft, (0.7, 0.15, 0.15), "a photo of a {}, a type of aircraft.", 100))
register(DatasetSpec("synthetic_scenes", "synthetic_scenes", "synthetic_scenes/<class>/<image>.png",
                     read_image_folder, (0.5, 0.5), "an aerial photo of a {}."))

__all__ = ["DATASETS", "DatasetSpec", "LabelledImages", "load_dataset", "data_root", "IMAGE_SUFFIXES"]
