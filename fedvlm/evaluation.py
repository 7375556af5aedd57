"""Evaluation: the server model on the whole test split, and every client on its own test split.

Both produce a *score table* (one row per test image: the head's scores for every class, or
whatever the head's ``forward`` returns per image, e.g. a retrieval head's image and caption
embeddings ``[1 + K, D]``), which the task turns into metrics (:mod:`fedvlm.tasks`). Work is
split over processes in units that do not depend on the process count (fixed test batches;
whole clients); each process fills its rows
and leaves zeros elsewhere, and one all-reduce sums the tables: adding zeros is exact, so the
metrics are identical whatever the number of processes.
"""

from __future__ import annotations

import contextlib

from typing import Callable

import numpy as np
import torch

from fedvlm.heads.base import Head

Reduce = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()

def text_scope(head: Head):
    """Where evaluation may memoise the text tower (:meth:`FrozenCLIP.reuse_text`): every head whose
    prompts are the same for every image; not one whose text depends on the image (its memo
    would hash and keep B x C new prompt sets per batch and never hit)."""
    return contextlib.nullcontext() if head.text_per_image else head.backbone.reuse_text()

def _scores(head: Head, data, rows: np.ndarray, slots: np.ndarray) -> torch.Tensor:
    return head(data.batch(rows, slots, train=False)).float().cpu()


@torch.no_grad()
def server_scores(head: Head, data, test_rows: np.ndarray, state: dict[str, torch.Tensor], batch_size: int,
                  rank: int = 0, world_size: int = 1, all_reduce: Reduce | None = None) -> torch.Tensor:
    """``[len(test_rows), C]`` scores (``[len(test_rows), *row_shape]`` outputs) of the model given
    by ``state`` (loaded in slot 0)."""
    head.write_slot(0, state)
    table = None
    with text_scope(head):  # the prompts are fixed while the table is scored
        for number, start in enumerate(range(0, len(test_rows), batch_size)):
            if number % world_size != rank:
                continue
            rows = test_rows[start : start + batch_size]
            scores = _scores(head, data, rows, np.zeros(len(rows), dtype=np.int64))
            if table is None:
                table = torch.zeros(len(test_rows), *scores.shape[1:])
            table[start : start + len(rows)] = scores
    return _reduce(table, len(test_rows), head, data, all_reduce if world_size > 1 else None)


@torch.no_grad()
def client_scores(head: Head, data, test_rows: list[np.ndarray], state_of: Callable[[int], dict[str, torch.Tensor]],
                  batch_size: int, rank: int = 0, world_size: int = 1,
                  all_reduce: Reduce | None = None, clients: list[int] | None = None) -> torch.Tensor:
    """Scores of each of ``clients`` (default: every client; ids into ``test_rows``) with its own
    model on its own test rows, stacked in the order given: ``[sum_k len(test_rows[k]), C]``.
    Client k is evaluated by process ``k % world_size``, the one holding its private state;
    clients are stacked ``head.num_slots`` at a time, one forward pass per batch of their rows
    (the slots, as in training)."""
    clients = list(range(len(test_rows))) if clients is None else list(clients)
    offsets = dict(zip(clients, np.concatenate([[0], np.cumsum([len(test_rows[k]) for k in clients])]).tolist()))
    total = sum(len(test_rows[k]) for k in clients)
    mine = [k for k in clients if k % world_size == rank and len(test_rows[k])]
    table = None
    for first in range(0, len(mine), head.num_slots):
        group = mine[first : first + head.num_slots]
        for slot, client in enumerate(group):
            head.write_slot(slot, state_of(client))
        rows = np.concatenate([test_rows[k] for k in group])
        slots = np.concatenate([np.full(len(test_rows[k]), slot) for slot, k in enumerate(group)])
        with text_scope(head):  # this group's prompts are fixed while it is scored
            scores = torch.cat([_scores(head, data, rows[i : i + batch_size], slots[i : i + batch_size])
                                for i in range(0, len(rows), batch_size)])
        if table is None:
            table = torch.zeros(total, *scores.shape[1:])
        position = 0
        for client in group:
            count = len(test_rows[client])
            table[offsets[client] : offsets[client] + count] = scores[position : position + count]
            position += count
    return _reduce(table, total, head, data, all_reduce if world_size > 1 else None)


def _reduce(table: torch.Tensor | None, rows: int, head: Head, data,
            all_reduce: Reduce | None) -> torch.Tensor:
    if all_reduce is None:
        return table if table is not None else torch.zeros(rows, *head.output_shape(data))
    if table is None:  # this rank had nothing to evaluate; it still joins the collective
        table = torch.zeros(rows, *head.output_shape(data))
    return all_reduce(table)


def per_client_metrics(task, table: torch.Tensor, labels: torch.Tensor, test_rows: list[np.ndarray]) -> list[dict]:
    """The task's metrics of every client from the stacked table of :func:`client_scores`."""
    results, start = [], 0
    for rows in test_rows:
        results.append(task.metrics(table[start : start + len(rows)], labels[torch.from_numpy(rows)]) if len(rows) else {})
        start += len(rows)
    return results
