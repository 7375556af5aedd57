import math

import numpy as np
import pytest
import torch

from head_checks import CLASSES, TEMPLATE, TensorBatches, assert_batched_equals_sequential, assert_slots_independent
from fedvlm.heads.base import RoundContext, normalize, slot_mean
from fedvlm.heads.fedotp import FedOTPConfig, FedOTPHead
from fedvlm.heads.fedrsclip import FedRSCLIPConfig, FedRSCLIPHead, alignment_loss

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread is faster


def _head(backbone, slots=1, **options):
    return FedRSCLIPHead(FedRSCLIPConfig(name="fedrsclip", **options), backbone, CLASSES, TEMPLATE,
                         num_slots=slots, seed=0)


@pytest.fixture(scope="module")
def data(tiny_backbone):
    return TensorBatches(tiny_backbone)


def _uploads(backbone, clients=(0, 1, 2), seed=5):
    """Shared prompts 'uploaded last round' by some clients."""
    generator = torch.Generator().manual_seed(seed)
    return {k: {"shared_context": torch.randn(4, backbone.text_width, generator=generator) * 0.3} for k in clients}


GLOBAL = torch.randn(4, 96, generator=torch.Generator().manual_seed(9)) * 0.3  # this round's shared prompt


def _round(head, uploads):
    head.begin_round(RoundContext(1, {"shared_context": GLOBAL}, uploads))


def test_dual_prompts_shared_and_private_with_the_class_in_the_middle(tiny_backbone):
    head = _head(tiny_backbone)
    width = tiny_backbone.text_width
    assert head.shared_names() == ["shared_context"] and head.private_names() == ["private_context"]
    assert head.parameters_per_client(head.shared_names()) == 4 * width
    assert head.parameters_per_client() == 8 * width
    positions = torch.nonzero(head.layout.context_index[0] >= 0).flatten().tolist()
    assert positions[:2] == [1, 2] and positions[2] > 3  # [V]1 [V]2 <class> [V]3 [V]4 (Eq. 4)
    single = _head(tiny_backbone, prompts="single")
    assert single.private_names() == [] and single.parameters_per_client() == 4 * width
    linear = _head(tiny_backbone, dpac_map="linear")
    assert linear.private_names() == ["private_context", "phi", "psi"]
    assert linear.parameters_per_client(["shared_context"]) == 4 * width  # the maps never travel


@pytest.mark.parametrize("anchor", ["global", "local"])
def test_dpac_is_equation_9_written_out(tiny_backbone, anchor):
    """Slot 0 holds client 1: its negatives are the uploads of clients 0 and 2, not its own. The
    anchor E_Ts is the global prompt received this round, or the client's own shared prompt."""
    head = _head(tiny_backbone, slots=2, dpac_scale=7.0, dpac_anchor=anchor)
    with torch.no_grad():
        head.private_context[0] += 0.2
        head.shared_context[1] += 0.3  # the local copy is no longer the global prompt
    uploads = _uploads(tiny_backbone)
    _round(head, uploads)
    head.begin_pass([1, 2])
    ours = head.dpac_loss(head.text_features(torch.tensor([0, 1])), torch.tensor([0, 1]))

    def features(context):
        return normalize(head.layout.encode(tiny_backbone, context.unsqueeze(0))[0]).tolist()  # C x D

    def similarity(x, y):
        return sum(sum(p * q for p, q in zip(x[c], y[c])) for c in range(len(CLASSES))) / len(CLASSES)

    for slot, client in ((0, 1), (1, 2)):
        private = features(head.private_context[slot].detach())
        shared = features(GLOBAL if anchor == "global" else head.shared_context[slot].detach())
        others = [features(uploads[j]["shared_context"]) for j in (0, 1, 2) if j != client]
        expected = math.log(1 + sum(math.exp(7.0 * similarity(private, other) - 7.0 * similarity(private, shared))
                                    for other in others))
        assert abs(ours[slot].item() - expected) < 1e-5


def test_alignment_loss_batches_clients_and_masks_their_own_upload():
    """One call serves every slot (no per-client loop in the training step): each row equals
    Eq. 9 on that client's kept negatives alone, and a client with no kept negative gets 0 with
    finite gradients."""
    generator = torch.Generator().manual_seed(4)
    private = normalize(torch.randn(3, 5, 8, generator=generator)).requires_grad_()
    shared = normalize(torch.randn(3, 5, 8, generator=generator))
    others = normalize(torch.randn(4, 5, 8, generator=generator))
    keep = torch.tensor([[True, False, True, True], [True, True, True, True], [False, False, False, False]])
    losses = alignment_loss(private, shared, others, 7.0, keep)
    for unit in range(2):
        expected = alignment_loss(private[unit], shared[unit], others[keep[unit]], 7.0)
        torch.testing.assert_close(losses[unit], expected)
    assert losses[2].item() == 0.0
    losses.sum().backward()
    assert torch.isfinite(private.grad).all() and private.grad[2].abs().sum() == 0


@pytest.mark.parametrize("anchor", ["global", "local"])
def test_dpac_moves_the_shared_prompt_only_with_the_local_anchor(tiny_backbone, anchor):
    head = _head(tiny_backbone, dpac_anchor=anchor)
    _round(head, _uploads(tiny_backbone))
    head.begin_pass([7])
    head.dpac_loss(head.text_features(torch.tensor([0])), torch.tensor([0])).sum().backward()
    assert head.private_context.grad.abs().sum() > 0
    assert (head.shared_context.grad.abs().sum() > 0) == (anchor == "local")


def test_training_loss_adds_dpac_to_the_cross_entropy(tiny_backbone, data):
    head = _head(tiny_backbone, slots=2, dpac_weight=0.5)
    batch = data.batch(np.arange(6), np.array([0, 1, 0, 1, 0, 1]))
    cross_entropy = slot_mean(head.sample_loss(head(batch), batch.labels), batch.slot, 2)
    _round(head, {})  # round 1: nobody uploaded yet
    torch.testing.assert_close(head.training_loss(batch), cross_entropy)
    _round(head, _uploads(tiny_backbone))
    head.begin_pass([0, 1])
    dpac = head.dpac_loss(head.text_features(torch.tensor([0, 1])), torch.tensor([0, 1]))
    assert (dpac > 0).all()
    torch.testing.assert_close(head.training_loss(batch), cross_entropy + 0.5 * dpac)
    off = _head(tiny_backbone, slots=2, dpac=False)
    _round(off, _uploads(tiny_backbone))
    torch.testing.assert_close(off.training_loss(batch), cross_entropy)


def test_cmfac_logits_are_fedotp_with_the_shared_and_private_prompts(tiny_backbone, data):
    """CMFAC (Eq. 11-15) is FedOTP's unbalanced OT over the two prompts (tested against POT there)."""
    ours = _head(tiny_backbone)
    fedotp = FedOTPHead(FedOTPConfig(name="fedotp", class_token_position="middle"), tiny_backbone, CLASSES, TEMPLATE)
    fedotp.write_slot(0, {"global_context": ours.shared_context[0].detach().unsqueeze(0),
                          "local_context": ours.private_context[0].detach().unsqueeze(0)})
    batch = data.batch(np.arange(5), np.zeros(5))
    torch.testing.assert_close(ours(batch), fedotp(batch), atol=1e-5, rtol=1e-5)


def test_without_cmfac_logits_are_the_mean_cosine_of_both_prompts(tiny_backbone, data):
    head = _head(tiny_backbone, cmfac=False)
    batch = data.batch(np.arange(4), np.zeros(4))
    image = normalize(batch.image)
    shared = normalize(head.layout.encode(tiny_backbone, head.shared_context[:1]))[0]
    private = normalize(head.layout.encode(tiny_backbone, head.private_context[:1]))[0]
    expected = tiny_backbone.logit_scale * (image @ shared.T + image @ private.T) / 2  # Eq. 5 with Eq. 7
    torch.testing.assert_close(head(batch), expected, atol=1e-4, rtol=1e-5)
    single = _head(tiny_backbone, cmfac=False, prompts="single")
    torch.testing.assert_close(single(batch), tiny_backbone.logit_scale * image @ shared.T, atol=1e-4, rtol=1e-5)


def test_server_model_readings(tiny_backbone):
    head = _head(tiny_backbone, global_model="shared_only")
    initial = head.read_slot(0)
    shared = {"shared_context": initial["shared_context"] + 1}
    assert torch.equal(head.server_model(initial, shared)["private_context"], shared["shared_context"])
    default = _head(tiny_backbone)
    assert torch.equal(default.server_model(initial, shared)["private_context"], initial["private_context"])


def test_slots_are_independent(tiny_backbone, data):
    head = _head(tiny_backbone, slots=2)
    _round(head, _uploads(tiny_backbone))
    head.begin_pass([3, 4])
    assert_slots_independent(head, data)


@pytest.mark.parametrize("options", [{}, {"dpac_map": "linear", "dpac_anchor": "local", "cmfac": False}])
def test_batched_clients_equal_sequential_clients(tiny_backbone, data, options):
    """With DPAC active: each client's negatives leave out its own last upload."""
    uploads = _uploads(tiny_backbone, clients=(0, 1, 2, 3))
    assert_batched_equals_sequential(lambda slots: _head(tiny_backbone, slots, **options), data,
                                     prepare=lambda head: _round(head, uploads))
