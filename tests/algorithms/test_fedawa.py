"""FedAWA's server half against the paper's equations computed here on the flat client vectors
(Eq. 1: tau_k = theta_k - theta_g, tau_g = sum_k lambda_k tau_k; Eq. 3: sum_k lambda_k ||tau_k -
tau_g|| + sum_k lambda_k d(theta_g, theta_k), lambda = softmax(T)), minimised by torch.optim.Adam."""

import math

import pytest
import torch

from fedvlm.algorithms import ALGORITHMS, ClientUpdate, ServerRound

SIZES = (6, 3, 5, 4)


def _round(seed: int, outlier: bool = True):
    """A global model of two shared tensors and four clients' trained copies; client 3 moves
    against the others when ``outlier``."""
    generator = torch.Generator().manual_seed(seed)
    current = {"context": torch.randn(4, 8, generator=generator), "bias": torch.randn(8, generator=generator)}
    common = {n: torch.randn(v.shape, generator=generator) * 0.1 for n, v in current.items()}
    updates = []
    for k, size in enumerate(SIZES):
        sign = -1.0 if outlier and k == 3 else 1.0
        shared = {n: current[n] + sign * common[n] + 0.03 * torch.randn(v.shape, generator=generator)
                  for n, v in current.items()}
        updates.append(ClientUpdate(k, size, shared))
    return current, updates


def _flat(tensors):
    return torch.cat([tensors[n].flatten() for n in ("context", "bias")]).double()


def _paper_loss(lam, vectors, distance):
    spread = (vectors - (lam[:, None] * vectors).sum(0)).norm(dim=1)
    return (lam * spread).sum() + (lam * distance).sum()


@pytest.mark.parametrize("reg_distance", ["cos", "euc"])
def test_weights_and_global_model_equal_the_papers_equations_with_torch_adam(reg_distance):
    algorithm = ALGORITHMS.get("fedawa").model_validate({"name": "fedawa", "server_lr": 0.2, "server_epochs": 3,
                                                         "reg_distance": reg_distance})
    logits = torch.tensor([math.log(n) for n in SIZES], dtype=torch.float64, requires_grad=True)
    adam = torch.optim.Adam([logits], lr=0.2)  # one optimizer over the run, as the ports keep it
    state, current = {}, None
    for round_index in range(3):
        fresh, updates = _round(round_index)
        current = fresh if current is None else current
        updates = [ClientUpdate(u.client, u.num_samples, {n: current[n] + (u.shared[n] - fresh[n]) for n in current})
                   for u in updates]
        g = _flat(current)
        thetas = torch.stack([_flat(u.shared) for u in updates])
        vectors = thetas - g
        if reg_distance == "cos":
            distance = 1 - torch.nn.functional.cosine_similarity(thetas, g[None], dim=1, eps=1e-8)
        else:
            distance = (thetas - g).pow(2).mean(1)
        for _ in range(3):
            adam.zero_grad()
            _paper_loss(torch.softmax(logits, 0), vectors, distance).backward()
            adam.step()
        lam = torch.softmax(logits.detach(), 0)
        expected = {n: sum(float(lam[k]) * u.shared[n] for k, u in enumerate(updates)) for n in current}
        current, state = algorithm.server_step(current, updates, state, ServerRound(round_index, 1, 4, 4))
        torch.testing.assert_close(state["clients/logit"], logits.detach(), atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(state["clients/last_weight"], lam, atol=1e-10, rtol=1e-10)
        for name in current:
            torch.testing.assert_close(current[name], expected[name], atol=1e-6, rtol=1e-6)
    # the weights moved away from FedAvg's, against the client that pulls the other way
    fedavg = torch.tensor(SIZES, dtype=torch.float64) / sum(SIZES)
    assert (lam - fedavg).abs().max() > 0.02
    assert lam[3] < fedavg[3]
    metrics = algorithm.round_metrics(state, ServerRound(2, 1, 4, 4))
    assert metrics["fedawa/max_weight"] == pytest.approx(float(lam.max()))
    assert metrics["fedawa/effective_clients"] == pytest.approx(float(1 / lam.pow(2).sum()))


def test_before_any_step_the_weights_are_fedavgs_and_a_single_client_gets_all():
    current, updates = _round(0)
    algorithm = ALGORITHMS.get("fedawa").model_validate({"name": "fedawa", "server_lr": 1e-12})
    merged, state = algorithm.server_step(current, updates, {}, ServerRound(0, 1, 4, 4))
    fedavg = torch.tensor(SIZES, dtype=torch.float64) / sum(SIZES)
    torch.testing.assert_close(state["clients/last_weight"], fedavg, atol=1e-9, rtol=0)
    alone, state = ALGORITHMS.get("fedawa").model_validate({"name": "fedawa"}).server_step(
        current, updates[2:3], {}, ServerRound(0, 1, 4, 1))
    assert all(torch.equal(alone[n], updates[2].shared[n]) for n in current)
    assert state["clients/last_weight"].tolist() == [0.0, 0.0, 1.0, 0.0]


def test_absent_clients_keep_their_logits_and_only_shared_tensors_enter():
    """A client outside the round keeps its logit and Adam moments; the aggregate and the state
    are built from the updates' shared tensors alone (a private one is never handed over)."""
    algorithm = ALGORITHMS.get("fedawa").model_validate({"name": "fedawa", "server_lr": 0.1})
    current, updates = _round(1)
    _, state = algorithm.server_step(current, updates, {}, ServerRound(0, 1, 4, 4))
    _, later = algorithm.server_step(current, updates[:2], state, ServerRound(1, 1, 4, 2))
    for key in ("clients/logit", "clients/first_moment", "clients/second_moment", "clients/steps"):
        assert torch.equal(later[key][2:], state[key][2:]), key
        assert not torch.equal(later[key][:2], state[key][:2]), key
    assert later["clients/steps"].tolist() == [2.0, 2.0, 1.0, 1.0]
    assert later["clients/last_weight"][2:].tolist() == [0.0, 0.0]
    assert sorted(later) == sorted(algorithm.state_keys)


def test_describe_counts_coops_context_on_vit_b16():
    """FedMPT applies FedAWA to CoOp's prompt learner: 16 x 512 shared on ViT-B-16 (random
    weights), nothing private; the aggregation weights are server state, not parameters."""
    from fedvlm.config import load_configs
    from fedvlm.describe import describe

    counts = describe(load_configs("experiments/fedmpt/fedawa_voc.yaml")[0])
    assert (counts["model"], counts["head"], counts["algorithm"]) == ("ViT-B-16", "coop", "fedawa")
    assert counts["trainable_parameters"] == counts["transmitted_parameters"] == 16 * 512
    assert counts["private_parameters"] == 0
