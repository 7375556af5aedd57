"""Evaluation metrics: accuracy, multi-label mAP / CF1 / OF1, cross-modal retrieval R@K and mR.

Every metric is a fraction in [0, 1] (reports multiply by 100 to match the papers' tables).
Multi-label targets are ``[N, C]`` with 1 (present), 0 (absent) and -1 (unknown); unknown entries
are left out of every count, as they are left out of the loss.
"""

from __future__ import annotations

from typing import Literal, Sequence

import torch
from torch import Tensor


def accuracy(logits_or_predictions: Tensor, labels: Tensor) -> float:
    """Top-1 accuracy. logits_or_predictions: ``[N, C]`` scores or ``[N]`` class ids; labels: ``[N]``."""
    predictions = logits_or_predictions
    if predictions.ndim == labels.ndim + 1:
        predictions = predictions.argmax(dim=-1)
    return (predictions == labels).float().mean().item()


def mean_average_precision(scores: Tensor, targets: Tensor) -> float:
    """Macro mAP (FedMPT's mAP). scores: ``[N, C]`` (logits or probabilities); targets: ``[N, C]``.

    AP is computed per class over its known entries and averaged over the classes that have at
    least one known positive (AP is undefined without one: a client's test shard may miss a class).
    Tied scores are handled as scikit-learn's ``average_precision_score`` does.
    """
    # imported here: torchmetrics takes ~4 s to import (it pulls torchvision), which every CLI
    # command, including its one-line errors, would otherwise pay
    from torchmetrics.functional.classification import binary_average_precision, multilabel_average_precision

    has_positive = (targets == 1).any(dim=0)
    if not bool(has_positive.any()):
        raise ValueError("mean_average_precision needs at least one positive label")
    # AP depends only on the order of the scores. torchmetrics applies a sigmoid to scores outside
    # [0, 1], which in float32 rounds every logit above ~17 to 1.0 and ties them; ranks in [0, 1]
    # keep every order and every tie exactly.
    ranks = _dense_ranks(scores[:, has_positive])
    kept = targets[:, has_positive].long()
    if ranks.shape[1] == 1:  # torchmetrics' multilabel form needs at least two labels
        return binary_average_precision(ranks[:, 0], kept[:, 0], ignore_index=-1).item()
    per_class = multilabel_average_precision(ranks, kept, num_labels=ranks.shape[1], average="none", ignore_index=-1)
    return per_class.mean().item()


def _dense_ranks(scores: Tensor) -> Tensor:
    """Per column, the rank of each score among the column's distinct values, scaled into [0, 1]
    (equal scores share a rank): ``[N, C]`` -> ``[N, C]`` float64."""
    order = scores.argsort(dim=0)
    ordered = scores.gather(0, order)
    steps = torch.zeros_like(ordered, dtype=torch.long)
    steps[1:] = (ordered[1:] != ordered[:-1]).long()
    ranks = torch.empty_like(steps).scatter_(0, order, steps.cumsum(0))
    return ranks.double() / ranks.max().clamp(min=1)


def multilabel_f1(
    scores: Tensor,
    targets: Tensor,
    threshold: float = 0.5,
    top_k: int | None = None,
    cf1: Literal["f1_of_means", "mean_of_f1s"] = "f1_of_means",
) -> dict[str, float]:
    """Per-class (C) and overall (O) precision, recall and F1 of thresholded multi-label predictions.

    scores: ``[N, C]`` probabilities; targets: ``[N, C]`` in {1, 0, -1}.
    A label is predicted when its score is >= ``threshold``; with ``top_k`` set, the k highest
    scores of each sample are predicted instead and ``threshold`` is ignored (the "top-3"
    protocol of the multi-label literature).

    Returns CP, CR, CF1, OP, OR, OF1. CP and CR average the per-class precision and recall over
    all C classes (an undefined ratio counts as 0, like scikit-learn's ``zero_division=0``);
    OP and OR pool the counts of all classes (micro average).

    cf1 chooses between the two readings of "per-category F1". FedMPT reports CF1 "following
    [37]" (ML-VPT, CVPR 2025), which uses the convention of the multi-label recognition
    literature (ML-GCN onwards): CF1 = 2 CP CR / (CP + CR), the F1 of the mean per-class
    precision and recall. That is the default, "f1_of_means". "mean_of_f1s" is the mean of the
    per-class F1 scores, scikit-learn's ``f1_score(average="macro")`` and torchmetrics' macro F1.
    OF1 is the same under both.
    """
    predicted = _predicted_labels(scores, threshold, top_k)
    present, absent = targets == 1, targets == 0  # unknown (-1) entries are neither
    true_positives = (predicted & present).sum(dim=0).double()  # [C]
    false_positives = (predicted & absent).sum(dim=0).double()
    false_negatives = (~predicted & present).sum(dim=0).double()

    class_precision = _ratio(true_positives, true_positives + false_positives)
    class_recall = _ratio(true_positives, true_positives + false_negatives)
    cp, cr = class_precision.mean(), class_recall.mean()
    if cf1 == "f1_of_means":
        class_f1 = _harmonic_mean(cp, cr)
    elif cf1 == "mean_of_f1s":
        class_f1 = _ratio(2 * true_positives, 2 * true_positives + false_positives + false_negatives).mean()
    else:
        raise ValueError(f"cf1 must be 'f1_of_means' or 'mean_of_f1s', got {cf1!r}")

    overall_precision = _ratio(true_positives.sum(), (true_positives + false_positives).sum())
    overall_recall = _ratio(true_positives.sum(), (true_positives + false_negatives).sum())
    values = {
        "CP": cp,
        "CR": cr,
        "CF1": class_f1,
        "OP": overall_precision,
        "OR": overall_recall,
        "OF1": _harmonic_mean(overall_precision, overall_recall),
    }
    return {name: value.item() for name, value in values.items()}


def retrieval_recall(
    similarity: Tensor,
    text_to_image: Tensor,
    ks: Sequence[int] = (1, 5, 10),
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Image-text retrieval recall R@K both ways and their mean mR (RDB paper, Sec. 4 metrics).

    similarity: ``[N_images, N_texts]``; text_to_image: ``[N_texts]``, the image index of each
    caption (RSICD and RSITMD have 5 per image; every image needs at least one).

    image->text: an image is found at K when any of its captions is among its K most similar
    texts. text->image: a caption is found at K when its image is among its K most similar
    images. Ties count against the query: a wrong item scoring equal to the right one ranks
    ahead of it, so a constant similarity scores no better than chance.
    mR is the mean of all the R@K values of both directions (six for ks = 1, 5, 10).

    Returns ``{"i2t_R@1": ..., "t2i_R@1": ..., ..., "mR": ...}``. Ranks are computed with tensor
    ops, ``chunk_size`` queries at a time to bound memory at ``chunk_size x N`` booleans.
    """
    num_images, num_texts = similarity.shape
    text_to_image = text_to_image.to(device=similarity.device, dtype=torch.long)
    if text_to_image.shape != (num_texts,):
        raise ValueError(f"text_to_image must have shape ({num_texts},), got {tuple(text_to_image.shape)}")
    if bool((torch.bincount(text_to_image, minlength=num_images) == 0).any()):
        raise ValueError("every image needs at least one caption for image->text recall")

    image_ranks = torch.cat(
        [
            _image_to_text_ranks(similarity[start : start + chunk_size], text_to_image, start)
            for start in range(0, num_images, chunk_size)
        ]
    )
    text_ranks = torch.cat(
        [
            _text_to_image_ranks(similarity[:, start : start + chunk_size], text_to_image[start : start + chunk_size])
            for start in range(0, num_texts, chunk_size)
        ]
    )
    recalls = {f"i2t_R@{k}": (image_ranks < k).double().mean().item() for k in ks}
    recalls |= {f"t2i_R@{k}": (text_ranks < k).double().mean().item() for k in ks}
    recalls["mR"] = sum(recalls.values()) / len(recalls)
    return recalls


def _image_to_text_ranks(similarity: Tensor, text_to_image: Tensor, first_image: int) -> Tensor:
    """0-based rank of each image's best caption among texts of other images: ``[chunk, T]`` -> ``[chunk]``."""
    image_ids = torch.arange(first_image, first_image + similarity.shape[0], device=similarity.device)
    is_caption = text_to_image.unsqueeze(0) == image_ids.unsqueeze(1)  # [chunk, T]
    best_caption = similarity.masked_fill(~is_caption, float("-inf")).amax(dim=1, keepdim=True)
    # Other captions of the same image never push the best one out: finding any of them counts.
    return ((similarity >= best_caption) & ~is_caption).sum(dim=1)


def _text_to_image_ranks(similarity: Tensor, text_to_image: Tensor) -> Tensor:
    """0-based rank of each caption's image: ``[I, chunk]`` -> ``[chunk]``."""
    true_score = similarity.gather(0, text_to_image.unsqueeze(0))  # [1, chunk]
    return (similarity >= true_score).sum(dim=0) - 1  # minus the image itself


def _predicted_labels(scores: Tensor, threshold: float, top_k: int | None) -> Tensor:
    """Boolean ``[N, C]`` predictions."""
    if top_k is None:
        return scores >= threshold
    top = scores.topk(top_k, dim=1).indices
    return torch.zeros_like(scores, dtype=torch.bool).scatter_(1, top, True)


def _ratio(numerator: Tensor, denominator: Tensor) -> Tensor:
    """numerator / denominator, 0 where the denominator is 0."""
    return torch.where(denominator > 0, numerator / denominator.clamp(min=1e-12), torch.zeros_like(numerator))


def _harmonic_mean(precision: Tensor, recall: Tensor) -> Tensor:
    return _ratio(2 * precision * recall, precision + recall)
