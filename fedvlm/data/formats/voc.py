"""PASCAL VOC2007 as it ships: ``VOCdevkit/VOC2007/{Annotations, JPEGImages, ImageSets/Main}``.

Annotations/<id>.xml follow the VOC schema (filename, size, object/name, pose, truncated,
difficult, bndbox with 1-based inclusive pixel coordinates). ImageSets/Main holds the split lists
``{train,val,trainval,test}.txt`` and per-class lists ``<class>_<split>.txt`` whose second column
is 1 (present), -1 (absent) or 0 (only "difficult" instances), exactly like the devkit.

Difficult instances (``difficult=1``) are objects more than 60% hidden. The reader's
``difficult`` argument says what an image whose only instances of a class are difficult gets:
"positive" (1, the default: every visible object counts, matching the generator's labels),
"negative" (0, the devkit's classification convention) or "ignore" (-1, unknown: leave it out
of the loss and the metrics).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from fedvlm.data.formats.common import MultiLabelSet, require_dir, require_file
from fedvlm.errors import DataError
from fedvlm.files import read_bytes, read_lines

if TYPE_CHECKING:
    from fedvlm.data.synthetic.render import RenderedScene

LAYOUT = ("VOCdevkit/VOC2007/{Annotations/<id>.xml, JPEGImages/<id>.jpg, "
          "ImageSets/Main/{train,val,trainval,test}.txt and <class>_<split>.txt}")
SPLITS = ("train", "val", "test")


class VOCWriter:
    """Writes JPEGs and XML annotations as samples arrive; ``close()`` writes ImageSets/Main."""

    def __init__(self, root: str | Path, class_names: list[str], year: str = "2007", jpeg_quality: int = 95):
        self.base = Path(root) / "VOCdevkit" / f"VOC{year}"
        self.year = year
        self.class_names = list(class_names)
        self.quality = jpeg_quality
        self.split_ids: dict[str, list[str]] = {s: [] for s in SPLITS}
        self.presence: dict[str, dict[str, int]] = {}  # image id -> class -> 1 / 0 (difficult only)
        for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
            (self.base / sub).mkdir(parents=True, exist_ok=True)

    def add(self, sample_id: int, scene: "RenderedScene", split: str) -> str:
        image_id = f"{sample_id:06d}"
        height, width = scene.rgb.shape[:2]
        Image.fromarray(scene.rgb).save(self.base / "JPEGImages" / f"{image_id}.jpg", quality=self.quality)
        root = ET.Element("annotation")
        ET.SubElement(root, "folder").text = f"VOC{self.year}"
        ET.SubElement(root, "filename").text = f"{image_id}.jpg"
        source = ET.SubElement(root, "source")
        ET.SubElement(source, "database").text = "The fedvlm synthetic world"
        ET.SubElement(source, "annotation").text = "fedvlm generator"
        ET.SubElement(source, "image").text = f"synthetic (scene class: {scene.scene_class})"
        size = ET.SubElement(root, "size")
        for tag, value in (("width", width), ("height", height), ("depth", 3)):
            ET.SubElement(size, tag).text = str(value)
        ET.SubElement(root, "segmented").text = "0"
        presence: dict[str, int] = {}
        for obj in scene.objects:
            node = ET.SubElement(root, "object")
            ET.SubElement(node, "name").text = obj.kind
            ET.SubElement(node, "pose").text = "Unspecified"
            ET.SubElement(node, "truncated").text = str(int(obj.truncated(width)))
            ET.SubElement(node, "difficult").text = str(int(obj.difficult))
            box = ET.SubElement(node, "bndbox")
            x0, y0, x1, y1 = obj.bbox  # pixels, max exclusive -> VOC 1-based inclusive
            for tag, value in (("xmin", x0 + 1), ("ymin", y0 + 1), ("xmax", x1), ("ymax", y1)):
                ET.SubElement(box, tag).text = str(value)
            presence[obj.kind] = max(presence.get(obj.kind, 0), 0 if obj.difficult else 1)
        ET.indent(root)
        ET.ElementTree(root).write(self.base / "Annotations" / f"{image_id}.xml", encoding="utf-8")
        self.split_ids[split].append(image_id)
        self.presence[image_id] = presence
        return f"JPEGImages/{image_id}.jpg"

    def close(self) -> None:
        main = self.base / "ImageSets" / "Main"
        lists = dict(self.split_ids)
        lists["trainval"] = sorted(lists["train"] + lists["val"])
        for split, ids in lists.items():
            ids = sorted(ids)
            (main / f"{split}.txt").write_text("".join(f"{i}\n" for i in ids))
            for name in self.class_names:
                lines = []
                for i in ids:
                    flag = self.presence[i].get(name)
                    lines.append(f"{i} {-1 if flag is None else flag:2d}\n")
                (main / f"{name}_{split}.txt").write_text("".join(lines))


def _voc_base(root: Path) -> Path:
    for candidate in (root, root / "VOC2007", root / "VOCdevkit" / "VOC2007"):
        if (candidate / "Annotations").is_dir() or (candidate / "ImageSets").is_dir():
            return candidate
    raise DataError(f"no VOC2007 dataset under {root}; expected {LAYOUT}")


def voc_class_names(base: Path, split: str) -> list[str]:
    """Class names from the ``<class>_<split>.txt`` files, alphabetical like the devkit's list."""
    main = base / "ImageSets" / "Main"
    names = sorted(p.name[: -len(f"_{split}.txt")] for p in main.glob(f"*_{split}.txt"))
    if not names:
        raise DataError(f"{main} has no <class>_{split}.txt files; expected {LAYOUT}")
    return names


def read_voc2007(root: str | Path, split: str = "trainval", difficult: str = "positive") -> MultiLabelSet:
    """Image paths and [N, C] multi-hot labels of a VOC split (see the module docstring for ``difficult``)."""
    if difficult not in ("positive", "negative", "ignore"):
        raise ValueError(f"difficult must be positive, negative or ignore, not {difficult!r}")
    base = _voc_base(Path(root))
    main = require_dir(base / "ImageSets" / "Main", LAYOUT)
    split_file = require_file(main / f"{split}.txt", LAYOUT)
    image_ids = [line.split()[0] for line in read_lines(split_file, "VOC split list", LAYOUT)]
    if not image_ids:
        raise DataError(f"VOC split list {split_file} lists no image; expected one image id per line")
    class_names = voc_class_names(base, split)
    index = {name: i for i, name in enumerate(class_names)}
    labels = np.zeros((len(image_ids), len(class_names)), dtype=np.float32)
    paths = []
    for row, image_id in enumerate(image_ids):
        xml_path = base / "Annotations" / f"{image_id}.xml"
        try:  # bytes, so that the XML declaration (not a default) says how the text is encoded
            tree = ET.fromstring(read_bytes(xml_path, "annotation", LAYOUT))
        except ET.ParseError as error:
            raise DataError(f"annotation {xml_path} is not valid XML ({error}); expected the VOC schema") from None
        filename = tree.findtext("filename") or f"{image_id}.jpg"
        paths.append(base / "JPEGImages" / filename)
        hard: set[str] = set()
        for obj in tree.iter("object"):
            name = obj.findtext("name")
            if name is None:
                raise DataError(f"annotation {xml_path} has an object without <name>; expected the VOC schema")
            name = name.strip()
            if name not in index:
                raise DataError(f"annotation {xml_path} names class {name!r}, which has no "
                                f"ImageSets/Main/{name}_{split}.txt; expected {LAYOUT}")
            if (obj.findtext("difficult") or "0").strip() == "1":
                hard.add(name)
            else:
                labels[row, index[name]] = 1.0
        for name in hard:
            if labels[row, index[name]] == 0:
                labels[row, index[name]] = {"positive": 1.0, "negative": 0.0, "ignore": -1.0}[difficult]
    return MultiLabelSet(paths, labels, class_names, image_ids)
