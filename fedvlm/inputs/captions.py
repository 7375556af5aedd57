"""Image batches with their captions: the batch source of every retrieval head.

:class:`CaptionBatches` wraps the run's image batch source (cached features, or pixels for
full fine-tuning) and adds caption inputs to ``batch.extras``, always shaped ``[B, K, ...]``:

* training (``train=True``): K = 1, the pair's caption. Which of the image's captions is drawn
  per sample from the client's own random stream: :func:`fedvlm.client.training.train_pass`
  draws a "view" index per sample when the batch source reports ``num_views`` > 0, and here view
  v picks caption ``v mod n`` of the image (n = its caption count; ``num_views`` is a multiple of
  every count, so each of an image's captions is equally likely). So an epoch visits every image
  once with one of its captions, and batched and sequential training draw the same ones.
* evaluation: K = the most captions any image has; ``caption_valid [B, K]`` marks real ones.

Caption features come from the frozen text tower once (:mod:`fedvlm.backbone.text_cache`):
``caption_pooled [B, K, D]`` always; with ``tokens=True`` also the token outputs
``caption_tokens [B, K, L, D]`` and the word/sentence structure the hierarchical attention reads
(:func:`sentence_structure`); with ``token_ids=True`` the ids (heads that fine-tune the text tower).
"""

from __future__ import annotations

import numpy as np
import torch

from fedvlm.backbone.text_cache import CaptionFeatures, caption_features
from fedvlm.data.captioned import CaptionedImages
from fedvlm.errors import ConfigError

SENTENCE_END = (".", "!", "?", ";")


def sentence_end_ids(backbone) -> set[int]:
    """Token ids of the punctuation that ends a sentence, in the backbone's tokenizer."""
    ids = backbone.tokenize(list(SENTENCE_END))
    eot = backbone.eot_positions(ids)
    return {int(row[1]) for row, end in zip(ids, eot) if int(end) == 2}  # [SOT, punct, EOT]


def sentence_structure(token_ids: torch.Tensor, eot: torch.Tensor, end_ids: set[int]
                       ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split every caption into sentences of words, for hierarchical attention (RDB Sec. 3.2.2).

    Words are the token positions 1..eot (the EOT token, CLIP's summary of the caption, is the
    last word of the last sentence); a sentence ends after an end-of-sentence token (``. ! ? ;``)
    unless that token is the caption's last before EOT. Returns
    ``word_index [T, S, W]`` (token positions, -1 padding), ``word_count [T, S]`` and
    ``sentence_count [T]``, padded to the longest sentence and the most sentences of the set.
    """
    captions = []
    for ids, end in zip(token_ids.tolist(), eot.tolist()):
        sentences, current = [], []
        for position in range(1, end + 1):
            current.append(position)
            if ids[position] in end_ids and position < end - 1:
                sentences.append(current)
                current = []
        if current:
            sentences.append(current)
        captions.append(sentences)
    most_sentences = max((len(s) for s in captions), default=1)
    most_words = max((len(w) for s in captions for w in s), default=1)
    word_index = torch.full((len(captions), most_sentences, most_words), -1, dtype=torch.long)
    word_count = torch.zeros(len(captions), most_sentences, dtype=torch.long)
    for t, sentences in enumerate(captions):
        for s, words in enumerate(sentences):
            word_index[t, s, : len(words)] = torch.tensor(words)
            word_count[t, s] = len(words)
    return word_index, word_count, torch.tensor([len(s) for s in captions], dtype=torch.long)


class CaptionBatches:
    """``images``' batches plus each row's captions (see the module docstring).

    ``captions_of[row]``: caption indices (into ``features``) of the image at table row ``row``.
    """

    def __init__(self, images, features: CaptionFeatures, captions_of: list[np.ndarray], device,
                 tokens: bool = False, token_ids: bool = False, end_ids: set[int] | None = None):
        self.images, self.features, self.device = images, features, device
        self.tokens, self.token_ids = tokens, token_ids
        self.counts = np.array([len(c) for c in captions_of], dtype=np.int64)
        if (self.counts == 0).any():
            raise ValueError(f"image row {int(np.argmin(self.counts))} has no caption")
        self.captions_per_image = int(self.counts.max())
        self.table = np.full((len(captions_of), self.captions_per_image), -1, dtype=np.int64)  # [N, K]
        for row, captions in enumerate(captions_of):
            self.table[row, : len(captions)] = captions
        if tokens:
            self.word_index, self.word_count, self.sentence_count = sentence_structure(
                features.token_ids, features.eot, end_ids or set())

    @property
    def num_views(self) -> int:
        """Each image's captions are its "views": train_pass draws one per sample, uniformly in
        ``range(num_views)``, and view v picks caption ``v mod n``. The least common multiple of
        the caption counts makes that uniform over every image's own n captions (with the largest
        count alone, an image with 3 of 5 would draw its first two captions twice as often)."""
        return int(np.lcm.reduce(np.unique(self.counts)))

    def caption_rows(self, rows: np.ndarray, train: bool, views: np.ndarray | None) -> np.ndarray:
        """``[B, K]`` caption indices (-1: none) of the batch's image rows."""
        rows = np.asarray(rows)
        if not train:
            return self.table[rows]
        choice = np.zeros(len(rows), dtype=np.int64) if views is None else np.asarray(views) % self.counts[rows]
        return self.table[rows, choice][:, None]

    def batch(self, rows, slot, train: bool = True, views=None):
        batch = self.images.batch(rows, slot, train)  # image views are not used: views pick captions
        chosen = torch.from_numpy(self.caption_rows(rows, train, views))  # [B, K]
        valid = chosen >= 0
        index = chosen.clamp(min=0)
        extras = {"caption_valid": valid, "caption_index": chosen,
                  "caption_pooled": self.features.pooled[index].float() * valid.unsqueeze(-1)}
        if self.tokens:
            extras["caption_tokens"] = self.features.tokens[index].float()
            extras["word_index"] = self.word_index[index]
            extras["word_count"] = self.word_count[index] * valid.unsqueeze(-1)
            extras["sentence_count"] = self.sentence_count[index] * valid
        if self.token_ids:
            extras["caption_token_ids"] = self.features.token_ids[index]
        batch.extras.update({k: v.to(self.device) for k, v in extras.items()})
        return batch


def caption_batches(images, dataset, rows: np.ndarray, backbone, device, *, dataset_name: str, augment_views: int,
                    tokens: bool = False, token_ids: bool = False, cache_mode: str = "memory",
                    cache_dir: str | None = None, rank: int = 0, barrier=None) -> CaptionBatches:
    """The caption source over ``images`` (the run's image source; ``rows`` its dataset rows):
    each table row's captions, encoded once by the frozen text tower (cached like image features,
    ``cache_mode`` / ``cache_dir`` as ``runtime.feature_cache`` / ``runtime.cache_dir``).

    Refuses, in one line each, a dataset without captions and augmented image views (captions
    are the views of a retrieval batch, see :attr:`CaptionBatches.num_views`).
    """
    if not isinstance(dataset, CaptionedImages):
        raise ConfigError(f"data.dataset: {dataset_name} has no captions; retrieval heads need a caption "
                          "dataset (rsicd, rsitmd, synthetic_rsicd, synthetic_rsitmd)")
    if augment_views:
        raise ConfigError("data.augment_views: retrieval heads draw captions, not augmented image views; set 0")
    per_image = dataset.captions_of()
    used = [per_image[r] for r in rows]  # caption indices of each table row, into dataset.captions
    order = np.concatenate(used) if used else np.zeros(0, dtype=np.int64)
    texts = [dataset.captions[i] for i in order]
    features = caption_features(backbone, texts, tokens=tokens, mode=cache_mode, cache_dir=cache_dir, rank=rank,
                                barrier=barrier)
    bounds = np.cumsum([0] + [len(u) for u in used])
    captions_of = [np.arange(bounds[i], bounds[i + 1]) for i in range(len(used))]
    return CaptionBatches(images, features, captions_of, device, tokens=tokens, token_ids=token_ids,
                          end_ids=sentence_end_ids(backbone))
