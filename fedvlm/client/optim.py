"""SGD and AdamW over slot-stacked parameters: each client slot has its own optimizer state,
learning rate, and can sit a step out.

Parameters are ``[S, ...]`` (see :mod:`fedvlm.heads.base`). The updates are elementwise, so one
tensor operation updates every client with exactly the arithmetic of ``torch.optim.SGD`` /
``torch.optim.AdamW`` applied to that client alone (tests check this). ``active [S]`` masks
clients that have no batch at this step (they ran out of local data): their parameters and
state stay untouched, as if they had stopped.
"""

from __future__ import annotations

import torch

from fedvlm.config import OptimConfig


class SlotOptimizer:
    def __init__(self, params: dict[str, torch.nn.Parameter], config: OptimConfig):
        self.params = params
        self.config = config
        self.buffer_names = ("momentum",) if config.name == "sgd" else ("exp_avg", "exp_avg_sq")
        self.state = {name: {b: torch.zeros_like(p) for b in self.buffer_names} for name, p in params.items()}
        first = next(iter(params.values()))
        self.steps = torch.zeros(first.shape[0], dtype=torch.float64, device=first.device)

    # ------------------------------------------------------------------ per-client state

    def read_slot(self, slot: int) -> dict[str, torch.Tensor]:
        state = {f"{b}/{name}": buffers[b][slot].clone() for name, buffers in self.state.items() for b in buffers}
        state["step"] = self.steps[slot].clone()
        return state

    @torch.no_grad()
    def write_slot(self, slot: int, state: dict[str, torch.Tensor] | None) -> None:
        """Load a client's saved state into a slot; None starts it fresh."""
        for name, buffers in self.state.items():
            for b, tensor in buffers.items():
                tensor[slot].copy_(state[f"{b}/{name}"]) if state else tensor[slot].zero_()
        self.steps[slot] = state["step"] if state else 0

    # ------------------------------------------------------------------------------ step

    @torch.no_grad()
    def step(self, grads: dict[str, torch.Tensor], lr: torch.Tensor, active: torch.Tensor) -> None:
        """``lr [S]`` per-slot learning rates, ``active [S]`` bool."""
        self.steps += active.to(self.steps.dtype)
        for name, param in self.params.items():
            grad = grads[name]
            shape = (-1,) + (1,) * (param.dim() - 1)
            rate, keep = lr.view(shape).to(param.dtype), active.view(shape)
            if self.config.name == "sgd":
                new_param = self._sgd(param, grad, self.state[name], rate, keep)
            else:
                new_param = self._adamw(param, grad, self.state[name], rate, keep, self.steps.view(shape))
            param.copy_(torch.where(keep, new_param, param))

    def _sgd(self, param, grad, state, rate, keep):
        config = self.config
        grad = grad + config.weight_decay * param if config.weight_decay else grad
        if config.momentum:
            # torch.optim.SGD sets the buffer to the gradient at the first step; a zero buffer
            # times momentum plus the gradient is the same.
            momentum = config.momentum * state["momentum"] + grad
            state["momentum"].copy_(torch.where(keep, momentum, state["momentum"]))
            grad = momentum
        return param - rate * grad

    def _adamw(self, param, grad, state, rate, keep, steps):
        beta1, beta2 = self.config.betas
        exp_avg = beta1 * state["exp_avg"] + (1 - beta1) * grad
        exp_avg_sq = beta2 * state["exp_avg_sq"] + (1 - beta2) * grad * grad
        state["exp_avg"].copy_(torch.where(keep, exp_avg, state["exp_avg"]))
        state["exp_avg_sq"].copy_(torch.where(keep, exp_avg_sq, state["exp_avg_sq"]))
        steps = steps.clamp(min=1)
        bias1 = (1 - beta1 ** steps).to(param.dtype)
        bias2 = (1 - beta2 ** steps).to(param.dtype)
        decayed = param * (1 - rate * self.config.weight_decay)
        denominator = exp_avg_sq.sqrt() / bias2.sqrt() + 1e-8
        return decayed - (rate / bias1) * exp_avg / denominator
