import numpy as np
import pytest
import torch

from fedvlm.client.optim import SlotOptimizer
from fedvlm.client.batches import FeatureBatches
from fedvlm.client.training import ClientTask, batch_schedule, train_pass
from fedvlm.config import OptimConfig
from fedvlm.heads.coop import CoOpConfig, CoOpHead
from fedvlm.server import ALGORITHMS

CLASSES = ["red field", "green forest", "blue lake"]


def _data(backbone, n=40, views=0):
    g = torch.Generator().manual_seed(0)
    view_pooled = torch.randn(views, n, backbone.embed_dim, generator=g) if views else None
    return FeatureBatches(torch.randn(n, backbone.embed_dim, generator=g), None, torch.arange(n) % 3, "cpu",
                          view_pooled=view_pooled)


def _train(backbone, slots, algorithm="fedavg", views=0):
    head = CoOpHead(CoOpConfig(name="coop", n_ctx=4), backbone, CLASSES, "{}", num_slots=slots, seed=0)
    optimizer = SlotOptimizer(head.trainable(), OptimConfig(lr=0.05, batch_size=4))
    initial = head.read_slot(0)
    shares = {0: np.arange(0, 13), 1: np.arange(13, 18), 2: np.arange(18, 40)}  # 4, 2 and 6 batches
    algo = ALGORITHMS.get(algorithm).model_validate({"name": algorithm})
    results = []
    for first in range(0, 3, slots):
        tasks = [ClientTask(k, shares[k], initial, None) for k in range(first, min(first + slots, 3))]
        results += train_pass(head, optimizer, tasks, _data(backbone, views=views), batch_size=4, epochs=1, steps=None,
                              lr=0.05, seed=7, round_index=2, algorithm=algo, global_shared=initial)
    return {r.client: r for r in results}


@pytest.mark.parametrize("algorithm,views", [("fedavg", 0), ("fedprox", 0), ("fedavg", 3)])
def test_batched_clients_equal_sequential_clients(tiny_backbone, algorithm, views):
    sequential, batched = _train(tiny_backbone, 1, algorithm, views), _train(tiny_backbone, 3, algorithm, views)
    for k in range(3):
        torch.testing.assert_close(batched[k].params["context"], sequential[k].params["context"], atol=1e-5, rtol=1e-5)
        assert batched[k].steps == sequential[k].steps
        assert abs(batched[k].loss - sequential[k].loss) < 1e-5
    assert [sequential[k].steps for k in range(3)] == [4, 2, 6]
    # the clients really moved, and differently
    assert not torch.allclose(sequential[0].params["context"], sequential[2].params["context"])


def test_batch_schedule_epochs_steps_and_determinism():
    indices = np.arange(10, 20)
    rng = lambda: np.random.default_rng(3)  # noqa: E731
    epochs = batch_schedule(indices, 4, 2, None, rng())
    assert [len(b) for b in epochs] == [4, 4, 2, 4, 4, 2]
    assert sorted(np.concatenate(epochs[:3]).tolist()) == list(range(10, 20))
    assert all(np.array_equal(a, b) for a, b in zip(epochs, batch_schedule(indices, 4, 2, None, rng())))
    assert len(batch_schedule(indices, 4, 1, 7, rng())) == 7
    assert batch_schedule(np.array([], dtype=int), 4, 1, None, rng()) == []


def test_augmented_views_change_training(tiny_backbone):
    plain, augmented = _train(tiny_backbone, 3), _train(tiny_backbone, 3, views=3)
    assert not torch.allclose(plain[0].params["context"], augmented[0].params["context"])


def test_fedprox_pulls_clients_towards_the_global_prompt(tiny_backbone):
    """With a strong proximal term the clients end nearer the round's starting (global) prompt."""
    head = CoOpHead(CoOpConfig(name="coop", n_ctx=4), tiny_backbone, CLASSES, "{}", num_slots=1, seed=0)
    start = head.read_slot(0)
    distances = {}
    for mu in (0.0, 50.0):
        prox = ALGORITHMS.get("fedprox").model_validate({"name": "fedprox", "mu": mu})
        optimizer = SlotOptimizer(head.trainable(), OptimConfig(lr=0.05, batch_size=4))
        (result,) = train_pass(head, optimizer, [ClientTask(0, np.arange(0, 40), start, None)],
                               _data(tiny_backbone), batch_size=4, epochs=2, steps=None, lr=0.05, seed=7,
                               round_index=0, algorithm=prox, global_shared=start)
        distances[mu] = float((result.params["context"] - start["context"]).norm())
    assert 0 < distances[50.0] < 0.5 * distances[0.0]
