"""A head's declared inputs (``Head.inputs``) -> the batch source it trains and is evaluated on.

The head says *what* its batches carry; this module decides *where from*, so that no head reads
data, the experiment config or Fabric:

=======================================  =====================================================
declared                                  source
=======================================  =====================================================
``image`` (+ ``patches``)                 :class:`~fedvlm.inputs.features.FeatureBatches`, the
                                          cached features (augmented views when configured)
``pixels``                                :class:`~fedvlm.inputs.features.PixelBatches`,
                                          decoded and preprocessed images
+ ``captions`` (``caption_tokens``,       wrapped in :class:`~fedvlm.inputs.captions.CaptionBatches`
  ``caption_token_ids``)
+ ``bands``                               wrapped in :class:`~fedvlm.inputs.bands.BandBatches`
=======================================  =====================================================

:func:`feature_request` says which cached features the inputs need (patch tokens, augmented
views) before they are computed; :func:`batch_source` builds the source from them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from fedvlm.inputs.bands import band_batches
from fedvlm.inputs.captions import caption_batches
from fedvlm.inputs.features import FeatureBatches, PixelBatches

if TYPE_CHECKING:
    from fedvlm.backbone.cache import FeatureTable
    from fedvlm.config import ExperimentConfig
    from fedvlm.data.types import LabelledImages

IMAGE_INPUTS = frozenset({"image", "patches", "pixels"})
CAPTION_INPUTS = frozenset({"captions", "caption_tokens", "caption_token_ids"})
KNOWN_INPUTS = IMAGE_INPUTS | CAPTION_INPUTS | {"bands"}


def check_inputs(head_class) -> frozenset[str]:
    """The head's declared inputs, refused (a programming error, not a user's) when one is unknown
    or caption details come without ``captions``."""
    inputs = frozenset(head_class.inputs)
    unknown = sorted(inputs - KNOWN_INPUTS)
    if unknown:
        raise TypeError(f"{head_class.__name__}.inputs: unknown {unknown}; expected some of {sorted(KNOWN_INPUTS)}")
    if inputs & CAPTION_INPUTS and "captions" not in inputs:
        raise TypeError(f"{head_class.__name__}.inputs: caption_tokens / caption_token_ids need captions")
    return inputs


def feature_request(head_class, augment_views: int) -> dict:
    """Keyword arguments for :func:`fedvlm.backbone.cache.image_features`: patch tokens only for
    heads that read them; no augmented views for pixel heads (they encode the images themselves)."""
    inputs = check_inputs(head_class)
    return {"patches": "patches" in inputs, "views": 0 if "pixels" in inputs else augment_views}


def batch_source(config: "ExperimentConfig", head_class, dataset: "LabelledImages", rows: np.ndarray, backbone,
                 features: "FeatureTable", labels: np.ndarray, train_labels: np.ndarray | None, device,
                 rank: int = 0, barrier=None):
    """The batch source of ``head_class`` over the table rows: ``rows`` are their dataset rows,
    ``features`` the cached image features of those rows (:func:`feature_request`), ``labels``
    theirs (``train_labels``: with some hidden, ``data.hidden_labels``). ``rank`` and ``barrier``
    let one process fill the caption cache on disk while the others wait."""
    inputs = check_inputs(head_class)
    as_tensor = lambda a: torch.from_numpy(a) if a is not None else None  # noqa: E731
    if "pixels" in inputs:
        source = PixelBatches([dataset.paths[i] for i in rows], backbone.preprocess, features.pooled,
                              torch.from_numpy(labels), device, as_tensor(train_labels))
    else:
        source = FeatureBatches(features.pooled, features.patches, torch.from_numpy(labels), device,
                                as_tensor(train_labels), features.view_pooled, features.view_patches,
                                placement=config.runtime.feature_table)
    if "captions" in inputs:
        source = caption_batches(source, dataset, rows, backbone, device, dataset_name=config.data.dataset,
                                 augment_views=config.data.augment_views, tokens="caption_tokens" in inputs,
                                 token_ids="caption_token_ids" in inputs, cache_mode=config.runtime.feature_cache,
                                 cache_dir=config.runtime.cache_dir, rank=rank, barrier=barrier)
    if "bands" in inputs:
        source = band_batches(source, dataset, rows, device, dataset_name=config.data.dataset,
                              **head_class.input_options(config.head)["bands"])
    return source
