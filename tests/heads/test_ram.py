"""RAM: the knowledge-constrained plan and the local logits against POT's ``ot.sinkhorn`` on
each image (costs, marginals and the teacher's constraint written out from the authors'
``RAM_Model.forward`` / ``generate_teacher_distribution``), the local adapter against torch's
``nn.Linear`` / ``nn.Conv2d`` holding the head's parameters, and the parameter count of ``fedvlm
describe`` on ViT-B-16 (batched == sequential, the slot rule and save / load are
tests/heads/test_every_head.py's)."""

import math

import numpy as np
import ot as pot
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from head_checks import assert_multilabel_round_batched_equals_sequential
from fedvlm.config import load_configs
from fedvlm.describe import describe
from fedvlm.heads import HEADS, Batch

CLASSES = ["car", "storage tank", "tree", "river"]


def _head(backbone, **options):
    head_class = HEADS.get("ram")
    config = head_class.Config(name="ram", **{"adapter_ratio": 0.25, **options})
    return head_class(config, backbone, CLASSES, "a photo of a {}.", num_slots=1, seed=0)


def _perturbed(backbone, **options):
    """A head whose adapter is not the identity it starts as (its up-projection is nonzero)."""
    head = _head(backbone, **options)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, param in head.trainable().items():
            if name.startswith("adapter"):
                param.add_(0.05 * torch.randn(param.shape, generator=generator))
    return head


def _batch(backbone):
    pixels = torch.randn(3, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    features = backbone.encode_images(pixels, patches=True)
    labels = torch.tensor([[1.0, 0.0, -1.0, 0.0], [0.0, 1.0, 1.0, 0.0], [1.0, 1.0, 0.0, 1.0]])
    return Batch(labels=labels, slot=torch.zeros(3, dtype=torch.long), image=features.pooled,
                 patches=features.patches)


def _reference_adapter(head, patches):
    p = {name: value[0].detach() for name, value in head.trainable().items()}
    hidden, width = p["adapter_down_weight"].shape
    down, up = nn.Linear(width, hidden), nn.Linear(hidden, width)
    conv = nn.Conv2d(hidden, hidden, head.config.kernel_size, padding=head.config.kernel_size // 2)
    with torch.no_grad():
        for module, prefix in ((down, "adapter_down"), (up, "adapter_up"), (conv, "adapter_conv")):
            module.weight.copy_(p[f"{prefix}_weight"])
            module.bias.copy_(p[f"{prefix}_bias"])
        side = math.isqrt(patches.shape[1])
        grid = down(patches).permute(0, 2, 1).reshape(len(patches), hidden, side, side)
        return patches + up(conv(grid).flatten(2).permute(0, 2, 1))


def test_local_adapter_equals_torch_modules_and_starts_as_the_identity(tiny_backbone):
    batch = _batch(tiny_backbone)
    with torch.no_grad():
        torch.testing.assert_close(_head(tiny_backbone).local_features(batch), batch.patches)
        head = _perturbed(tiny_backbone)
        adapted = head.local_features(batch)
    torch.testing.assert_close(adapted, _reference_adapter(head, batch.patches), atol=1e-5, rtol=1e-5)
    assert (adapted - batch.patches).abs().max() > 1e-3


@pytest.mark.parametrize("knowledge", [False, True])
def test_kcot_plan_and_logits_equal_pot_per_image(tiny_backbone, knowledge):
    head = _perturbed(tiny_backbone, ot_iterations=3000)
    batch = _batch(tiny_backbone)
    with torch.no_grad():
        global_logits, local_logits = head.branch_logits(batch, knowledge)
        text = F.normalize(head.layout.encode(tiny_backbone, head.context[:1])[0], dim=-1).double()  # [C, D]
        local = F.normalize(_reference_adapter(head, batch.patches), dim=-1).double()
        teacher_text = F.normalize(tiny_backbone.encode_text([f"A photo of a {c}." for c in CLASSES]), dim=-1).double()
    scale = float(tiny_backbone.logit_scale)
    tau_g, tau_l = 1 / scale, 2e-3  # the initial temperatures
    for b in range(3):
        image = F.normalize(batch.image[b].double(), dim=-1)
        torch.testing.assert_close(global_logits[b].double(), image @ text.T / tau_g, atol=1e-3, rtol=1e-4)
        sim = local[b] @ text.T  # [M, C]
        cost = 1 - torch.softmax(sim * scale, dim=-1)
        reg = 0.1
        if knowledge:  # generate_teacher_distribution, then frozen_mask[gt == 0] = frozen_mask.min() per image
            patches = F.normalize(batch.patches[b].double(), dim=-1)
            prob = torch.softmax(torch.softmax(scale * patches @ teacher_text.T, dim=-1) * 20.0, dim=0)
            prob[:, batch.labels[b] != 1] = prob.min()
            cost = cost - 0.05 * torch.log(prob)
            reg = 0.15
        u = torch.softmax(sim.max(dim=1).values / 0.1, dim=0)
        v = torch.full((len(CLASSES),), 1.0 / len(CLASSES), dtype=torch.float64)
        plan = pot.sinkhorn(u.numpy(), v.numpy(), cost.numpy(), reg, numItermax=100_000, stopThr=1e-13)
        expected = (torch.from_numpy(plan) * sim).sum(0) / tau_l
        assert np.abs(plan.sum(1) - u.numpy()).max() < 1e-9  # POT converged
        torch.testing.assert_close(local_logits[b].double(), expected, atol=1e-3, rtol=1e-5)
    # the knowledge constraint changes the plan: the two costs give different local logits
    with torch.no_grad():
        other = head.branch_logits(batch, not knowledge)[1]
    assert (other - local_logits).abs().max() > 1e-2


def test_forward_averages_the_branches_and_the_loss_adds_their_asl(tiny_backbone):
    head = _perturbed(tiny_backbone, ot_iterations=50)
    batch = _batch(tiny_backbone)
    with torch.no_grad():
        global_logits, local_logits = head.branch_logits(batch, knowledge=False)
        torch.testing.assert_close(head(batch), (global_logits + local_logits) / 2)
        global_train, local_train = head.branch_logits(batch, knowledge=True)
        expected = (head.sample_loss(global_train, batch.labels) + head.sample_loss(local_train, batch.labels)).mean()
        torch.testing.assert_close(head.training_loss(batch)[0], expected)


def test_describe_on_vit_b16_counts_the_prompt_the_adapter_and_the_temperatures():
    counts = describe(load_configs("experiments/multilabel_voc_heterogeneity_ram.yaml")[0])
    hidden = round(0.2 * 512)  # 102
    adapter = 512 * hidden + hidden + hidden * hidden * 9 + hidden + hidden * 512 + 512
    assert counts["trainable_parameters"] == counts["transmitted_parameters"] == 4 * 512 + adapter + 2 == 200_850
    assert counts["private_parameters"] == 0 and counts["classes"] == 20


def test_a_round_of_training_is_the_same_batched_and_sequential(tiny_backbone):
    assert_multilabel_round_batched_equals_sequential("ram", {"ot_iterations": 30}, tiny_backbone)
