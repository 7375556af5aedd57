"""RSICD / RSITMD caption datasets in their Karpathy-style JSON layout.

RSICD ships ``dataset_rsicd.json`` beside ``RSICD_images/``; RSITMD ships ``dataset_RSITMD.json``
beside ``images/`` (with per-image ``keywords``). The JSON is::

    {"images": [{"filename": "airport_1.jpg", "imgid": 0, "split": "train",
                 "sentids": [0, 1, 2, 3, 4],
                 "sentences": [{"raw": "...", "tokens": ["..."], "imgid": 0, "sentid": 0}, ...]}, ...],
     "dataset": "rsicd"}

Five sentences per image; splits "train" / "val" / "test" (80/10/10 as in the papers' protocol).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from fedvlm.data.formats.common import CaptionSet, require_strings
from fedvlm.errors import DataError
from fedvlm.files import read_json

if TYPE_CHECKING:
    from fedvlm.data.synthetic.render import RenderedScene

VARIANTS = {  # variant -> (json name, image folder, image suffix)
    "rsicd": ("dataset_rsicd.json", "RSICD_images", ".jpg"),
    "rsitmd": ("dataset_RSITMD.json", "images", ".tif"),
}
LAYOUT = "<root>/dataset_rsicd.json with <root>/RSICD_images/, or <root>/dataset_RSITMD.json with <root>/images/"


def tokenize(sentence: str) -> list[str]:
    """The datasets' tokens: lower-case words, punctuation dropped."""
    return re.findall(r"[a-z0-9]+", sentence.lower())


class CaptionWriter:
    """Writes images as they arrive; ``close()`` writes the JSON in image-id order."""

    def __init__(self, root: str | Path, variant: str = "rsicd", jpeg_quality: int = 95):
        self.root = Path(root)
        self.variant = variant
        self.json_name, self.image_folder, self.suffix = VARIANTS[variant]
        self.quality = jpeg_quality
        self.entries: list[dict] = []
        self.per_class: dict[str, int] = {}
        (self.root / self.image_folder).mkdir(parents=True, exist_ok=True)

    def add(self, sample_id: int, scene: "RenderedScene", split: str) -> str:
        folder = scene.scene_class.replace(" ", "")
        number = self.per_class.get(folder, 0) + 1
        self.per_class[folder] = number
        filename = f"{folder}_{number}{self.suffix}"
        path = self.root / self.image_folder / filename
        if self.suffix == ".jpg":
            Image.fromarray(scene.rgb).save(path, quality=self.quality)
        else:
            Image.fromarray(scene.rgb).save(path)
        entry = {"filename": filename, "imgid": -1, "split": split, "sentids": [], "sentences": [],
                 "raw_captions": scene.captions, "sample_id": sample_id}
        if self.variant == "rsitmd":
            entry["keywords"] = [name.replace("_", " ") for name in scene.object_types]
        self.entries.append(entry)
        return f"{self.image_folder}/{filename}"

    def close(self) -> None:
        entries = sorted(self.entries, key=lambda e: e["sample_id"])
        sentence_id = 0
        images = []
        for image_id, entry in enumerate(entries):
            sentences = []
            for raw in entry.pop("raw_captions"):
                sentences.append({"tokens": tokenize(raw), "raw": raw, "imgid": image_id, "sentid": sentence_id})
                sentence_id += 1
            entry.pop("sample_id")
            entry.update(imgid=image_id, sentences=sentences, sentids=[s["sentid"] for s in sentences])
            images.append(entry)
        with open(self.root / self.json_name, "w") as handle:
            json.dump({"images": images, "dataset": self.variant}, handle)


def _find_json(root: Path) -> Path:
    for name, _, _ in VARIANTS.values():
        if (root / name).is_file():
            return root / name
    found = sorted(root.glob("dataset_*.json")) + sorted(root.glob("*/dataset_*.json"))
    if not found:
        raise DataError(f"no caption JSON (dataset_*.json) in {root}; expected {LAYOUT}")
    return found[0]


def read_caption_dataset(root: str | Path, split: str | None = None, image_folder: str | None = None) -> CaptionSet:
    """Images, captions and the caption -> image index of an RSICD/RSITMD-style dataset.

    ``split`` keeps only that split's images (None keeps all). ``image_folder`` overrides the
    folder the images are looked up in (default: RSICD_images/ or images/, whichever exists).
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"dataset folder {root} does not exist; expected {LAYOUT}")
    json_path = _find_json(root)
    if image_folder is None:
        candidates = [root / folder for _, folder, _ in VARIANTS.values() if (root / folder).is_dir()]
        if not candidates:
            raise DataError(f"no image folder (RSICD_images/ or images/) in {root}; expected {LAYOUT}")
        images_dir = candidates[0]
    else:
        images_dir = root / image_folder
    content = read_json(json_path, "caption file", LAYOUT)
    try:
        entries = content["images"]
        image_paths, splits, filenames, captions, caption_image = [], [], [], [], []
        for entry in entries:
            filename, entry_split = require_strings([entry["filename"], entry["split"]], json_path,
                                                    "images[].filename and images[].split")
            if split is not None and entry_split != split:
                continue
            index = len(image_paths)
            image_paths.append(images_dir / filename)
            filenames.append(filename)
            splits.append(entry_split)
            raws = require_strings([sentence["raw"] for sentence in entry["sentences"]], json_path,
                                   "images[].sentences[].raw")
            captions.extend(raws)
            caption_image.extend([index] * len(raws))
    except KeyError as error:
        raise DataError(f"{json_path} lacks field {error}; expected images[].filename, split and "
                        f"sentences[].raw as in dataset_rsicd.json") from None
    except TypeError as error:
        raise DataError(f"{json_path} is not laid out as dataset_rsicd.json ({error}); expected images[].filename, "
                        f"split and sentences[].raw") from None
    return CaptionSet(image_paths, splits, captions, np.asarray(caption_image, dtype=np.int64), filenames)
