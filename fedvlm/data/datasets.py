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

from pathlib import Path

import numpy as np

from fedvlm.data.folders import IMAGE_SUFFIXES, scan_image_folder
from fedvlm.data.formats.domains import DOMAINNET_DOMAINS, OFFICE_CALTECH_DOMAINS
from fedvlm.data.types import DatasetSpec, LabelledImages  # noqa: F401  (re-exported)
from fedvlm.errors import DataError
from fedvlm.files import read_json, read_lines, read_text
from fedvlm.paths import data_root  # noqa: F401  (re-exported: callers import it from here)
from fedvlm.registry import Registry


DATASETS: Registry[DatasetSpec] = Registry("dataset")


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


def data_spec(data) -> DatasetSpec:
    """The spec of a ``data`` section (:class:`~fedvlm.sections.DataConfig`): the registered
    dataset's, or for a ``data.source`` one made from its features (task, default template and
    split; :func:`fedvlm.data.hub.source_spec`)."""
    if data.source is not None:
        from fedvlm.data.hub import source_spec

        return source_spec(data)
    return DATASETS.get(data.dataset, key="data.dataset")


def load_data(data) -> tuple[LabelledImages, DatasetSpec]:
    """The images of a ``data`` section and their spec: :func:`load_dataset` of ``data.dataset``,
    or :func:`fedvlm.data.hub.load_source` of ``data.source``."""
    if data.source is not None:
        from fedvlm.data.hub import load_source

        return load_source(data)
    return load_dataset(data.dataset, data.root), DATASETS.get(data.dataset)


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
    except Exception as error:  # scipy raises many kinds on a truncated or foreign .mat file
        raise DataError(f"dataset flowers102: cannot read {labels_file} ({error.__class__.__name__}); expected "
                        f"{spec.layout}") from None
    names = read_json(names_file, "dataset flowers102: class-name file", '{"1": "pink primrose", ...}')
    if labels.size == 0 or labels.min() < 0:
        raise DataError(f"dataset flowers102: {labels_file} holds no labels or a label below 1; expected 1-based labels")
    count = max(int(labels.max()) + 1, len(names) if isinstance(names, dict) else 0)
    if not isinstance(names, dict) or any(not isinstance(names.get(str(c + 1)), str) for c in range(count)):
        raise DataError(f"dataset flowers102: {names_file} does not name every class 1..{count} with a string; "
                        'expected {"1": "pink primrose", ...}')
    paths = [images / f"image_{i + 1:05d}.jpg" for i in range(len(labels))]
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise DataError(f"dataset flowers102: {missing[0]} is missing ({len(missing)} images listed in "
                        f"{labels_file.name} are absent); expected {spec.layout}")
    classnames = [names[str(c + 1)] for c in range(count)]
    return LabelledImages(paths, labels, classnames)


def read_fgvc_aircraft(location: Path, spec: DatasetSpec) -> LabelledImages:
    """FGVC-Aircraft 2013b: variants.txt lists the 100 variants; the three split files map
    image ids to variants ("<id> <variant name>"). All three are read; fedvlm draws its own split."""
    data = location / "data"
    variants_file = data / "variants.txt"
    if not variants_file.exists():
        raise DataError(f"dataset fgvc_aircraft: {variants_file} is missing; expected {spec.layout}")
    variants = read_lines(variants_file, "dataset fgvc_aircraft: variant list", spec.layout)
    index = {name: i for i, name in enumerate(variants)}
    paths, labels = [], []
    for split_name in ("train", "val", "test"):
        listing = data / f"images_variant_{split_name}.txt"
        if not listing.exists():
            raise DataError(f"dataset fgvc_aircraft: {listing} is missing; expected {spec.layout}")
        lines = read_text(listing, "dataset fgvc_aircraft: split list", spec.layout).splitlines()
        for number, line in enumerate(lines, start=1):
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


# ------------------------------------------------------------------- multi-label datasets (FedMPT)
#
# Readers live in fedvlm.data.formats; these adapters turn their splits into one LabelledImages
# with [N, C] labels in {1, 0, -1} and the dataset's official train/test rows.


def _joined_splits(name: str, parts: dict, spec: DatasetSpec) -> LabelledImages:
    """``parts``: {"train": MultiLabelSet, "test": MultiLabelSet} -> one table, official rows kept."""
    train, test = parts["train"], parts["test"]
    if list(train.class_names) != list(test.class_names):
        raise DataError(f"dataset {name}: the train and test splits list different classes; expected {spec.layout}")
    labels = np.concatenate([train.labels, test.labels]).astype(np.float32)
    rows = np.arange(len(labels))
    return LabelledImages(list(train.paths) + list(test.paths), labels, [spec.classname(c) for c in train.class_names],
                          {"train": rows[: len(train.paths)], "test": rows[len(train.paths):]})


def read_voc_splits(location: Path, spec: DatasetSpec) -> LabelledImages:
    """PASCAL VOC2007: trainval (5,011 images) for training, test (4,952) for testing; an image whose
    only instances of a class are "difficult" counts as positive, as in ML-GCN/DualCoOp loaders."""
    from fedvlm.data.formats.voc import read_voc2007

    return _joined_splits(spec.name, {"train": read_voc2007(location, "trainval"),
                                      "test": read_voc2007(location, "test")}, spec)


def read_coco_splits(location: Path, spec: DatasetSpec) -> LabelledImages:
    """COCO 2014: train2014 (82,783 images) for training, val2014 (40,504) for testing."""
    from fedvlm.data.formats.coco import read_coco

    return _joined_splits(spec.name, {"train": read_coco(location, "train2014"),
                                      "test": read_coco(location, "val2014")}, spec)


def read_nuswide_splits(location: Path, spec: DatasetSpec) -> LabelledImages:
    """NUS-WIDE 81 concepts: the official TrainImagelist / TestImagelist (images missing on disk
    are left out with a warning; see fedvlm.data.formats.nuswide)."""
    from fedvlm.data.formats.nuswide import read_nuswide

    return _joined_splits(spec.name, {"train": read_nuswide(location, "train"),
                                      "test": read_nuswide(location, "test")}, spec)


def read_multiscene_splits(location: Path, spec: DatasetSpec) -> LabelledImages:
    """MultiScene-Clean: Tra.csv for training, Test.csv for testing."""
    from fedvlm.data.formats.multiscene import read_multiscene

    return _joined_splits(spec.name, {"train": read_multiscene(location, "train"),
                                      "test": read_multiscene(location, "test")}, spec)


def read_mlrsnet_all(location: Path, spec: DatasetSpec) -> LabelledImages:
    """MLRSNet: every image of the 46 category CSVs; no official split (``default_split`` applies)."""
    from fedvlm.data.formats.mlrsnet import read_mlrsnet

    data = read_mlrsnet(location)
    return LabelledImages(list(data.paths), data.labels.astype(np.float32), [spec.classname(c) for c in data.class_names])


def _camel_words(name: str) -> str:
    """"BaseballField" -> "baseball field"."""
    return "".join(" " + ch.lower() if ch.isupper() and i else ch.lower() for i, ch in enumerate(name))


_VOC_NAMES = {"diningtable": "dining table", "pottedplant": "potted plant", "tvmonitor": "tv monitor"}
_MLRSNET_NAMES = {"habor": "harbor"}  # the release's header spelling
_MULTISCENE_CATEGORIES = (
    "Apron", "BaseballField", "BasketballField", "Beach", "Bridge", "Cemetery", "Commercial", "Farmland", "Woodland",
    "GolfCourse", "Greenhouse", "Helipad", "LakePond", "OilFiled", "Orchard", "ParkingLot", "Park", "Pier", "Port",
    "Quarry", "Railway", "Residential", "River", "Roundabout", "Runway", "Soccer", "SolarPannel", "SparseShrub",
    "Stadium", "StorageTank", "TennisCourt", "TrainStation", "WastewaterPlant", "WindTrubine", "Works", "Sea")
_MULTISCENE_NAMES = {**{c: _camel_words(c) for c in _MULTISCENE_CATEGORIES},
                     "LakePond": "lake or pond", "OilFiled": "oil field", "SolarPannel": "solar panel",
                     "WindTrubine": "wind turbine", "Soccer": "soccer field", "Works": "construction works"}


def _synthetic_names() -> dict[str, str]:
    from fedvlm.data.synthetic.world import WORLD

    return {o.name: o.display_name for o in WORLD.object_types}


register(DatasetSpec("voc2007", "VOCdevkit/VOC2007",
                     "VOCdevkit/VOC2007/{Annotations/<id>.xml, JPEGImages/<id>.jpg, ImageSets/Main/{trainval,test}.txt "
                     "and <class>_{trainval,test}.txt}", read_voc_splits, (0.5, 0.5), "a photo of a {}.", 20, _VOC_NAMES,
                     task="multilabel"))
register(DatasetSpec("coco2014", "coco",
                     "coco/{annotations/instances_{train,val}2014.json, train2014/COCO_train2014_<id>.jpg, "
                     "val2014/COCO_val2014_<id>.jpg}", read_coco_splits, (0.5, 0.5), "a photo of a {}.", 80,
                     task="multilabel"))
register(DatasetSpec("nuswide", "NUS-WIDE",
                     "NUS-WIDE/{Concepts81.txt, ImageList/{Train,Test}Imagelist.txt, "
                     "Groundtruth/TrainTestLabels/Labels_<concept>_{Train,Test}.txt, Flickr/<folder>/<image>.jpg}",
                     read_nuswide_splits, (0.5, 0.5), "a photo of a {}.", 81, task="multilabel"))
register(DatasetSpec("mlrsnet", "MLRSNet", "MLRSNet/{labels/<category>.csv, Images/<category>/<image>.jpg}",
                     read_mlrsnet_all, (0.8, 0.2), _REMOTE_SENSING_TEMPLATE, 60, _MLRSNET_NAMES, task="multilabel"))
register(DatasetSpec("multiscene", "MultiScene-Clean", "MultiScene-Clean/{Tra.csv, Test.csv, images/<name>.jpg}",
                     read_multiscene_splits, (0.5, 0.5), _REMOTE_SENSING_TEMPLATE, 36, _MULTISCENE_NAMES,
                     task="multilabel"))
# The synthetic world's objects in the VOC layout: FedMPT on CPU in minutes. Write it with
# fedvlm.data.synthetic.generate_dataset("<data root>/synthetic_world", layouts=["voc2007"]).
register(DatasetSpec("synthetic_voc", "synthetic_world/VOCdevkit/VOC2007",
                     "synthetic_world/VOCdevkit/VOC2007/... (the VOC layout; write it with fedvlm.data.synthetic."
                     "generate_dataset('<data root>/synthetic_world', layouts=['voc2007']))",
                     read_voc_splits, (0.5, 0.5), "an aerial photo of a {}.", None, _synthetic_names(),
                     task="multilabel"))

__all__ = ["DATASETS", "DatasetSpec", "LabelledImages", "load_dataset", "load_data", "data_spec", "data_root",
           "IMAGE_SUFFIXES"]


# --------------------------------------------------- retrieval and multispectral datasets (issue 6)
#
# Caption datasets (task "retrieval") are CaptionedImages (fedvlm.data.captioned): one row per
# image, its captions alongside. Multispectral datasets are MultispectralImages
# (fedvlm.data.multispectral): RGB image rows (CLIP's input) paired with band files (the aligned
# student's input). The synthetic world writes all of them with
#   generate_dataset("<data root>/synthetic_world", layouts=["captions", "multispectral"]).

_RS_CAPTION_NAMES = {  # file-name prefixes of RSICD (30 scenes) and RSITMD (32) -> prompt text
    "bareland": "bare land", "baseballfield": "baseball field", "denseresidential": "dense residential",
    "mediumresidential": "medium residential", "sparseresidential": "sparse residential",
    "railwaystation": "railway station", "storagetanks": "storage tanks", "parking": "parking lot",
}


def read_captioned(location: Path, spec: DatasetSpec) -> LabelledImages:
    """RSICD / RSITMD caption JSON + images: one row per image with its (five) captions."""
    from fedvlm.data.captioned import read_caption_images

    return read_caption_images(location, spec)


def read_eurosat_multispectral(location: Path, spec: DatasetSpec) -> LabelledImages:
    """EuroSAT-MS 13-band GeoTIFFs with their EuroSAT_RGB pairs (or composites)."""
    from fedvlm.data.multispectral import read_eurosat_bands

    return read_eurosat_bands(location, spec)


def read_bigearthnet_level3(location: Path, spec: DatasetSpec) -> LabelledImages:
    """BigEarthNet-S2 patches with their CORINE Level-3 labels (43 classes on the full archive)."""
    from fedvlm.data.multispectral import read_bigearthnet_bands

    return read_bigearthnet_bands(location, spec, nomenclature="level3")


def read_bigearthnet_19(location: Path, spec: DatasetSpec) -> LabelledImages:
    """BigEarthNet-S2 patches with the 19-class nomenclature (the paper's BigEarthNet-19)."""
    from fedvlm.data.multispectral import read_bigearthnet_bands

    return read_bigearthnet_bands(location, spec, nomenclature="19")


def _synthetic_scene_names() -> dict[str, str]:
    """Caption file prefixes ("denseresidential") and EuroSAT folders ("DenseResidential") of the
    synthetic world -> its scene names."""
    from fedvlm.data.synthetic.world import WORLD

    names = {name.replace(" ", ""): name for name in WORLD.scene_names}
    names.update({"".join(word.capitalize() for word in name.split()): name for name in WORLD.scene_names})
    return names


register(DatasetSpec("rsicd", "RSICD", "RSICD/{dataset_rsicd.json, RSICD_images/<scene>_<n>.jpg}",
                     read_captioned, (0.8, 0.1, 0.1), _REMOTE_SENSING_TEMPLATE, None, _RS_CAPTION_NAMES,
                     task="retrieval"))
register(DatasetSpec("rsitmd", "RSITMD", "RSITMD/{dataset_RSITMD.json, images/<scene>_<n>.tif}",
                     read_captioned, (0.8, 0.1, 0.1), _REMOTE_SENSING_TEMPLATE, None, _RS_CAPTION_NAMES,
                     task="retrieval"))
register(DatasetSpec("synthetic_rsicd", "synthetic_world/RSICD",
                     "synthetic_world/RSICD/{dataset_rsicd.json, RSICD_images/<scene>_<n>.jpg} (write it with "
                     "fedvlm.data.synthetic.generate_dataset('<data root>/synthetic_world', layouts=['rsicd']))",
                     read_captioned, (0.8, 0.1, 0.1), "an aerial photo of a {}.", None, _synthetic_scene_names(),
                     task="retrieval"))
register(DatasetSpec("synthetic_rsitmd", "synthetic_world/RSITMD",
                     "synthetic_world/RSITMD/{dataset_RSITMD.json, images/<scene>_<n>.tif} (write it with "
                     "fedvlm.data.synthetic.generate_dataset('<data root>/synthetic_world', layouts=['rsitmd']))",
                     read_captioned, (0.8, 0.1, 0.1), "an aerial photo of a {}.", None, _synthetic_scene_names(),
                     task="retrieval"))
register(DatasetSpec("eurosat_ms", "EuroSAT_MS", "EuroSAT_MS/<Class>/<Class>_<n>.tif (13-band GeoTIFF) with "
                     "EuroSAT_RGB/<Class>/<Class>_<n>.jpg beside it", read_eurosat_multispectral,
                     (0.7, 0.15, 0.15), "a centered satellite photo of {}.", 10, _EUROSAT_NAMES))
register(DatasetSpec("bigearthnet", "BigEarthNet-v1.0",
                     "BigEarthNet-v1.0/<patch>/{<patch>_<B01..B12,B8A>.tif, <patch>_labels_metadata.json}",
                     read_bigearthnet_level3, (0.7, 0.15, 0.15), "a satellite image of {}.", None,
                     task="multilabel"))
register(DatasetSpec("bigearthnet19", "BigEarthNet-v1.0",
                     "BigEarthNet-v1.0/<patch>/{<patch>_<B01..B12,B8A>.tif, <patch>_labels_metadata.json}",
                     read_bigearthnet_19, (0.7, 0.15, 0.15), "a satellite image of {}.", 19, task="multilabel"))
register(DatasetSpec("synthetic_eurosat_ms", "synthetic_world/EuroSAT_MS",
                     "synthetic_world/EuroSAT_MS/<Class>/<Class>_<n>.tif with synthetic_world/EuroSAT_RGB/ (write it "
                     "with generate_dataset('<data root>/synthetic_world', layouts=['eurosat']))",
                     read_eurosat_multispectral, (0.6, 0.2, 0.2), "an aerial photo of a {}.", None,
                     _synthetic_scene_names()))
# The synthetic world's land-cover labels carry CORINE names, but its tiny CLIP learnt only the
# words of the world's captions: prompts name each class with those words (as every dataset's
# table gives the prompt wording of its classes).
_SYNTHETIC_LAND_COVER_NAMES = {
    "Arable land": "farmland", "Beaches, dunes, sands": "sand", "Forests": "trees",
    "Industrial or commercial units": "industrial area", "Pastures": "grass", "Road and rail networks": "roads",
    "Sport and leisure facilities": "sports field", "Urban fabric": "houses", "Water bodies": "water",
}
register(DatasetSpec("synthetic_bigearthnet", "synthetic_world/BigEarthNet-v1.0",
                     "synthetic_world/BigEarthNet-v1.0/<patch>/... (write it with generate_dataset('<data root>/"
                     "synthetic_world', layouts=['bigearthnet']))", read_bigearthnet_level3, (0.6, 0.2, 0.2),
                     "a satellite image of {}.", None, _SYNTHETIC_LAND_COVER_NAMES, task="multilabel"))


# ------------------------------------------------ the prompt-learning benchmarks (CoOp, FedOTP, FedTPG)
#
# Readers live in fedvlm.data.formats (coop, imagenet, cifar, domains); these adapters turn them
# into LabelledImages with the dataset's official rows and, for multi-domain data, each image's
# domain. The synthetic world writes every layout: generate_dataset(out, layouts=["benchmarks"]).


def _coop_reader(image_dir: str, split_file: str):
    """A reader of a CoOp ``split_zhou_*.json`` dataset: its train/val/test rows are official."""
    def read(location: Path, spec: DatasetSpec) -> LabelledImages:
        from fedvlm.data.formats.coop import read_coop_split

        paths, labels, names, rows = read_coop_split(location / split_file, location / image_dir, spec.layout)
        return LabelledImages(paths, labels, [spec.classname(n) for n in names], rows)
    return read


def read_imagenet_splits(location: Path, spec: DatasetSpec) -> LabelledImages:
    """ImageNet: images/train for training, images/val (50 per class) for testing, as CoOp."""
    from fedvlm.data.formats.imagenet import read_imagenet

    paths, labels, names, rows = read_imagenet(location, spec.layout)
    return LabelledImages(paths, labels, [spec.classname(n) for n in names], rows)


def read_imagenet_v2_folders(location: Path, spec: DatasetSpec) -> LabelledImages:
    from fedvlm.data.formats.imagenet import read_imagenet_v2

    paths, labels, names = read_imagenet_v2(location, "imagenetv2-matched-frequency-format-val", spec.layout)
    return LabelledImages(paths, labels, [spec.classname(n) for n in names])


def _wnid_reader(*image_dirs: str):
    """ImageNet-Sketch / -A / -R: wnid folders, labelled over the classes present (CoOp)."""
    def read(location: Path, spec: DatasetSpec) -> LabelledImages:
        from fedvlm.data.formats.imagenet import read_wnid_folders

        paths, labels, names = read_wnid_folders(location, image_dirs, spec.layout)
        return LabelledImages(paths, labels, [spec.classname(n) for n in names])
    return read


def _cifar_reader(release: str):
    """CIFAR python batches (read by a restricted unpickler); the official 50,000 / 10,000 split."""
    def read(location: Path, spec: DatasetSpec) -> LabelledImages:
        from fedvlm.data.formats.cifar import read_cifar

        paths, labels, names, rows = read_cifar(location, release, spec.layout)
        return LabelledImages(paths, labels, [spec.classname(n) for n in names], rows)
    return read


def _with_domains(spec: DatasetSpec, read: tuple) -> LabelledImages:
    paths, labels, names, domains, domain_names, rows = read
    return LabelledImages(paths, labels, [spec.classname(n) for n in names], rows, domains, domain_names)


def _domainnet_reader(domains: tuple[str, ...]):
    domains = None if domains == DOMAINNET_DOMAINS else domains  # all: the domains present

    def read(location: Path, spec: DatasetSpec) -> LabelledImages:
        from fedvlm.data.formats.domains import read_domainnet

        return _with_domains(spec, read_domainnet(location, domains, spec.layout))
    return read


def _domain_folder_reader(all_domains: tuple[str, ...] | None, domains: tuple[str, ...] | None = None):
    def read(location: Path, spec: DatasetSpec) -> LabelledImages:
        from fedvlm.data.formats.domains import read_domain_folders

        return _with_domains(spec, read_domain_folders(location, all_domains, domains, spec.layout))
    return read


register(DatasetSpec("oxford_pets", "oxford_pets",
                     "oxford_pets/{images/<Breed>_<n>.jpg, annotations/, split_zhou_OxfordPets.json}",
                     _coop_reader("images", "split_zhou_OxfordPets.json"), (0.5, 0.5),
                     "a photo of a {}, a type of pet.", 37))
register(DatasetSpec("food101", "food-101", "food-101/{images/<class>/<id>.jpg, split_zhou_Food101.json}",
                     _coop_reader("images", "split_zhou_Food101.json"), (0.5, 0.5),
                     "a photo of {}, a type of food.", 101))
register(DatasetSpec("stanford_cars", "stanford_cars",
                     "stanford_cars/{cars_train/<nnnnn>.jpg, cars_test/<nnnnn>.jpg, split_zhou_StanfordCars.json}",
                     _coop_reader(".", "split_zhou_StanfordCars.json"), (0.5, 0.5), "a photo of a {}.", 196))
register(DatasetSpec("sun397", "sun397", "sun397/{SUN397/<letter>/<class>[/<subclass>]/sun_<id>.jpg, "
                     "split_zhou_SUN397.json}", _coop_reader("SUN397", "split_zhou_SUN397.json"), (0.5, 0.5),
                     "a photo of a {}.", 397))
register(DatasetSpec("ucf101", "ucf101", "ucf101/{UCF-101-midframes/<Class_Name>/v_<Class>_g<NN>_c<NN>.jpg, "
                     "split_zhou_UCF101.json}", _coop_reader("UCF-101-midframes", "split_zhou_UCF101.json"),
                     (0.5, 0.5), "a photo of a person doing {}.", 101))
register(DatasetSpec("imagenet", "imagenet", "imagenet/{classnames.txt, images/train/<wnid>/<image>.JPEG, "
                     "images/val/<wnid>/<image>.JPEG}", read_imagenet_splits, (0.5, 0.5), "a photo of a {}.", 1000))
register(DatasetSpec("imagenet_v2", "imagenetv2", "imagenetv2/{classnames.txt, "
                     "imagenetv2-matched-frequency-format-val/<0..999>/<image>.jpeg}", read_imagenet_v2_folders,
                     (0.5, 0.5), "a photo of a {}.", 1000))
register(DatasetSpec("imagenet_sketch", "imagenet-sketch",
                     "imagenet-sketch/{classnames.txt, images/<wnid>/<image>.JPEG} (or the release's sketch/<wnid>/)",
                     _wnid_reader("images", "sketch"), (0.5, 0.5), "a photo of a {}.", 1000))
register(DatasetSpec("imagenet_a", "imagenet-adversarial",
                     "imagenet-adversarial/{classnames.txt, imagenet-a/<wnid>/<image>.jpg} (200 wnids)",
                     _wnid_reader("imagenet-a"), (0.5, 0.5), "a photo of a {}.", 200))
register(DatasetSpec("imagenet_r", "imagenet-rendition",
                     "imagenet-rendition/{classnames.txt, imagenet-r/<wnid>/<image>.jpg} (200 wnids)",
                     _wnid_reader("imagenet-r"), (0.5, 0.5), "a photo of a {}.", 200))
register(DatasetSpec("cifar10", "cifar-10-batches-py",
                     "cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta} (the python pickles)",
                     _cifar_reader("cifar10"), (0.5, 0.5), "a photo of a {}.", 10))
register(DatasetSpec("cifar100", "cifar-100-python", "cifar-100-python/{train, test, meta} (the python pickles)",
                     _cifar_reader("cifar100"), (0.5, 0.5), "a photo of a {}.", 100))


def _register_domains(name: str, folder: str, layout: str, domains: tuple[str, ...], reader, split, template,
                      num_classes) -> None:
    """``name`` (every domain, with each image's domain) and ``name_<domain>`` (one domain, the
    same classes): the first for one-domain-per-client partitions, the others for training or
    testing on a single domain."""
    register(DatasetSpec(name, folder, layout, reader(domains), split, template, num_classes))
    for domain in domains:
        register(DatasetSpec(f"{name}_{domain}", folder, layout, reader((domain,)), split, template, num_classes))


def _office_reader(domains: tuple[str, ...]):
    return _domain_folder_reader(OFFICE_CALTECH_DOMAINS, domains)


def _synthetic_domain_reader(domains: tuple[str, ...]):
    return _domain_folder_reader(None, None if domains == SYNTHETIC_DOMAINS else domains)


SYNTHETIC_DOMAINS = tuple(f"style_{k}" for k in range(4))  # fedvlm generate's default --num-styles 4
_register_domains("domainnet", "domainnet", "domainnet/{<domain>/<class>/<image>.jpg, <domain>_{train,test}.txt} "
                  f"for the domains {', '.join(DOMAINNET_DOMAINS)} (those present)", DOMAINNET_DOMAINS,
                  _domainnet_reader, (0.5, 0.5),
                  "a photo of a {}.", None)
_register_domains("office_caltech10", "office_caltech_10", "office_caltech_10/<domain>/<class>/<image>.jpg for the "
                  f"domains {', '.join(OFFICE_CALTECH_DOMAINS)}", OFFICE_CALTECH_DOMAINS, _office_reader,
                  (0.7, 0.15, 0.15), "a photo of a {}.", 10)
_register_domains("synthetic_domains", "synthetic_world/synthetic_domains",
                  "synthetic_world/synthetic_domains/<style_k>/<class>/<image>.png (write it with generate_dataset("
                  "'<data root>/synthetic_world', layouts=['synthetic_domains']))", SYNTHETIC_DOMAINS,
                  _synthetic_domain_reader, (0.5, 0.5), "an aerial photo of a {}.", None)
