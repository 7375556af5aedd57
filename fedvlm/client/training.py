"""Local training: a group of clients trained together, each exactly as if it were alone.

The clients of a pass occupy the slots of the head and of the :class:`SlotOptimizer`. At local
step t every client that still has a batch contributes it; the per-slot losses are summed
(each slot's parameters only receive their own loss's gradient) and one optimizer step updates
every active slot. A client's batches come from its own generator, seeded by (seed, round,
client), so its trajectory does not depend on which other clients share the pass or the process.
``runtime.execution: sequential`` is the same code with passes of one client.

The algorithm's client half (:mod:`fedvlm.algorithms.base`) acts at three points: its local
penalty joins every slot's loss, its gradient correction edits the slot gradients before each
step, and at the end of the pass it turns each client's trained shared parameters into what the
client uploads and its new per-client state. That state is stacked into slots ``[S, ...]`` like
the head's parameters for the pass, and read back per client.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch

from fedvlm.algorithms import AlgorithmConfig, zeros_like_state
from fedvlm.client.optim import SlotOptimizer
from fedvlm.heads.base import Head

if TYPE_CHECKING:
    from fedvlm.client.module import HeadModule


@dataclass
class ClientTask:
    client: int
    indices: np.ndarray  # rows of the feature table this client trains on
    start: dict[str, torch.Tensor]  # every trainable parameter at the start of the round
    optimizer_state: dict[str, torch.Tensor] | None  # None: a fresh optimizer
    algorithm_state: dict[str, torch.Tensor] | None = None  # the algorithm's per-client state; None: zeros
    # the local steps this client completes this round (a straggler's share of them, fedvlm.simulation.RoundPlan);
    # None: the round's local epochs / steps
    steps: int | None = None


@dataclass
class ClientResult:
    client: int
    num_samples: int
    params: dict[str, torch.Tensor]
    optimizer_state: dict[str, torch.Tensor] | None
    loss: float  # mean of the client's per-step losses (nan when it trained on nothing)
    steps: int
    extras: dict[str, torch.Tensor] = field(default_factory=dict)  # the algorithm's extra uploads
    algorithm_state: dict[str, torch.Tensor] = field(default_factory=dict)  # its new per-client state


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


def train_pass(model: "HeadModule | Head", optimizer: SlotOptimizer, tasks: list[ClientTask], data, *,
               batch_size: int, epochs: int, steps: int | None, lr: float | Callable[[int, int], float], seed: int,
               round_index: int, algorithm: AlgorithmConfig | None = None,
               global_shared: dict[str, torch.Tensor] | None = None,
               server_state: dict[str, torch.Tensor] | None = None, fabric=None) -> list[ClientResult]:
    """Train ``tasks`` (at most ``num_slots`` clients) for one round, together, by driving the
    :class:`~fedvlm.client.module.HeadModule`'s hooks (a bare head is wrapped in one).

    ``lr``: a constant, or ``lr(step, client_steps)``, the rate of a client's local step ``step``
    when it takes ``client_steps`` steps this round (:func:`fedvlm.client.optim.learning_rate`).
    ``algorithm`` (None: plain local training) supplies the client half, given the round's
    ``global_shared`` and ``server_state`` (the algorithm's server state, e.g. SCAFFOLD's c).
    ``fabric``: its ``backward`` is used (the module is never set up by it: no DDP wrapper).

    Everything a step needs from the CPU schedule (rates, active masks) goes to the device once
    per pass; the slot losses stay on the device until the pass ends: no host sync per step.
    """
    from fedvlm.client.module import HeadModule  # the module imports this package's optimizer

    module = model if isinstance(model, HeadModule) else HeadModule(head=model)
    head = module.head
    assert len(tasks) <= head.num_slots
    device = next(iter(head.trainable().values())).device
    head.begin_pass([task.client for task in tasks])
    params = head.trainable()
    shared_names = head.shared_names()
    client_state = _stacked_state(algorithm, tasks, {n: params[n].detach()[0] for n in shared_names},
                                  head.num_slots, device)
    module.load_clients([task.start for task in tasks], optimizer, [task.optimizer_state for task in tasks],
                        client_state)
    module.algorithm, module.global_shared, module.server_state = algorithm, global_shared, server_state or {}
    # A straggler's batches are the first `task.steps` of a full round's (batch_schedule draws
    # the same permutations either way), and its rates those of a full round's first steps: it
    # is the same client, interrupted. `planned` is every client's full round.
    planned = [local_step_count(len(t.indices), batch_size, epochs, steps) for t in tasks]
    schedules = [batch_schedule(t.indices, batch_size, epochs, steps if t.steps is None else min(t.steps, full),
                                client_generator(seed, round_index, t.client)) for t, full in zip(tasks, planned)]
    num_steps = max((len(s) for s in schedules), default=0)
    num_views = getattr(data, "num_views", 0)
    view_streams = [client_generator(seed, round_index, t.client, stream=1) for t in tasks]
    # [steps, S]: each slot follows its own client's schedule (one transfer per pass, none per step)
    schedule_of = lr if callable(lr) else (lambda step, client_steps: lr)
    rates = torch.tensor([[float(schedule_of(step, planned[slot])) if slot < len(schedules) else 0.0
                           for slot in range(head.num_slots)] for step in range(num_steps)],
                         dtype=torch.float32).reshape(num_steps, head.num_slots).to(device)
    actives = torch.tensor([[slot < len(schedules) and step < len(schedules[slot]) for slot in range(head.num_slots)]
                            for step in range(num_steps)], dtype=torch.bool).reshape(num_steps, head.num_slots)
    actives = actives.to(device)
    backward = fabric.backward if fabric is not None else torch.Tensor.backward
    # the head alone: the backbone is pinned to eval mode, and walking its modules every pass costs ~1 ms
    head.train()
    for step in range(num_steps):
        live = [slot for slot, schedule in enumerate(schedules) if step < len(schedule)]
        rows = np.concatenate([schedules[slot][step] for slot in live])
        slots = np.concatenate([np.full(len(schedules[slot][step]), slot) for slot in live])
        # each sample sees one of the precomputed augmented views, drawn from its client's stream
        views = np.concatenate([view_streams[slot].integers(num_views, size=len(schedules[slot][step]))
                                for slot in live]) if num_views else None
        module.active = actives[step]
        optimizer.slot_rates = rates[step]
        loss = module.training_step(data.batch(rows, slots, views=views), step)
        backward(loss)
        module.on_before_optimizer_step(optimizer)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        module.on_train_batch_end(loss, None, step)
    head.eval()
    losses = module.slot_loss.cpu()  # the pass's one device-to-host copy of the losses
    uploads, extras, new_state = _finish_clients(algorithm, tasks, schedules, planned, schedule_of, params,
                                                 shared_names, module.client_state, module.server_state)
    results = []
    trained_slots = module.read_clients(len(tasks), optimizer)
    for slot, (task, schedule) in enumerate(zip(tasks, schedules)):
        trained, optimizer_state = trained_slots[slot]
        trained.update({name: value[slot].detach().clone() for name, value in uploads.items()})
        results.append(ClientResult(
            client=task.client, num_samples=len(task.indices), params=trained,
            optimizer_state=optimizer_state,
            loss=float(losses[slot] / len(schedule)) if schedule else float("nan"), steps=len(schedule),
            extras={k: v[slot].detach().clone() for k, v in extras.items()},
            algorithm_state={k: v[slot].detach().clone() for k, v in new_state.items()}))
    return results


def _stacked_state(algorithm: AlgorithmConfig | None, tasks: list[ClientTask], shared: dict[str, torch.Tensor],
                   num_slots: int, device) -> dict[str, torch.Tensor]:
    """The tasks' per-client algorithm states stacked into slots ``{key: [S, ...]}`` (zeros for a
    client without one and for empty slots); ``shared`` gives one client's shared parameters."""
    if algorithm is None or not algorithm.client_state:
        return {}
    fresh = zeros_like_state(algorithm.client_state, shared)
    states = [task.algorithm_state or fresh for task in tasks]
    return {key: torch.stack([state[key].to(device) for state in states]
                             + [torch.zeros_like(example, device=device)] * (num_slots - len(tasks)))
            for key, example in fresh.items()}


@torch.no_grad()
def _finish_clients(algorithm: AlgorithmConfig | None, tasks: list[ClientTask], schedules, planned, schedule_of,
                    params, shared_names: list[str], client_state: dict[str, torch.Tensor],
                    server_state: dict[str, torch.Tensor]):
    """The client half's end of the round, over the pass's clients at once: (uploaded shared
    parameters, extra uploads, new per-client state), each ``{key: [len(tasks), ...]}``. Without
    an algorithm (or clients) the trained parameters are uploaded as they are."""
    if algorithm is None or not tasks or not shared_names:
        return {}, {}, {}
    count = len(tasks)
    device = params[shared_names[0]].device
    start = {n: torch.stack([task.start[n].to(device) for task in tasks]) for n in shared_names}
    end = {n: params[n].detach()[:count] for n in shared_names}
    # sum of the rates of the local steps each client took, in float64 (K * eta_l for a constant rate)
    lr_sum = torch.tensor([sum(float(schedule_of(step, full)) for step in range(len(s)))
                           for s, full in zip(schedules, planned)],
                          dtype=torch.float64, device=device)
    state = {k: v[:count] for k, v in client_state.items()}
    uploads, extras, new_state = algorithm.finish_client(start, end, state, lr_sum, server_state)
    uploads = {} if uploads is end else uploads  # unchanged: the trained parameters travel as read
    return uploads, extras, new_state
