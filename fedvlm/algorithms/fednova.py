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

import torch

from fedvlm.algorithms.base import ALGORITHMS, AlgorithmConfig, ClientUpdate, RoundSums


@ALGORITHMS.register("fednova")
class FedNova(AlgorithmConfig):
    """Both halves: FedAvg's client half, the normalised server step above, from three sums over
    the round's clients that took a step: ``sum_i n_i d_i`` per shared name, ``sum_i n_i`` and
    ``sum_i n_i tau_i`` (p_i = n_i / n, so tau_eff and sum_i p_i d_i are ratios of them)."""

    def client_terms(self, current, update: ClientUpdate):
        if update.num_samples > 0 and update.steps is None:
            raise ValueError("fednova normalises by each client's local steps: build every ClientUpdate with steps=")
        takes_part = update.num_samples > 0 and bool(update.steps)
        weight = update.num_samples / update.steps if takes_part else 0.0  # n_i / tau_i
        terms = {f"direction/{name}": weight * (value.double() - update.shared[name].double())
                 for name, value in current.items()}
        samples = float(update.num_samples) if takes_part else 0.0
        terms["samples"] = torch.tensor([samples], dtype=torch.float64)  # n_i
        terms["work"] = torch.tensor([samples * (update.steps if takes_part else 0)], dtype=torch.float64)
        return terms

    def server_step_from_sums(self, current, sums: RoundSums, server_state, round_info):
        total = float(sums.tensors["samples"])
        if total == 0:
            return {name: value.clone() for name, value in current.items()}, server_state
        tau_eff = float(sums.tensors["work"]) / total  # sum_i p_i tau_i
        return {name: (value.double() - tau_eff * sums.tensors[f"direction/{name}"] / total).to(value.dtype)
                for name, value in current.items()}, server_state
