"""Batch: the present slots against a brute-force oracle, Batch.to carrying every field, the
fallback for batches built without a batch source, and per_slot's broadcast."""

from dataclasses import fields

import numpy as np
import pytest
import torch

from fedvlm.batch import Batch, per_slot, present_ids_of


def _oracle(slot: list[int]) -> tuple[list[int], list[int]]:
    present = sorted(set(slot))
    return present, [present.index(s) for s in slot]


@pytest.mark.parametrize("seed", range(20))
def test_present_slots_equal_the_oracle_and_torch_unique(seed):
    rng = np.random.default_rng(seed)
    slots = int(rng.integers(1, 9))
    slot = rng.integers(0, slots, size=int(rng.integers(1, 30)))
    batch = Batch(labels=torch.zeros(len(slot)), slot=torch.from_numpy(slot)).to("cpu")  # as a batch source does
    assert batch.present is not None  # found in Batch.to, before any head asks
    present, position = _oracle(slot.tolist())
    assert batch.present.tolist() == present and batch.position.tolist() == position
    assert batch.present_ids == tuple(present) and batch.present_slot_ids() == tuple(present)
    unique, inverse = torch.unique(torch.from_numpy(slot), return_inverse=True)
    assert torch.equal(batch.present, unique) and torch.equal(batch.position, inverse)
    assert batch.position.dtype == inverse.dtype
    assert torch.equal(batch.present[batch.position], batch.slot)


def test_a_batch_built_without_them_computes_them_once():
    batch = Batch(labels=torch.zeros(4), slot=torch.tensor([3, 1, 3, 0]))
    assert batch.present is None  # built directly, as tests do: nothing computed yet
    present, position = batch.present_slots()
    assert present.tolist() == [0, 1, 3] and position.tolist() == [2, 1, 2, 0]
    assert batch.present_slots()[0] is present  # cached: computed once
    assert batch.present_slot_ids() == (0, 1, 3)


def test_to_carries_every_field():
    batch = Batch(labels=torch.tensor([1, 2]), slot=torch.tensor([1, 0]), image=torch.ones(2, 3),
                  patches=torch.ones(2, 4, 3), pixels=torch.ones(2, 3, 8, 8), extras={"bands": torch.ones(2, 5)})
    moved = batch.to("cpu")
    for f in fields(Batch):  # every field set here (or found by to) arrives, equal
        before, after = getattr(batch, f.name), getattr(moved, f.name)
        if isinstance(before, torch.Tensor):
            assert isinstance(after, torch.Tensor) and torch.equal(after, before), f"Batch.to changed {f.name}"
        elif isinstance(before, dict):
            assert after.keys() == before.keys() and all(torch.equal(after[k], v) for k, v in before.items())
        elif f.name != "present_ids":  # found by to (checked below)
            assert after == before, f"Batch.to changed {f.name}"
    assert torch.equal(moved.extras["bands"], batch.extras["bands"])
    assert moved.present_ids == (0, 1) and moved.position.tolist() == [1, 0]


def test_per_slot_broadcasts_one_value_per_slot():
    like = torch.zeros(3, 4, 5)
    mask = torch.tensor([True, False, True])
    assert per_slot(mask, like).shape == (3, 1, 1)
    assert torch.equal(torch.where(per_slot(mask, like), 1.0, like)[:, 2, 3], torch.tensor([1.0, 0.0, 1.0]))
    bias = torch.arange(6.0).view(3, 2)  # [B, o] over outputs [B, M, N, o]
    out = torch.zeros(3, 4, 7, 2) + per_slot(bias, torch.zeros(3, 4, 7, 2))
    assert torch.equal(out[:, 2, 5], bias)
    maps = torch.randn(2, 3, 3)  # [U, D, D] over features [U, K, C, D]
    features = torch.randn(2, 4, 5, 3)
    torch.testing.assert_close(features @ per_slot(maps, features), torch.einsum("ukcd,ude->ukce", features, maps))


def test_present_ids_of_prefers_what_the_caller_knows():
    assert present_ids_of(torch.tensor([2, 2, 0])) == (0, 2)
    assert present_ids_of(torch.tensor([2, 2, 0]), (0, 1, 2)) == (0, 1, 2)
