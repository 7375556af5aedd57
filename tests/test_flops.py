"""The FLOP benchmark's count from shapes (benchmarks/flops.py) against torch's own counter:
``FlopCounterMode`` sees every matrix product autograd runs in a real CoOp local step (attention
through the math backend, whose products it counts; the flash kernel is one opaque op)."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

import fedvlm  # noqa: F401
from benchmarks.flops import coop_step_inputs, local_step, local_step_flops, peak_matmul_flops
from fedvlm.backbone.clip import FrozenCLIP

TOLERANCE = 1e-3  # relative: the count should be exact; this only absorbs nothing-but-rounding


@pytest.fixture(scope="module")
def tiny():
    return FrozenCLIP.load("fedvlm-tiny", None)


@pytest.mark.parametrize("slots, classes, n_ctx", [(1, 10, 4), (5, 10, 4), (3, 7, 16)])
def test_counted_flops_equal_the_flop_counter(tiny, slots, classes, n_ctx):
    head, batch = coop_step_inputs(tiny, slots, classes, 8, n_ctx=n_ctx)
    counted = local_step_flops(head, batch)
    with sdpa_kernel(SDPBackend.MATH):
        with FlopCounterMode(display=False) as forward_counter:
            loss = head.training_loss(batch).sum()
        with FlopCounterMode(display=False) as backward_counter:
            loss.backward()
    measured = {"forward": forward_counter.get_total_flops(), "backward": backward_counter.get_total_flops()}
    for part in ("forward", "backward"):
        assert abs(counted[part] - measured[part]) <= TOLERANCE * measured[part], (part, counted, measured)
    assert head.context.grad is not None and head.context.grad.abs().sum() > 0  # the step reached the prompts


def test_local_step_leaves_no_gradient_and_the_peak_is_positive(tiny):
    head, batch = coop_step_inputs(tiny, 2, 10, 4)
    local_step(head, batch)
    assert head.context.grad is None
    assert peak_matmul_flops(128, repeats=1) > 0
