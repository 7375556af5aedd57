"""What every federated algorithm is: one object with a client half and a server half.

pfl-research's ``FederatedAlgorithm`` split, adapted to slots: the round loop
(:mod:`fedvlm.simulation`) and local training (:func:`fedvlm.client.training.train_pass`) call
these methods and know none of an algorithm's internals.

Client half (runs where the client trains; tensors are slot-stacked ``[S, ...]`` like the head's
parameters, and only the head's *shared* parameters are ever passed in):

* :meth:`~AlgorithmConfig.local_penalty`: an extra loss per slot ``[S]`` (FedProx, FedDyn);
* :meth:`~AlgorithmConfig.correct_gradients`: edits the slot gradients before each optimizer
  step (SCAFFOLD's ``g - c_i + c``);
* :meth:`~AlgorithmConfig.finish_client`: at the end of the client's round, what it uploads
  (its shared parameters, possibly changed, e.g. DP-FedAvg's clipped update) plus extra uploads
  (SCAFFOLD's control delta) and its new per-client state.

Server half (runs identically on every rank, on the round's updates in client order):

* :meth:`~AlgorithmConfig.init_server_state` and :meth:`~AlgorithmConfig.server_step`: the new
  global shared state and server state (momentum, Adam moments, SCAFFOLD's c, FedDyn's h);
* :meth:`~AlgorithmConfig.round_metrics`: numbers logged with the round (DP's epsilon).

State is plain ``{key: tensor}`` so checkpoints stay ``weights_only``. Per-client state and extra
uploads are named ``"<kind>/<parameter name>"`` for each kind in :attr:`client_state` /
:attr:`uploads` and each shared parameter, each tensor of that parameter's per-client shape;
a client that has not trained yet starts from zeros (:func:`zeros_like_state`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from fedvlm.sections import ComponentConfig
from fedvlm.registry import Registry

ALGORITHMS: Registry = Registry("algorithm")

Tensors = dict[str, torch.Tensor]


@dataclass(frozen=True)
class ClientUpdate:
    """What the server receives from one client: its shared parameters at the end of the round
    (after the client half's :meth:`AlgorithmConfig.finish_client`), the extra uploads, and the
    local steps it took (tau_i: fewer than a full round for a straggler; FedNova normalises by it)."""

    client: int
    num_samples: int
    shared: Tensors
    extras: Tensors = field(default_factory=dict)
    steps: int | None = None  # None: not recorded (FedNova refuses such an update)


@dataclass(frozen=True)
class ServerRound:
    """What the server knows about the round it aggregates."""

    index: int  # 0-based
    seed: int  # the experiment's seed (server-side randomness, e.g. DP noise)
    num_clients: int  # K, every client of the federation
    num_sampled: int  # clients drawn this round that report (dropped ones excluded; non-finite ones still counted)


def zeros_like_state(kinds: tuple[str, ...], shared: Tensors) -> Tensors:
    """``{"<kind>/<name>": zeros}`` for every kind and shared parameter ``shared[name]`` (one
    client's shape, or slot-stacked: the shape is kept)."""
    return {f"{kind}/{name}": torch.zeros_like(value) for kind in kinds for name, value in shared.items()}


def flat_norm(tensors: Tensors) -> torch.Tensor:
    """L2 norm over every tensor of a slot-stacked mapping ``{name: [S, ...]}`` -> ``[S]``."""
    squares = [value.double().pow(2).flatten(1).sum(1) for value in tensors.values()]
    return torch.stack(squares).sum(0).sqrt()


class AlgorithmConfig(ComponentConfig):
    """``algorithm:`` section; the object also implements the algorithm (both halves)."""

    aggregates: ClassVar[bool] = True  # False: shared parameters stay with each client
    client_state: ClassVar[tuple[str, ...]] = ()  # per-client state kinds, kept across rounds
    uploads: ClassVar[tuple[str, ...]] = ()  # extra upload kinds (each the size of the shared state)
    broadcasts: ClassVar[tuple[str, ...]] = ()  # extra download kinds (SCAFFOLD's server control)

    # ------------------------------------------------------------------ client half

    def local_penalty(self, shared: Tensors, global_shared: Tensors, client_state: Tensors | None = None,
                      server_state: Tensors | None = None) -> torch.Tensor | None:
        """Extra local loss per slot ``[S]`` from slot-stacked shared params ``{name: [S, ...]}``
        (None: no term). ``client_state`` is slot-stacked too."""
        return None

    def correct_gradients(self, grads: Tensors, client_state: Tensors, server_state: Tensors) -> None:
        """Edit the slot gradients ``{name: [S, ...]}`` in place before the optimizer step."""

    def finish_client(self, start: Tensors, end: Tensors, client_state: Tensors, lr_sum: torch.Tensor,
                      server_state: Tensors) -> tuple[Tensors, Tensors, Tensors]:
        """End of local training for the slots of a pass: ``start`` / ``end`` are the shared
        parameters ``[S, ...]`` before and after, ``lr_sum [S]`` the sum of each client's local
        learning rates (K * eta_l for a constant rate). Returns ``(uploaded shared parameters,
        extra uploads, new client state)``, all ``[S, ...]``."""
        return end, {}, client_state

    # ------------------------------------------------------------------ server half

    def init_server_state(self, global_shared: Tensors) -> Tensors:
        return {}

    def server_step(self, current: Tensors, updates: list[ClientUpdate], server_state: Tensors,
                    round_info: ServerRound) -> tuple[Tensors, Tensors]:
        """New (global shared state, server state) from the round's updates (client order)."""
        return self.aggregate(current, updates), server_state

    def aggregate(self, current: Tensors, updates: list[ClientUpdate]) -> Tensors:
        """The sample-weighted mean of the updates (the model FedAvg sends back)."""
        return fedavg(current, updates)

    def round_metrics(self, server_state: Tensors, round_info: ServerRound) -> dict:
        """Numbers logged with the round (after its server step)."""
        return {}


def fedavg(current: Tensors, updates: list[ClientUpdate]) -> Tensors:
    """Sample-weighted mean of the shared parameters: theta = sum_i (n_i / n) theta_i (FedRSCLIP
    Eq. 2; McMahan et al. 2017).

    Summed in the order given (client order), so the result does not depend on how clients
    were spread over processes. With no samples at all the current state is kept.
    """
    total = sum(u.num_samples for u in updates)
    if total == 0:
        return {name: value.clone() for name, value in current.items()}
    result = {name: torch.zeros_like(value) for name, value in current.items()}
    for update in updates:
        weight = update.num_samples / total
        for name in result:
            result[name] += weight * update.shared[name].to(result[name].dtype)
    return result


def uniform_mean(values: list[Tensors], like: Tensors) -> Tensors:
    """The unweighted mean ``1/|S| sum_i values_i`` (SCAFFOLD, FedDyn), summed in the given order;
    ``like`` when there is nothing to average."""
    if not values:
        return {name: torch.zeros_like(value) for name, value in like.items()}
    result = {name: torch.zeros_like(value) for name, value in like.items()}
    for entry in values:
        for name in result:
            result[name] += entry[name].to(result[name].dtype)
    return {name: value / len(values) for name, value in result.items()}
