"""fedvlm.ot against POT, and the properties the heads rely on (batching, marginals, no gradient)."""

import warnings

import ot as pot
import pytest
import torch

from fedvlm.ot import (MarginalErrorMonitor, OTMarginalWarning, ot_similarity, partial_sinkhorn, sinkhorn,
                       solve_entropic_ot, transport_cost)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread is faster


# Iterate to convergence so that both solvers sit on the same optimum.
CONVERGED = dict(max_iter=100_000, tol=1e-13)


def random_simplex(generator: torch.Generator, *shape: int, mass: float = 1.0) -> torch.Tensor:
    weights = torch.rand(*shape, generator=generator, dtype=torch.float64) + 0.1
    return mass * weights / weights.sum(-1, keepdim=True)


def cosine_cost(generator: torch.Generator, *shape: int, dim: int = 16, dtype=torch.float32) -> torch.Tensor:
    """1 - cos between random unit vectors: ``[..., M, N]`` with values in [0, 2]."""
    *batch, rows, columns = shape
    patches = torch.nn.functional.normalize(torch.randn(*batch, rows, dim, generator=generator), dim=-1)
    prompts = torch.nn.functional.normalize(torch.randn(*batch, columns, dim, generator=generator), dim=-1)
    return (1 - patches @ prompts.transpose(-1, -2)).to(dtype)


@pytest.mark.parametrize("seed, rows, columns, eps", [(0, 7, 5, 0.1), (1, 12, 3, 0.05), (2, 4, 9, 0.5)])
def test_sinkhorn_matches_pot(seed, rows, columns, eps):
    generator = torch.Generator().manual_seed(seed)
    cost = torch.rand(rows, columns, generator=generator, dtype=torch.float64)
    a, b = random_simplex(generator, rows), random_simplex(generator, columns)

    plan = sinkhorn(cost, a, b, eps=eps, **CONVERGED)
    reference = pot.sinkhorn(a, b, cost, eps, numItermax=100_000, stopThr=1e-14)

    torch.testing.assert_close(plan, reference, rtol=0, atol=1e-8)


@pytest.mark.parametrize(
    "seed, rows, columns, eps, mass", [(0, 7, 5, 0.1, 0.8), (1, 10, 4, 0.05, 0.5), (2, 5, 6, 0.3, 0.95)]
)
def test_partial_sinkhorn_matches_pot(seed, rows, columns, eps, mass):
    # POT's problem is T1 <= a, T^T1 <= b, sum(T) = m; with m = sum(b) <= sum(a) the column
    # inequality is tight, which is exactly T1 <= a, T^T1 = b. POT's entropy differs from ours
    # by a multiple of sum(T) = m, a constant, so the optimum is the same.
    generator = torch.Generator().manual_seed(seed)
    cost = torch.rand(rows, columns, generator=generator, dtype=torch.float64)
    a, b = random_simplex(generator, rows), random_simplex(generator, columns, mass=mass)

    plan = partial_sinkhorn(cost, a, b, eps=eps, **CONVERGED)
    reference = pot.partial.entropic_partial_wasserstein(
        a, b, cost, eps, m=b.sum().item(), numItermax=100_000, stopThr=1e-15
    )

    torch.testing.assert_close(plan, reference, rtol=0, atol=1e-8)
    assert (plan.sum(-1) < a - 1e-3).any(), "the test problem should leave some row mass untransported"


@pytest.mark.parametrize("solver", [sinkhorn, partial_sinkhorn])
def test_batched_solve_equals_loop_of_single_problems(solver):
    generator = torch.Generator().manual_seed(3)
    cost = torch.rand(3, 4, 6, 5, generator=generator, dtype=torch.float64)
    a = random_simplex(generator, 3, 4, 6)
    b = random_simplex(generator, 3, 4, 5, mass=0.8 if solver is partial_sinkhorn else 1.0)
    # tol=0 runs exactly max_iter iterations in both, so the results must agree to rounding.
    fixed_iterations = dict(eps=0.1, max_iter=40, tol=0.0)

    batched = solver(cost, a, b, **fixed_iterations)
    for i in range(3):
        for j in range(4):
            single = solver(cost[i, j], a[i, j], b[i, j], **fixed_iterations)
            torch.testing.assert_close(batched[i, j], single, rtol=0, atol=1e-12)


def test_shared_marginals_broadcast_over_the_batch():
    generator = torch.Generator().manual_seed(4)
    cost = torch.rand(2, 3, 6, 5, generator=generator, dtype=torch.float64)
    a, b = random_simplex(generator, 6), random_simplex(generator, 5)

    plan = sinkhorn(cost, a, b, eps=0.1, **CONVERGED)

    torch.testing.assert_close(plan.sum(-1), a.expand(2, 3, 6), rtol=0, atol=1e-10)
    torch.testing.assert_close(plan.sum(-2), b.expand(2, 3, 5), rtol=0, atol=1e-10)


def test_balanced_plan_meets_both_marginals_in_float32():
    generator = torch.Generator().manual_seed(5)
    cost = cosine_cost(generator, 8, 10, 49, 4)

    solution = solve_entropic_ot(cost, eps=0.1, max_iter=1000, tol=1e-5)
    plan = solution.plan

    assert plan.shape == (8, 10, 49, 4)
    assert solution.residual <= 1e-5
    torch.testing.assert_close(plan.sum(-1), torch.full((8, 10, 49), 1 / 49), rtol=0, atol=1e-5)
    torch.testing.assert_close(plan.sum(-2), torch.full((8, 10, 4), 1 / 4), rtol=0, atol=1e-6)


def test_partial_plan_caps_rows_and_fills_columns_with_fedotp_defaults():
    generator = torch.Generator().manual_seed(6)
    cost = cosine_cost(generator, 4, 3, 49, 4)

    plan = partial_sinkhorn(cost, max_iter=1000, tol=1e-6)  # a = 1/M, b = 0.8/N (FedOTP)

    torch.testing.assert_close(plan.sum(-2), torch.full((4, 3, 4), 0.8 / 4), rtol=0, atol=1e-6)
    assert (plan.sum(-1) <= 1 / 49 + 1e-6).all()
    torch.testing.assert_close(plan.sum((-2, -1)), torch.full((4, 3), 0.8), rtol=0, atol=1e-5)


@pytest.mark.parametrize("solver", [sinkhorn, partial_sinkhorn])
def test_float32_small_eps_stays_finite_where_the_plain_kernel_underflows(solver):
    generator = torch.Generator().manual_seed(7)
    cost = 1.5 + 0.5 * torch.rand(6, 196, 4, generator=generator)  # in [1.5, 2]
    eps = 0.01
    assert (torch.exp(-cost / eps) == 0).all(), "the multiplicative kernel underflows on this problem"

    plan = solver(cost, eps=eps, max_iter=50)

    assert plan.dtype == torch.float32
    assert torch.isfinite(plan).all() and (plan >= 0).all()
    column_mass = 0.8 if solver is partial_sinkhorn else 1.0
    torch.testing.assert_close(plan.sum(-2), torch.full((6, 4), column_mass / 4), rtol=0, atol=1e-5)


def test_half_precision_cost_is_solved_in_float32():
    generator = torch.Generator().manual_seed(8)
    cost = cosine_cost(generator, 2, 49, 4, dtype=torch.float16)

    plan = sinkhorn(cost, eps=0.01, max_iter=50)

    assert plan.dtype == torch.float32
    assert torch.isfinite(plan).all()


def test_plan_carries_no_gradient_but_transport_cost_does():
    generator = torch.Generator().manual_seed(9)
    features = torch.randn(3, 8, 4, generator=generator, requires_grad=True)
    cost = 1 - torch.tanh(features)

    plan = sinkhorn(cost, eps=0.1)
    assert not plan.requires_grad

    transport_cost(plan, cost).sum().backward()
    # d<T, C>/dC = T with T fixed, so the gradient reaching features is -T * tanh'(features).
    expected = -plan * (1 - torch.tanh(features.detach()) ** 2)
    torch.testing.assert_close(features.grad, expected)


@pytest.mark.parametrize("partial", [False, True])
def test_ot_similarity_is_sum_of_plan_times_similarity(partial):
    generator = torch.Generator().manual_seed(10)
    similarity = (1 - cosine_cost(generator, 2, 5, 49, 4)).requires_grad_(True)

    scores = ot_similarity(similarity, eps=0.1, partial=partial)
    solver = partial_sinkhorn if partial else sinkhorn
    plan = solver(1 - similarity.detach(), eps=0.1)

    assert scores.shape == (2, 5)
    torch.testing.assert_close(scores, (plan * similarity.detach()).sum((-2, -1)))
    scores.sum().backward()
    torch.testing.assert_close(similarity.grad, plan)  # the plan is held fixed


def test_early_stopping_stops_on_an_easy_problem():
    generator = torch.Generator().manual_seed(11)
    cost = torch.rand(4, 10, 6, generator=generator, dtype=torch.float64)

    easy = solve_entropic_ot(cost, eps=1.0, max_iter=1000, tol=1e-6)
    assert easy.iterations < 20
    assert easy.residual <= 1e-6

    exhaustive = solve_entropic_ot(cost, eps=1.0, max_iter=30, tol=0.0)
    assert exhaustive.iterations == 30
    torch.testing.assert_close(easy.plan, exhaustive.plan, rtol=0, atol=1e-6)


@pytest.mark.parametrize("capped", [True, False])
def test_zero_tol_runs_exactly_max_iter_in_the_log_domain_too(capped):
    """tol = 0 is the heads' default (batch-independent plans): a fixed iteration count even when
    the log-domain solver (partial OT always; balanced OT at small eps) reaches a zero error."""
    cost = torch.zeros(5, 3) if capped else torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # both exact after a few
    solution = solve_entropic_ot(cost, eps=0.1 if capped else 0.01, max_iter=100, tol=0.0, row_mass_capped=capped,
                                 default_column_mass=0.8 if capped else 1.0)
    assert solution.iterations == 100


def test_error_reported_at_max_iter_is_that_of_the_returned_plan():
    generator = torch.Generator().manual_seed(12)
    cost = torch.rand(10, 6, generator=generator, dtype=torch.float64)

    solution = solve_entropic_ot(cost, eps=0.01, max_iter=3, tol=1e-12)

    assert solution.iterations == 3
    row_error = (solution.plan.sum(-1) - 1 / 10).abs().sum().item()
    assert solution.residual == pytest.approx(row_error, rel=1e-9)
    assert solution.residual > 1e-12


def test_infeasible_masses_are_rejected():
    cost = torch.rand(5, 4)
    with pytest.raises(ValueError, match="sum\\(b\\) <= sum\\(a\\)"):
        partial_sinkhorn(cost, a=torch.full((5,), 0.1), b=torch.full((4,), 0.25))
    with pytest.raises(ValueError, match="sum\\(a\\) == sum\\(b\\)"):
        sinkhorn(cost, b=torch.full((4,), 0.2))


def test_kernel_domain_and_log_domain_iterations_agree(monkeypatch):
    """Well-conditioned balanced problems run on the kernel itself (fast matrix products); the
    result is the log-domain solver's, iteration for iteration."""
    import fedvlm.ot as fedvlm_ot

    generator = torch.Generator().manual_seed(7)
    cost = 1 - torch.softmax(torch.randn(3, 4, 9, 5, generator=generator) * 3, dim=-2)
    a = torch.softmax(torch.randn(3, 4, 9, generator=generator), dim=-1)
    fast = solve_entropic_ot(cost + 5.0, a, eps=0.2, max_iter=15, tol=0.0)  # a shifted cost: same plan
    monkeypatch.setattr(fedvlm_ot, "KERNEL_DOMAIN_SPAN", -1.0)  # force the log domain
    slow = solve_entropic_ot(cost, a, eps=0.2, max_iter=15, tol=0.0)
    assert fast.iterations == slow.iterations == 15
    torch.testing.assert_close(fast.plan, slow.plan, atol=1e-7, rtol=1e-5)
    assert fast.residual is None and slow.residual is None  # tol = 0: not measured, no host sync
    assert abs(float(fast.marginal_error) - float(slow.marginal_error)) < 1e-5


@pytest.mark.parametrize("capped", [False, True])
def test_marginal_error_is_the_relative_constraint_violation_of_the_returned_plan(capped):
    generator = torch.Generator().manual_seed(13)
    cost = cosine_cost(generator, 4, 3, 49, 4)
    solution = solve_entropic_ot(cost, eps=0.01, max_iter=100, tol=0.0, row_mass_capped=capped,
                                 default_column_mass=0.8 if capped else 1.0)

    rows = solution.plan.double().sum(-1)  # a = 1/49 per patch
    columns = solution.plan.double().sum(-2)  # b = 0.8/4 (partial) or 1/4 per prompt
    row_violation = (rows - 1 / 49).clamp(min=0) if capped else (rows - 1 / 49).abs()
    column_mass = (0.8 if capped else 1.0) / 4
    direct = max((row_violation * 49).max().item(), ((columns - column_mass).abs() / column_mass).max().item())
    assert solution.marginal_error.shape == () and solution.marginal_error.device == cost.device
    assert float(solution.marginal_error) == pytest.approx(direct, rel=1e-4, abs=1e-6)


def test_small_eps_with_100_iterations_violates_the_marginals_and_a_converged_solve_does_not():
    generator = torch.Generator().manual_seed(14)
    cost = cosine_cost(generator, 8, 10, 49, 4)
    rough = solve_entropic_ot(cost, eps=0.01, max_iter=100, tol=0.0)
    converged = solve_entropic_ot(cost, eps=0.1, max_iter=1000, tol=1e-7)
    assert float(rough.marginal_error) > 0.05
    assert float(converged.marginal_error) < 1e-3


def test_monitor_keeps_the_max_of_a_round_and_warns_once_per_run():
    generator = torch.Generator().manual_seed(15)
    cost = cosine_cost(generator, 4, 3, 49, 4)
    monitor = MarginalErrorMonitor(tolerance=0.05)
    errors = []
    with monitor.recording():
        for eps in (0.1, 0.01, 0.05):
            solution = solve_entropic_ot(cost, eps=eps, max_iter=100, tol=0.0, row_mass_capped=True,
                                         default_column_mass=0.8)
            errors.append(float(solution.marginal_error))
    solve_entropic_ot(cost, eps=0.001, max_iter=5, tol=0.0)  # not recording: not counted
    assert max(errors) > 0.05
    with pytest.warns(OTMarginalWarning) as caught:
        assert monitor.end_round(0) == pytest.approx(max(errors))
    assert len(caught) == 1 and "runtime.ot_marginal_tolerance" in str(caught[0].message)
    with monitor.recording():
        solve_entropic_ot(cost, eps=0.01, max_iter=100, tol=0.0, row_mass_capped=True, default_column_mass=0.8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per run: the second round above tolerance is quiet
        assert monitor.end_round(1) > 0.05
    assert monitor.end_round(2) is None  # a round that solved nothing
