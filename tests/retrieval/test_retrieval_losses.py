"""DTCL terms against brute-force loops (RDB Eq. 10, 13, 14)."""

import math

import pytest
import torch

from fedvlm.retrieval.losses import bidirectional_triplet, consistency, uncertainty_weighted


@pytest.mark.parametrize("negatives", ["sum", "hardest"])
def test_triplet_matches_a_loop_and_only_compares_pairs_of_one_group(negatives):
    g = torch.Generator().manual_seed(0)
    similarity = torch.rand(5, 5, generator=g) * 2 - 1
    groups = torch.tensor([0, 1, 0, 0, 1])
    margin = 0.2
    out = bidirectional_triplet(similarity, groups, margin, negatives)
    reduce = sum if negatives == "sum" else (lambda values: max(values, default=0.0))
    for i in range(5):
        others = [j for j in range(5) if j != i and groups[j] == groups[i]]
        text_side = [max(0.0, margin - similarity[i, i] + similarity[i, j]) for j in others]
        image_side = [max(0.0, margin - similarity[i, i] + similarity[j, i]) for j in others]
        assert out[i].item() == pytest.approx(float(reduce(text_side) + reduce(image_side)), abs=1e-6)


def test_triplet_is_zero_when_every_positive_wins_by_the_margin():
    similarity = torch.full((3, 3), 0.1).fill_diagonal_(0.9)
    assert bidirectional_triplet(similarity, torch.zeros(3, dtype=torch.long)).abs().sum() == 0


def test_consistency_and_uncertainty_weighting_are_the_printed_formulas():
    student, teacher = torch.tensor([[1.0, 2.0]]), torch.tensor([[0.0, 4.0]])
    assert consistency(student, teacher).item() == pytest.approx(5.0)
    losses, sigma = torch.tensor([[2.0, 3.0]]), torch.tensor([[1.0, 0.5]])
    expected = 2 / 2 + math.log(2) + 3 / (2 * 0.25) + math.log(1.25)
    assert uncertainty_weighted(losses, sigma).item() == pytest.approx(expected, abs=1e-6)
