"""ProGrad: the context's gradient after backward is each client's cross-entropy gradient projected
off the zero-shot distillation gradient where the two conflict, recomputed here per client with
``torch.autograd`` from the written-out losses."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from head_checks import CLASSES, TEMPLATE, TensorBatches, assert_batched_equals_sequential, assert_slots_independent
from fedvlm.batch import Batch
from fedvlm.config import load_configs
from fedvlm.describe import describe
from fedvlm.errors import ConfigError
from fedvlm.heads.base import normalize
from fedvlm.heads.prograd import ProGradConfig, ProGradHead, project_conflicting

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread is faster


def _head(backbone, slots=1, **options):
    options.setdefault("n_ctx", 6)
    return ProGradHead(ProGradConfig(name="prograd", **options), backbone, CLASSES, TEMPLATE, num_slots=slots, seed=0)


@pytest.fixture(scope="module")
def data(tiny_backbone):
    return TensorBatches(tiny_backbone)


def test_projection_written_out():
    grad = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    reference = torch.tensor([[-1.0, 1.0], [1.0, 1.0]])
    projected = project_conflicting(grad, reference)
    # conflict (dot -1): g - (-1 / 2) * (-1, 1) = (0.5, 0.5), orthogonal to the reference; agreement: unchanged
    torch.testing.assert_close(projected, torch.tensor([[0.5, 0.5], [1.0, 0.0]]))
    torch.testing.assert_close(project_conflicting(grad, reference, 0.5)[0], torch.tensor([0.75, 0.25]))


def test_context_starts_right_aligned_from_a_photo_of_a(tiny_backbone):
    head = _head(tiny_backbone)
    words = tiny_backbone.token_embeddings(tiny_backbone.tokenize(["a photo of a"]))[0, 1:5]
    assert torch.equal(head.context[0, :2], torch.zeros(2, tiny_backbone.text_width))
    torch.testing.assert_close(head.context[0, 2:], words)
    with pytest.raises(ConfigError, match="more than head.n_ctx=3"):
        _head(tiny_backbone, n_ctx=3)


def _written_out_gradients(head, backbone, context, image, labels, teacher, temperature):
    """(g, g_kd) of one client alone: its cross-entropy and T^2 KL(zero-shot || model) gradients."""
    context = context.detach().clone().requires_grad_(True)
    text = normalize(head.layout.encode(backbone, context.unsqueeze(0)))[0]  # [C, D]
    logits = backbone.logit_scale * image @ text.T
    cross_entropy = F.cross_entropy(logits, labels)
    student = F.log_softmax(logits / temperature, -1)
    target = F.softmax(teacher / temperature, -1)
    kl = (target * (target.log() - student)).sum(-1).mean() * temperature ** 2
    g = torch.autograd.grad(cross_entropy, context, retain_graph=True)[0]
    return g, torch.autograd.grad(kl, context)[0]


def test_gradient_is_the_per_client_projection_of_the_cross_entropy_gradient(tiny_backbone, data):
    """Labels are drawn until slot 0's two gradients conflict (the projection acts) and slot 1's
    agree (g is kept), so both branches are checked whatever the backbone's weights."""
    temperature = 2.0
    head = _head(tiny_backbone, slots=2, temperature=temperature)
    with torch.no_grad():
        head.context[1] += 0.1 * torch.randn(head.context[1].shape, generator=torch.Generator().manual_seed(4))
    rows, slot = np.arange(8), np.array([0, 1, 0, 1, 1, 0, 0, 1])
    image = normalize(data.pooled[rows])
    anchor = normalize(tiny_backbone.encode_text([TEMPLATE.format(c) for c in CLASSES]))
    teacher = tiny_backbone.logit_scale * image @ anchor.T  # zero-shot CLIP
    labels = torch.zeros(len(rows), dtype=torch.long)
    expected = {}
    generator = torch.Generator().manual_seed(0)
    for s, conflict in ((0, True), (1, False)):
        mine = torch.from_numpy(slot == s)
        for _ in range(200):
            candidate = torch.randint(len(CLASSES), (int(mine.sum()),), generator=generator)
            g, g_kd = _written_out_gradients(head, tiny_backbone, head.context[s], image[mine], candidate,
                                             teacher[mine], temperature)
            dot = float((g * g_kd).sum())
            if (dot < 0) == conflict:
                break
        assert (dot < 0) == conflict, f"no labels found that make slot {s}'s gradients {conflict=}"
        labels[mine] = candidate
        expected[s] = (g - dot / float(g_kd.pow(2).sum()) * g_kd if conflict else g), g, g_kd
    batch = Batch(labels=labels, slot=torch.from_numpy(slot), image=data.pooled[rows]).to("cpu")
    head.training_loss(batch).sum().backward()
    for s, (projected, g, g_kd) in expected.items():
        scale = float(g.abs().max())
        torch.testing.assert_close(head.context.grad[s], projected, atol=1e-4 * scale, rtol=1e-4)
    projected, g, g_kd = expected[0]
    assert (projected - g).abs().max() > 1e-2 * float(g.abs().max())  # the projection really changed g
    assert abs(float((head.context.grad[0] * g_kd).sum())) < 1e-4 * float(g.norm() * g_kd.norm())  # now orthogonal


def test_no_gradient_no_hook(tiny_backbone, data):
    head = _head(tiny_backbone)
    batch = data.batch(np.arange(4), np.zeros(4))
    with torch.no_grad():
        loss = head.training_loss(batch)
    logits = head(batch)
    torch.testing.assert_close(loss[0], F.cross_entropy(logits, batch.labels))


def test_slots_are_independent(tiny_backbone, data):
    assert_slots_independent(_head(tiny_backbone, slots=2), data)


def test_batched_clients_equal_sequential_clients(tiny_backbone, data):
    assert_batched_equals_sequential(lambda slots: _head(tiny_backbone, slots), data)


def test_describe_counts_on_vit_b16():
    """ViT-B/16 with random weights: 16 context tokens x 512, all shared."""
    counts = describe(load_configs("experiments/otdpp/prograd.yaml")[0])
    assert counts["model"] == "ViT-B-16"
    assert counts["trainable_parameters"] == counts["transmitted_parameters"] == 16 * 512
    assert counts["private_parameters"] == 0
