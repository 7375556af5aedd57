"""FedNova (Wang et al., NeurIPS 2020, "Tackling the Objective Inconsistency Problem in
Heterogeneous Federated Optimization"), normalised averaging for clients that take different
numbers of local steps tau_i (stragglers, unequal data under ``local_epochs``).

FedAvg weights client i's change ``x - y_i`` by p_i = n_i / n, so a client that takes more steps
moves the global model further and the federation optimises a surrogate weighted by p_i tau_i
(Theorem 1). FedNova divides each change by the client's local work first (Eq. 6-7, with
a_i = [1, ..., 1] for local SGD, ||a_i||_1 = tau_i)::

    d_i = (x - y_i) / tau_i                    the client's average local gradient step
    x  <- x - tau_eff sum_i p_i d_i            tau_eff = sum_i p_i tau_i

over the clients of the round that took a step. With equal tau_i it is FedAvg. The clients train
exactly as in FedAvg; tau_i reaches the server as :attr:`ClientUpdate.steps`.

Local momentum: for local SGD with momentum rho the paper's a_i is
``[1 - rho^tau_i, ..., 1 - rho] / (1 - rho)``, ``||a_i||_1 = (tau_i - rho (1 - rho^tau_i) / (1 - rho)) / (1 - rho)``. An
algorithm section does not see the local optimizer's settings, so fedvlm applies the plain-SGD
normaliser tau_i whatever ``optim.momentum`` is: exact for ``optim.momentum: 0`` (with any rate
that is the same for every client of a round, ``optim.schedule_over: rounds``); with momentum
the ratio between two clients' normalisers differs from tau_i / tau_j by the transient
rho / (1 - rho) steps of the buffer, a small error once tau_i is well above that, and none at
all when every client takes the same number of steps. AdamW's steps have no a_i in the paper;
tau_i is used there too.
"""

from __future__ import annotations

from fedvlm.algorithms.base import ALGORITHMS, AlgorithmConfig


@ALGORITHMS.register("fednova")
class FedNova(AlgorithmConfig):
    """Both halves: FedAvg's client half, the normalised server step above."""

    def server_step(self, current, updates, server_state, round_info):
        if any(u.steps is None for u in updates):
            raise ValueError("fednova normalises by each client's local steps: build every ClientUpdate with steps=")
        participants = [u for u in updates if u.num_samples > 0 and u.steps > 0]
        total = sum(u.num_samples for u in participants)
        if not participants:
            return {name: value.clone() for name, value in current.items()}, server_state
        tau_eff = sum(u.num_samples / total * u.steps for u in participants)
        direction = {name: value.new_zeros(value.shape) for name, value in current.items()}
        for update in participants:  # client order: the sum does not depend on the processes
            weight = update.num_samples / total / update.steps  # p_i / tau_i
            for name in direction:
                direction[name] += weight * (current[name] - update.shared[name].to(current[name].dtype))
        return {name: current[name] - tau_eff * direction[name] for name in current}, server_state
