import pytest
import torch

from fedvlm.config import load_config
from fedvlm.server import ALGORITHMS, ClientUpdate, fedavg


def test_fedavg_weights_by_participating_samples():
    current = {"w": torch.zeros(2)}
    updates = [ClientUpdate(0, 10, {"w": torch.tensor([1.0, 0.0])}),
               ClientUpdate(3, 30, {"w": torch.tensor([0.0, 1.0])})]
    result = fedavg(current, updates)
    torch.testing.assert_close(result["w"], torch.tensor([0.25, 0.75]))
    assert fedavg(current, [ClientUpdate(1, 0, {"w": torch.ones(2)})])["w"].eq(0).all()  # no samples: unchanged


def test_fedprox_term_value_and_gradient():
    prox = ALGORITHMS.get("fedprox").model_validate({"name": "fedprox", "mu": 0.5})
    shared = {"w": torch.tensor([[1.0, 2.0], [0.0, 0.0]], requires_grad=True)}
    global_shared = {"w": torch.tensor([1.0, 0.0])}
    penalty = prox.local_penalty(shared, global_shared)
    torch.testing.assert_close(penalty, torch.tensor([0.25 * 4, 0.25 * 1]))  # mu/2 ||w_k - w_g||^2 per slot
    penalty.sum().backward()
    torch.testing.assert_close(shared["w"].grad, 0.5 * (shared["w"].detach() - global_shared["w"]))
    assert ALGORITHMS.get("fedavg").model_validate({"name": "fedavg"}).local_penalty(shared, global_shared) is None


def test_algorithm_flags():
    assert ALGORITHMS.get("local").aggregates is False
    assert "centralized" not in ALGORITHMS.names()  # a partition; the algorithm name is an alias (fedvlm.config)
    with pytest.raises(Exception, match="algorithm.mu"):
        load_config(overrides=["name=x", "data.dataset=ucmerced", "algorithm.name=fedprox", "algorithm.mu=-1"])
