"""The fixed-point sum of fedvlm.algorithms.reduction: the same bits for any split of the terms
over processes and any order, and within one rounding per term of the exact sum."""

import math
import random

import numpy as np
import pytest
import torch

from fedvlm.algorithms import ALGORITHMS, ClientUpdate, ServerRound, round_sums, term_layout, zeros_like_state
from fedvlm.algorithms.reduction import fixed_point_sum, sum_terms, term_bits


def _terms(count=37, size=50, seed=0):
    generator = torch.Generator().manual_seed(seed)
    scales = torch.logspace(-8, 3, size, dtype=torch.float64)  # every element its own magnitude
    return [torch.randn(size, generator=generator, dtype=torch.float64) * scales for _ in range(count)]


def _split_sum(terms, groups):
    """``fixed_point_sum`` as ``len(groups)`` processes compute it: the collectives are the max /
    sum of every process's tensor, played out here on the real function's inputs and outputs."""
    size, count = terms[0].numel(), len(terms)
    bounds = [torch.stack([terms[i] for i in g]).abs().amax(0) if g else torch.zeros(size, dtype=torch.float64)
              for g in groups]
    partials = []
    for g in groups:
        captured = {}

        def keep(total):
            captured["total"] = total.clone()
            return total
        fixed_point_sum([terms[i] for i in g], size, count, lambda b: torch.stack(bounds).amax(0), keep)
        partials.append(captured["total"])
    total = sum(partials)  # int64: exact in any order
    results = [fixed_point_sum([terms[i] for i in g], size, count, lambda b: torch.stack(bounds).amax(0),
                               lambda t: total) for g in groups]
    return results


def test_every_split_and_order_gives_the_same_bits():
    terms = _terms()
    single = fixed_point_sum(terms, terms[0].numel(), len(terms))
    order = list(range(len(terms)))
    rng = random.Random(1)
    for processes in (1, 2, 3, 4, 7):
        rng.shuffle(order)
        groups = [order[r::processes] for r in range(processes)]
        for result in _split_sum(terms, groups):
            assert torch.equal(result, single), processes  # bitwise, on every process
    # a float sum in another grouping is not the same number: the property is not free
    shuffled = [terms[i] for i in order]
    assert not torch.equal(torch.stack(terms).sum(0), sum(shuffled[1:], shuffled[0]))


def test_within_one_rounding_per_term_of_the_exact_sum():
    terms = _terms()
    result = fixed_point_sum(terms, terms[0].numel(), len(terms))
    exact = torch.tensor([math.fsum(float(t[j]) for t in terms) for j in range(terms[0].numel())],
                         dtype=torch.float64)
    bound = torch.stack(terms).abs().amax(0)
    tolerance = len(terms) * bound * 2.0 ** -(term_bits(len(terms)) - 1) + exact.abs() * 2.0 ** -52
    assert (result - exact).abs().le(tolerance).all()
    assert (result.float() == exact.float()).float().mean() > 0.99  # as a float32 parameter: the exact sum


def test_no_terms_zero_terms_tiny_and_huge_values():
    assert torch.equal(fixed_point_sum([], 3, 1), torch.zeros(3, dtype=torch.float64))
    values = [torch.tensor([0.0, 1e-300, 1e300, -2.5], dtype=torch.float64),
              torch.tensor([0.0, 3e-300, -1e300, 2.5], dtype=torch.float64)]
    total = fixed_point_sum(values, 4, 2)
    assert total.tolist() == [0.0, pytest.approx(4e-300), 0.0, 0.0]
    with pytest.raises(ValueError, match="not finite"):
        fixed_point_sum([torch.tensor([math.inf], dtype=torch.float64)], 1, 1)


@pytest.mark.parametrize("name", ["fedavg", "scaffold", "feddyn", "dp_fedavg", "fedadam", "fedavgm"])
def test_server_step_is_the_same_for_any_client_order(name):
    """The list form (``server_step``) sums the client terms in fixed point: shuffled updates
    give the same bits."""
    algorithm = ALGORITHMS.get(name).model_validate({"name": name})
    current = {"w": torch.randn(4, 6, generator=torch.Generator().manual_seed(2))}
    generator = torch.Generator().manual_seed(3)
    updates = [ClientUpdate(k, int(n), {"w": current["w"] + torch.randn(4, 6, generator=generator)},
                            {key: torch.randn(4, 6, generator=generator)
                             for key in zeros_like_state(algorithm.uploads, current)})
               for k, n in enumerate([5, 0, 12, 7, 1])]
    state = algorithm.init_server_state(current)
    info = ServerRound(0, 3, 10, len(updates))
    first, first_state = algorithm.server_step(current, updates, state, info)
    second, second_state = algorithm.server_step(current, updates[::-1], state, info)
    assert all(torch.equal(first[k], second[k]) for k in first)
    assert all(torch.equal(first_state[k], second_state[k]) for k in first_state)
    assert round_sums(algorithm, current, updates[::-1]).clients == (0, 1, 2, 3, 4)
    assert set(term_layout(algorithm, current)) == set(algorithm.client_terms(current, updates[0]))


def test_fedavg_mean_is_the_float64_weighted_mean_rounded_once():
    algorithm = ALGORITHMS.get("fedavg").model_validate({"name": "fedavg"})
    values = np.random.default_rng(0).normal(size=(5, 8)).astype(np.float32)
    counts = [3, 9, 1, 4, 7]
    updates = [ClientUpdate(k, n, {"w": torch.from_numpy(values[k])}) for k, n in enumerate(counts)]
    result, _ = algorithm.server_step({"w": torch.zeros(8)}, updates, {}, ServerRound(0, 0, 5, 5))
    expected = (np.asarray(counts)[:, None] * values.astype(np.float64)).sum(0) / sum(counts)
    assert np.array_equal(result["w"].numpy(), expected.astype(np.float32))
