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

from fedvlm.algorithms.base import ALGORITHMS, AlgorithmConfig


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

    def client_terms(self, current, update):
        """``theta_k^t`` and ``theta_k^t - theta^{t-1}`` of a client with data (P_t); zeros otherwise."""
        has_data = update.num_samples > 0
        terms = {}
        for name, value in current.items():
            final = update.shared[name].double()
            terms[f"params/{name}"] = final if has_data else torch.zeros_like(final)
            terms[f"change/{name}"] = final - value.double() if has_data else torch.zeros_like(final)
        return terms

    def server_step_from_sums(self, current, sums, server_state, round_info):
        if sums.participants == 0:
            return {name: value.clone() for name, value in current.items()}, server_state
        state, result = {}, {}
        for name, value in current.items():
            h = server_state[f"h/{name}"].double() - self.alpha / round_info.num_clients * sums.tensors[f"change/{name}"]
            state[f"h/{name}"] = h.to(server_state[f"h/{name}"].dtype)  # line 8
            mean = sums.tensors[f"params/{name}"] / sums.participants
            result[name] = (mean - h / self.alpha).to(value.dtype)  # line 9
        return result, state
