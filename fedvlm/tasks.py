"""Tasks: what a dataset asks of a model and how its predictions are scored.

A dataset names its task; the task turns a table of scores (one row per test image, one column
per class, as the head's ``forward`` returns them) into metrics. ``classification`` scores top-1
accuracy; ``multilabel`` scores mAP, CF1 and OF1 (FedMPT's metrics) with sigmoid(score) >=
``eval.threshold`` (or the top-k classes) counted as predicted. ``retrieval`` reads a table of
embeddings instead of scores (one row per test image: the image's embedding and its captions',
as retrieval heads' ``forward`` returns them) and scores R@1/5/10 both ways and mR; ``expects``
says which kind of table a task reads, and a run refuses a head whose ``output_kind`` differs.
"""

from __future__ import annotations

import numpy as np
import torch

from fedvlm import metrics
from fedvlm.registry import Registry

TASKS: Registry = Registry("task")


class Task:
    primary: str = "accuracy"  # the headline metric (progress bar, per-client spread, report)
    expects: str = "scores"  # the heads' evaluation output this task reads (Head.output_kind)

    def __init__(self, threshold: float = 0.5, top_k: int | None = None):
        self.threshold, self.top_k = threshold, top_k

    def metrics(self, scores: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        raise NotImplementedError


@TASKS.register("classification")
class Classification(Task):
    primary = "accuracy"

    def metrics(self, scores, labels):
        if len(labels) == 0:
            return {}
        return {"accuracy": metrics.accuracy(scores, labels)}


@TASKS.register("multilabel")
class MultiLabel(Task):
    primary = "mAP"

    def metrics(self, scores, labels):
        if len(labels) == 0 or not bool((labels == 1).any()):
            return {}
        result = {"mAP": metrics.mean_average_precision(scores, labels)}
        f1 = metrics.multilabel_f1(torch.sigmoid(scores), labels, threshold=self.threshold, top_k=self.top_k)
        result.update({name: float(value) for name, value in f1.items()})
        return result


@TASKS.register("retrieval")
class Retrieval(Task):
    """Image-text retrieval (RDB Sec. 4.1, Eq. 15). ``table [N, 1 + K, D]``: row i holds image i's
    embedding and the embeddings of its K captions (all-zero rows where an image has fewer than
    K). Every image is ranked against every caption of the table and vice versa, batched
    (:func:`fedvlm.metrics.retrieval_recall`): an image is found at K when any of its captions is
    among its K nearest. Personalised tables hold a client's own test images, so its recall is
    over a smaller pool than the server model's."""

    primary = "mR"
    expects = "embeddings"
    ks = (1, 5, 10)

    def metrics(self, table, labels):
        if len(table) == 0:
            return {}
        if table.ndim != 3:
            raise ValueError(f"retrieval scores image and caption embeddings [N, 1 + K, D]; got a table of shape "
                             f"{tuple(table.shape)} (a classification head's scores?)")
        images, captions = table[:, 0], table[:, 1:]
        valid = captions.abs().sum(-1) > 0  # [N, K]
        owner = torch.arange(len(table)).unsqueeze(1).expand_as(valid)[valid]  # [T] image of each caption
        text = captions[valid]  # [T, D], image by image
        similarity = torch.nn.functional.normalize(images.float(), dim=-1) @ \
            torch.nn.functional.normalize(text.float(), dim=-1).T
        return metrics.retrieval_recall(similarity, owner, self.ks)


def spread(values: np.ndarray) -> dict[str, float]:
    """mean/min/max/std of per-client values, ignoring clients without a value (nan)."""
    valid = values[~np.isnan(values)]
    if valid.size == 0:
        return {}
    return {"mean": float(valid.mean()), "min": float(valid.min()), "max": float(valid.max()),
            "std": float(valid.std())}
