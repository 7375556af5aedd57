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

Server half, in the form of a reduction, so that no process needs another's client updates:

* :meth:`~AlgorithmConfig.client_terms`: what one client adds to the round's sums (FedAvg's
  ``n_i theta_i``, SCAFFOLD's ``y_i - x`` and ``dc_i``, DP-FedAvg's clipped delta), computed on the
  process where the client trained;
* :meth:`~AlgorithmConfig.server_step_from_sums`: the new global shared state and server state
  (momentum, Adam moments, SCAFFOLD's c, FedDyn's h) from the sums (:class:`RoundSums`), which a
  fixed-point all-reduce makes identical on every process (:mod:`fedvlm.algorithms.reduction`);
  :meth:`~AlgorithmConfig.server_step` is the same step on a list of updates in one process;
* :meth:`~AlgorithmConfig.init_server_state`, and :meth:`~AlgorithmConfig.round_metrics`:
  numbers logged with the round (DP's epsilon).

State is plain ``{key: tensor}`` so checkpoints stay ``weights_only``. Per-client state and extra
uploads are named ``"<kind>/<parameter name>"`` for each kind in :attr:`client_state` /
:attr:`uploads` and each shared parameter, each tensor of that parameter's per-client shape;
a client that has not trained yet starts from zeros (:func:`zeros_like_state`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import torch

from fedvlm.algorithms.reduction import sum_terms
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


@dataclass(frozen=True)
class RoundSums:
    """What the server step of a round knows: the sums over the round's clients of their
    :meth:`AlgorithmConfig.client_terms` (``{key: float64 tensor}``), and who they were."""

    tensors: Tensors
    clients: tuple[int, ...]  # the clients summed, in client order
    samples: tuple[int, ...]  # their sample counts n_i, in the same order

    @property
    def total_samples(self) -> int:
        return sum(self.samples)

    @property
    def participants(self) -> int:
        """Clients of the round that trained on something (n_i > 0)."""
        return sum(1 for n in self.samples if n > 0)


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
    # True: server_step needs every update, not sums (FedAWA's pairwise client-vector geometry);
    # the round gathers the participants' shared parameters to every rank for it
    needs_every_update: ClassVar[bool] = False

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

    def client_terms(self, current: Tensors, update: ClientUpdate) -> Tensors:
        """What ``update`` adds to the round's sums, ``{key: float64 tensor}`` (the same keys and
        shapes for every client, also one without samples); computed where the client trained.
        Default: ``n_i theta_i`` per shared name (FedAvg's numerator, :func:`weighted_terms`)."""
        return weighted_terms(current, update)

    def server_step_from_sums(self, current: Tensors, sums: RoundSums, server_state: Tensors,
                              round_info: ServerRound) -> tuple[Tensors, Tensors]:
        """New (global shared state, server state) from the round's sums. Default: FedAvg."""
        return weighted_mean(current, sums), server_state

    def server_step(self, current: Tensors, updates: list[ClientUpdate], server_state: Tensors,
                    round_info: ServerRound) -> tuple[Tensors, Tensors]:
        """The server step on a list of updates in one process: the numbers the reduction over
        processes gives (:func:`round_sums`)."""
        return self.server_step_from_sums(current, round_sums(self, current, updates), server_state, round_info)

    def round_metrics(self, server_state: Tensors, round_info: ServerRound) -> dict:
        """Numbers logged with the round (after its server step)."""
        return {}


def term_layout(algorithm: AlgorithmConfig, current: Tensors) -> Tensors:
    """The keys and shapes of ``algorithm``'s client terms (those of a client without samples):
    what a process without clients contributes to the collectives."""
    empty = ClientUpdate(-1, 0, current, zeros_like_state(algorithm.uploads, current))
    return {key: torch.zeros_like(value) for key, value in algorithm.client_terms(current, empty).items()}


def round_sums(algorithm: AlgorithmConfig, current: Tensors, updates: list[ClientUpdate]) -> RoundSums:
    """The round's sums over ``updates`` in one process (:func:`fedvlm.algorithms.reduction.sum_terms`
    with no collectives: the numbers any split over processes gives)."""
    tensors = sum_terms([algorithm.client_terms(current, u) for u in updates], term_layout(algorithm, current))
    ordered = sorted(updates, key=lambda u: u.client)
    return RoundSums(tensors, tuple(u.client for u in ordered), tuple(u.num_samples for u in ordered))


def weighted_mean(current: Tensors, sums: RoundSums, key: str = "weighted") -> Tensors:
    """theta = sum_i n_i theta_i / sum_i n_i, the sample-weighted mean of the shared parameters
    (FedRSCLIP Eq. 2; McMahan et al. 2017) from the sums ``"<key>/<name>"``, in float64 and then
    in the parameters' dtype. With no samples at all the current state is kept."""
    if sums.total_samples == 0:
        return {name: value.clone() for name, value in current.items()}
    return {name: (sums.tensors[f"{key}/{name}"] / sums.total_samples).to(value.dtype)
            for name, value in current.items()}


def weighted_terms(current: Tensors, update: ClientUpdate) -> Tensors:
    """``{"weighted/<name>": n_i theta_i}``: exact in float64 (a float32 times an integer below 2^29)."""
    return {f"weighted/{name}": update.num_samples * update.shared[name].double() for name in current}


def fedavg(current: Tensors, updates: list[ClientUpdate]) -> Tensors:
    """The sample-weighted mean of ``updates`` (:func:`weighted_mean` of their sums in one process)."""
    layout = {f"weighted/{name}": torch.zeros_like(value, dtype=torch.float64) for name, value in current.items()}
    tensors = sum_terms([weighted_terms(current, u) for u in updates], layout)
    return weighted_mean(current, RoundSums(tensors, tuple(u.client for u in updates),
                                            tuple(u.num_samples for u in updates)))
