"""FedAWA: adaptive aggregation weights from client vectors (Shi et al., CVPR 2025,
"FedAWA: Adaptive Optimization of Aggregation Weights in Federated Learning Using Client Vectors").

The clients train as in FedAvg. The server, instead of weighting client k by n_k / n, learns the
weights lambda on the simplex from the *client vectors*, the change each participating client
made to the global model it received (all shared parameters flattened into one vector)::

    tau_k = theta_k - theta_g                   client vector         (paper Eq. 1)
    tau_g = sum_k lambda_k tau_k                 global vector         (paper Eq. 1)
    lambda = softmax(T)                          on the simplex; T one logit per client

    L(T) = sum_k lambda_k ||tau_k - tau_g||_2               alignment of client and global vectors
         + sum_k lambda_k d(theta_g, theta_k)                 regulariser, d = 1 - cos (``reg_distance: cos``)
                                                              or mean_i |theta_g,i - theta_k,i|^2 (``euc``)
                                                                                         (paper Eq. 3)

``server_epochs`` Adam steps on T minimise L; the new global model is the lambda-weighted mean
``theta_g <- sum_k lambda_k theta_k = theta_g + tau_g``. A client whose update points where the
weighted consensus points, and whose model stays close to the global one, gets more weight.

Choices where the paper leaves room (the official repository, ChanglongShi/FedAWA, is not in the
reference corpus; these follow the public ports of its ``server_funct.py``, read with the search
tool, and are fedvlm's own where those are silent):

* **Defaults**: ``server_epochs`` 1, ``server_lr`` 0.01, Adam (torch's betas 0.9 / 0.999, eps
  1e-8), ``reg_distance: cos``: the ports' defaults.
* **Initial logits** T_k = log n_k, so that before any step lambda is FedAvg's n_k / n (the ports
  do this); a client's logit is set so the first time it takes part.
* **State across rounds**: the logits and Adam's moments persist over the run (the ports keep one
  optimizer over the logits for the whole run). Under partial participation the softmax runs over
  the round's participants only, and each client's logit is its own Adam parameter, stepped (and
  its step count advanced) only in rounds it takes part in, as ``torch.optim.Adam`` skips a
  parameter without gradient. With every client in every round this is exactly one
  ``torch.optim.Adam`` over the logits for the whole run (tests/algorithms/test_fedawa.py).
* **theta_g in the regulariser** is the global model the clients received this round (the ports'
  ``global_flat``), so the term is linear in lambda: it favours clients whose parameters stay at a
  small angle to it. The ports' ``gamma`` (scaled, then renormalised: a no-op) is left out, and so
  is the layer-wise FedAWA-L (one weight per client and tensor).
* Clients without samples carry no update and are left out; one participant gets weight 1.

Only shared parameters reach the server (``ClientUpdate.shared``); private ones never enter a
client vector, the weights or the aggregate. The server state is six vectors over every client of
the federation (``clients/logit``, ``clients/first_moment``, ``clients/second_moment``,
``clients/steps``, ``clients/seen``, ``clients/last_weight``), replicated on every rank and
checkpointed like the other algorithms' state. Unlike the other algorithms, whose server steps
need only sums over the clients (one fixed-point reduction, fedvlm.algorithms.reduction), FedAWA
needs every participant's shared parameters (``needs_every_update``): they are gathered to every
rank in client order and each rank runs the same server step on the same numbers.
``round_metrics`` logs the effective number of clients of the last aggregate, 1 / sum lambda_k^2
(``fedawa/effective_clients``) and its largest weight (``fedawa/max_weight``).

The alignment term is computed from the Gram matrix G = [<tau_j, tau_k>] of the client vectors,
``||tau_k - tau_g||^2 = G_kk - 2 (G lambda)_k + lambda^T G lambda``, summed tensor by tensor: no
vector of every shared parameter is ever concatenated (the full-model baseline has 86 M).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
from pydantic import Field

from fedvlm.algorithms.base import ALGORITHMS, AlgorithmConfig, ClientUpdate, ServerRound

LOGIT, FIRST, SECOND, STEPS, SEEN, LAST = ("clients/logit", "clients/first_moment", "clients/second_moment",
                                           "clients/steps", "clients/seen", "clients/last_weight")
BETA1, BETA2, EPSILON = 0.9, 0.999, 1e-8  # torch.optim.Adam's defaults


def client_geometry(current: dict[str, torch.Tensor], updates: list[ClientUpdate], reg_distance: str
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(G [K, K], d [K])`` in float64: the Gram matrix of the client vectors tau_k = theta_k -
    theta_g and the regulariser's distance d(theta_g, theta_k), each accumulated over the shared
    tensors (the same numbers as on the concatenated vectors)."""
    count = len(updates)
    gram = torch.zeros(count, count, dtype=torch.float64)
    dot = torch.zeros(count, dtype=torch.float64)  # <theta_g, theta_k>
    norm_k = torch.zeros(count, dtype=torch.float64)  # ||theta_k||^2
    squared = torch.zeros(count, dtype=torch.float64)  # ||theta_g - theta_k||^2
    norm_g, size = torch.zeros((), dtype=torch.float64), 0
    for name, value in current.items():
        g = value.detach().double().flatten().cpu()
        stacked = torch.stack([u.shared[name].detach().double().flatten().cpu() for u in updates])  # [K, n]
        vectors = stacked - g
        gram += vectors @ vectors.T
        dot += stacked @ g
        norm_k += stacked.pow(2).sum(1)
        squared += vectors.pow(2).sum(1)
        norm_g += g.pow(2).sum()
        size += g.numel()
    if reg_distance == "cos":  # 1 - cos, with torch.nn.CosineSimilarity's eps on each norm
        distance = 1 - dot / (norm_g.sqrt().clamp(min=1e-8) * norm_k.sqrt().clamp(min=1e-8))
    else:
        distance = squared / max(size, 1)
    return gram, distance


def fedawa_loss(logits: torch.Tensor, gram: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
    """L(T) of the module docstring from ``logits [K]``, the Gram matrix ``[K, K]`` and the
    distances ``[K]``: sum_k lambda_k ||tau_k - tau_g|| + sum_k lambda_k d_k, lambda = softmax(T)."""
    weights = torch.softmax(logits, dim=0)
    spread = gram.diagonal() - 2 * gram @ weights + weights @ gram @ weights  # ||tau_k - tau_g||^2
    # clamp: rounding can make a zero distance slightly negative; its gradient is then 0, not NaN
    return (weights * spread.clamp(min=1e-30).sqrt()).sum() + (weights * distance).sum()


@ALGORITHMS.register("fedawa")
class FedAWA(AlgorithmConfig):
    # the Gram matrix of the client vectors is pairwise, not a sum over clients: the server step
    # needs every update (their shared parameters, gathered to every rank; no private tensor)
    needs_every_update: ClassVar[bool] = True

    server_epochs: int = Field(1, ge=1)  # Adam steps on the logits per round
    server_lr: float = Field(0.01, gt=0)  # Adam's learning rate on the logits
    reg_distance: Literal["cos", "euc"] = "cos"

    # one value per client of the federation each (see the module docstring)
    state_keys: ClassVar[tuple[str, ...]] = (LOGIT, FIRST, SECOND, STEPS, SEEN, LAST)

    def init_server_state(self, global_shared):
        return {}  # sized on the first server step, when the number of clients is known

    def weights(self, current: dict[str, torch.Tensor], updates: list[ClientUpdate], server_state: dict,
                num_clients: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(lambda [P], new server state)`` for the P updates given (clients with samples)."""
        # on the CPU: a few numbers per client (a resumed run's state arrives on the run's device)
        state = {key: server_state[key].detach().cpu().clone() for key in self.state_keys} if server_state else \
            {key: torch.zeros(num_clients, dtype=torch.float64) for key in self.state_keys}
        index = torch.tensor([u.client for u in updates])
        fresh = state[SEEN][index] == 0
        state[SEEN][index] = 1.0
        sizes = torch.tensor([float(u.num_samples) for u in updates], dtype=torch.float64)
        state[LOGIT][index] = torch.where(fresh, sizes.log(), state[LOGIT][index])  # softmax(log n) = n_k / n
        if len(updates) > 1:
            gram, distance = client_geometry(current, updates, self.reg_distance)
            logits = state[LOGIT][index].clone()
            first, second, steps = state[FIRST][index], state[SECOND][index], state[STEPS][index]
            for _ in range(self.server_epochs):  # Adam, as torch.optim.Adam computes it
                leaf = logits.clone().requires_grad_(True)
                (gradient,) = torch.autograd.grad(fedawa_loss(leaf, gram, distance), leaf)
                steps = steps + 1
                first = BETA1 * first + (1 - BETA1) * gradient
                second = BETA2 * second + (1 - BETA2) * gradient * gradient
                step_size = self.server_lr / (1 - BETA1 ** steps)
                denominator = (second.sqrt() / (1 - BETA2 ** steps).sqrt()) + EPSILON
                logits = logits - step_size * first / denominator
            state[LOGIT][index], state[FIRST][index], state[SECOND][index] = logits, first, second
            state[STEPS][index] = steps
        weights = torch.softmax(state[LOGIT][index], dim=0)
        state[LAST] = torch.zeros(num_clients, dtype=torch.float64).index_copy(0, index, weights)
        return weights, state

    def server_step(self, current, updates: list[ClientUpdate], server_state, round_info: ServerRound):
        participants = [u for u in updates if u.num_samples > 0]
        if not participants:
            return {name: value.clone() for name, value in current.items()}, server_state
        weights, state = self.weights(current, participants, server_state, round_info.num_clients)
        result = {name: torch.zeros_like(value) for name, value in current.items()}
        for weight, update in zip(weights.tolist(), participants):  # client order: rank-independent
            for name in result:
                result[name] += weight * update.shared[name].to(result[name].dtype)
        return result, state

    def round_metrics(self, server_state, round_info):
        if not server_state:
            return {}
        last = server_state[LAST]
        return {"fedawa/effective_clients": float(1 / last.pow(2).sum()), "fedawa/max_weight": float(last.max())}
