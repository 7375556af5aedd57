"""PAINT's interpolation and choice of alpha, the label losses, the alignment loss (Eq. 1), the
prompt-ensembled head: against hand computations."""

import math

import pytest
import torch

from fedvlm.heads.base import normalize
from fedvlm.patching.classifier import class_embeddings
from fedvlm.patching.interpolation import choose_alpha, interpolate
from fedvlm.patching.losses import alignment_loss, label_loss


def test_interpolation_mixes_every_float_key_and_keeps_the_rest():
    zero_shot = {"w": torch.tensor([1.0, 2.0]), "b": torch.tensor([4.0]), "count": torch.tensor([3])}
    fine_tuned = {"w": torch.tensor([3.0, -2.0]), "count": torch.tensor([9])}
    mixed = interpolate(zero_shot, fine_tuned, 0.25)
    assert mixed["w"].tolist() == [1.5, 1.0]  # 0.75 * zs + 0.25 * ft
    assert mixed["b"].tolist() == [4.0]  # not fine-tuned: unchanged
    assert mixed["count"].tolist() == [3]  # integer buffers are not interpolated
    assert interpolate(zero_shot, fine_tuned, 1.0)["w"].tolist() == [3.0, -2.0]


def test_alpha_is_the_best_mean_of_both_validation_metrics_smallest_on_ties():
    assert choose_alpha([0.0, 0.5, 1.0], [0.2, 0.6, 0.8], [0.9, 0.8, 0.3]) == 0.5
    assert choose_alpha([0.0, 0.5, 1.0], [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]) == 0.0


def test_soft_cross_entropy_uses_the_normalised_multi_hot_target():
    logits = torch.tensor([[1.0, 2.0, 0.0]])
    log_p = logits.log_softmax(-1)[0]
    expected = -(0.5 * log_p[0] + 0.5 * log_p[1])
    assert label_loss(logits, torch.tensor([[1.0, 1.0, 0.0]]), "soft_ce").item() == pytest.approx(expected.item())
    assert label_loss(logits, torch.tensor([[1.0, -1.0, 0.0]]), "soft_ce").item() == pytest.approx(-log_p[0].item())
    assert label_loss(logits, torch.tensor([2])).item() == pytest.approx(-log_p[2].item())


def test_alignment_loss_is_mse_plus_lambda_ce():
    student, teacher = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 2.0]])
    logits, labels = torch.tensor([[0.0, 1.0]]), torch.tensor([0])
    ce = math.log(1 + math.e)
    assert alignment_loss(student, teacher, logits, labels, "mse_ce", 0.05).item() == pytest.approx(2.5 + 0.05 * ce)
    assert alignment_loss(student, teacher, logits, labels, "mse").item() == pytest.approx(2.5)
    assert alignment_loss(student, teacher, logits, labels, "ce").item() == pytest.approx(ce)


def test_prompt_ensemble_is_the_normalised_mean_of_normalised_prompts(tiny_backbone):
    templates = ["a photo of a {}.", "an aerial image of a {}."]
    classes = class_embeddings(tiny_backbone, ["lake", "forest"], templates)
    for c, name in enumerate(["lake", "forest"]):
        single = [normalize(tiny_backbone.encode_text([t.format(name)]))[0] for t in templates]
        torch.testing.assert_close(classes[c], normalize((single[0] + single[1]) / 2), atol=1e-6, rtol=1e-5)
