"""Server optimizers on the pseudo-gradient: FedAvgM (Hsu et al. 2019) and FedAdagrad, FedAdam,
FedYogi (Reddi et al., ICLR 2021, "Adaptive Federated Optimization", Algorithm 2).

The clients train as in FedAvg. The server treats the round's weighted mean client change
``Delta_t = sum_i (n_i / n) (x_i - x_t)`` as minus a gradient (the pseudo-gradient ``-Delta_t``)
and steps with its own optimizer, keeping its state between rounds::

    FedAvgM:     m_t = beta m_{t-1} + Delta_t                        x_{t+1} = x_t + eta m_t
    Algorithm 2: m_t = beta1 m_{t-1} + (1 - beta1) Delta_t
                 FedAdagrad  v_t = v_{t-1} + Delta_t^2
                 FedYogi     v_t = v_{t-1} - (1 - beta2) Delta_t^2 sign(v_{t-1} - Delta_t^2)
                 FedAdam     v_t = beta2 v_{t-1} + (1 - beta2) Delta_t^2
                 x_{t+1} = x_t + eta m_t / (sqrt(v_t) + tau)

with ``v_{-1} = tau^2`` (Algorithm 2's initialisation ``v_{-1} >= tau^2``) and ``m_{-1} = 0``. Reddi et
al. average the client changes uniformly and note that weighting by samples works as well; fedvlm
weights by samples, so that FedAvgM with beta = 0 and eta = 1 is exactly FedAvg.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from pydantic import Field

from fedvlm.algorithms.base import ALGORITHMS, AlgorithmConfig, weighted_mean


def mean_change(current: dict[str, torch.Tensor], sums) -> dict[str, torch.Tensor]:
    """``Delta_t``: the sample-weighted mean client parameters minus the current global ones
    (from the round's sums of ``n_i x_i``, :func:`fedvlm.algorithms.base.weighted_mean`)."""
    mean = weighted_mean(current, sums)
    return {name: mean[name] - current[name] for name in current}


@ALGORITHMS.register("fedavgm")
class FedAvgM(AlgorithmConfig):
    """Server momentum (Hsu et al. 2019, "Measuring the effects of non-identical data
    distribution", Sec. 3): eta = 1 and beta = 0.9, the setting they report; the effective server
    rate is eta / (1 - beta)."""

    server_lr: float = Field(1.0, gt=0)  # eta
    server_momentum: float = Field(0.9, ge=0, lt=1)  # beta

    def init_server_state(self, global_shared):
        return {f"momentum/{name}": torch.zeros_like(value) for name, value in global_shared.items()}

    def server_step_from_sums(self, current, sums, server_state, round_info):
        change = mean_change(current, sums)
        state, result = {}, {}
        for name, value in current.items():
            momentum = self.server_momentum * server_state[f"momentum/{name}"] + change[name]
            state[f"momentum/{name}"] = momentum
            result[name] = value + self.server_lr * momentum
        return result, state


class AdaptiveServer(AlgorithmConfig):
    """Algorithm 2 of Reddi et al. 2021. beta1 = 0.9 and beta2 = 0.99 are the values fixed in the
    paper's experiments; eta and tau are tuned per task there (eta in 10^{-3}..10^{1}, tau in
    10^{-5}..10^{-1}); the defaults 10^{-2} and 10^{-3} lie in those grids. Not registered: the
    subclasses choose ``rule``."""

    rule: ClassVar[str] = "adam"
    server_lr: float = Field(0.01, gt=0)  # eta
    beta1: float = Field(0.9, ge=0, lt=1)
    beta2: float = Field(0.99, ge=0, lt=1)
    tau: float = Field(1e-3, gt=0)  # adaptivity: larger is closer to server SGD with momentum

    def init_server_state(self, global_shared):
        state = {f"m/{name}": torch.zeros_like(value) for name, value in global_shared.items()}
        state.update({f"v/{name}": torch.full_like(value, self.tau ** 2) for name, value in global_shared.items()})
        return state

    def second_moment(self, previous: torch.Tensor, squared: torch.Tensor) -> torch.Tensor:
        if self.rule == "adagrad":
            return previous + squared
        if self.rule == "yogi":
            return previous - (1 - self.beta2) * squared * torch.sign(previous - squared)
        return self.beta2 * previous + (1 - self.beta2) * squared

    def server_step_from_sums(self, current, sums, server_state, round_info):
        change = mean_change(current, sums)
        state, result = {}, {}
        for name, value in current.items():
            m = self.beta1 * server_state[f"m/{name}"] + (1 - self.beta1) * change[name]
            v = self.second_moment(server_state[f"v/{name}"], change[name] * change[name])
            state[f"m/{name}"], state[f"v/{name}"] = m, v
            result[name] = value + self.server_lr * m / (v.sqrt() + self.tau)
        return result, state


@ALGORITHMS.register("fedadagrad")
class FedAdagrad(AdaptiveServer):
    rule: ClassVar[str] = "adagrad"


@ALGORITHMS.register("fedadam")
class FedAdam(AdaptiveServer):
    rule: ClassVar[str] = "adam"


@ALGORITHMS.register("fedyogi")
class FedYogi(AdaptiveServer):
    rule: ClassVar[str] = "yogi"
