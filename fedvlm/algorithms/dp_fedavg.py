"""DP-FedAvg: client-level differential privacy (McMahan et al., ICLR 2018, "Learning
Differentially Private Recurrent Language Models", Algorithm 1 with the fixed-denominator
estimator and uniform weights).

Client k clips its round's change of the *shared* parameters to L2 norm C, taken over all of them
at once (flat clipping; private parameters never leave the client and are not clipped)::

    Delta_k = (theta_k - theta) * min(1, C / ||theta_k - theta||)

The server adds Gaussian noise to the sum and divides by the expected number of clients qK (the
fixed-denominator estimator f_f of the paper with w_k = 1; fedvlm draws exactly m = round(qK)
clients a round, so qK = m, the clients sampled this round)::

    Delta = (sum_k Delta_k + N(0, (z C)^2 I)) / m          theta <- theta + eta Delta

The noise comes from a generator seeded by (seed, round), drawn on the CPU, so every process adds
the same noise. The server clips each update once more before summing: the upload is
``theta + Delta_k`` in float, and its rounding must not raise a norm past C.

Privacy spent: the sampled Gaussian mechanism with noise multiplier z and sampling rate q = m / K,
composed over the rounds run, by Opacus' RDP accountant (``opacus.accountants.RDPAccountant``,
Mironov et al. 2019), reported as epsilon at ``delta`` (``privacy/epsilon`` per round and in
summary.json). The accountant assumes Poisson sampling of clients; fedvlm samples a fixed number
without replacement, the usual approximation (McMahan et al. sample with probability q).
"""

from __future__ import annotations

import numpy as np
import torch
from pydantic import Field

from fedvlm.algorithms.base import ALGORITHMS, AlgorithmConfig, flat_norm


def clip_updates(updates: dict[str, torch.Tensor], clip_norm: float) -> dict[str, torch.Tensor]:
    """Scale each slot's update ``{name: [S, ...]}`` to L2 norm at most ``clip_norm`` (over every
    name together)."""
    norms = flat_norm(updates)  # [S], float64
    scale = torch.clamp(clip_norm / norms.clamp(min=1e-300), max=1.0)
    return {name: value * scale.view(-1, *[1] * (value.dim() - 1)).to(value.dtype) for name, value in updates.items()}


def noise_generator(seed: int, round_index: int) -> torch.Generator:
    """The server's noise stream of a round: one integer seed from (seed, round)."""
    state = np.random.SeedSequence([int(seed), int(round_index), 0xD9]).generate_state(1, dtype=np.uint64)[0]
    return torch.Generator().manual_seed(int(state) & ((1 << 63) - 1))


def epsilon(noise_multiplier: float, sample_rate: float, rounds: int, delta: float) -> float:
    """Epsilon at ``delta`` after ``rounds`` rounds, by Opacus' RDP accountant."""
    from opacus.accountants import RDPAccountant  # imported on use: it takes seconds to load

    accountant = RDPAccountant()
    for _ in range(rounds):
        accountant.step(noise_multiplier=noise_multiplier, sample_rate=sample_rate)
    return float(accountant.get_epsilon(delta))


@ALGORITHMS.register("dp_fedavg")
class DPFedAvg(AlgorithmConfig):
    clip_norm: float = Field(1.0, gt=0)  # C (S in the paper, which tunes it per model)
    noise_multiplier: float = Field(1.0, ge=0)  # z: noise std z * C on the sum (the paper uses z = 1)
    delta: float = Field(1e-5, gt=0, lt=1)  # epsilon is reported at this delta (the paper: 1e-9 for 763k users)
    server_lr: float = Field(1.0, gt=0)  # eta

    # ------------------------------------------------------------------ client half

    def finish_client(self, start, end, client_state, lr_sum, server_state):
        clipped = clip_updates({name: end[name] - start[name] for name in end}, self.clip_norm)
        return {name: start[name] + clipped[name] for name in end}, {}, client_state

    # ------------------------------------------------------------------ server half

    def client_terms(self, current, update):
        """The server's clip of the client's delta, before any summation (where the client trained)."""
        clipped = clip_updates({name: (update.shared[name].to(value.dtype) - value).unsqueeze(0)
                                for name, value in current.items()}, self.clip_norm)
        return {f"clipped/{name}": clipped[name][0].double() for name in current}

    def server_step_from_sums(self, current, sums, server_state, round_info):
        generator = noise_generator(round_info.seed, round_info.index)
        std = self.noise_multiplier * self.clip_norm
        result = {}
        for name, value in current.items():
            noise = torch.normal(0.0, std, value.shape, generator=generator, dtype=value.dtype) if std else 0.0
            total = sums.tensors[f"clipped/{name}"].to(value.dtype)
            result[name] = value + self.server_lr * (total + torch.as_tensor(noise).to(value.device)) \
                / round_info.num_sampled
        return result, server_state

    def round_metrics(self, server_state, round_info):
        rate = round_info.num_sampled / round_info.num_clients
        spent = epsilon(self.noise_multiplier, rate, round_info.index + 1, self.delta) \
            if self.noise_multiplier > 0 else float("inf")
        return {"privacy/epsilon": spent, "privacy/delta": self.delta}
