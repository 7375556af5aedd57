"""COCO 2014 instances as they ship: ``annotations/instances_{train,val}2014.json`` + image folders.

The JSON has the real schema: ``info``, ``licenses``, ``images`` (id, file_name, width, height...),
``annotations`` (id, image_id, category_id, bbox [x, y, w, h], area, iscrowd, segmentation) and
``categories`` (id, name, supercategory). Category ids are not contiguous, like real COCO (whose
ids run 1..90 with gaps), so readers must map ids to label columns rather than subtract one.
Images are ``train2014/COCO_train2014_<12-digit id>.jpg`` and ``val2014/...``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from fedvlm.data.formats.common import MultiLabelSet, require_file, require_strings
from fedvlm.errors import DataError
from fedvlm.files import read_json

if TYPE_CHECKING:
    from fedvlm.data.synthetic.render import RenderedScene

LAYOUT = "<root>/annotations/instances_<split>.json with images under <root>/<split>/ (split: train2014, val2014)"
SPLITS = ("train2014", "val2014")
# Gapped ids, as in real COCO (which skips 12, 26, 29, 30, 45, 66, 68, 69, 71 and 83).
CATEGORY_IDS = (1, 2, 3, 4, 5, 7, 8, 9, 11, 13, 14, 16, 18, 20, 22, 23, 25, 27, 28, 31, 32, 34)


class COCOWriter:
    """Collects images and annotations per split; ``close()`` writes the instances JSON files."""

    def __init__(self, root: str | Path, categories: list[tuple[str, str]], jpeg_quality: int = 95):
        """``categories``: (name, supercategory) pairs, given ids from ``CATEGORY_IDS`` in order."""
        if len(categories) > len(CATEGORY_IDS):
            raise ValueError(f"at most {len(CATEGORY_IDS)} categories")
        self.root = Path(root)
        self.quality = jpeg_quality
        self.categories = [{"supercategory": sup, "id": cid, "name": name}
                           for cid, (name, sup) in zip(CATEGORY_IDS, categories)]
        self.category_id = {c["name"]: c["id"] for c in self.categories}
        self.images: dict[str, list[dict]] = {s: [] for s in SPLITS}
        self.annotations: dict[str, list[dict]] = {s: [] for s in SPLITS}
        self.next_annotation_id = 1

    def add(self, sample_id: int, scene: "RenderedScene", split: str, category_names: dict[str, str]) -> str:
        """``category_names`` maps object kinds to category names."""
        image_id = sample_id + 1
        file_name = f"COCO_{split}_{image_id:012d}.jpg"
        folder = self.root / split
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(scene.rgb).save(folder / file_name, quality=self.quality)
        height, width = scene.rgb.shape[:2]
        self.images[split].append({"license": 1, "file_name": file_name, "coco_url": "", "height": height,
                                   "width": width, "date_captured": "2014-01-01 00:00:00", "flickr_url": "",
                                   "id": image_id})
        for obj in scene.objects:
            x0, y0, x1, y1 = obj.bbox
            w, h = x1 - x0, y1 - y0
            self.annotations[split].append({
                "segmentation": [[float(x0), float(y0), float(x1), float(y0), float(x1), float(y1), float(x0), float(y1)]],
                "area": float(obj.visible_pixels), "iscrowd": 0, "image_id": image_id,
                "bbox": [float(x0), float(y0), float(w), float(h)],
                "category_id": self.category_id[category_names[obj.kind]], "id": self.next_annotation_id})
            self.next_annotation_id += 1
        return f"{split}/{file_name}"

    def close(self) -> None:
        (self.root / "annotations").mkdir(parents=True, exist_ok=True)
        for split in SPLITS:
            content = {
                "info": {"description": "fedvlm synthetic world in COCO format", "url": "", "version": "1.0",
                         "year": 2014, "contributor": "fedvlm", "date_created": "2014-01-01 00:00:00"},
                "licenses": [{"url": "", "id": 1, "name": "synthetic data, no restrictions"}],
                "images": sorted(self.images[split], key=lambda image: image["id"]),
                "annotations": self.annotations[split],
                "categories": self.categories,
            }
            with open(self.root / "annotations" / f"instances_{split}.json", "w") as handle:
                json.dump(content, handle)


def read_coco(root: str | Path, split: str = "train2014") -> MultiLabelSet:
    """Image paths, [N, C] multi-hot labels and category names (columns in category-id order).

    An image with no annotation keeps an all-zero row, like real COCO's unannotated images.
    ``image_ids`` holds the COCO image ids as strings.
    """
    root = Path(root)
    json_path = require_file(root / "annotations" / f"instances_{split}.json", LAYOUT)
    content = read_json(json_path, "COCO annotation file", "COCO instances JSON")
    try:
        categories = sorted(content["categories"], key=lambda c: c["id"])
        images = content["images"]
        annotations = content["annotations"]
        column = {c["id"]: i for i, c in enumerate(categories)}
        row = {image["id"]: i for i, image in enumerate(images)}
        labels = np.zeros((len(images), len(categories)), dtype=np.float32)
        for annotation in annotations:
            image, category = annotation["image_id"], annotation["category_id"]
            if image not in row or category not in column:
                raise DataError(f"{json_path}: annotation {annotation.get('id')} names image {image} / category "
                                f"{category}, absent from its images / categories; expected COCO instances JSON")
            labels[row[image], column[category]] = 1.0
        files = require_strings([image["file_name"] for image in images], json_path, "images[].file_name")
        names = require_strings([c["name"] for c in categories], json_path, "categories[].name")
        paths = [root / split / name for name in files]
        ids = [str(image["id"]) for image in images]
    except KeyError as error:
        raise DataError(f"{json_path} lacks COCO field {error}; expected COCO instances JSON with images, "
                        f"annotations (image_id, category_id) and categories (id, name)") from None
    except TypeError as error:
        raise DataError(f"{json_path} is not laid out as COCO instances JSON ({error}); expected images, "
                        f"annotations (image_id, category_id) and categories (id, name)") from None
    return MultiLabelSet(paths, labels, names, ids)
