"""SGD and AdamW over slot-stacked parameters: each client slot has its own optimizer state,
learning rate, and can sit a step out.

Parameters are ``[S, ...]`` (see :mod:`fedvlm.heads.base`). The updates are elementwise, so one
tensor operation updates every client with exactly the arithmetic of ``torch.optim.SGD`` /
``torch.optim.AdamW`` applied to that client alone (tests check this). ``active [S]`` masks
clients that have no batch at this step (they ran out of local data): their parameters and
state stay untouched, as if they had stopped.

:func:`learning_rate` is the schedule: a pure function of (round, local step, the client's steps
per round), so batched and sequential execution and a resumed run apply the same rate at every
step of every client.
"""

from __future__ import annotations

import math

import torch

from fedvlm.sections import OptimConfig
from fedvlm.errors import ConfigError


def learning_rate(config: OptimConfig, rounds: int, round_index: int, step: int = 0, round_steps: int = 1) -> float:
    """The learning rate of local step ``step`` (0-based) in round ``round_index`` (0-based) of a
    client that takes ``round_steps`` local steps per round, in a run of ``rounds`` rounds.

    ``schedule_over: rounds`` (one rate per round, the round index as the papers' epoch)::

        cosine: lr_r = lr / 2 * (1 + cos(pi r / R))        step: lr_r = lr * gamma^floor(r / step_rounds)

    ``round_steps`` (position s = step, length L = round_steps) and ``run_steps`` (s = round_index
    * round_steps + step, L = rounds * round_steps), with W = ``warmup_steps``; PAINT's schedule
    (the ``cosine_lr`` of the WiSE-FT code it fine-tunes with)::

        s < W:   lr_s = lr * (s + 1) / W
        s >= W:  lr_s = lr / 2 * (1 + cos(pi (s - W) / (L - W)))   (cosine; constant: lr)

    A step is one local optimizer update of *this* client: a client with fewer batches runs its
    own, shorter schedule to its end (every client's cosine decays over its own local steps), so
    the rate never depends on which clients share a pass or a process.
    """
    lr = config.lr
    if config.schedule_over == "rounds":
        if config.scheduler == "cosine" and rounds > 0:
            return 0.5 * lr * (1 + math.cos(math.pi * round_index / rounds))
        if config.scheduler == "step":
            return lr * config.step_gamma ** (round_index // config.step_rounds)
        return lr
    position = step if config.schedule_over == "round_steps" else round_index * round_steps + step
    length = round_steps if config.schedule_over == "round_steps" else rounds * round_steps
    warmup = config.warmup_steps
    if position < warmup:
        return lr * (position + 1) / warmup
    if config.scheduler == "cosine" and length > warmup:
        return 0.5 * lr * (1 + math.cos(math.pi * (position - warmup) / (length - warmup)))
    return lr


def check_warmup_ends(config: OptimConfig, rounds: int, client_steps: list[int]) -> None:
    """Refuse, in one line, a warm-up that outlasts some client's schedule (``client_steps[k]``:
    client k's local steps per round; clients without data are ignored)."""
    if not config.warmup_steps or config.schedule_over == "rounds" or rounds < 1:
        return
    span = "per round" if config.schedule_over == "round_steps" else "over the run"
    for client, steps in enumerate(client_steps):
        length = steps if config.schedule_over == "round_steps" else rounds * steps
        if 0 < length <= config.warmup_steps:
            raise ConfigError(f"optim.warmup_steps: {config.warmup_steps}, but client {client} takes {length} local "
                              f"steps {span}: the warm-up would never end; expected fewer than {length}")


class SlotOptimizer(torch.optim.Optimizer):
    """SGD or AdamW (``config.name``) over slot-stacked parameters ``{name: [S, ...]}``, a real
    :class:`torch.optim.Optimizer` (``lightning.Trainer`` and LR schedulers drive it).

    Before each :meth:`step` the caller may set ``slot_rates [S]`` (each slot's own learning rate;
    None: every slot takes the param group's ``lr``, which a scheduler sets) and ``active [S]``
    (None: every slot steps). ``torch.optim.SGD`` could not stand in: it would still decay, and
    move by momentum, a slot that has finished its local steps. State is kept per parameter as
    torch keeps it (``state[param]``: its buffers ``[S, ...]`` and the slot step counts ``[S]``),
    so ``state_dict`` / ``load_state_dict`` round-trip it; :meth:`read_slot` / :meth:`write_slot`
    move one client's part in and out.
    """

    def __init__(self, params: dict[str, torch.nn.Parameter], config: OptimConfig):
        super().__init__([{"params": list(params.values()), "names": list(params)}], {"lr": config.lr})
        self.params = params
        self.config = config
        self.buffer_names = ("momentum",) if config.name == "sgd" else ("exp_avg", "exp_avg_sq")
        first = next(iter(params.values()))
        self.num_slots = first.shape[0]
        for param in params.values():
            self.state[param] = {b: torch.zeros_like(param) for b in self.buffer_names}
            self.state[param]["step"] = torch.zeros(self.num_slots, dtype=torch.float64, device=param.device)
        self.slot_rates: torch.Tensor | None = None
        self.active: torch.Tensor | None = None

    @property
    def steps(self) -> torch.Tensor:
        """``[S]`` float64: the optimizer steps each slot has taken (AdamW's bias correction)."""
        return self.state[next(iter(self.params.values()))]["step"]

    # ------------------------------------------------------------------ per-client state

    def read_slot(self, slot: int) -> dict[str, torch.Tensor]:
        state = {f"{b}/{name}": self.state[param][b][slot].clone()
                 for name, param in self.params.items() for b in self.buffer_names}
        state["step"] = self.steps[slot].clone()
        return state

    @torch.no_grad()
    def write_slot(self, slot: int, state: dict[str, torch.Tensor] | None) -> None:
        """Load a client's saved state into a slot; None starts it fresh."""
        for name, param in self.params.items():
            buffers = self.state[param]
            for b in self.buffer_names:
                buffers[b][slot].copy_(state[f"{b}/{name}"]) if state else buffers[b][slot].zero_()
            buffers["step"][slot] = state["step"] if state else 0

    # ------------------------------------------------------------------------------ step

    def step(self, closure=None):
        """One update of every active slot from the parameters' ``.grad`` (a parameter without a
        gradient counts as a zero gradient, as a slot parameter the loss does not reach)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grads = {name: p.grad if p.grad is not None else torch.zeros_like(p) for name, p in self.params.items()}
        first = next(iter(self.params.values()))
        rates = self.slot_rates if self.slot_rates is not None else \
            torch.full((self.num_slots,), float(self.param_groups[0]["lr"]), dtype=torch.float32, device=first.device)
        active = self.active if self.active is not None else \
            torch.ones(self.num_slots, dtype=torch.bool, device=first.device)
        self.update(grads, rates, active)
        return loss

    @torch.no_grad()
    def update(self, grads: dict[str, torch.Tensor], lr: torch.Tensor, active: torch.Tensor) -> None:
        """The elementwise maths: ``grads {name: [S, ...]}``, ``lr [S]`` per-slot learning rates,
        ``active [S]`` bool (inactive slots keep their parameters and state)."""
        for name, param in self.params.items():
            buffers = self.state[param]
            buffers["step"] += active.to(buffers["step"].dtype)
            grad = grads[name]
            shape = (-1,) + (1,) * (param.dim() - 1)
            rate, keep = lr.view(shape).to(param.dtype), active.view(shape)
            if self.config.name == "sgd":
                new_param = self._sgd(param, grad, buffers, rate, keep)
            else:
                new_param = self._adamw(param, grad, buffers, rate, keep, buffers["step"].view(shape))
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
