"""SCPNet: the structured prior against a transcription of the authors' ``SCPNet.__init__`` on
``encode_text`` of the class names, the prediction against an explicit per-class GCN, the
self-supervised loss against a transcription of their ``consistency_loss``, and the parameter count
of ``fedvlm describe`` on ViT-B-16 (batched == sequential, the slot rule and save / load are
tests/heads/test_every_head.py's)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from head_checks import assert_multilabel_round_batched_equals_sequential
from fedvlm.config import load_configs
from fedvlm.describe import describe
from fedvlm.heads import HEADS, Batch
from fedvlm.heads.scpnet import prior_consistency_loss

CLASSES = ["car", "storage tank", "tree", "river", "house"]
TEMPLATE = "a photo of a {}."


def _head(backbone, slots=1, **options):
    head_class = HEADS.get("scpnet")
    config = head_class.Config(name="scpnet", **{"gcn_hidden": 16, **options})
    return head_class(config, backbone, CLASSES, TEMPLATE, num_slots=slots, seed=0)


def _reference_prior(relation: np.ndarray, topk: int, reweight_p: float, temperature: float):
    """The authors' ``SCPNet.__init__`` on a relation matrix, row by row in float64."""
    relation = relation.copy()
    classes = len(relation)
    mask = np.ones_like(relation, dtype=bool)
    for i in range(classes):
        mask[i, np.argsort(-relation[i], kind="stable")[:topk]] = False
    relation[mask] = 0
    relation[np.eye(classes, dtype=bool)] = 0
    relation = relation / relation.sum(1, keepdims=True) * reweight_p
    relation[np.eye(classes, dtype=bool)] = 1 - reweight_p
    gcn = relation.copy()
    prior = np.exp(relation / temperature) / np.exp(relation / temperature).sum(1, keepdims=True)
    prior[mask] = 0
    return gcn, prior / prior.sum(1, keepdims=True)


@pytest.mark.parametrize("topk", [20, 3])
def test_prior_matrices_equal_the_authors_construction_from_encode_text(tiny_backbone, topk):
    head = _head(tiny_backbone, sparse_topk=topk)
    text = F.normalize(tiny_backbone.encode_text([TEMPLATE.format(c) for c in CLASSES]).double(), dim=-1)
    relation = (text @ text.T).clamp(min=0).numpy()
    assert (relation - np.eye(len(CLASSES))).max() > 0.05  # the prior is not the identity: the check tests something
    gcn, prior = _reference_prior(relation, min(topk, len(CLASSES)), 0.2, 0.3)
    np.testing.assert_allclose(head.adjacency.double().numpy(), gcn, atol=1e-5)
    np.testing.assert_allclose(head.prior.double().numpy(), prior, atol=1e-5)
    np.testing.assert_allclose(head.prior.sum(1).numpy(), 1.0, atol=1e-6)
    if topk == 3:  # each class is related to its 2 nearest other classes only
        assert (head.adjacency > 0).sum(1).tolist() == [3] * len(CLASSES)
    # another prompt gives another prior
    other = _head(tiny_backbone, sparse_topk=topk, prior_template="{}")
    assert not torch.allclose(other.adjacency, head.adjacency)


def test_forward_is_the_gcn_over_the_prompt_features(tiny_backbone):
    head = _head(tiny_backbone)
    generator = torch.Generator().manual_seed(0)
    image = torch.randn(4, tiny_backbone.embed_dim, generator=generator)
    batch = Batch(labels=torch.zeros(4, len(CLASSES)), slot=torch.zeros(4, dtype=torch.long), image=image)
    prompts = head.layout.encode(tiny_backbone, head.context[:1])[0].double()  # [C, D]
    adjacency = head.adjacency.double()
    w1, w2, w3 = (getattr(head, f"gcn_weight{i}")[0].double() for i in (1, 2, 3))
    classes = range(len(CLASSES))

    def propagate(h):  # node c's update: sum over its neighbours j of A[c, j] h_j
        return torch.stack([sum(adjacency[c, j] * h[j] for j in classes) for c in classes])

    h1 = F.leaky_relu(propagate(prompts) @ w1, 0.2)
    h2 = F.leaky_relu(propagate(h1) @ w2, 0.2)
    text = F.normalize(propagate(h2) @ w3 + prompts, dim=-1)
    rows = [10.0 * (F.normalize(image[b].double(), dim=-1) @ text.T) for b in range(4)]
    torch.testing.assert_close(head(batch).double(), torch.stack(rows), atol=1e-4, rtol=1e-4)


def _reference_consistency(logits_s, logits_w, y_lb, relation, hard_k, p_cutoff, kl_lambda):
    """The authors' ``SCPNetTrainer.consistency_loss`` per sample, with classwise_acc = 1."""
    pseudo_label = torch.sigmoid(logits_w.detach())
    pseudo_label_s = torch.sigmoid(logits_s)
    relation_p = pseudo_label @ relation.t()
    max_probs, max_idx = torch.topk(pseudo_label, hard_k, dim=-1)
    threshold = p_cutoff * (1.0 / (2.0 - 1.0))
    mask = max_probs.ge(threshold).float().sum(dim=1) >= 1
    labels = torch.zeros(logits_s.shape, dtype=torch.long)
    for i, idx in enumerate(max_idx):
        labels[i][idx] = 1
    labels[pseudo_label < threshold] = 0
    labels = torch.logical_or(labels, y_lb == 1).long()
    los_pos = labels * torch.log(pseudo_label_s.clamp(min=1e-8))
    los_neg = (1 - labels) * torch.log((1 - pseudo_label_s).clamp(min=1e-8))
    loss = (los_pos + los_neg) * mask.reshape(-1, 1)
    loss_kl = (relation_p * torch.log(pseudo_label_s.clamp(min=1e-8))
               + (1 - relation_p) * torch.log((1 - pseudo_label_s).clamp(min=1e-8))) * mask.reshape(-1, 1)
    return -loss.sum(1) - kl_lambda * loss_kl.sum(1)


def test_prior_consistency_loss_equals_the_authors_consistency_loss(tiny_backbone):
    head = _head(tiny_backbone)
    generator = torch.Generator().manual_seed(3)
    logits = 3 * torch.randn(6, len(CLASSES), generator=generator, dtype=torch.float64)
    labels = torch.randint(-1, 2, (6, len(CLASSES)), generator=generator).double()
    prior = head.prior.double()
    ours = prior_consistency_loss(logits, labels, prior, hard_k=2, p_cutoff=0.9, kl_lambda=2.0)
    reference = _reference_consistency(logits, logits, labels, prior, 2, 0.9, 2.0)
    confident = torch.sigmoid(logits).topk(2, dim=1).values.ge(0.9).any(1)
    assert 0 < int(confident.sum()) < 6  # some samples confident, some not: both branches are tested
    torch.testing.assert_close(ours, reference, atol=1e-6, rtol=1e-6)
    assert torch.all(ours[~confident] == 0)
    # the loss is part of training_loss: lambda_u = 0 leaves ASL alone
    image = torch.randn(6, tiny_backbone.embed_dim, generator=generator)
    batch = Batch(labels=labels.float(), slot=torch.zeros(6, dtype=torch.long), image=image)
    plain = _head(tiny_backbone, lambda_u=0.0, logit_scale=30.0, p_cutoff=0.5)
    with_prior = _head(tiny_backbone, logit_scale=30.0, p_cutoff=0.5)
    logits = with_prior(batch)
    expected = with_prior.sample_loss(logits, batch.labels) + 0.125 * prior_consistency_loss(
        logits, batch.labels, with_prior.prior, 5, 0.5, 2.0)
    torch.testing.assert_close(with_prior.training_loss(batch)[0], expected.mean())
    torch.testing.assert_close(plain.training_loss(batch)[0], plain.sample_loss(plain(batch), batch.labels).mean())
    assert not torch.allclose(with_prior.training_loss(batch), plain.training_loss(batch))


def test_describe_on_vit_b16_counts_the_context_and_the_gcn():
    counts = describe(load_configs("experiments/multilabel_voc_heterogeneity_scpnet.yaml")[0])
    context, gcn = 4 * 512, 512 * 2048 + 2048 * 2048 + 2048 * 512
    assert counts["trainable_parameters"] == counts["transmitted_parameters"] == context + gcn == 6_293_504
    assert counts["private_parameters"] == 0 and counts["classes"] == 20


def test_a_round_of_training_is_the_same_batched_and_sequential(tiny_backbone):
    assert_multilabel_round_batched_equals_sequential("scpnet", {"gcn_hidden": 16, "p_cutoff": 0.3, "logit_scale": 5.0}, tiny_backbone)
