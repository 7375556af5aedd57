import math

import numpy as np
import pytest
import torch

from head_checks import CLASSES, TEMPLATE, TensorBatches, assert_batched_equals_sequential, assert_slots_independent
from fedvlm.heads.base import normalize, slot_mean
from fedvlm.heads.fedpgp import FedPGPConfig, FedPGPHead, prompt_contrastive_loss

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread is faster


def _head(backbone, slots=1, **options):
    options.setdefault("n_ctx", 4)
    return FedPGPHead(FedPGPConfig(name="fedpgp", **options), backbone, CLASSES, TEMPLATE, num_slots=slots, seed=0)


@pytest.fixture(scope="module")
def data(tiny_backbone):
    return TensorBatches(tiny_backbone)


def test_sigma_is_shared_and_the_low_rank_part_private(tiny_backbone):
    head = _head(tiny_backbone, rank=2)
    width = tiny_backbone.text_width
    assert head.shared_names() == ["sigma"] and head.private_names() == ["low_rank_u", "low_rank_v"]
    assert head.parameters_per_client(["sigma"]) == 4 * width
    assert head.parameters_per_client(head.private_names()) == 4 * 2 + 2 * width
    expected = head.low_rank_u[0] @ head.low_rank_v[0] + head.sigma[0]
    torch.testing.assert_close(head.context(torch.tensor([0]))[0], expected)


def test_contrastive_term_written_out():
    generator = torch.Generator().manual_seed(0)
    f0, fs, ff = (normalize(torch.randn(1, 3, 8, generator=generator)) for _ in range(3))
    ours = prompt_contrastive_loss(f0, fs, ff, temperature=0.5)
    expected = 0.0
    for c in range(3):
        positive = sum(a * b for a, b in zip(f0[0, c].tolist(), fs[0, c].tolist())) / 0.5
        negative = sum(a * b for a, b in zip(fs[0, c].tolist(), ff[0, c].tolist())) / 0.5
        expected += -math.log(math.exp(positive) / (math.exp(positive) + math.exp(negative))) / 3
    assert abs(ours.item() - expected) < 1e-6


def test_training_loss_is_cross_entropy_plus_mu_times_the_contrastive_term(tiny_backbone, data):
    head = _head(tiny_backbone, slots=2, mu=0.7)
    batch = data.batch(np.arange(6), np.array([0, 1, 0, 1, 0, 1]))
    cross_entropy = slot_mean(head.sample_loss(head(batch), batch.labels), batch.slot, 2)
    slots = torch.tensor([0, 1])
    full = normalize(head.layout.encode(tiny_backbone, head.context(slots)))
    sigma = normalize(head.layout.encode(tiny_backbone, head.sigma[slots]))
    initial = normalize(tiny_backbone.encode_text([f"X X X X {c}." for c in CLASSES]))  # f_0: CLIP's own prompt
    torch.testing.assert_close(head.initial_features, initial, atol=1e-5, rtol=1e-5)
    expected = cross_entropy + 0.7 * prompt_contrastive_loss(initial.unsqueeze(0), sigma, full, 0.5)
    torch.testing.assert_close(head.training_loss(batch), expected, atol=1e-5, rtol=1e-5)


def test_shared_only_server_model_is_the_global_prompt_alone(tiny_backbone, data):
    head = _head(tiny_backbone, global_model="shared_only")
    initial = head.read_slot(0)
    state = head.server_model(initial, {"sigma": initial["sigma"] + 0.1})
    head.write_slot(0, state)
    torch.testing.assert_close(head.context(torch.tensor([0]))[0], initial["sigma"] + 0.1)
    default = _head(tiny_backbone)
    assert torch.equal(default.server_model(initial, {"sigma": initial["sigma"]})["low_rank_u"], initial["low_rank_u"])


def test_slots_are_independent(tiny_backbone, data):
    assert_slots_independent(_head(tiny_backbone, slots=2), data)


def test_batched_clients_equal_sequential_clients(tiny_backbone, data):
    assert_batched_equals_sequential(lambda slots: _head(tiny_backbone, slots), data)
