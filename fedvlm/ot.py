"""Entropic optimal transport between image patches and prompts: batched, log-domain, no gradient.

Rows are the source (image patches, M of them), columns the target (prompts or classes, N).
Every leading dimension is a batch dimension (images, classes, conditions), solved by the same
tensor ops at once: ``cost: [..., M, N]``, ``a: [..., M]``, ``b: [..., N]``.

The problem (FedRSCLIP Eq. 12; OTDPP and FedMPT Eq. 9-10 for the balanced case)::

    min_T <C, T> + eps * <T, log T - 1>   subject to   T1 = a (balanced) or T1 <= a (partial),
                                                       T^T 1 = b

solved by Sinkhorn / generalised Sinkhorn scaling, T = diag(u) K diag(v) with K = exp(-C/eps)
(FedRSCLIP Eq. 14), carried out on log u, log v and log K with logsumexp so that small eps in
float32 cannot underflow the kernel (REFERENCE-NOTES item 3: exp(-C/0.01) underflows in fp16).
Balanced problems whose cost spans at most 30 eps (FedMPT's lambda = 0.2 on costs in [0, 1]) run
the same iterations on the kernel itself, which cannot underflow there and is much faster.

Every solution reports its *marginal error* (:class:`OTSolution`), the largest relative violation
of the constraints by the returned plan, as a device tensor (no host sync). At small eps a fixed
iteration budget leaves it large (eps 0.01, 100 iterations: rows off by up to 1.7x); the round
loop records its maximum over a round's training steps with :class:`MarginalErrorMonitor`, logs it
as ``train/ot_marginal_error`` and warns once past ``runtime.ot_marginal_tolerance``.

Plans carry no gradient. The papers "fix the transport plan and optimize" (FedRSCLIP after
Eq. 15; FedOTP does the same): the loss differentiates ``transport_cost(plan, cost)`` =
<T, C>, or ``sum(T * S)`` for a similarity S, with respect to the features inside C or S only.
"""

from __future__ import annotations

import math
import warnings
from contextlib import contextmanager
from typing import Callable, Iterator, NamedTuple

import torch
from torch import Tensor


class OTSolution(NamedTuple):
    """What :func:`solve_entropic_ot` returns.

    plan: ``[..., M, N]``, the transport plan, detached.
    iterations: scaling iterations run (one row and one column update each).
    residual: the stopping rule's quantity, max over the batch of the L1 row residual of the
        returned plan (see :func:`solve_entropic_ot`); below ``tol`` unless ``max_iter`` was
        reached. None when ``tol = 0`` (a fixed iteration count: not measured, no host sync).
    marginal_error: ``[]`` tensor on the plan's device, :func:`marginal_error` of the plan.
    """

    plan: Tensor
    iterations: int
    residual: float | None
    marginal_error: Tensor


def marginal_error(plan: Tensor, a: Tensor, b: Tensor, row_mass_capped: bool = False) -> Tensor:
    """Largest relative violation of the constraints by ``plan``, over every problem of the batch.

    plan ``[..., M, N]``, a ``[..., M]``, b ``[..., N]`` -> ``[]``::

        balanced (T1 = a, T^T 1 = b):   max( max_i |(T1)_i - a_i| / a_i,  max_j |(T^T 1)_j - b_j| / b_j )
        partial  (T1 <= a, T^T 1 = b):  max( max_i max((T1)_i - a_i, 0) / a_i,  max_j |(T^T 1)_j - b_j| / b_j )

    0.7 means some row or column carries 1.7x (or 0.3x) its mass. Points of zero mass count their
    absolute error. A handful of reductions on the device, no host sync.
    """
    if plan.numel() == 0:
        return plan.new_zeros(())
    tiny = torch.finfo(plan.dtype).tiny
    rows = plan.sum(dim=-1) - a
    rows = rows.clamp(min=0) if row_mass_capped else rows.abs()
    columns = (plan.sum(dim=-2) - b).abs()
    return torch.maximum((rows / a.clamp(min=tiny)).amax(), (columns / b.clamp(min=tiny)).amax())


def sinkhorn(
    cost: Tensor,
    a: Tensor | None = None,
    b: Tensor | None = None,
    eps: float = 0.1,
    max_iter: int = 100,
    tol: float = 1e-6,
) -> Tensor:
    """Balanced entropic OT plan: T1 = a, T^T 1 = b (OTDPP; FedMPT Eq. 9-10).

    cost: ``[..., M, N]``; a: ``[..., M]`` or None for uniform 1/M; b: ``[..., N]`` or None for
    uniform 1/N (a and b broadcast against ``cost.shape[:-1]`` / the batch, and must carry the same
    mass). eps: entropic regularisation (lambda in the papers). Stops when the row marginal's L1
    error, max over the batch, is at most ``tol`` or after ``max_iter`` iterations.

    Returns the plan ``[..., M, N]``, detached (no gradient), in float32 or wider.
    """
    return solve_entropic_ot(cost, a, b, eps=eps, max_iter=max_iter, tol=tol).plan


def partial_sinkhorn(
    cost: Tensor,
    a: Tensor | None = None,
    b: Tensor | None = None,
    eps: float = 0.1,
    max_iter: int = 100,
    tol: float = 1e-6,
    mass: float = 0.8,
) -> Tensor:
    """Partial entropic OT plan: T1 <= a (row mass capped), T^T 1 = b (FedRSCLIP Eq. 13, FedOTP).

    Only a fraction of each image's patch mass is transported, so prompts may ignore
    irrelevant patches. cost: ``[..., M, N]``; a: ``[..., M]`` or None for FedOTP's uniform 1/M
    on patches; b: ``[..., N]`` or None for FedOTP's ``mass / N`` on prompts (``mass`` = rho =
    0.8, REFERENCE-NOTES item 3; ``mass`` is used only when b is None). Requires
    sum(b) <= sum(a). Iterates u = min(a / (K v), 1), v = b / (K^T u) in the log domain.

    Returns the plan ``[..., M, N]``, detached (no gradient), in float32 or wider.
    """
    return solve_entropic_ot(
        cost, a, b, eps=eps, max_iter=max_iter, tol=tol, row_mass_capped=True, default_column_mass=mass
    ).plan


def transport_cost(plan: Tensor, cost: Tensor) -> Tensor:
    """<T, C>: the OT distance d_OT for a fixed plan. plan, cost: ``[..., M, N]`` -> ``[...]``.

    The plan is detached here as well, so the gradient reaches ``cost`` only (the papers fix T).
    """
    return (plan.detach() * cost).sum(dim=(-2, -1))


def ot_similarity(
    similarity: Tensor,
    a: Tensor | None = None,
    b: Tensor | None = None,
    eps: float = 0.1,
    max_iter: int = 100,
    tol: float = 1e-6,
    partial: bool = False,
    mass: float = 0.8,
) -> Tensor:
    """sum(T * S) with T the fixed plan for the cost C = 1 - S (FedRSCLIP Eq. 11, 15; FedOTP).

    similarity: ``[..., M, N]`` (e.g. cosine between M patches and N prompts of one class, with
    batch dims ``[B, C]``) -> ``[...]``, differentiable with respect to ``similarity``.
    partial: use :func:`partial_sinkhorn` (FedOTP, FedRSCLIP) instead of :func:`sinkhorn`.

    FedOTP's logits are ``logit_scale * ot_similarity(cos, partial=True)``. The papers'
    ``1 - d_OT = 1 - <T, 1 - S> = sum(T * S) + 1 - sum(T)`` equals this when T carries unit mass,
    and differs by the same constant for every class otherwise, which a softmax ignores.
    FedMPT's psi sums over patches only: use ``(sinkhorn(1 - S, a) * S).sum(-2)`` there.
    """
    cost = 1 - similarity
    if partial:
        plan = partial_sinkhorn(cost, a, b, eps=eps, max_iter=max_iter, tol=tol, mass=mass)
    else:
        plan = sinkhorn(cost, a, b, eps=eps, max_iter=max_iter, tol=tol)
    return (plan * similarity).sum(dim=(-2, -1))


def solve_entropic_ot(
    cost: Tensor,
    a: Tensor | None = None,
    b: Tensor | None = None,
    *,
    eps: float = 0.1,
    max_iter: int = 100,
    tol: float = 1e-6,
    row_mass_capped: bool = False,
    default_column_mass: float = 1.0,
) -> OTSolution:
    """The solver behind :func:`sinkhorn` and :func:`partial_sinkhorn`, with its diagnostics.

    cost: ``[..., M, N]``; a: ``[..., M]`` or None (uniform, total mass 1); b: ``[..., N]`` or
    None (uniform, total mass ``default_column_mass``). row_mass_capped: False for T1 = a,
    True for T1 <= a.

    Each iteration updates u (rows) then v (columns), so after it the column constraint holds
    exactly and convergence is measured on the rows: the error is the L1 distance between the
    plan's row sums and the row sums the next row update would give it, i.e. ||T1 - a||_1 when
    balanced and ||T1 - min(a, K v)||_1 when capped (zero exactly at the fixed point). The
    loop stops when its max over the batch is at most ``tol``; checking it costs one host sync
    per iteration and no extra kernel work. ``tol = 0`` runs exactly ``max_iter`` iterations
    (each problem's plan then never depends on the rest of the batch) and never checks it.

    The solution's ``marginal_error`` (:func:`marginal_error`, the relative constraint violation
    of the returned plan) is computed on the device in either case and reported to every active
    :class:`MarginalErrorMonitor`.
    """
    if eps <= 0:
        raise ValueError(f"eps must be positive, got {eps}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be at least 1, got {max_iter}")
    with torch.no_grad():
        # Solve in float32 at least, whatever precision the features were computed in.
        dtype = torch.promote_types(cost.dtype, torch.float32)
        cost = cost.detach().to(dtype)
        batch_shape, (rows, columns) = cost.shape[:-2], cost.shape[-2:]
        log_a = _log_marginal(a, batch_shape, rows, 1.0, cost)
        log_b = _log_marginal(b, batch_shape, columns, default_column_mass, cost)
        _check_masses(log_a, log_b, row_mass_capped)
        # Balanced OT is unchanged by a constant shift of each problem's cost, so when the
        # shifted kernel exp(-(C - min C) / eps) stays within exp(-KERNEL_DOMAIN_SPAN) of 1 it
        # cannot underflow and the plain scaling iterations (matrix-vector products) are safe,
        # and an order of magnitude faster than logsumexp. (The capped problem's u <= 1 depends
        # on K's scale, so it always runs in the log domain.)
        low = cost.amin(dim=(-2, -1), keepdim=True)
        # (one host sync, and only where the answer can matter: balanced problems)
        span = (cost.amax(dim=(-2, -1), keepdim=True) - low).max().item() \
            if cost.numel() and not row_mass_capped else math.inf
        if span / eps <= KERNEL_DOMAIN_SPAN:
            kernel = torch.exp(-(cost - low) / eps)
            u, v, iterations, residual = _kernel_iterations(kernel, log_a.exp(), log_b.exp(), max_iter, tol)
            plan = u.unsqueeze(-1) * kernel * v.unsqueeze(-2)
        else:
            log_kernel = -cost / eps
            log_u, log_v, iterations, residual = _scaling_iterations(
                log_kernel, log_a, log_b, max_iter, tol, row_mass_capped
            )
            plan = torch.exp(log_u.unsqueeze(-1) + log_kernel + log_v.unsqueeze(-2))
        error = marginal_error(plan, log_a.exp(), log_b.exp(), row_mass_capped)
        for monitor in _ACTIVE_MONITORS:
            monitor.record(error)
    return OTSolution(plan, iterations, residual, error)


# Largest (max C - min C) / eps solved in the kernel domain (exp(-30) ~ 1e-13: far from float32's
# underflow at ~1e-38 even after the scalings).
KERNEL_DOMAIN_SPAN = 30.0


def _kernel_iterations(kernel: Tensor, a: Tensor, b: Tensor, max_iter: int, tol: float
                       ) -> tuple[Tensor, Tensor, int, float | None]:
    """Balanced Sinkhorn on the kernel itself: u = a / (K v), v = b / (K^T u); the same updates,
    order and stopping rule as :func:`_scaling_iterations`. -> u, v, iterations, row residual."""
    v = torch.ones_like(b)
    u = torch.ones_like(a)
    iterations = 0
    while True:
        if tol == 0 and iterations == max_iter:  # a fixed number of iterations: nothing to measure
            return u, v, iterations, None
        kv = (kernel @ v.unsqueeze(-1)).squeeze(-1)  # [..., M]
        if iterations > 0 and tol > 0:
            error = (u * kv - a).abs().sum(dim=-1).max().item()
            if error <= tol or iterations == max_iter:
                return u, v, iterations, error
        u = a / kv
        v = b / (kernel.transpose(-1, -2) @ u.unsqueeze(-1)).squeeze(-1)
        iterations += 1


def _scaling_iterations(
    log_kernel: Tensor, log_a: Tensor, log_b: Tensor, max_iter: int, tol: float, row_mass_capped: bool
) -> tuple[Tensor, Tensor, int, float | None]:
    """log u ``[..., M]``, log v ``[..., N]``, iterations run, final row residual (None: tol = 0)."""
    log_v = torch.zeros_like(log_b)  # v(0) = 1 (FedRSCLIP, after Eq. 14)
    log_u = torch.zeros_like(log_a)
    iterations = 0
    while True:
        if tol == 0 and iterations == max_iter:  # as in _kernel_iterations
            return log_u, log_v, iterations, None
        log_kv = torch.logsumexp(log_kernel + log_v.unsqueeze(-2), dim=-1)  # log(K v): [..., M]
        # u = a / Kv makes T1 = a. With T1 <= a the dual variable log u must stay <= 0, and
        # u = min(a / Kv, 1) is the exact maximiser under that constraint (generalised Sinkhorn),
        # i.e. the row sums become min(a, Kv).
        log_row_target = torch.minimum(log_a, log_kv) if row_mass_capped else log_a
        if iterations > 0 and tol > 0:
            row_sums = torch.exp(log_u + log_kv)
            error = (row_sums - torch.exp(log_row_target)).abs().sum(dim=-1).max().item()
            if error <= tol or iterations == max_iter:
                return log_u, log_v, iterations, error
        log_u = log_row_target - log_kv
        log_v = log_b - torch.logsumexp(log_kernel + log_u.unsqueeze(-1), dim=-2)
        iterations += 1


def _log_marginal(marginal: Tensor | None, batch_shape: torch.Size, size: int, mass: float, like: Tensor) -> Tensor:
    """log of a marginal broadcast to ``[*batch_shape, size]``; None means ``mass / size`` each."""
    shape = (*batch_shape, size)
    if marginal is None:
        return torch.full(shape, math.log(mass / size), dtype=like.dtype, device=like.device)
    if marginal.shape[-1:] != (size,):
        raise ValueError(f"marginal of shape {tuple(marginal.shape)} does not match {size} points")
    return marginal.detach().to(like).log().expand(shape)


def _check_masses(log_a: Tensor, log_b: Tensor, row_mass_capped: bool) -> None:
    """Balanced OT needs sum(a) = sum(b); partial OT needs sum(b) <= sum(a), or it has no plan."""
    mass_a = torch.logsumexp(log_a, dim=-1).exp()
    mass_b = torch.logsumexp(log_b, dim=-1).exp()
    slack = 1e-5 * mass_a  # float32 sums of 1/M are exact only to rounding
    if row_mass_capped:
        if bool((mass_b > mass_a + slack).any()):
            raise ValueError("partial OT needs sum(b) <= sum(a): the columns ask for more mass than the rows hold")
    elif bool(((mass_b - mass_a).abs() > slack).any()):
        raise ValueError("balanced OT needs sum(a) == sum(b); use partial_sinkhorn for sum(b) < sum(a)")


class OTMarginalWarning(UserWarning):
    """The transport plans of a run violate their marginals by more than the tolerance."""


_ACTIVE_MONITORS: list["MarginalErrorMonitor"] = []


class MarginalErrorMonitor:
    """The largest marginal error of the plans solved while it records, kept on the device.

    One per run: ``with monitor.recording():`` around a round's local training, then
    :meth:`end_round` reads the round's maximum (one host sync per round, none per step) and
    warns once per run, in one line, when it exceeds ``tolerance``. Heads need not know about it:
    every :func:`solve_entropic_ot` reports to the monitors that are recording.
    """

    def __init__(self, tolerance: float):
        self.tolerance = tolerance
        self.value: Tensor | None = None  # [] running max of this round
        self.warned = False

    def record(self, error: Tensor) -> None:
        error = error.detach().float()
        self.value = error if self.value is None else torch.maximum(self.value, error.to(self.value.device))

    @contextmanager
    def recording(self) -> Iterator["MarginalErrorMonitor"]:
        _ACTIVE_MONITORS.append(self)
        try:
            yield self
        finally:
            _ACTIVE_MONITORS.remove(self)

    def end_round(self, round_index: int, reduce_max: Callable[[Tensor], Tensor] | None = None,
                  warn: bool = True) -> float | None:
        """The round's max marginal error (None when no plan was solved) and reset for the next.

        ``reduce_max`` combines the processes' values (every process must call it, solved or not;
        -inf stands for "none"), so the logged value does not depend on the process count.
        """
        value = self.value if self.value is not None else torch.tensor(float("-inf"))
        self.value = None
        if reduce_max is not None:
            value = reduce_max(value)
        value = float(value)
        if value == float("-inf"):
            return None
        if warn and not self.warned and not value <= self.tolerance:  # nan counts as too large
            self.warned = True
            warnings.warn(f"round {round_index + 1}: the optimal transport plans violate their marginals by "
                          f"{value:.3g} (relative), above runtime.ot_marginal_tolerance={self.tolerance}; "
                          f"raise the head's OT iterations or its eps", OTMarginalWarning, stacklevel=2)
        return value
