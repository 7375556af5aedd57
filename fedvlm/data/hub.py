"""Hugging Face ``datasets`` as a data source: ``data.source: hf://owner/name`` or ``disk:/path``.

``hf://owner/name`` is ``datasets.load_dataset("owner/name", data.hf.config_name, split=data.hf.split)``:
from the Hub, or with ``HF_DATASETS_OFFLINE=1`` from the local Hugging Face cache alone.
``disk:/path`` is ``datasets.load_from_disk``: a folder written by ``Dataset.save_to_disk`` or
``DatasetDict.save_to_disk``. Either becomes the project's :class:`~fedvlm.data.types.LabelledImages`
(:class:`~fedvlm.data.captioned.CaptionedImages` for captions), so splits, partitions, the feature
cache and every head work unchanged.

The task is read from the features (``data.hf`` names the columns; null finds them, see
:class:`fedvlm.sections.HubConfig`):

=============================================  ==============================================
feature                                        task
=============================================  ==============================================
``ClassLabel``                                 classification, its ``names`` the class names
``Sequence(ClassLabel)`` (``List`` in          multilabel: ``[N, C]`` multi-hot rows in {0, 1}
datasets >= 4)
a string or list-of-strings caption column     retrieval (the label column, if any, a ClassLabel)
=============================================  ==============================================

Class names become prompt text as folder names do ("golden_retriever" -> "golden retriever");
prompts use "a photo of a {}." unless ``data.template`` says otherwise. With ``data.hf.split``
null, a dataset with ``train`` and ``test`` splits (``validation`` when there is no ``test``)
keeps them as its official split; a single split (or the one named) is cut by ``data.split``
(default 50/50).

Images are rows, not files: each is a :class:`HubImage` that decodes itself (``datasets.Image``,
bytes or path) and carries a ``cache_identity`` made of the dataset's ``_fingerprint``, split,
image column and row, which the feature cache keys on instead of file paths and times. The
fingerprint is how ``datasets`` names a table's content (a ``save_to_disk`` folder keeps its own), so
the same dataset hits the cache and a changed one does not.

``datasets`` is imported here only, when a source is read: the rest of fedvlm runs without it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fedvlm.data.captioned import UNLABELLED, CaptionedImages
from fedvlm.data.types import DatasetSpec, LabelledImages
from fedvlm.errors import ConfigError, DataError

TEMPLATE = "a photo of a {}."
DEFAULT_SPLIT = (0.5, 0.5)
TEST_SPLITS = ("test", "validation")  # the test half of an official split, in order of preference
LAYOUT = ("a Hugging Face dataset with an Image column and a ClassLabel, Sequence(ClassLabel) or caption column "
          "(hf://owner/name on the Hub or in the local cache, or disk:/path written by save_to_disk)")


@dataclass(frozen=True, slots=True)
class HubImage:
    """Row ``row`` of a Hugging Face dataset's image column: the item the feature cache and the
    pixel batches open (``open_image``) and key (``cache_identity``) instead of a file path."""

    table: Any = field(repr=False, compare=False)  # the split's image column alone (datasets.Dataset)
    column: str
    name: str  # "<source>[<split>]", for messages
    identity: str = field(repr=False)  # "<fingerprint>|<split>|<column>", shared by the split's rows
    row: int = 0

    @property
    def cache_identity(self) -> str:
        return f"hf:{self.identity}|{self.row}"

    def open_image(self):
        """The decoded image (a PIL image; ``datasets.Image`` reads its bytes or its path)."""
        return self.table[self.row][self.column]

    def __str__(self) -> str:
        return f"{self.name} row {self.row}"


@dataclass(frozen=True)
class _Columns:
    image: str
    label: str | None
    caption: str | None
    task: str


def source_spec(data) -> DatasetSpec:
    """The spec of ``data.source`` (``data``: a :class:`~fedvlm.sections.DataConfig`): its task,
    read from the features; no row is read."""
    parts, _ = _open(data)
    return _spec(data, _columns(next(iter(parts.values())).features, data.hf, data.source).task)


def load_source(data) -> tuple[LabelledImages, DatasetSpec]:
    """The images, labels and class names of ``data.source``, and its spec."""
    datasets = _datasets()
    parts, official = _open(data)
    first = next(iter(parts.values()))
    for split_name, part in parts.items():
        if part.features != first.features:
            raise DataError(f"data.source: the {split_name} split of {data.source} has other features than "
                            f"{next(iter(parts))} ({_listing(part.features)}); expected the same columns in every split")
    columns = _columns(first.features, data.hf, data.source)
    images, labels, captions, caption_image, rows = [], [], [], [], {}
    for split_name, part in parts.items():
        table = part.select_columns([columns.image])
        if not table.features[columns.image].decode:  # stored undecoded: decode it on reading
            table = table.cast_column(columns.image, datasets.Image())
        identity = f"{part._fingerprint}|{split_name}|{columns.image}"
        where = f"{data.source}[{split_name}]"
        start = len(images)
        images += [HubImage(table, columns.image, where, identity, row) for row in range(len(part))]
        rows[split_name] = np.arange(start, len(images))
        if columns.label is not None:
            labels.append(_labels(part, columns, where))
        if columns.caption is not None:
            for row, texts in enumerate(_captions(part, columns.caption, where)):
                captions += texts
                caption_image += [start + row] * len(texts)
    if not images:
        raise DataError(f"data.source: {data.source} has no rows; expected {LAYOUT}")
    if columns.label is not None:
        label_feature = first.features[columns.label]
        classnames = [name.replace("_", " ") for name in (_element(label_feature) or label_feature).names]
        labels = np.concatenate(labels)
    else:  # captions without scene classes: one class, as RSICD-style files without a class prefix
        classnames, labels = [UNLABELLED], np.zeros(len(images), dtype=np.int64)
    official_rows = {"train": rows["train"], "test": rows[_test_split(parts)]} if official else None
    if columns.caption is not None:
        dataset = CaptionedImages(images, labels, classnames, official_rows, captions=captions,
                                  caption_image=np.asarray(caption_image, dtype=np.int64))
    else:
        dataset = LabelledImages(images, labels, classnames, official_rows)
    return dataset, _spec(data, columns.task)


# ------------------------------------------------------------------------------- opening


def _datasets():
    try:
        import datasets
    except ImportError:
        raise DataError("data.source: reading Hugging Face datasets needs the datasets package; "
                        "pip install 'fedvlm[hf]'") from None
    return datasets


def _reason(error: Exception) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__


def _open(data) -> tuple[dict[str, Any], bool]:
    """The splits to read ({name: datasets.Dataset}, in order), and whether they are an official
    train/test split."""
    datasets = _datasets()
    source, hub = data.source, data.hf
    if source.startswith("disk:"):
        if hub.config_name is not None:
            raise ConfigError("data.hf.config_name: applies to hf:// sources only (a save_to_disk folder holds one "
                              "configuration); remove it")
        folder = Path(source[len("disk:"):]).expanduser()
        if not folder.exists():
            raise DataError(f"data.source: {folder} does not exist; expected a folder written by Dataset.save_to_disk "
                            "or DatasetDict.save_to_disk")
        try:
            loaded = datasets.load_from_disk(str(folder))
        except Exception as error:  # not a dataset folder (no state.json / dataset_dict.json), damaged files
            raise DataError(f"data.source: {folder} is not a save_to_disk folder ({_reason(error)}); expected a "
                            "folder written by Dataset.save_to_disk or DatasetDict.save_to_disk") from None
    else:
        name = source[len("hf://"):]
        try:
            loaded = datasets.load_dataset(name, hub.config_name, split=hub.split)
        except Exception as error:  # not cached while offline, no such dataset/config/split, no connection
            if hub.split is not None and "split" in str(error).lower():
                raise DataError(f"data.hf.split: {source} has no split {hub.split!r} ({_reason(error)})") from None
            raise DataError(f"data.source: cannot load {source} ({_reason(error)}); with HF_DATASETS_OFFLINE=1 it is "
                            f"read from the local Hugging Face cache ({datasets.config.HF_DATASETS_CACHE})") from None
    if isinstance(loaded, datasets.DatasetDict):
        splits = dict(loaded.items())
    else:
        split_name = str(loaded.split) if loaded.split is not None else "all"
        splits = {split_name: loaded}
        if hub.split is not None and split_name != hub.split:
            raise DataError(f"data.hf.split: {source} holds one dataset (split {split_name}), not the split "
                            f"{hub.split!r}; remove data.hf.split")
    if not isinstance(next(iter(splits.values()), None), datasets.Dataset):
        raise DataError(f"data.source: {source} holds no readable split; expected {LAYOUT}")
    if hub.split is not None:
        if hub.split not in splits:
            raise DataError(f"data.hf.split: {source} has no split {hub.split!r}; expected one of: {', '.join(splits)}")
        return {hub.split: splits[hub.split]}, False
    if len(splits) == 1:
        return splits, False
    if "train" in splits and _test_split(splits):
        return {"train": splits["train"], _test_split(splits): splits[_test_split(splits)]}, True
    raise DataError(f"data.hf.split: {source} has the splits {', '.join(splits)} and no train/test pair; set "
                    "data.hf.split to one of them")


def _test_split(splits: dict) -> str | None:
    return next((name for name in TEST_SPLITS if name in splits), None)


def _spec(data, task: str) -> DatasetSpec:
    return DatasetSpec(data.source, data.source, LAYOUT, lambda location, spec: load_source(data)[0],
                       DEFAULT_SPLIT, TEMPLATE, None, task=task)


# ------------------------------------------------------------------------------- features


def _element(feature):
    """The element feature of a list feature (``Sequence``, ``List``, ``LargeList``, ``[f]``), else None."""
    if isinstance(feature, list) and len(feature) == 1:
        return feature[0]
    if type(feature).__name__ in ("Sequence", "List", "LargeList"):
        return getattr(feature, "feature", None)
    return None


def _kind(feature) -> str | None:
    """'image', 'label' (ClassLabel), 'labels' (a list of ClassLabel), 'text' (a string or list
    of strings), else None."""
    datasets = _datasets()
    element = _element(feature)
    if isinstance(feature, datasets.Image):
        return "image"
    if isinstance(feature, datasets.ClassLabel):
        return "label"
    if isinstance(element, datasets.ClassLabel):
        return "labels"
    if any(isinstance(f, datasets.Value) and f.dtype in ("string", "large_string") for f in (feature, element)):
        return "text"
    return None


def _describe(feature) -> str:
    element = _element(feature)
    if element is not None:
        return f"Sequence({_describe(element)})"
    if type(feature).__name__ == "ClassLabel":
        return f"ClassLabel({feature.num_classes} names)"
    if type(feature).__name__ == "Value":
        return f"Value({feature.dtype})"
    return type(feature).__name__


def _listing(features) -> str:
    return ", ".join(f"{name} ({_describe(feature)})" for name, feature in features.items())


_EXPECTED = {"image": "Image", "label": "ClassLabel", "labels": "Sequence(ClassLabel)", "text": "string"}


def _column(features, kinds: dict, key: str, named: str | None, accepted: tuple[str, ...], source: str,
            required: bool) -> str | None:
    """The column ``data.hf.<key>`` names (checked to be of an ``accepted`` kind), or the only one
    of such a kind (None when there is none and it is not ``required``)."""
    expected = " or ".join(_EXPECTED[k] for k in accepted)
    if named is not None:
        if named not in features:
            raise DataError(f"data.hf.{key}: {source} has no column {named!r}; its columns: {_listing(features)}")
        if kinds[named] not in accepted:
            raise DataError(f"data.hf.{key}: column {named!r} of {source} is {_describe(features[named])}, expected "
                            f"{expected}; its columns: {_listing(features)}")
        return named
    found = [name for name, kind in kinds.items() if kind in accepted]
    if len(found) > 1:
        raise DataError(f"data.hf.{key}: {source} has several {expected} columns ({', '.join(found)}); name one")
    if not found and required:
        raise DataError(f"data.hf.{key}: {source} has no {expected} column; its columns: {_listing(features)}")
    return found[0] if found else None


def _columns(features, hub, source: str) -> _Columns:
    kinds = {name: _kind(feature) for name, feature in features.items()}
    image = _column(features, kinds, "image_column", hub.image_column, ("image",), source, required=True)
    label = _column(features, kinds, "label_column", hub.label_column, ("label", "labels"), source, required=False)
    caption = hub.caption_column
    if caption is not None or label is None:  # a caption column is found only where no label column is
        caption = _column(features, kinds, "caption_column", caption, ("text",), source, required=False)
    if caption is not None:
        if label is not None and kinds[label] != "label":
            raise DataError(f"data.hf.label_column: {label!r} of {source} is {_describe(features[label])}, but a "
                            "caption dataset's classes are one ClassLabel per image; name a ClassLabel column or "
                            "set data.hf.label_column: null")
        return _Columns(image, label, caption, "retrieval")
    if label is None:
        raise DataError(f"data.source: {source} has no label or caption column; expected a ClassLabel "
                        "(classification), Sequence(ClassLabel) (multi-label) or a caption column (retrieval, "
                        f"data.hf.caption_column); its columns: {_listing(features)}")
    return _Columns(image, label, None, "classification" if kinds[label] == "label" else "multilabel")


def _values(part, column: str) -> Any:
    """One column of a split as an Arrow array (the split's row order, any selection applied)."""
    return part.select_columns([column]).with_format("arrow")[column]


def _labels(part, columns: _Columns, where: str) -> np.ndarray:
    """``[N]`` int64 class ids, or ``[N, C]`` float32 multi-hot rows."""
    feature = part.features[columns.label]
    element = _element(feature)
    values = _values(part, columns.label)
    if element is None:
        labels = np.asarray(values.to_numpy(zero_copy_only=False), dtype=np.int64)
        missing = int((labels < 0).sum())
        if missing:
            raise DataError(f"data.hf.label_column: {missing} rows of {where} have no label (-1 in {columns.label!r}); "
                            "choose a labelled split with data.hf.split")
        return labels
    multi_hot = np.zeros((len(part), element.num_classes), dtype=np.float32)
    for row, tags in enumerate(values.to_pylist()):
        tags = [t for t in (tags or [])]
        if any(t < 0 or t >= element.num_classes for t in tags):
            raise DataError(f"data.hf.label_column: row {row} of {where} has a class id outside 0..."
                            f"{element.num_classes - 1} in {columns.label!r}")
        multi_hot[row, tags] = 1
    return multi_hot


def _captions(part, column: str, where: str) -> list[list[str]]:
    """Every row's captions (a string or a list of strings; empty ones dropped)."""
    result = []
    for row, value in enumerate(_values(part, column).to_pylist()):
        texts = [value] if isinstance(value, str) else list(value or [])
        texts = [t for t in texts if isinstance(t, str) and t.strip()]
        if not texts:
            raise DataError(f"data.hf.caption_column: row {row} of {where} has no caption in {column!r}; every "
                            "image needs at least one for retrieval")
        result.append(texts)
    return result


def label_table(labels: np.ndarray):
    """The class ids ``labels`` ``[N]`` as a ``datasets.Dataset`` (column ``label``) with each
    row's number (column ``row``): what a Flower Datasets partitioner shares out
    (:class:`fedvlm.data.partition.Flwr`)."""
    return _datasets().Dataset.from_dict({"label": np.asarray(labels, dtype=np.int64),
                                          "row": np.arange(len(labels), dtype=np.int64)})
