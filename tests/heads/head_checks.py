"""Checks every head must pass (the slot rule), shared by the head tests.

``TensorBatches`` serves pooled features, patch tokens and pixels of a few random 64 px images
encoded by the tiny backbone, so feature heads and pixel heads train on the same rows.
"""

from __future__ import annotations

import numpy as np
import torch

from fedvlm.client.optim import SlotOptimizer
from fedvlm.client.training import ClientTask, train_pass
from fedvlm.config import OptimConfig
from fedvlm.heads.base import Batch

CLASSES = ["red field", "green forest", "blue lake"]
TEMPLATE = "an aerial photo of a {}."


class TensorBatches:
    def __init__(self, backbone, count: int = 24, seed: int = 0):
        generator = torch.Generator().manual_seed(seed)
        self.pixels = torch.randn(count, 3, 64, 64, generator=generator)
        features = backbone.encode_images(self.pixels, patches=True)
        self.pooled, self.patches = features.pooled, features.patches
        self.labels = torch.arange(count) % len(CLASSES)

    def batch(self, rows, slot, train: bool = True, views=None) -> Batch:  # no augmented views here
        index = torch.as_tensor(np.asarray(rows), dtype=torch.long)
        return Batch(labels=self.labels[index], slot=torch.as_tensor(np.asarray(slot), dtype=torch.long),
                     image=self.pooled[index], patches=self.patches[index], pixels=self.pixels[index])


def perturb_slot(head, slot: int, scale: float = 0.05, seed: int = 1) -> None:
    """Give one slot different parameters from the others."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in head.trainable().values():
            param[slot] += scale * torch.randn(param[slot].shape, generator=generator) * (param[slot].std() + 1e-3)


def assert_slots_independent(head, data: TensorBatches) -> None:
    """Two slots in one forward give each sample what its own slot alone gives, and a slot's
    loss sends no gradient to the other slot's parameters."""
    assert head.num_slots == 2
    perturb_slot(head, 1)
    rows = np.arange(6)
    slot = np.array([0, 1, 1, 0, 1, 0])
    together = head(data.batch(rows, slot))
    for s in (0, 1):
        alone = head(data.batch(rows[slot == s], np.full((slot == s).sum(), s)))
        torch.testing.assert_close(together[torch.from_numpy(slot == s)], alone, atol=1e-5, rtol=1e-5)
    as_slot = lambda s: head(data.batch(rows, np.full(len(rows), s)))  # noqa: E731
    assert not torch.allclose(as_slot(0), as_slot(1), atol=1e-4)  # the slots really differ
    head.zero_grad()
    head.training_loss(data.batch(rows, slot))[0].backward()
    params = head.trainable()
    assert any(p.grad is not None and p.grad[0].abs().sum() > 0 for p in params.values())
    for name, param in params.items():
        assert param.grad is None or param.grad[1].abs().sum() == 0, name
    head.zero_grad()


def train_three_clients(make_head, data: TensorBatches, slots: int, prepare=None, lr: float = 0.05) -> dict:
    """Three clients (3, 1 and 3 batches of 4) trained for one round, ``slots`` at a time.
    ``prepare(head)`` runs before training (e.g. ``begin_round``)."""
    head = make_head(slots)
    if prepare is not None:
        prepare(head)
    optimizer = SlotOptimizer(head.trainable(), OptimConfig(lr=lr, batch_size=4))
    initial = head.read_slot(0)
    shares = {0: np.arange(0, 10), 1: np.arange(10, 14), 2: np.arange(14, 24)}
    results = []
    for first in range(0, 3, slots):
        tasks = [ClientTask(k, shares[k], initial, None) for k in range(first, min(first + slots, 3))]
        results += train_pass(head, optimizer, tasks, data, batch_size=4, epochs=1, steps=None, lr=lr, seed=7,
                              round_index=2)
    return {r.client: r for r in results}


def assert_batched_equals_sequential(make_head, data: TensorBatches, prepare=None, lr: float = 0.05) -> None:
    """Each client's parameters after a round are the same (1e-5) trained alone or three per pass."""
    sequential = train_three_clients(make_head, data, 1, prepare, lr)
    batched = train_three_clients(make_head, data, 3, prepare, lr)
    for k in range(3):
        for name, value in sequential[k].params.items():
            torch.testing.assert_close(batched[k].params[name], value, atol=1e-5, rtol=1e-5, msg=name)
        assert batched[k].steps == sequential[k].steps
        assert abs(batched[k].loss - sequential[k].loss) < 1e-5
    assert [sequential[k].steps for k in range(3)] == [3, 1, 3]
    moved = [name for name, value in sequential[0].params.items()
             if not torch.allclose(value, sequential[2].params[name])]
    assert moved, "the clients should have trained to different parameters"


def assert_multilabel_round_batched_equals_sequential(name: str, options: dict, backbone) -> None:
    """Three clients of the multi-label head ``name`` trained by train_pass (SlotOptimizer steps on
    multi-hot labels with unknowns), one per pass or three in one: the same parameters and losses."""
    from fedvlm.heads import HEADS

    data = TensorBatches(backbone)
    generator = torch.Generator().manual_seed(6)
    data.labels = torch.randint(-1, 2, (len(data.labels), len(CLASSES)), generator=generator).float()
    head_class = HEADS.get(name)

    def make_head(slots):
        return head_class(head_class.Config(name=name, **options), backbone, CLASSES, TEMPLATE, num_slots=slots, seed=0)

    assert_batched_equals_sequential(make_head, data)
