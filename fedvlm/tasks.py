"""Tasks: what a dataset asks of a model and how its predictions are scored.

A dataset names its task; the task turns a table of scores (one row per test image, one column
per class, as the head's ``forward`` returns them) into metrics. ``classification`` scores top-1
accuracy; ``multilabel`` scores mAP, CF1 and OF1 (FedMPT's metrics) with sigmoid(score) >=
``eval.threshold`` (or the top-k classes) counted as predicted. Tasks whose evaluation is not a
score table (retrieval) override :meth:`Task.evaluate_rows`.
"""

from __future__ import annotations

import numpy as np
import torch

from fedvlm import metrics
from fedvlm.registry import Registry

TASKS: Registry = Registry("task")


class Task:
    primary: str = "accuracy"  # the headline metric (progress bar, per-client spread, report)
    default_loss: str = "cross_entropy"

    def __init__(self, threshold: float = 0.5, top_k: int | None = None):
        self.threshold, self.top_k = threshold, top_k

    def metrics(self, scores: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        raise NotImplementedError


@TASKS.register("classification")
class Classification(Task):
    primary = "accuracy"
    default_loss = "cross_entropy"

    def metrics(self, scores, labels):
        if len(labels) == 0:
            return {}
        return {"accuracy": metrics.accuracy(scores, labels)}


@TASKS.register("multilabel")
class MultiLabel(Task):
    primary = "mAP"
    default_loss = "asl"

    def metrics(self, scores, labels):
        if len(labels) == 0 or not bool((labels == 1).any()):
            return {}
        result = {"mAP": metrics.mean_average_precision(scores, labels)}
        f1 = metrics.multilabel_f1(torch.sigmoid(scores), labels, threshold=self.threshold, top_k=self.top_k)
        result.update({name: float(value) for name, value in f1.items()})
        return result


def spread(values: np.ndarray) -> dict[str, float]:
    """mean/min/max/std of per-client values, ignoring clients without a value (nan)."""
    valid = values[~np.isnan(values)]
    if valid.size == 0:
        return {}
    return {"mean": float(valid.mean()), "min": float(valid.min()), "max": float(valid.max()),
            "std": float(valid.std())}
