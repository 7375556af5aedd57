"""fedvlm.probe (``fedvlm probe-world``): its maths against loops and scikit-learn, a smoke run, and
the v2 target on the shipped ``synthetic`` checkpoint."""

import itertools
import math

import pytest
import torch

from fedvlm import probe

pytestmark = pytest.mark.usefixtures("one_thread")


# a 2-image, 4-patch case with 4 region classes: class 3 is predicted but never true, class 2 is
# true but never predicted, so both IoU edge cases appear
TRUTH = torch.tensor([[0, 0, 1, 2], [1, 1, 0, 0]])
PREDICTED = torch.tensor([[0, 1, 1, 3], [1, 0, 0, 0]])


def test_patch_accuracy_and_majority_rate_match_a_loop():
    pairs = [(p, t) for row_p, row_t in zip(PREDICTED.tolist(), TRUTH.tolist()) for p, t in zip(row_p, row_t)]
    assert probe.patch_accuracy(PREDICTED, TRUTH) == pytest.approx(sum(p == t for p, t in pairs) / len(pairs))
    assert probe.patch_accuracy(PREDICTED, TRUTH) == pytest.approx(5 / 8)
    truths = [t for _, t in pairs]
    assert probe.majority_rate(TRUTH) == pytest.approx(max(truths.count(c) for c in set(truths)) / len(truths))


def test_mean_iou_matches_a_loop():
    pairs = [(p, t) for row_p, row_t in zip(PREDICTED.tolist(), TRUTH.tolist()) for p, t in zip(row_p, row_t)]
    ious = []
    for c in range(5):  # class 4 occurs nowhere and must be left out
        intersection = sum(p == c and t == c for p, t in pairs)
        union = sum(p == c or t == c for p, t in pairs)
        if union:
            ious.append(intersection / union)
    assert len(ious) == 4
    assert probe.mean_iou(PREDICTED, TRUTH, 5) == pytest.approx(sum(ious) / len(ious))
    # by hand: class 0 3/5, class 1 2/4, class 2 0/1, class 3 0/1
    assert probe.mean_iou(PREDICTED, TRUTH, 5) == pytest.approx((0.6 + 0.5 + 0 + 0) / 4)
    assert probe.mean_iou(TRUTH, TRUTH, 5) == pytest.approx(1.0)


def test_patch_spread_and_cosines_match_loops():
    patches = torch.randn(3, 5, 7, generator=torch.Generator().manual_seed(0))
    pooled = torch.randn(3, 7, generator=torch.Generator().manual_seed(1))
    per_image = []
    for image in patches:
        distances = [1 - torch.nn.functional.cosine_similarity(image[a], image[b], dim=0).item()
                     for a, b in itertools.permutations(range(5), 2)]
        per_image.append(sum(distances) / len(distances))
    assert probe.patch_spread(patches) == pytest.approx(sum(per_image) / 3, abs=1e-6)
    assert probe.patch_spread(patches[:, :1].repeat(1, 5, 1)) == pytest.approx(0.0, abs=1e-12)  # copies: no spread
    mean_cos = [torch.nn.functional.cosine_similarity(p.mean(0), q, dim=0).item() for p, q in zip(patches, pooled)]
    assert probe.mean_patch_pooled_cosine(patches, pooled) == pytest.approx(sum(mean_cos) / 3, abs=1e-6)
    each_cos = [torch.nn.functional.cosine_similarity(patch, q, dim=0).item() for p, q in zip(patches, pooled)
                for patch in p]
    assert probe.patch_pooled_cosine(patches, pooled) == pytest.approx(sum(each_cos) / 15, abs=1e-6)


def test_patch_spread_by_region_matches_a_loop():
    patches = torch.randn(2, 4, 6, generator=torch.Generator().manual_seed(2))
    same, different = [], []
    for image, labels in zip(patches, TRUTH):
        for a, b in itertools.permutations(range(4), 2):
            distance = 1 - torch.nn.functional.cosine_similarity(image[a], image[b], dim=0).item()
            (same if labels[a] == labels[b] else different).append(distance)
    measured = probe.patch_spread_by_region(patches, TRUTH)
    assert measured == pytest.approx((sum(same) / len(same), sum(different) / len(different)), abs=1e-6)


def test_best_patch_scores_take_each_class_best_patch():
    texts = torch.eye(3)
    patches = torch.tensor([[[1.0, 0, 0], [0, 2.0, 2.0]], [[0, 0, 1.0], [0, 0, 3.0]]])
    expected = torch.tensor([[1.0, math.sqrt(0.5), math.sqrt(0.5)], [0, 0, 1.0]])
    assert torch.allclose(probe.best_patch_scores(patches, texts), expected)


def test_logistic_regression_equals_scikit_learn():
    linear_model = pytest.importorskip("sklearn.linear_model")
    generator = torch.Generator().manual_seed(3)
    centres = torch.randn(4, 6, generator=generator)
    labels = torch.arange(80) % 4
    features = centres[labels] + 1.2 * torch.randn(80, 6, generator=generator)
    for c in (0.1, 10.0):
        weight, bias = probe.fit_logistic_regression(features, labels, 4, inverse_regularization=c)
        reference = linear_model.LogisticRegression(C=c, tol=1e-12, max_iter=20000).fit(
            features.double().numpy(), labels.numpy())
        ours = torch.softmax(features.double() @ weight.T + bias, dim=-1)
        theirs = torch.from_numpy(reference.predict_proba(features.double().numpy()))
        assert torch.allclose(ours, theirs, atol=1e-6), c
        assert torch.allclose(weight, torch.from_numpy(reference.coef_), atol=1e-5), c
    assert (ours.argmax(-1) == labels).double().mean() > 0.5  # the data is learnable


def test_linear_probe_is_deterministic_and_beats_chance_on_separable_data():
    generator = torch.Generator().manual_seed(4)
    centres = torch.randn(3, 8, generator=generator)
    labels = torch.arange(90) % 3
    features = centres[labels] + 0.3 * torch.randn(90, 8, generator=generator)
    first = probe.linear_probe(features[:60], labels[:60], features[60:], labels[60:], 3)
    assert first == probe.linear_probe(features[:60], labels[:60], features[60:], labels[60:], 3)
    assert first["accuracy"] > 0.9 and first["C"] in probe.LINEAR_PROBE_CS


def test_validation_quarter_holds_out_a_quarter_of_every_class():
    labels = torch.arange(128) % 16  # the scene split's training half: blocks of the 16 classes in order
    held_out = probe.validation_quarter(labels)
    assert int(held_out.sum()) == 32
    assert torch.equal(torch.bincount(labels[held_out], minlength=16), torch.full((16,), 2))


def test_random_ranking_map_is_near_the_positive_rate():
    targets = (torch.rand(400, 5, generator=torch.Generator().manual_seed(5)) < 0.2).float()
    rate = probe.positive_rate(targets)
    assert rate == pytest.approx(targets.mean().item(), abs=1e-6)
    assert probe.random_ranking_map(targets) == pytest.approx(rate, abs=0.04)


def test_probe_world_smoke_on_a_random_tiny_clip(tmp_path, capsys):
    """probe_world through its command: the JSON it writes is probe_world's table."""
    import json

    from fedvlm.cli import main

    report, raw = tmp_path / "docs" / "WORLD.md", tmp_path / "world.json"
    assert main(["probe-world", "--pretrained", "random", "--images", "32", "--out", str(report),
                 "--json", str(raw)]) == 0
    table = json.loads(raw.read_text())
    assert table["backbones"] == ["random"]
    figures = table["figures"]["random"]
    assert list(figures) == list(probe.FIGURES)
    for key, value in figures.items():
        if key == "linear_probe_C":
            assert value in probe.LINEAR_PROBE_CS
        elif key.startswith("cos_"):
            assert -1 <= value <= 1, key
        elif key == "patch_object_accuracy":
            assert math.isnan(value) or 0 <= value <= 1
        else:
            assert 0 <= value <= 1, key
    assert figures["scene_chance"] == pytest.approx(1 / 16) and figures["patch_chance"] == pytest.approx(1 / 33)
    assert figures["patch_spread"] > 0  # a random ViT's patch tokens are not all the same vector
    rows = table["targets"]["random"]
    assert len(rows) == 8
    assert rows[1]["passed"] is None  # no synthetic-v1 to compare the spread with
    assert all(isinstance(row["passed"], bool) for row in rows if row is not rows[1])
    assert table["settings"]["sizes"]["scene split images"] == 32
    text = report.read_text()
    assert "| scene_zero_shot_pooled |" in text and "fedvlm probe-world --pretrained random" in text
    assert text in capsys.readouterr().out


def test_cli_errors_are_one_line(capsys):
    from fedvlm.cli import main

    assert main(["probe-world", "--pretrained", "random", "--images", "8"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "--images" in error
    assert main(["probe-world", "--pretrained", "no-such-tag"]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "no-such-tag" in error


def test_shipped_v2_mean_patch_zero_shot_is_at_least_80_percent_of_pooled():
    """Issue 12's first target on the shipped ``synthetic`` checkpoint (fails until recipe v2 ships)."""
    from fedvlm.data.synthetic import WORLD

    backbone = probe.load_backbone("fedvlm-tiny", "synthetic")
    split = probe.scene_split(160, probe.PROBE_SEED, probe.patch_grid(backbone))
    pooled, patches = probe.encode(backbone, split.paths)
    texts = backbone.encode_text([probe.TEMPLATE.format(name) for name in WORLD.scene_names])
    accuracy = probe.scene_zero_shot(pooled, patches, split.labels, texts)
    assert accuracy["scene_zero_shot_pooled"] > 2 / 16  # the checkpoint is a trained one
    assert accuracy["scene_zero_shot_mean_patch"] >= 0.8 * accuracy["scene_zero_shot_pooled"], accuracy


def test_dual_prompt_logits_are_dualcoops_formula_on_the_written_prompts(tiny_backbone):
    """The zero-shot DualCoOp score is the head's region aggregation over the pooled embedding and
    every patch, with the prompts "an aerial photo of a {c}." / "an aerial photo without a {c}."."""
    generator = torch.Generator().manual_seed(6)
    pooled = torch.randn(5, tiny_backbone.embed_dim, generator=generator)
    patches = torch.randn(5, 4, tiny_backbone.embed_dim, generator=generator)
    names = ["airplane", "storage tank", "car"]
    logits = probe.dual_prompt_logits(tiny_backbone, names, pooled, patches)
    positive = tiny_backbone.encode_text([f"an aerial photo of a {n}." for n in names])
    negative = tiny_backbone.encode_text([f"an aerial photo without a {n}." for n in names])
    regions = torch.cat([pooled.unsqueeze(1), patches], dim=1)  # [N, 1 + M, D]
    s_pos, s_neg = 20 * probe.cosine(regions, positive), 20 * probe.cosine(regions, negative)  # [N, 1 + M, C]
    weights = torch.softmax(s_pos, dim=1)
    expected = float(tiny_backbone.logit_scale) / 20 * ((weights * s_pos).sum(1) - (weights * s_neg).sum(1))
    assert torch.allclose(logits, expected, atol=1e-4)
