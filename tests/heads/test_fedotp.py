import numpy as np
import ot as pot
import pytest
import torch

from head_checks import CLASSES, TEMPLATE, TensorBatches, assert_batched_equals_sequential, assert_slots_independent
from fedvlm.heads.base import normalize
from fedvlm.heads.fedotp import FedOTPConfig, FedOTPHead

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread is faster


def _head(backbone, slots=1, **options):
    return FedOTPHead(FedOTPConfig(name="fedotp", **options), backbone, CLASSES, TEMPLATE, num_slots=slots, seed=0)


@pytest.fixture(scope="module")
def data(tiny_backbone):
    return TensorBatches(tiny_backbone)


@pytest.mark.parametrize("ot", ["partial", "balanced"])
def test_logits_are_the_transport_similarity_of_pot_plans(tiny_backbone, data, ot):
    head = _head(tiny_backbone, ot=ot)  # default: 100 iterations, eps 0.1
    batch = data.batch(np.arange(3), np.zeros(3))
    logits = head(batch)
    text = head.text_features(torch.tensor([0]))[0].double()  # [C, N, D]
    patches = normalize(batch.patches).double()
    M, N = patches.shape[1], text.shape[1]
    a = torch.full((M,), 1 / M, dtype=torch.float64)
    b = torch.full((N,), (0.8 if ot == "partial" else 1.0) / N, dtype=torch.float64)
    for i in range(3):
        for c in range(len(CLASSES)):
            similarity = patches[i] @ text[c].T  # [M, N]
            if ot == "partial":
                plan = pot.partial.entropic_partial_wasserstein(a, b, 1 - similarity, 0.1, m=0.8, numItermax=10_000,
                                                                stopThr=1e-12)
            else:
                plan = pot.sinkhorn(a, b, 1 - similarity, 0.1, numItermax=10_000, stopThr=1e-12)
            expected = tiny_backbone.logit_scale.double() * (plan * similarity).sum()
            assert abs(logits[i, c].item() - expected.item()) < 1e-6 * tiny_backbone.logit_scale.item()


def test_global_prompt_is_shared_and_local_prompt_private(tiny_backbone):
    head = _head(tiny_backbone, n_ctx=4)
    width = tiny_backbone.text_width
    assert head.shared_names() == ["global_context"] and head.private_names() == ["local_context"]
    assert head.parameters_per_client(head.shared_names()) == 4 * width
    assert head.parameters_per_client() == 2 * 4 * width
    assert not torch.equal(head.global_context, head.local_context)  # two independently drawn prompts
    single = _head(tiny_backbone, n_local=0)
    assert single.private_names() == [] and single.parameters_per_client() == 4 * width


def test_global_only_server_model_is_single_prompt_ot_with_the_global_prompt(tiny_backbone, data):
    """Two identical prompt columns split the plan evenly: the same as OT with the one prompt."""
    dual = _head(tiny_backbone, global_model="global_only")
    single = _head(tiny_backbone, n_local=0)
    initial = dual.read_slot(0)
    shared = {"global_context": initial["global_context"] + 0.1}
    state = dual.server_model(initial, shared)
    torch.testing.assert_close(state["local_context"], shared["global_context"])
    dual.write_slot(0, state)
    single.write_slot(0, shared)
    batch = data.batch(np.arange(4), np.zeros(4))
    torch.testing.assert_close(dual(batch), single(batch), atol=1e-4, rtol=1e-5)
    default = _head(tiny_backbone)
    assert torch.equal(default.server_model(initial, shared)["local_context"], initial["local_context"])


def test_slots_are_independent(tiny_backbone, data):
    assert_slots_independent(_head(tiny_backbone, slots=2), data)


def test_batched_clients_equal_sequential_clients(tiny_backbone, data):
    assert_batched_equals_sequential(lambda slots: _head(tiny_backbone, slots), data)
