"""The server side: aggregation algorithms, registered by name (``algorithm.name`` in a config).

The server only ever sees :class:`ClientUpdate` objects, which carry a client's *shared*
parameters and its sample count; private parameters never reach this module.

``fedavg``       weighted by the samples of the participating clients (FedRSCLIP Eq. 2, 6)
``fedprox``      FedAvg + mu/2 ||theta - theta_global||^2 on the shared parameters, locally
``local``        no aggregation: every client keeps and trains its own copy of everything
``centralized``  one client holding all training data (the papers' "Centralized" column)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from pydantic import Field

from fedvlm.config import ComponentConfig
from fedvlm.registry import Registry

ALGORITHMS: Registry = Registry("algorithm")


@dataclass(frozen=True)
class ClientUpdate:
    client: int
    num_samples: int
    shared: dict[str, torch.Tensor]


class AlgorithmConfig(ComponentConfig):
    """``algorithm:`` section; the object also implements the algorithm."""

    aggregates: ClassVar[bool] = True  # False: shared parameters stay with each client
    single_client: ClassVar[bool] = False  # True: all training data on one client

    def aggregate(self, current: dict[str, torch.Tensor], updates: list[ClientUpdate]) -> dict[str, torch.Tensor]:
        """New global shared state from the round's updates (given in client order)."""
        return fedavg(current, updates)

    def local_penalty(self, shared: dict[str, torch.Tensor], global_shared: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Extra local loss per slot ``[S]`` from slot-stacked shared params ``{name: [S, ...]}``."""
        return None


def fedavg(current: dict[str, torch.Tensor], updates: list[ClientUpdate]) -> dict[str, torch.Tensor]:
    """Sample-weighted mean of the shared parameters: theta = sum_i (n_i / n) theta_i (Eq. 2).

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


@ALGORITHMS.register("fedavg")
class FedAvg(AlgorithmConfig):
    pass


@ALGORITHMS.register("fedprox")
class FedProx(AlgorithmConfig):
    mu: float = Field(0.01, ge=0)

    def local_penalty(self, shared, global_shared):
        """FedProx's proximal term mu/2 * ||theta_k - theta_global||^2, per slot."""
        terms = [(value - global_shared[name].to(value.device).unsqueeze(0)).pow(2).flatten(1).sum(1)
                 for name, value in shared.items()]
        return 0.5 * self.mu * torch.stack(terms).sum(0)


@ALGORITHMS.register("local")
class LocalOnly(AlgorithmConfig):
    aggregates: ClassVar[bool] = False


@ALGORITHMS.register("centralized")
class Centralized(AlgorithmConfig):
    single_client: ClassVar[bool] = True
