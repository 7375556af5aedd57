"""Evaluation: the server model on the whole test split, and every client on its own test split.

Work is split over processes in units that do not depend on the process count (fixed test
batches; whole clients), and the integer counts are summed with an all-reduce, so the metrics
are identical whatever the number of processes.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from fedvlm.client.training import FeatureBatches
from fedvlm.heads.base import Head

Reduce = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def _correct(head: Head, data: FeatureBatches, rows: np.ndarray, slots: np.ndarray) -> np.ndarray:
    """1 where the prediction for each row is right."""
    batch = data.batch(rows, slots)
    return (head(batch).argmax(-1) == batch.labels).cpu().numpy()


@torch.no_grad()
def global_accuracy(head: Head, data: FeatureBatches, test_rows: np.ndarray, state: dict[str, torch.Tensor],
                    batch_size: int, rank: int = 0, world_size: int = 1, all_reduce: Reduce | None = None) -> float:
    """Top-1 accuracy of the model given by ``state`` (loaded in slot 0) on ``test_rows``."""
    head.write_slot(0, state)
    correct = torch.zeros(1, dtype=torch.int64)
    for number, start in enumerate(range(0, len(test_rows), batch_size)):
        if number % world_size == rank:
            rows = test_rows[start : start + batch_size]
            correct += int(_correct(head, data, rows, np.zeros(len(rows), dtype=np.int64)).sum())
    if world_size > 1:
        correct = all_reduce(correct)
    return float(correct.item()) / max(len(test_rows), 1)


@torch.no_grad()
def client_accuracies(head: Head, data: FeatureBatches, test_rows: list[np.ndarray],
                      state_of: Callable[[int], dict[str, torch.Tensor]], batch_size: int, rank: int = 0,
                      world_size: int = 1, all_reduce: Reduce | None = None) -> np.ndarray:
    """Accuracy of every client's personalised model on its own test rows: ``[K]`` (nan when a
    client has no test image). Client k is evaluated by process ``k % world_size``; clients are
    stacked ``head.num_slots`` at a time."""
    num_clients = len(test_rows)
    counts = torch.zeros(num_clients, 2, dtype=torch.int64)  # correct, total
    mine = [k for k in range(num_clients) if k % world_size == rank and len(test_rows[k])]
    for first in range(0, len(mine), head.num_slots):
        group = mine[first : first + head.num_slots]
        for slot, client in enumerate(group):
            head.write_slot(slot, state_of(client))
        rows = np.concatenate([test_rows[k] for k in group])
        slots = np.concatenate([np.full(len(test_rows[k]), slot) for slot, k in enumerate(group)])
        correct = np.concatenate([_correct(head, data, rows[i : i + batch_size], slots[i : i + batch_size])
                                  for i in range(0, len(rows), batch_size)])
        for slot, client in enumerate(group):
            counts[client, 0] = int(correct[slots == slot].sum())
            counts[client, 1] = int((slots == slot).sum())
    if world_size > 1:
        counts = all_reduce(counts)
    totals = counts[:, 1].double()
    accuracy = counts[:, 0].double() / totals.clamp(min=1)
    accuracy[totals == 0] = float("nan")
    return accuracy.numpy()


def summarize_clients(accuracies: np.ndarray) -> dict[str, float]:
    valid = accuracies[~np.isnan(accuracies)]
    if valid.size == 0:
        return {}
    return {"mean": float(valid.mean()), "min": float(valid.min()), "max": float(valid.max()),
            "std": float(valid.std())}
