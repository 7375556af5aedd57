"""CIFAR-10 and CIFAR-100 in their "python version" releases, read without running code.

* ``cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}``: each batch a pickled dict
  ``{b"data": uint8 [10000, 3072], b"labels": [int], b"filenames": [bytes], ...}``, the meta file
  ``{b"label_names": [bytes] * 10}``.
* ``cifar-100-python/{train, test, meta}``: ``{b"data", b"fine_labels", b"coarse_labels", ...}``
  and ``{b"fine_label_names": [bytes] * 100, b"coarse_label_names": ...}``.

A pickle can name any Python callable and have it run while loading, so these files go through
:class:`SafeUnpickler`: it resolves only the three globals a pickled numpy array needs
(``_reconstruct``, ``ndarray``, ``dtype``) and refuses every other one with a DataError naming
the file and the global (the approach of the ``pickle`` docs, "Restricting Globals"). Object
arrays are refused too: their items would be arbitrary objects.

CLIP reads images from files, so the rows are decoded once into lossless PNGs under
``<release folder>/images/{train,test}/<label>/<NNNNN>.png`` beside the batches, with
``images/source.json`` recording the sha256 of every batch they came from: changed batches are
decoded again, unchanged ones are not rewritten (their features stay cached).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from fedvlm.errors import DataError
from fedvlm.files import read_bytes

if TYPE_CHECKING:
    from fedvlm.data.synthetic.render import RenderedScene

try:  # numpy >= 2
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - numpy 1
    from numpy.core.multiarray import _reconstruct

# The globals a protocol-2/3 pickle of a numeric numpy array names, resolved here rather than by
# import: the releases (numpy 1) name numpy.core.multiarray, which numpy 2 only keeps as a shim.
_ALLOWED = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct, ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
}

RELEASES = {
    "cifar10": {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"], "meta": "batches.meta",
                "labels": b"labels", "names": b"label_names"},
    "cifar100": {"train": ["train"], "test": ["test"], "meta": "meta",
                 "labels": b"fine_labels", "names": b"fine_label_names"},
}


class SafeUnpickler(pickle.Unpickler):
    """An unpickler that builds only dicts, lists, tuples, bytes, str, numbers and numeric numpy
    arrays; any other global is refused before it is looked up."""

    def __init__(self, data: bytes, where: Path):
        super().__init__(io.BytesIO(data), encoding="bytes")
        self.where = where

    def find_class(self, module: str, name: str):
        if (module, name) not in _ALLOWED:
            raise DataError(f"pickle file {self.where} names the global {module}.{name}; a CIFAR batch holds only "
                            "dicts, lists, bytes and numpy arrays, so it is refused (it could run code)")
        return _ALLOWED[module, name]


def safe_load(path: Path, expected: str):
    """The object pickled in ``path``, built by :class:`SafeUnpickler`."""
    data = read_bytes(path, "CIFAR batch", expected)
    try:
        value = SafeUnpickler(data, path).load()
    except DataError:
        raise
    except Exception as error:  # truncated or foreign bytes raise many kinds
        raise DataError(f"CIFAR batch {path} is not a readable pickle ({type(error).__name__}); expected "
                        f"{expected}") from None
    _refuse_objects(value, path)
    return value


def _refuse_objects(value, path: Path) -> None:
    if isinstance(value, np.ndarray) and value.dtype.hasobject:
        raise DataError(f"CIFAR batch {path} holds an object array; expected numeric arrays only")
    if isinstance(value, dict):
        for item in value.values():
            _refuse_objects(item, path)
    elif isinstance(value, (list, tuple)):
        for item in value:
            _refuse_objects(item, path)


def _batch(path: Path, labels_key: bytes, expected: str) -> tuple[np.ndarray, np.ndarray]:
    """One batch as (images [N, 32, 32, 3] uint8, labels [N])."""
    table = safe_load(path, expected)
    data = table.get(b"data") if isinstance(table, dict) else None
    labels = table.get(labels_key) if isinstance(table, dict) else None
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise DataError(f"CIFAR batch {path} has no b'data' uint8 array of shape [N, 3072]; expected {expected}")
    if not isinstance(labels, list) or len(labels) != len(data) or any(type(x) is not int or x < 0 for x in labels):
        raise DataError(f"CIFAR batch {path} has no list {labels_key!r} of {len(data)} labels >= 0; "
                        f"expected {expected}")
    # rows are 1024 red, then green, then blue values, each row-major 32 x 32
    return data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1), np.asarray(labels, dtype=np.int64)


def read_cifar(location: Path, release: str, expected: str
               ) -> tuple[list[Path], np.ndarray, list[str], dict[str, np.ndarray]]:
    """(png paths, labels, class names, {"train", "test"} rows) of a CIFAR release folder."""
    files = RELEASES[release]
    meta_path = location / files["meta"]
    meta = safe_load(meta_path, expected)
    names = meta.get(files["names"]) if isinstance(meta, dict) else None
    if not isinstance(names, list) or not names or any(not isinstance(n, bytes) for n in names):
        raise DataError(f"CIFAR meta file {meta_path} has no list {files['names']!r} of class names; "
                        f"expected {expected}")
    try:
        classnames = [n.decode("utf-8") for n in names]
    except UnicodeDecodeError:
        raise DataError(f"CIFAR meta file {meta_path} has a class name that is not UTF-8; "
                        f"expected {expected}") from None
    parts = {split: [_batch(location / name, files["labels"], expected) for name in files[split]]
             for split in ("train", "test")}
    images = {split: np.concatenate([p[0] for p in batches]) for split, batches in parts.items()}
    labels = {split: np.concatenate([p[1] for p in batches]) for split, batches in parts.items()}
    for split, values in labels.items():
        if values.size and values.max() >= len(classnames):
            raise DataError(f"CIFAR {location} {split} split has label {int(values.max())}, but {meta_path.name} "
                            f"names {len(classnames)} classes; expected labels 0..{len(classnames) - 1}")
    sources = [location / name for split in ("train", "test") for name in files[split]] + [meta_path]
    paths = {split: _png_paths(location, split, labels[split]) for split in ("train", "test")}
    _decode_once(location, sources, images, paths)
    count = len(paths["train"])
    rows = np.arange(count + len(paths["test"]))
    return (paths["train"] + paths["test"], np.concatenate([labels["train"], labels["test"]]), classnames,
            {"train": rows[:count], "test": rows[count:]})


def _png_paths(location: Path, split: str, labels: np.ndarray) -> list[Path]:
    # folders are label numbers: class names come from the file and must not become paths
    return [location / "images" / split / str(label) / f"{i:05d}.png" for i, label in enumerate(labels)]


def _decode_once(location: Path, sources: list[Path], images: dict, paths: dict) -> None:
    """Write the PNGs unless ``images/source.json`` says they come from these very batches."""
    digest = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sources}
    target = location / "images"
    record = target / "source.json"
    try:
        if json.loads(record.read_text()) == digest:
            return
    except (OSError, ValueError):
        pass
    try:
        staging = Path(tempfile.mkdtemp(prefix=".images-", dir=location))
    except OSError as error:
        raise DataError(f"CIFAR folder {location} is not writable ({error.strerror}); the batches are decoded once "
                        "into images/ beside them, so expected a writable release folder") from None
    for split in ("train", "test"):
        for rgb, path in zip(images[split], paths[split]):
            out = staging / path.relative_to(target)
            out.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.ascontiguousarray(rgb)).save(out, compress_level=1)
    (staging / "source.json").write_text(json.dumps(digest, indent=1, sort_keys=True))
    # another process may have finished first: the staged copy then replaces identical files
    shutil.rmtree(target, ignore_errors=True)
    try:
        os.replace(staging, target)
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
        if not record.is_file() or json.loads(record.read_text()) != digest:
            raise DataError(f"CIFAR folder {target} could not be replaced by the decoded images; expected a "
                            "writable release folder") from None


class CIFARWriter:
    """Writes synthetic scenes (downscaled to 32 x 32) as one CIFAR python release, with bytes keys
    as the released files have. Protocol 3: Python 3 pickles bytes under protocol 2 through the
    global ``_codecs.encode``, which the released (Python 2) files never name and the reader refuses."""

    def __init__(self, folder: Path, release: str, classnames: list[str]):
        self.folder, self.release, self.classnames = Path(folder), release, classnames
        self.rows: dict[str, list] = {"train": [], "test": []}

    def add(self, sample_id: int, scene: "RenderedScene", split: str) -> str:
        image = Image.fromarray(scene.rgb).resize((32, 32), Image.BILINEAR)
        pixels = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1).reshape(-1)
        self.rows[split].append((pixels, scene.label, f"scene_{sample_id:06d}.png".encode()))
        return f"{split}[{len(self.rows[split]) - 1}]"

    def close(self) -> None:
        files = RELEASES[self.release]
        self.folder.mkdir(parents=True, exist_ok=True)
        for split in ("train", "test"):
            rows = self.rows[split]
            chunks = np.array_split(np.arange(len(rows)), len(files[split]))
            for name, chunk in zip(files[split], chunks):
                batch = {b"batch_label": name.encode(), files["labels"]: [int(rows[i][1]) for i in chunk],
                         b"data": np.stack([rows[i][0] for i in chunk]) if len(chunk) else
                         np.zeros((0, 3072), np.uint8), b"filenames": [rows[i][2] for i in chunk]}
                if self.release == "cifar100":
                    batch[b"coarse_labels"] = [0 for _ in chunk]
                (self.folder / name).write_bytes(pickle.dumps(batch, protocol=3))
        names = [n.encode() for n in self.classnames]
        meta = {files["names"]: names}
        if self.release == "cifar100":
            meta[b"coarse_label_names"] = [b"scene"]
        else:
            meta.update({b"num_cases_per_batch": 10000, b"num_vis": 3072})
        (self.folder / files["meta"]).write_bytes(pickle.dumps(meta, protocol=3))
