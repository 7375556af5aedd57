"""Local training: a group of clients trained together, each exactly as if it were alone.

The clients of a pass occupy the slots of the head and of the :class:`SlotOptimizer`. At local
step t every client that still has a batch contributes it; the per-slot losses are summed
(each slot's parameters only receive their own loss's gradient) and one optimizer step updates
every active slot. A client's batches come from its own generator, seeded by (seed, round,
client), so its trajectory does not depend on which other clients share the pass or the process.
``runtime.execution: sequential`` is the same code with passes of one client.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from fedvlm.client.optim import SlotOptimizer
from fedvlm.heads.base import Head


@dataclass
class ClientTask:
    client: int
    indices: np.ndarray  # rows of the feature table this client trains on
    start: dict[str, torch.Tensor]  # every trainable parameter at the start of the round
    optimizer_state: dict[str, torch.Tensor] | None  # None: a fresh optimizer


@dataclass
class ClientResult:
    client: int
    num_samples: int
    params: dict[str, torch.Tensor]
    optimizer_state: dict[str, torch.Tensor] | None
    loss: float  # mean of the client's per-step losses (nan when it trained on nothing)
    steps: int


def client_generator(seed: int, round_index: int, client: int, stream: int = 0) -> np.random.Generator:
    """The client's own random stream for a round (0: batch order, 1: augmented-view choice)."""
    return np.random.default_rng([int(seed), int(round_index), int(client), 0x5EED, stream])


def local_step_count(num_samples: int, batch_size: int, epochs: int, steps: int | None) -> int:
    """How many local steps a client with ``num_samples`` takes per round: ``len(batch_schedule(...))``."""
    if num_samples == 0:
        return 0
    return steps if steps is not None else epochs * -(-num_samples // batch_size)


def batch_schedule(indices: np.ndarray, batch_size: int, epochs: int, steps: int | None,
                   rng: np.random.Generator) -> list[np.ndarray]:
    """The client's batches for one round: ``epochs`` shuffled passes over its data, or exactly
    ``steps`` batches (reshuffling whenever the data runs out). The last batch of an epoch may
    be smaller (no sample is dropped)."""
    if len(indices) == 0:
        return []
    batches: list[np.ndarray] = []
    while True:
        order = indices[rng.permutation(len(indices))]
        batches.extend(order[i : i + batch_size] for i in range(0, len(order), batch_size))
        if steps is None and len(batches) >= epochs * -(-len(indices) // batch_size):
            return batches
        if steps is not None and len(batches) >= steps:
            return batches[:steps]


def train_pass(head: Head, optimizer: SlotOptimizer, tasks: list[ClientTask], data, *,
               batch_size: int, epochs: int, steps: int | None, lr: float | Callable[[int, int], float], seed: int,
               round_index: int, penalty=None, global_shared: dict[str, torch.Tensor] | None = None
               ) -> list[ClientResult]:
    """Train ``tasks`` (at most ``head.num_slots`` clients) for one round, together.

    ``lr``: a constant, or ``lr(step, client_steps)``, the rate of a client's local step ``step``
    when it takes ``client_steps`` steps this round (:func:`fedvlm.client.optim.learning_rate`).
    ``penalty(shared_params, global_shared) -> [S] | None`` adds an algorithm's local term
    (FedProx's proximal term) to every slot's loss.
    """
    assert len(tasks) <= head.num_slots
    device = next(iter(head.trainable().values())).device
    head.begin_pass([task.client for task in tasks])
    for slot, task in enumerate(tasks):
        head.write_slot(slot, task.start)
        optimizer.write_slot(slot, task.optimizer_state)
    schedules = [batch_schedule(t.indices, batch_size, epochs, steps, client_generator(seed, round_index, t.client))
                 for t in tasks]
    num_steps = max((len(s) for s in schedules), default=0)
    num_views = getattr(data, "num_views", 0)
    view_streams = [client_generator(seed, round_index, t.client, stream=1) for t in tasks]
    losses = torch.zeros(head.num_slots, dtype=torch.float64)
    params = head.trainable()
    shared_names = head.shared_names()
    # [steps, S]: each slot follows its own client's schedule (one transfer per pass, none per step)
    schedule_of = lr if callable(lr) else (lambda step, client_steps: lr)
    rates = torch.tensor([[float(schedule_of(step, len(schedules[slot]))) if slot < len(schedules) else 0.0
                           for slot in range(head.num_slots)] for step in range(num_steps)],
                         dtype=torch.float32).reshape(num_steps, head.num_slots).to(device)
    head.train()
    for step in range(num_steps):
        live = [slot for slot, schedule in enumerate(schedules) if step < len(schedule)]
        active = torch.zeros(head.num_slots, dtype=torch.bool, device=device)
        active[live] = True
        rows = np.concatenate([schedules[slot][step] for slot in live])
        slots = np.concatenate([np.full(len(schedules[slot][step]), slot) for slot in live])
        # each sample sees one of the precomputed augmented views, drawn from its client's stream
        views = np.concatenate([view_streams[slot].integers(num_views, size=len(schedules[slot][step]))
                                for slot in live]) if num_views else None
        per_slot = head.training_loss(data.batch(rows, slots, views=views))  # [S]
        if penalty is not None and global_shared is not None:
            extra = penalty({name: params[name] for name in shared_names}, global_shared)
            if extra is not None:
                per_slot = per_slot + extra
        per_slot = per_slot * active  # slots without a batch contribute nothing
        grads = torch.autograd.grad(per_slot.sum(), list(params.values()), allow_unused=True)
        grads = {name: g if g is not None else torch.zeros_like(p) for (name, p), g in zip(params.items(), grads)}
        optimizer.step(grads, rates[step], active)
        head.after_step(active)
        losses += per_slot.detach().double().cpu()
    head.eval()
    results = []
    for slot, (task, schedule) in enumerate(zip(tasks, schedules)):
        results.append(ClientResult(
            client=task.client, num_samples=len(task.indices), params=head.read_slot(slot),
            optimizer_state=optimizer.read_slot(slot),
            loss=float(losses[slot] / len(schedule)) if schedule else float("nan"), steps=len(schedule)))
    return results
