"""PLOT: the logits are logit_scale * sum(T * cos) with T POT's balanced Sinkhorn plan between the
image's patches and the class's N prompts."""

import numpy as np
import ot as pot
import pytest
import torch

from head_checks import CLASSES, TEMPLATE, TensorBatches, assert_batched_equals_sequential, assert_slots_independent
from fedvlm.config import load_configs
from fedvlm.describe import describe
from fedvlm.heads.base import normalize
from fedvlm.heads.fedotp import FedOTPConfig, FedOTPHead
from fedvlm.heads.plot import PLOTConfig, PLOTHead
from fedvlm.ot import sinkhorn

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread is faster


def _head(backbone, slots=1, **options):
    options.setdefault("n_ctx", 4)
    return PLOTHead(PLOTConfig(name="plot", **options), backbone, CLASSES, TEMPLATE, num_slots=slots, seed=0)


@pytest.fixture(scope="module")
def data(tiny_backbone):
    return TensorBatches(tiny_backbone)


def test_defaults_are_the_codes():
    config = PLOTConfig(name="plot")
    assert (config.n_prompts, config.n_ctx, config.eps, config.ot_max_iter) == (4, 16, 0.1, 100)


def test_plan_and_logits_match_pot_sinkhorn(tiny_backbone, data):
    head = _head(tiny_backbone)
    batch = data.batch(np.arange(3), np.zeros(3))
    with torch.no_grad():
        logits = head(batch)
        text = head.text_features(torch.tensor([0]))[0].double()  # [C, N, D]
    patches = normalize(batch.patches).double()
    M, N = patches.shape[1], text.shape[1]
    assert N == 4
    a = torch.full((M,), 1 / M, dtype=torch.float64)
    b = torch.full((N,), 1 / N, dtype=torch.float64)
    # one instance, the plan itself: fedvlm.ot's 100 iterations vs POT run to convergence
    similarity = patches[0] @ text[1].T  # [M, N]
    expected_plan = pot.sinkhorn(a, b, 1 - similarity, 0.1, numItermax=10_000, stopThr=1e-12)
    torch.testing.assert_close(sinkhorn(1 - similarity.float(), eps=0.1, max_iter=100, tol=0).double(),
                               expected_plan, atol=1e-6, rtol=1e-4)
    for i in range(3):
        for c in range(len(CLASSES)):
            similarity = patches[i] @ text[c].T
            plan = pot.sinkhorn(a, b, 1 - similarity, 0.1, numItermax=10_000, stopThr=1e-12)
            expected = tiny_backbone.logit_scale.double() * (plan * similarity).sum()
            assert abs(logits[i, c].item() - expected.item()) < 1e-6 * tiny_backbone.logit_scale.item()


def test_plot_is_fedotp_with_every_prompt_shared_and_balanced_ot(tiny_backbone, data):
    plot = _head(tiny_backbone, n_prompts=3)
    fedotp = FedOTPHead(FedOTPConfig(name="fedotp", n_ctx=4, n_global=3, n_local=0, ot="balanced"), tiny_backbone,
                        CLASSES, TEMPLATE)
    fedotp.write_slot(0, {"global_context": plot.read_slot(0)["context"]})
    batch = data.batch(np.arange(5), np.zeros(5))
    with torch.no_grad():
        torch.testing.assert_close(plot(batch), fedotp(batch))


def test_every_prompt_is_shared_and_drawn_on_its_own(tiny_backbone):
    head = _head(tiny_backbone)
    assert head.shared_names() == ["context"] and head.private_names() == []
    assert head.parameters_per_client() == 4 * 4 * tiny_backbone.text_width
    assert not torch.equal(head.context[0, 0], head.context[0, 1])


def test_slots_are_independent(tiny_backbone, data):
    assert_slots_independent(_head(tiny_backbone, slots=2), data)


def test_batched_clients_equal_sequential_clients(tiny_backbone, data):
    assert_batched_equals_sequential(lambda slots: _head(tiny_backbone, slots), data)


def test_describe_counts_on_vit_b16():
    """ViT-B/16 with random weights: 4 prompts x 16 context tokens x 512, all shared."""
    counts = describe(load_configs("experiments/otdpp/plot.yaml")[0])
    assert counts["model"] == "ViT-B-16"
    assert counts["trainable_parameters"] == counts["transmitted_parameters"] == 4 * 16 * 512
    assert counts["private_parameters"] == 0
