"""Every algorithm's round loop (train_clients -> apply_round, the functions fedvlm.simulation
runs) against a plain sequential reference written here: a loop over clients with
torch.optim.SGD on a quadratic, and each paper's server update written out. The head has a
shared and a private parameter; the private one must train exactly as without the algorithm."""

import math

import numpy as np
import pytest
import torch

from fedvlm.algorithms import ALGORITHMS, ServerRound
from fedvlm.algorithms.dp_fedavg import epsilon, noise_generator
from fedvlm.client.batches import FeatureBatches
from fedvlm.client.optim import SlotOptimizer
from fedvlm.config import load_config
from fedvlm.heads.base import Head, slot_mean
from fedvlm.simulation import Federation, ServerState, apply_round, plan_round, sample_clients, train_clients

DIM, SIZES, SEED, LR, STEPS, ROUNDS, PARTICIPATION = 5, (7, 3, 5), 4, 0.1, 3, 3, 0.67


class QuadraticHead(Head):
    """Loss of client k: mean_i 0.5 ||w - x_i||^2 + 0.5 ||p - 2 x_i||^2 (w shared, p private)."""

    private = ("p",)

    def __init__(self, num_slots):
        super().__init__(None, None, [], "", num_slots=num_slots)
        self.w = self.slot_parameter(torch.zeros(DIM))
        self.p = self.slot_parameter(torch.zeros(DIM))

    def training_loss(self, batch):
        rows = 0.5 * (self.w[batch.slot] - batch.image).pow(2).sum(1) \
            + 0.5 * (self.p[batch.slot] - 2 * batch.image).pow(2).sum(1)
        return slot_mean(rows, batch.slot, self.num_slots)


def _features():
    return torch.randn(sum(SIZES), DIM, generator=torch.Generator().manual_seed(1)) + torch.arange(DIM)


def _shares():
    edges = np.cumsum((0,) + SIZES)
    return [np.arange(edges[k], edges[k + 1]) for k in range(len(SIZES))]


def _config(algorithm: dict, federation: dict | None = None):
    return load_config(overrides={
        "name": "quadratic", "seed": SEED, "data": {"dataset": "synthetic_scenes"}, "algorithm": algorithm,
        "partition": {"name": "iid", "num_clients": len(SIZES)},
        "federation": {"rounds": ROUNDS, "local_steps": STEPS, "participation": PARTICIPATION, **(federation or {})},
        "optim": {"lr": LR, "momentum": 0.0, "weight_decay": 0.0, "batch_size": 64}})


def simulate(algorithm: dict, slots: int = 2, availability: dict | None = None):
    """ROUNDS rounds of the real round functions on the quadratic head; with ``availability``
    (federation keys) the round loop's plan decides who trains and for how many steps, and the
    plans are returned too."""
    config = _config(algorithm, availability)
    head = QuadraticHead(slots)
    data = FeatureBatches(_features(), None, torch.zeros(sum(SIZES), dtype=torch.long), "cpu")
    federation = Federation(config, None, [], data, np.zeros(sum(SIZES)), _shares(), _shares(), np.arange(1),
                            None, head, head.read_slot(0))
    shared = {"w": federation.initial["w"]}
    state = ServerState(0, shared, algorithm=config.algorithm.init_server_state(shared))
    optimizer = SlotOptimizer(head.trainable(), config.optim)
    plans = []
    for round_index in range(ROUNDS):
        sampled, local_steps = sample_clients(SEED, round_index, len(SIZES), PARTICIPATION), {}
        if availability is not None:
            plans.append(plan_round(config.federation, SEED, round_index, [STEPS] * len(SIZES)))
            sampled, local_steps = plans[-1].reporting, plans[-1].local_steps
        results = train_clients(federation, state, optimizer, sampled, round_index, local_steps=local_steps)
        apply_round(federation, state, results, ServerRound(round_index, SEED, len(SIZES), len(sampled)))
        state.next_round = round_index + 1
    return (state, config.algorithm, plans) if availability is not None else (state, config.algorithm)


def reference(name: str, settings: dict, plans=None):
    """The same rounds written plainly, one client after another; ``plans`` (one per round): the
    clients that report and the stragglers' step counts, else every sampled client takes STEPS."""
    x = _features()
    shares = _shares()
    K = len(SIZES)
    w_global = torch.zeros(DIM)
    private = {k: torch.zeros(DIM) for k in range(K)}
    control = {k: torch.zeros(DIM) for k in range(K)}  # SCAFFOLD c_i
    gradient = {k: torch.zeros(DIM) for k in range(K)}  # FedDyn grad L_k(theta_k^{t-1})
    c, h, m, v = torch.zeros(DIM), torch.zeros(DIM), torch.zeros(DIM), None
    tau = settings.get("tau", 1e-3)
    v = torch.full((DIM,), tau ** 2)
    # FedAWA: one logit per client, its own parameter of one Adam kept over the run, log n_k at first
    logits = [torch.tensor(math.log(SIZES[k]), dtype=torch.float64, requires_grad=True) for k in range(K)]
    awa = torch.optim.Adam(logits, lr=settings.get("server_lr", 0.01))
    for round_index in range(ROUNDS):
        sampled = plans[round_index].reporting if plans else sample_clients(SEED, round_index, K, PARTICIPATION)
        tau_i = {k: plans[round_index].local_steps.get(k, STEPS) if plans else STEPS for k in sampled}
        trained = {}
        for k in sampled:
            w = w_global.clone().requires_grad_(True)
            p = private[k].clone().requires_grad_(True)
            sgd = torch.optim.SGD([w, p], lr=LR)
            rows = x[shares[k]]
            for _ in range(tau_i[k]):
                sgd.zero_grad()
                loss = 0.5 * (w - rows).pow(2).sum(1).mean() + 0.5 * (p - 2 * rows).pow(2).sum(1).mean()
                if name == "fedprox":
                    loss = loss + settings["mu"] / 2 * (w - w_global).pow(2).sum()
                if name == "feddyn":
                    loss = loss - (gradient[k] * w).sum() + settings["alpha"] / 2 * (w - w_global).pow(2).sum()
                loss.backward()
                if name == "scaffold":
                    w.grad += c - control[k]
                sgd.step()
            w, private[k] = w.detach(), p.detach()
            if name == "scaffold":
                new_control = control[k] - c + (w_global - w) / (tau_i[k] * LR)
                trained[k] = (w, new_control - control[k])
                control[k] = new_control
            elif name == "feddyn":
                gradient[k] = gradient[k] - settings["alpha"] * (w - w_global)
                trained[k] = w
            elif name == "dp_fedavg":
                delta = w - w_global
                trained[k] = delta * min(1.0, settings["clip_norm"] / delta.norm().item())
            else:
                trained[k] = w
        weights = {k: SIZES[k] / sum(SIZES[j] for j in sampled) for k in sampled}
        if name not in ("scaffold",):
            mean_change = sum(weights[k] * (trained[k] - w_global) for k in sampled)
        if name in ("fedavg", "fedprox"):
            w_global = sum(weights[k] * trained[k] for k in sampled)
        elif name == "fedavgm":
            m = settings["server_momentum"] * m + mean_change
            w_global = w_global + settings["server_lr"] * m
        elif name in ("fedadam", "fedyogi", "fedadagrad"):
            b1, b2 = 0.9, 0.99
            m = b1 * m + (1 - b1) * mean_change
            d2 = mean_change ** 2
            v = {"fedadam": b2 * v + (1 - b2) * d2, "fedadagrad": v + d2,
                 "fedyogi": v - (1 - b2) * d2 * torch.sign(v - d2)}[name]
            w_global = w_global + settings["server_lr"] * m / (v.sqrt() + tau)
        elif name == "fednova":  # Wang et al. 2020, Eq. 6-7: d_i = (x - y_i) / tau_i
            tau_eff = sum(weights[k] * tau_i[k] for k in sampled)
            w_global = w_global - tau_eff * sum(weights[k] * (w_global - trained[k]) / tau_i[k] for k in sampled)
        elif name == "scaffold":
            dy = sum(trained[k][0] - w_global for k in sampled) / len(sampled)
            c = c + sum(trained[k][1] for k in sampled) / K
            w_global = w_global + settings["global_lr"] * dy
        elif name == "feddyn":
            alpha = settings["alpha"]
            h = h - alpha / K * sum(trained[k] - w_global for k in sampled)
            w_global = sum(trained[k] for k in sampled) / len(sampled) - h / alpha
        elif name == "fedawa":  # paper Eq. 1 and 3 on the flat shared vector, softmax over the round's clients
            for _ in range(settings["server_epochs"]):
                awa.zero_grad(set_to_none=True)  # absent clients' logits get no gradient: Adam skips them
                lam = torch.softmax(torch.stack([logits[k] for k in sampled]), 0)
                vectors = torch.stack([trained[k] - w_global for k in sampled]).double()
                spread = (vectors - (lam[:, None] * vectors).sum(0)).norm(dim=1)
                cosine = torch.stack([torch.nn.functional.cosine_similarity(trained[k], w_global, 0, 1e-8)
                                      for k in sampled]).double()
                (lam * spread + lam * (1 - cosine)).sum().backward()
                awa.step()
            lam = torch.softmax(torch.stack([logits[k] for k in sampled]).detach(), 0)
            w_global = sum(float(lam[i]) * trained[k] for i, k in enumerate(sampled))
        elif name == "dp_fedavg":
            std = settings["noise_multiplier"] * settings["clip_norm"]
            noise = torch.normal(0.0, std, (DIM,), generator=noise_generator(SEED, round_index))
            w_global = w_global + (sum(trained[k] for k in sampled) + noise) / len(sampled)
    return w_global, private, {"c": c, "h": h, "m": m, "v": v}


SETTINGS = {
    "fedavg": {}, "fedprox": {"mu": 0.5}, "fedavgm": {"server_lr": 0.7, "server_momentum": 0.9},
    "fedadam": {"server_lr": 0.05, "tau": 1e-2}, "fedyogi": {"server_lr": 0.05, "tau": 1e-2},
    "fedadagrad": {"server_lr": 0.05, "tau": 1e-2}, "scaffold": {"global_lr": 0.8}, "feddyn": {"alpha": 0.3},
    "dp_fedavg": {"clip_norm": 0.5, "noise_multiplier": 0.7}, "fednova": {},
    "fedawa": {"server_lr": 0.3, "server_epochs": 4},
}


@pytest.mark.parametrize("name", sorted(SETTINGS))
@pytest.mark.parametrize("slots", [1, 2])
def test_global_parameters_equal_the_plain_reference(name, slots):
    state, _ = simulate({"name": name, **SETTINGS[name]}, slots)
    w_global, private, server = reference(name, SETTINGS[name])
    assert list(state.global_shared) == ["w"]  # the private parameter never enters the aggregate
    torch.testing.assert_close(state.global_shared["w"], w_global, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(w_global, torch.zeros(DIM))  # training moved it
    for k, p in state.personal.items():  # trained as plain SGD: no penalty, correction, clipping or noise
        torch.testing.assert_close(p["p"], private[k], atol=1e-6, rtol=1e-6)
    if name == "fedawa":  # its server state is a few numbers per client, not per parameter
        assert all(key.startswith("clients/") and value.shape == (len(SIZES),)
                   for key, value in state.algorithm.items())
    else:
        assert all(key.endswith("/w") for key in state.algorithm)  # server state over shared names only
    if name == "scaffold":
        torch.testing.assert_close(state.algorithm["control/w"], server["c"], atol=1e-6, rtol=1e-6)
    if name == "feddyn":
        torch.testing.assert_close(state.algorithm["h/w"], server["h"], atol=1e-6, rtol=1e-6)
    if name in ("fedadam", "fedyogi", "fedadagrad"):
        torch.testing.assert_close(state.algorithm["v/w"], server["v"], atol=1e-6, rtol=1e-6)


def test_fedavgm_without_momentum_is_fedavg():
    plain, _ = simulate({"name": "fedavg"})
    momentum, _ = simulate({"name": "fedavgm", "server_lr": 1.0, "server_momentum": 0.0})
    torch.testing.assert_close(momentum.global_shared["w"], plain.global_shared["w"], atol=1e-7, rtol=0)


def test_dp_fedavg_clips_shared_updates_only_and_its_epsilon_is_the_accountants():
    from opacus.accountants import RDPAccountant

    state, algorithm = simulate({"name": "dp_fedavg", "clip_norm": 0.5, "noise_multiplier": 0.0})
    _, private, _ = reference("dp_fedavg", {"clip_norm": 0.5, "noise_multiplier": 0.0})
    # without noise each round moves w by the mean of updates of norm <= C
    assert state.global_shared["w"].norm() <= ROUNDS * 0.5 + 1e-6
    assert all(torch.allclose(state.personal[k]["p"], private[k], atol=1e-6) for k in state.personal)
    assert max(private[k].norm() for k in private) > 1.0  # the private part moved further than C: not clipped
    dp = ALGORITHMS.get("dp_fedavg").model_validate({"name": "dp_fedavg", "noise_multiplier": 1.1, "delta": 1e-5})
    metrics = dp.round_metrics({}, ServerRound(4, SEED, 10, 3))
    accountant = RDPAccountant()
    for _ in range(5):
        accountant.step(noise_multiplier=1.1, sample_rate=0.3)
    assert metrics["privacy/epsilon"] == accountant.get_epsilon(1e-5) == epsilon(1.1, 0.3, 5, 1e-5)
    assert metrics["privacy/delta"] == 1e-5
    assert math.isinf(algorithm.round_metrics({}, ServerRound(0, SEED, 3, 2))["privacy/epsilon"])  # z = 0


def test_every_algorithm_is_covered_here():
    assert set(ALGORITHMS.names()) - {"local", "centralized"} - {n for n in ALGORITHMS.names() if n.startswith("test_")} \
        <= set(SETTINGS)


STRAGGLERS = {"stragglers": {"fraction": 0.7, "min_work": 0.2}}


@pytest.mark.parametrize("name", ["fednova", "fedavg", "scaffold"])
def test_stragglers_train_their_drawn_steps_and_fednova_normalises_by_them(name):
    """Stragglers (drawn by the round loop's plan) take fewer local steps; the reference trains
    each client for exactly its drawn tau_i, and FedNova (Wang et al. 2020) divides by it."""
    state, _, plans = simulate({"name": name, **SETTINGS[name]}, availability=STRAGGLERS)
    straggled = [(k, steps) for plan in plans for k, steps in plan.local_steps.items()]
    assert straggled and all(1 <= steps < STEPS for _, steps in straggled)  # heterogeneous tau_i
    w_global, private, server = reference(name, SETTINGS[name], plans)
    torch.testing.assert_close(state.global_shared["w"], w_global, atol=1e-6, rtol=1e-6)
    for k, p in state.personal.items():
        torch.testing.assert_close(p["p"], private[k], atol=1e-6, rtol=1e-6)
    if name == "scaffold":  # c_i from the steps actually taken: (x - y_i) / (tau_i eta_l)
        torch.testing.assert_close(state.algorithm["control/w"], server["c"], atol=1e-6, rtol=1e-6)
    if name == "fednova":  # with unequal tau_i normalised averaging is not FedAvg's weighting
        fedavg, _, _ = simulate({"name": "fedavg"}, availability=STRAGGLERS)
        assert not torch.allclose(fedavg.global_shared["w"], state.global_shared["w"], atol=1e-4)


def test_fednova_with_equal_steps_is_fedavg():
    plain, _ = simulate({"name": "fedavg"})
    normalised, _ = simulate({"name": "fednova"})
    torch.testing.assert_close(normalised.global_shared["w"], plain.global_shared["w"], atol=1e-6, rtol=0)
