"""What a dataset reader returns and how a dataset is described: the types every reader shares.

Their own module, below the catalog (:mod:`fedvlm.data.datasets`), so that readers in other
modules (captioned, multispectral) import them without importing the catalog that registers
those readers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class LabelledImages:
    """Images with labels: ``paths[i]`` has label ``labels[i]`` (``[N]`` class ids) or the
    multi-hot row ``labels[i]`` (``[N, C]`` in {1, 0, -1}) over ``classnames``. An entry of
    ``paths`` is an image file, or an item that opens itself (``open_image()``) and names its
    content (``cache_identity``): a Hugging Face dataset's row, :class:`fedvlm.data.hub.HubImage`."""

    paths: list[Path]
    labels: np.ndarray
    classnames: list[str]  # prompt text of every class, in label order
    # the dataset's own train/test rows when it ships a split (VOC trainval/test, COCO train/val)
    official_splits: dict[str, np.ndarray] | None = None
    # multi-domain datasets (DomainNet, Office-Caltech10, synthetic_domains): ``domains[i]`` [N]
    # int64 indexes ``domain_names``; None for single-domain data (the ``domain`` partition needs it)
    domains: np.ndarray | None = None
    domain_names: list[str] | None = None

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
