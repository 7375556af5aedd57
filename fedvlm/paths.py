"""Where fedvlm reads and writes by default: a ground-floor module, so that the dataset readers,
the feature caches, the tiny-CLIP builder and the W&B logger agree on one place without
importing one another.

=======================  ==============================  ===========================================
folder                   configured by                   default
=======================  ==============================  ===========================================
data root                ``data.root``, ``$FEDVLM_DATA``   ``./data``
cache root               ``runtime.cache_dir``,            ``~/.cache/fedvlm``
                         ``$FEDVLM_CACHE``
=======================  ==============================  ===========================================

A configured value wins over the environment variable, which wins over the default; an empty
variable counts as unset. Under the cache root: ``features/`` and ``captions/`` (the feature
caches, :mod:`fedvlm.backbone.cache`), ``composites/`` (RGB composites of multispectral bands),
``probe-world/``, ``wandb/`` and the tiny CLIP checkpoints built on first use.
"""

from __future__ import annotations

import os
from pathlib import Path


def data_root(configured: str | Path | None = None) -> Path:
    """The folder holding one folder per dataset."""
    return Path(configured or os.environ.get("FEDVLM_DATA") or "data")


def cache_root(configured: str | Path | None = None) -> Path:
    """The folder every cache of fedvlm lives under."""
    return Path(configured or os.environ.get("FEDVLM_CACHE") or Path.home() / ".cache" / "fedvlm")
