"""Learning-rate schedules: per round (as before) or per local step, over a round or the whole run
(docs/RELIABILITY.md, 3d). A schedule that cannot act is refused in one line."""

import math
from functools import partial

import numpy as np
import pytest
import torch

from fedvlm.cli import main
from fedvlm.client.batches import FeatureBatches
from fedvlm.client.optim import SlotOptimizer, check_warmup_ends, learning_rate
from fedvlm.client.training import ClientTask, batch_schedule, local_step_count, train_pass
from fedvlm.config import OptimConfig, load_config
from fedvlm.errors import ConfigError
from fedvlm.heads.coop import CoOpConfig, CoOpHead
from fedvlm.patching.pipeline import load_patching_config

CLASSES = ["red field", "green forest", "blue lake"]
LR = 1e-3


def test_per_round_schedules_keep_their_meaning():
    cosine, step = OptimConfig(lr=LR, scheduler="cosine"), OptimConfig(lr=LR, scheduler="step", step_rounds=3,
                                                                        step_gamma=0.5)
    for r in range(10):
        # local step and the client's step count do not matter: one rate per round
        assert learning_rate(cosine, 10, r, step=4, round_steps=9) == 0.5 * LR * (1 + math.cos(math.pi * r / 10))
        assert learning_rate(step, 10, r) == LR * 0.5 ** (r // 3)
        assert learning_rate(OptimConfig(lr=LR), 10, r, step=2, round_steps=5) == LR


def test_run_steps_cosine_with_warm_up_is_paints_schedule():
    """2 rounds of 5 local steps, 3 warm-up steps: s = 5 r + t over 10 steps (WiSE-FT's cosine_lr)."""
    config = OptimConfig(lr=LR, scheduler="cosine", schedule_over="run_steps", warmup_steps=3)
    got = [learning_rate(config, 2, r, t, 5) for r in range(2) for t in range(5)]
    expected = [LR * (s + 1) / 3 if s < 3 else LR / 2 * (1 + math.cos(math.pi * (s - 3) / 7)) for s in range(10)]
    assert got == pytest.approx(expected, rel=1e-12, abs=0)
    assert got[0] == pytest.approx(LR / 3) and got[3] == pytest.approx(LR)  # warm-up peaks, then decays
    assert all(a > b for a, b in zip(got[3:], got[4:])) and got[-1] > 0


def test_round_steps_cosine_restarts_every_round_over_the_clients_own_steps():
    config = OptimConfig(lr=LR, scheduler="cosine", schedule_over="round_steps")
    for r in range(3):
        assert [learning_rate(config, 3, r, t, 4) for t in range(4)] == \
            pytest.approx([LR / 2 * (1 + math.cos(math.pi * t / 4)) for t in range(4)])
    # a client with 2 steps decays over its own 2 steps
    assert [learning_rate(config, 3, 0, t, 2) for t in range(2)] == pytest.approx([LR, LR / 2])


class RecordingOptimizer(SlotOptimizer):
    """SlotOptimizer that also keeps the rate every slot was given at every step."""

    def __init__(self, *args):
        super().__init__(*args)
        self.rates = []

    def step(self, closure=None):
        self.rates.append([float(r) if a else None for r, a in zip(self.slot_rates, self.active)])
        return super().step(closure)


def _train(backbone, slots, schedule):
    g = torch.Generator().manual_seed(0)
    data = FeatureBatches(torch.randn(40, backbone.embed_dim, generator=g), None, torch.arange(40) % 3, "cpu")
    head = CoOpHead(CoOpConfig(name="coop", n_ctx=4), backbone, CLASSES, "{}", num_slots=slots, seed=0)
    optimizer = RecordingOptimizer(head.trainable(), schedule)
    initial = head.read_slot(0)
    shares = {0: np.arange(0, 13), 1: np.arange(13, 18), 2: np.arange(18, 40)}  # 4, 2 and 6 batches
    results, rates = {}, {}
    for first in range(0, 3, slots):
        tasks = [ClientTask(k, shares[k], initial, None) for k in range(first, min(first + slots, 3))]
        optimizer.rates = []
        for r in train_pass(head, optimizer, tasks, data, batch_size=4, epochs=1, steps=None,
                            lr=partial(learning_rate, schedule, 3, 1), seed=7, round_index=1):
            results[r.client] = r
        for slot, task in enumerate(tasks):
            rates[task.client] = [step[slot] for step in optimizer.rates if step[slot] is not None]
    return results, rates


def test_batched_equals_sequential_with_a_per_step_schedule(tiny_backbone):
    schedule = OptimConfig(name="adamw", lr=0.05, batch_size=4, scheduler="cosine", schedule_over="run_steps",
                           warmup_steps=2)
    (sequential, sequential_rates), (batched, batched_rates) = _train(tiny_backbone, 1, schedule), \
        _train(tiny_backbone, 3, schedule)
    for client, steps in ((0, 4), (1, 2), (2, 6)):
        # round 1 of 3: client k's steps s = steps + t of its 3 x steps, each client on its own count
        expected = [learning_rate(schedule, 3, 1, t, steps) for t in range(steps)]
        assert sequential_rates[client] == batched_rates[client] == pytest.approx(expected, rel=1e-6)
        assert batched[client].steps == sequential[client].steps == steps
        torch.testing.assert_close(batched[client].params["context"], sequential[client].params["context"],
                                   atol=1e-5, rtol=1e-5)
    constant, _ = _train(tiny_backbone, 3, OptimConfig(name="adamw", lr=0.05, batch_size=4))
    assert not torch.allclose(constant[2].params["context"], batched[2].params["context"])  # the schedule acts


def test_local_step_count_is_the_length_of_the_batch_schedule():
    rng = np.random.default_rng(0)
    for n, batch, epochs, steps in ((13, 4, 1, None), (13, 4, 3, None), (5, 8, 2, None), (5, 8, 1, 7), (0, 4, 1, None)):
        assert local_step_count(n, batch, epochs, steps) == len(batch_schedule(np.arange(n), batch, epochs, steps, rng))


@pytest.mark.parametrize("overrides,key", [
    (["federation.rounds=1", "optim.scheduler=cosine"], "optim.scheduler"),
    (["federation.rounds=5", "optim.scheduler=step", "optim.step_rounds=5"], "optim.step_rounds"),
    (["optim.warmup_steps=10"], "optim.warmup_steps"),
    (["optim.scheduler=step", "optim.schedule_over=run_steps"], "optim.schedule_over"),
])
def test_a_schedule_that_cannot_act_is_refused_in_one_line(overrides, key, tmp_path, capsys):
    with pytest.raises(ConfigError, match=key):
        load_config("experiments/demo.yaml", overrides)
    code = main(["run", "experiments/demo.yaml", *overrides, f"logging.results_dir={tmp_path}"])
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1 and key in error, error
    assert not any(tmp_path.iterdir())  # refused before any run folder was made


def test_a_warm_up_longer_than_a_clients_schedule_is_refused_naming_the_client():
    config = OptimConfig(scheduler="cosine", schedule_over="run_steps", warmup_steps=10)
    check_warmup_ends(config, 2, [6, 0, 8])  # 12 and 16 steps over the run; client 1 has no data
    with pytest.raises(ConfigError, match="optim.warmup_steps: 10.*client 2 takes 8 local steps per round"):
        check_warmup_ends(config.model_copy(update={"schedule_over": "round_steps"}), 2, [12, 0, 8])


def test_per_step_cosine_with_one_round_is_accepted_and_paint_uses_it():
    config = load_config("experiments/demo.yaml", ["federation.rounds=1", "optim.scheduler=cosine",
                                                   "optim.schedule_over=run_steps"])
    assert learning_rate(config.optim, 1, 0, 9, 10) < 0.05 * config.optim.lr  # decays within the one round
    paint = load_patching_config("experiments/patching/paint_bigearthnet.yaml")
    patch, (align, *_) = paint.patch_config(), paint.align_configs("patched", "checkpoint.pt")
    assert (patch.federation.rounds, patch.optim.scheduler, patch.optim.schedule_over) == (1, "cosine", "run_steps")
    assert (align.optim.scheduler, align.optim.schedule_over) == ("cosine", "run_steps")
