"""FedProx (Li et al., MLSys 2020): FedAvg plus a proximal term on the client, Eq. (2)::

    min_theta  F_k(theta) + mu/2 ||theta - theta_global||^2      (shared parameters only)
"""

from __future__ import annotations

import torch
from pydantic import Field

from fedvlm.algorithms.base import ALGORITHMS, AlgorithmConfig


def proximal_term(shared: dict[str, torch.Tensor], global_shared: dict[str, torch.Tensor]) -> torch.Tensor:
    """``||theta_k - theta_global||^2`` per slot ``[S]`` from ``{name: [S, ...]}`` and ``{name: [...]}``."""
    terms = [(value - global_shared[name].to(value.device).unsqueeze(0)).pow(2).flatten(1).sum(1)
             for name, value in shared.items()]
    return torch.stack(terms).sum(0)


@ALGORITHMS.register("fedprox")
class FedProx(AlgorithmConfig):
    mu: float = Field(0.01, ge=0)  # the proximal weight (the paper tunes mu in {0.001, 0.01, 0.1, 1})

    def local_penalty(self, shared, global_shared, client_state=None, server_state=None):
        """FedProx's proximal term mu/2 * ||theta_k - theta_global||^2, per slot (Eq. 2)."""
        return 0.5 * self.mu * proximal_term(shared, global_shared)
