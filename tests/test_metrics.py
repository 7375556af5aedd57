"""fedvlm.metrics against scikit-learn and brute-force loops."""

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score

from fedvlm.metrics import accuracy, mean_average_precision, multilabel_f1, retrieval_recall

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread is faster


# torchmetrics accumulates average precision in float32, whatever the input precision.
AP_TOLERANCE = 1e-6


def multilabel_problem(seed, samples=200, classes=12):
    """Scores that carry some signal, so that the metrics are far from both 0 and 1."""
    generator = torch.Generator().manual_seed(seed)
    targets = (torch.rand(samples, classes, generator=generator) < 0.25).long()
    scores = torch.sigmoid(2 * targets - 1 + 1.5 * torch.randn(samples, classes, generator=generator)).double()
    return scores, targets


def test_accuracy_from_logits_and_from_predictions():
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 5.0], [9.0, 0.0, 1.0]])
    labels = torch.tensor([0, 1, 1, 0])

    assert accuracy(logits, labels) == pytest.approx(0.75)
    assert accuracy(logits.argmax(-1), labels) == pytest.approx(0.75)


def test_map_equals_sklearn_macro_average_precision():
    scores, targets = multilabel_problem(seed=0)

    expected = np.mean([average_precision_score(targets[:, c], scores[:, c]) for c in range(targets.shape[1])])

    assert mean_average_precision(scores, targets) == pytest.approx(expected, abs=AP_TOLERANCE)


def test_map_handles_tied_scores_like_sklearn():
    scores, targets = multilabel_problem(seed=1)
    scores = (scores * 4).round() / 4  # five distinct values, many ties

    expected = np.mean([average_precision_score(targets[:, c], scores[:, c]) for c in range(targets.shape[1])])

    assert mean_average_precision(scores, targets) == pytest.approx(expected, abs=AP_TOLERANCE)


def test_map_skips_classes_without_positives_and_ignores_unknown_labels():
    scores, targets = multilabel_problem(seed=2)
    generator = torch.Generator().manual_seed(3)
    targets[torch.rand(targets.shape, generator=generator) < 0.2] = -1
    targets[0, :] = 1  # every class keeps a known positive but these two:
    targets[:, 3] = 0  # no positive: AP undefined, left out
    targets[:, 5] = torch.where(targets[:, 5] == 1, -1, targets[:, 5])  # only unknowns and negatives

    expected = []
    for c in range(targets.shape[1]):
        known = targets[:, c] >= 0
        if (targets[known, c] == 1).any():
            expected.append(average_precision_score(targets[known, c], scores[known, c]))

    assert len(expected) == targets.shape[1] - 2
    assert mean_average_precision(scores, targets) == pytest.approx(np.mean(expected), abs=AP_TOLERANCE)


def test_map_on_large_logits_keeps_their_order():
    """Heads return logits (FedMPT's and DualCoOp's reach 5 x 20 = 100): a sigmoid in float32
    would round every logit above ~17 to 1.0 and tie them; the AP must be the logits' own."""
    scores, targets = multilabel_problem(seed=4, samples=60, classes=5)
    logits = (20 + 30 * scores).float()  # every score far into the sigmoid's flat top

    expected = np.mean([average_precision_score(targets[:, c], logits[:, c]) for c in range(targets.shape[1])])

    assert mean_average_precision(logits, targets) == pytest.approx(expected, abs=AP_TOLERANCE)


def test_map_with_a_single_class_that_has_a_positive():
    """A client's test share may hold positives of one class only."""
    scores, targets = multilabel_problem(seed=5, samples=40, classes=4)
    targets[:, 1:] = 0

    expected = average_precision_score(targets[:, 0], scores[:, 0])

    assert mean_average_precision(scores, targets) == pytest.approx(expected, abs=AP_TOLERANCE)


@pytest.mark.parametrize("threshold", [0.5, 0.7])
def test_multilabel_f1_equals_sklearn(threshold):
    scores, targets = multilabel_problem(seed=4)
    predicted = (scores >= threshold).long().numpy()
    targets[:, 7] = 0  # a class with no positives: recall undefined, counted as 0
    truth = targets.numpy()
    sklearn = dict(y_true=truth, y_pred=predicted, zero_division=0)
    cp, cr = precision_score(average="macro", **sklearn), recall_score(average="macro", **sklearn)

    metrics = multilabel_f1(scores, targets, threshold=threshold)

    assert metrics["CP"] == pytest.approx(cp)
    assert metrics["CR"] == pytest.approx(cr)
    assert metrics["CF1"] == pytest.approx(2 * cp * cr / (cp + cr))
    assert metrics["OP"] == pytest.approx(precision_score(average="micro", **sklearn))
    assert metrics["OR"] == pytest.approx(recall_score(average="micro", **sklearn))
    assert metrics["OF1"] == pytest.approx(f1_score(average="micro", **sklearn))
    mean_of_f1s = multilabel_f1(scores, targets, threshold=threshold, cf1="mean_of_f1s")["CF1"]
    assert mean_of_f1s == pytest.approx(f1_score(average="macro", **sklearn))
    assert abs(mean_of_f1s - metrics["CF1"]) > 1e-4  # the two readings do differ


def test_multilabel_f1_top_k_predicts_exactly_k_labels_per_sample():
    scores, targets = multilabel_problem(seed=5)
    top3 = torch.zeros_like(targets)
    for row in range(scores.shape[0]):
        top3[row, scores[row].argsort(descending=True)[:3]] = 1
    sklearn = dict(y_true=targets.numpy(), y_pred=top3.numpy(), zero_division=0)

    metrics = multilabel_f1(scores, targets, threshold=0.99, top_k=3)

    assert metrics["OP"] == pytest.approx(precision_score(average="micro", **sklearn))
    assert metrics["OR"] == pytest.approx(recall_score(average="micro", **sklearn))
    assert metrics["CP"] == pytest.approx(precision_score(average="macro", **sklearn))
    assert metrics["OP"] > 0.2  # far from the 0 that threshold 0.99 alone would give


def test_multilabel_f1_leaves_unknown_labels_out():
    # An unknown entry must count like a true negative (it touches no TP/FP/FN count), so the
    # result equals sklearn's on targets where unknowns are 0 and their predictions are off.
    scores, targets = multilabel_problem(seed=6)
    generator = torch.Generator().manual_seed(7)
    unknown = torch.rand(targets.shape, generator=generator) < 0.3
    masked_targets = torch.where(unknown, -1, targets)
    predicted = (scores >= 0.5) & ~unknown
    truth = torch.where(unknown, 0, targets)
    sklearn = dict(y_true=truth.numpy(), y_pred=predicted.long().numpy(), zero_division=0)

    metrics = multilabel_f1(scores, masked_targets)

    assert metrics["CP"] == pytest.approx(precision_score(average="macro", **sklearn))
    assert metrics["CR"] == pytest.approx(recall_score(average="macro", **sklearn))
    assert metrics["OF1"] == pytest.approx(f1_score(average="micro", **sklearn))
    assert metrics["OF1"] != pytest.approx(multilabel_f1(scores, targets)["OF1"])


def retrieval_by_brute_force(similarity, text_to_image, ks):
    similarity, text_to_image = similarity.tolist(), text_to_image.tolist()
    num_images, num_texts = len(similarity), len(text_to_image)
    recalls = {}
    for k in ks:
        found = 0
        for image in range(num_images):
            ranked = sorted(range(num_texts), key=lambda text: -similarity[image][text])
            found += any(text_to_image[text] == image for text in ranked[:k])
        recalls[f"i2t_R@{k}"] = found / num_images
    for k in ks:
        found = 0
        for text in range(num_texts):
            ranked = sorted(range(num_images), key=lambda image: -similarity[image][text])
            found += text_to_image[text] in ranked[:k]
        recalls[f"t2i_R@{k}"] = found / num_texts
    recalls["mR"] = sum(recalls.values()) / len(recalls)
    return recalls


@pytest.mark.parametrize("chunk_size", [1024, 7])
def test_retrieval_recall_equals_brute_force(chunk_size):
    generator = torch.Generator().manual_seed(8)
    num_images, captions_per_image = 40, 5
    text_to_image = torch.arange(num_images).repeat_interleave(captions_per_image)
    text_to_image = text_to_image[torch.randperm(len(text_to_image), generator=generator)]
    similarity = torch.randn(num_images, len(text_to_image), generator=generator, dtype=torch.float64)
    similarity += 1.5 * (text_to_image.unsqueeze(0) == torch.arange(num_images).unsqueeze(1))  # some signal

    recalls = retrieval_recall(similarity, text_to_image, ks=(1, 5, 10), chunk_size=chunk_size)
    expected = retrieval_by_brute_force(similarity, text_to_image, ks=(1, 5, 10))

    assert recalls.keys() == expected.keys()
    for name, value in expected.items():
        assert recalls[name] == pytest.approx(value), name
    assert 0.05 < recalls["mR"] < 0.95


def test_retrieval_recall_counts_ties_against_the_query():
    similarity = torch.zeros(4, 8)
    text_to_image = torch.arange(4).repeat_interleave(2)

    recalls = retrieval_recall(similarity, text_to_image, ks=(1, 4))

    assert recalls["i2t_R@1"] == 0 and recalls["t2i_R@1"] == 0
    assert recalls["t2i_R@4"] == 1  # only 3 other images exist
    assert recalls["i2t_R@4"] == 0  # 6 captions of other images tie with each image's own


def test_retrieval_recall_rejects_an_image_without_captions():
    with pytest.raises(ValueError, match="at least one caption"):
        retrieval_recall(torch.randn(3, 4), torch.tensor([0, 0, 1, 1]))
