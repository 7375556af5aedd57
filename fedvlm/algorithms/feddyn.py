"""FedDyn (Acar et al., ICLR 2021, "Federated Learning Based on Dynamic Regularization",
Algorithm 1).

Client k, starting from the server model theta^{t-1}, minimises its loss plus a linear and a
quadratic term (Algorithm 1, line 5)::

    L_k(theta) - <grad L_k(theta_k^{t-1}), theta> + alpha/2 ||theta - theta^{t-1}||^2

and then updates its gradient state by the first-order condition of that problem (line 6)::

    grad L_k(theta_k^t) = grad L_k(theta_k^{t-1}) - alpha (theta_k^t - theta^{t-1})

The server, over the round's clients P_t with data and m clients in all (lines 8-9)::

    h^t     = h^{t-1} - alpha/m sum_{k in P_t} (theta_k^t - theta^{t-1})
    theta^t = 1/|P_t| sum_{k in P_t} theta_k^t - h^t / alpha

The gradient state and h start at zero, over the shared parameters only (private parameters are
not in the regulariser). The mean over P_t is unweighted, as in the paper.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field

from fedvlm.algorithms.base import ALGORITHMS, AlgorithmConfig, uniform_mean


@ALGORITHMS.register("feddyn")
class FedDyn(AlgorithmConfig):
    client_state: ClassVar[tuple[str, ...]] = ("gradient",)  # grad L_k(theta_k^{t-1})
    alpha: float = Field(0.01, gt=0)  # the paper searches alpha in {0.1, 0.01, 0.001}

    # ------------------------------------------------------------------ client half

    def local_penalty(self, shared, global_shared, client_state=None, server_state=None):
        """``-<g_k, theta> + alpha/2 ||theta - theta^{t-1}||^2`` per slot ``[S]`` (line 5)."""
        terms = []
        for name, value in shared.items():
            gradient = client_state[f"gradient/{name}"]
            linear = (gradient * value).flatten(1).sum(1)
            quadratic = (value - global_shared[name].to(value.device).unsqueeze(0)).pow(2).flatten(1).sum(1)
            terms.append(-linear + 0.5 * self.alpha * quadratic)
        return torch.stack(terms).sum(0)

    def finish_client(self, start, end, client_state, lr_sum, server_state):
        new_state = {f"gradient/{name}": client_state[f"gradient/{name}"] - self.alpha * (final - start[name])
                     for name, final in end.items()}  # line 6
        return end, {}, new_state

    # ------------------------------------------------------------------ server half

    def init_server_state(self, global_shared):
        return {f"h/{name}": torch.zeros_like(value) for name, value in global_shared.items()}

    def server_step(self, current, updates, server_state, round_info):
        participants = [u for u in updates if u.num_samples > 0]
        if not participants:
            return {name: value.clone() for name, value in current.items()}, server_state
        mean = uniform_mean([u.shared for u in participants], current)
        state, result = {}, {}
        for name, value in current.items():
            total = torch.zeros_like(value)
            for update in participants:
                total += update.shared[name].to(value.dtype) - value
            state[f"h/{name}"] = server_state[f"h/{name}"] - self.alpha / round_info.num_clients * total  # line 8
            result[name] = mean[name] - state[f"h/{name}"] / self.alpha  # line 9
        return result, state
