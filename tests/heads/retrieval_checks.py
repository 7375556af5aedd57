"""A small image-caption batch source for the retrieval head tests: the random images of
``head_checks.TensorBatches`` (pooled features, patch tokens, pixels), two captions each, encoded
once by the tiny backbone, served by the real :class:`CaptionBatches`."""

from __future__ import annotations

import numpy as np

from head_checks import CLASSES, TensorBatches
from fedvlm.backbone.text_cache import encode_captions
from fedvlm.inputs.captions import CaptionBatches, sentence_end_ids

WORDS = ["cars parked in rows", "a red field. many trees", "ships at the pier", "a blue lake; two boats",
         "green forest", "houses in blocks. a road on the left. a pool"]


def caption_batches(backbone, count: int = 24, seed: int = 0) -> CaptionBatches:
    images = TensorBatches(backbone, count=count, seed=seed)
    captions = [f"{WORDS[(i + k) % len(WORDS)]} {CLASSES[i % len(CLASSES)]}." for i in range(count) for k in range(2)]
    features = encode_captions(backbone, captions, tokens=True)
    captions_of = [np.array([2 * i, 2 * i + 1]) for i in range(count)]
    return CaptionBatches(images, features, captions_of, "cpu", tokens=True, token_ids=True,
                          end_ids=sentence_end_ids(backbone))
