"""fedvlm.losses against a plain transcription of the published ASL formula."""

import math

import pytest
import torch
import torch.nn.functional as F

from fedvlm.errors import ConfigError
from fedvlm.losses import (
    LOSSES,
    AsymmetricLoss,
    MaskedBCEWithLogitsLoss,
    asymmetric_loss,
    asymmetric_loss_from_probabilities,
    masked_binary_cross_entropy,
)

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread is faster


def asl_by_hand(logits, targets, gamma_neg, gamma_pos, clip, eps=1e-8):
    """Ridnik et al. (ICCV 2021), one entry at a time; -1 entries are skipped."""
    total = 0.0
    for logit_row, target_row in zip(logits.tolist(), targets.tolist()):
        for logit, target in zip(logit_row, target_row):
            p = 1 / (1 + math.exp(-logit))
            if target == 1:
                total += -((1 - p) ** gamma_pos) * math.log(max(p, eps))
            elif target == 0:
                shifted = max(p - clip, 0.0)
                total += -(shifted**gamma_neg) * math.log(max(1 - shifted, eps))
    return total


def random_problem(seed, batch=6, classes=9, unknown_fraction=0.3):
    generator = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(batch, classes, generator=generator, dtype=torch.float64)
    targets = (torch.rand(batch, classes, generator=generator) < 0.3).long()
    targets[torch.rand(batch, classes, generator=generator) < unknown_fraction] = -1
    assert (targets == -1).any() and (targets == 0).any() and (targets == 1).any()
    return logits, targets


@pytest.mark.parametrize(
    "gamma_neg, gamma_pos, clip",
    [(4.0, 0.0, 0.05), (4.0, 1.0, 0.05), (2.0, 0.0, 0.2), (0.0, 0.0, 0.05), (3.0, 1.0, 0.0), (0.0, 0.0, 0.0)],
)
def test_asl_equals_the_published_formula(gamma_neg, gamma_pos, clip):
    logits, targets = random_problem(seed=int(10 * gamma_neg + gamma_pos + 100 * clip))

    loss = asymmetric_loss(logits, targets, gamma_neg=gamma_neg, gamma_pos=gamma_pos, clip=clip)

    assert loss.item() == pytest.approx(asl_by_hand(logits, targets, gamma_neg, gamma_pos, clip), rel=1e-10)


def test_asl_without_focusing_or_shifting_is_binary_cross_entropy():
    logits, targets = random_problem(seed=1)
    known = targets >= 0

    asl = asymmetric_loss(logits, targets, gamma_neg=0.0, gamma_pos=0.0, clip=0.0)
    bce = masked_binary_cross_entropy(logits, targets, reduction="sum")
    torch_bce = F.binary_cross_entropy_with_logits(logits[known], targets[known].double(), reduction="sum")

    torch.testing.assert_close(asl, torch_bce)
    torch.testing.assert_close(bce, torch_bce)


def test_probability_shifting_discards_easy_negatives():
    probabilities = torch.tensor([[0.01, 0.04, 0.3]], dtype=torch.float64)
    targets = torch.zeros(1, 3, dtype=torch.long)

    per_entry = asymmetric_loss_from_probabilities(probabilities, targets, gamma_neg=0.0, clip=0.05, reduction="none")

    assert per_entry[0, 0] == 0 and per_entry[0, 1] == 0
    assert per_entry[0, 2].item() == pytest.approx(-math.log(1 - 0.25))


@pytest.mark.parametrize("focal_grad", [False, True])
def test_gradient_follows_the_focal_grad_option(focal_grad):
    logits, targets = random_problem(seed=2)
    logits.requires_grad_(True)
    gamma_neg, gamma_pos, clip = 4.0, 1.0, 0.05

    asymmetric_loss(logits, targets, gamma_neg, gamma_pos, clip, focal_grad=focal_grad).backward()

    p = torch.sigmoid(logits.detach())
    shifted = (p - clip).clamp(min=0)
    positive, negative = (targets == 1).double(), (targets == 0).double()
    # d(-log p)/dx = -(1 - p); d(-log(1 - p_m))/dx = p(1 - p)/(1 - p_m) where p > clip, else 0.
    positive_grad = -(1 - p) * (1 - p) ** gamma_pos
    negative_grad = (p > clip) * p * (1 - p) / (1 - shifted) * shifted**gamma_neg
    if focal_grad:  # plus the derivative of the focusing weight times -log-likelihood
        positive_grad = positive_grad + gamma_pos * (1 - p) ** (gamma_pos - 1) * p * (1 - p) * torch.log(p)
        negative_weight_grad = (p > clip) * gamma_neg * shifted ** (gamma_neg - 1) * p * (1 - p)
        negative_grad = negative_grad - negative_weight_grad * torch.log(1 - shifted)
    expected = positive * positive_grad + negative * negative_grad
    torch.testing.assert_close(logits.grad, expected)
    assert logits.grad.abs().sum() > 0


def test_unknown_labels_add_zero_loss_and_zero_gradient():
    logits, targets = random_problem(seed=3)
    unknown = targets == -1
    count = int(unknown.sum())
    # Saturated logits on unknown entries: even there the gradient must be exactly zero, not nan.
    logits[unknown] = torch.tensor([60.0, -60.0], dtype=torch.float64).repeat(count)[:count]
    logits.requires_grad_(True)

    per_entry = asymmetric_loss(logits, targets, gamma_neg=4.0, gamma_pos=1.0, focal_grad=True, reduction="none")
    per_entry.sum().backward()

    assert (per_entry[unknown] == 0).all()
    assert (logits.grad[unknown] == 0).all()
    assert torch.isfinite(logits.grad).all() and (logits.grad[~unknown] != 0).any()
    # Moving the logits of unknown entries changes nothing.
    moved = logits.detach().clone()
    moved[unknown] = -moved[unknown]
    torch.testing.assert_close(asymmetric_loss(moved, targets), asymmetric_loss(logits.detach(), targets))


def test_masked_bce_ignores_unknown_labels():
    logits, targets = random_problem(seed=4)
    logits.requires_grad_(True)
    known = targets >= 0

    loss = masked_binary_cross_entropy(logits, targets)
    loss.backward()

    expected = F.binary_cross_entropy_with_logits(logits.detach()[known], targets[known].double())
    torch.testing.assert_close(loss.detach(), expected)
    assert (logits.grad[~known] == 0).all()


def test_mean_reduction_averages_over_known_entries_only():
    logits, targets = random_problem(seed=5)
    known_count = (targets >= 0).sum()

    total = asymmetric_loss(logits, targets, reduction="sum")
    mean = asymmetric_loss(logits, targets, reduction="mean")

    torch.testing.assert_close(mean, total / known_count)


def test_registry_builds_the_losses_by_name():
    logits, targets = random_problem(seed=6)

    assert {"asl", "bce", "cross_entropy"} <= set(LOSSES.names())
    asl = LOSSES.get("asl")(gamma_neg=2.0, gamma_pos=1.0, clip=0.1)
    assert isinstance(asl, AsymmetricLoss)
    torch.testing.assert_close(asl(logits, targets), asymmetric_loss(logits, targets, 2.0, 1.0, 0.1))
    assert isinstance(LOSSES.get("bce")(), MaskedBCEWithLogitsLoss)
    labels = torch.tensor([0, 3, 8, 1, 2, 5])
    torch.testing.assert_close(LOSSES.get("cross_entropy")()(logits, labels), F.cross_entropy(logits, labels))
    with pytest.raises(ConfigError, match="unknown loss 'focal'"):
        LOSSES.get("focal")
