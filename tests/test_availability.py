"""Client availability (docs/AVAILABILITY.md): dropout, stragglers and availability-aware
sampling, each drawn from its own stream per (seed, round, client), logged per round, identical
on 1 and 2 processes and across a kill and resume."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from lightning.fabric import Fabric

from fedvlm.algorithms import ServerRound
from fedvlm.client.module import HeadModule
from fedvlm.client.optim import SlotOptimizer
from fedvlm.client.training import batch_schedule, client_generator
from fedvlm.config import load_config
from fedvlm.errors import ConfigError
from fedvlm.sections import FederationConfig
from fedvlm.simulation import (ServerState, apply_round, available_clients, build_federation, client_steps,
                               dropped_clients, plan_round, run, sample_clients, straggler_steps, train_clients)

BASE = {
    "name": "avail", "seed": 3,
    "model": {"name": "fedvlm-tiny", "pretrained": None},
    "data": {"dataset": "synthetic_scenes"},
    "partition": {"name": "dirichlet", "num_clients": 3, "alpha": 1.0},
    "head": {"name": "coop", "n_ctx": 4},
    "federation": {"rounds": 3},
    "optim": {"lr": 0.01, "batch_size": 4},
    "logging": {"progress": False, "wandb": "disabled"},
}


def _raw(data_root, results, **federation):
    raw = json.loads(json.dumps(BASE))
    raw["data"]["root"] = str(data_root)
    raw["logging"]["results_dir"] = str(results)
    raw["federation"].update(federation)
    return raw


def _lines(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def _checkpoint(folder: Path) -> dict:
    return torch.load(folder / "checkpoints/last.pt", weights_only=True)


# ------------------------------------------------------------------------------ the draws


def test_the_dropout_draw_is_fixed_by_seed_and_round():
    clients = list(range(20))
    first = dropped_clients(5, 0, clients, 0.3, 20)
    assert first == dropped_clients(5, 0, clients, 0.3, 20)  # same (seed, round): same clients
    assert 0 < len(first) < 20
    assert any(dropped_clients(5, r, clients, 0.3, 20) != first for r in range(1, 4))  # another round
    assert dropped_clients(6, 0, clients, 0.3, 20) != first  # another seed
    # a client's draw does not depend on which others were sampled
    assert dropped_clients(5, 0, clients[::2], 0.3, 20) == [k for k in first if k % 2 == 0]
    assert dropped_clients(5, 0, clients, 0.0, 20) == []
    rates = [0.0] * 10 + [0.9] * 10  # per client: the first ten never drop
    dropped = [k for r in range(10) for k in dropped_clients(5, r, clients, rates, 20)]
    assert dropped and min(dropped) >= 10


def test_dropout_and_stragglers_do_not_change_who_is_sampled():
    plain = FederationConfig(participation=0.4)
    noisy = FederationConfig(participation=0.4, dropout=0.5, stragglers={"fraction": 0.5, "min_work": 0.2})
    steps = [6] * 10
    for round_index in range(5):
        a, b = plan_round(plain, 2, round_index, steps), plan_round(noisy, 2, round_index, steps)
        assert a.sampled == b.sampled == sample_clients(2, round_index, 10, 0.4)
        assert a.dropped == [] and a.local_steps == {} and a.reporting == a.sampled
        assert set(b.dropped) <= set(b.sampled) and set(b.local_steps) <= set(b.reporting)
    # everyone available: availability-aware sampling samples who uniform sampling does
    everyone = FederationConfig(participation=0.4, sampling="available", availability=1.0)
    assert all(plan_round(everyone, 2, r, steps).sampled == sample_clients(2, r, 10, 0.4) for r in range(5))


def test_available_sampling_samples_only_the_clients_present():
    federation = FederationConfig(participation=0.3, sampling="available", availability=[0.5] * 10 + [1.0] * 10)
    for round_index in range(6):
        plan = plan_round(federation, 7, round_index, [4] * 20)
        present = available_clients(7, round_index, federation.availability, 20)
        assert plan.available == present and set(range(10, 20)) <= set(present)
        assert set(plan.sampled) <= set(present) and len(plan.sampled) == min(6, len(present))
        assert plan == plan_round(federation, 7, round_index, [4] * 20)
    rounds = [available_clients(7, r, 0.5, 20) for r in range(4)]
    assert len({tuple(present) for present in rounds}) == 4  # drawn anew each round


def test_a_daily_cycle_moves_the_present_clients_round_by_round():
    cycle = FederationConfig(sampling="available", availability={"period": 4, "low": 0.1, "high": 0.9}).availability
    presence = cycle.presence(0, 4)  # the clients' peaks are spread over the day
    assert presence == pytest.approx([0.9, 0.5, 0.1, 0.5])
    assert cycle.presence(1, 4) == pytest.approx([0.5, 0.1, 0.5, 0.9])
    assert cycle.presence(4, 4) == pytest.approx(presence)  # the next day
    counts = np.zeros((4, 40))
    for day in range(40):
        for round_index in range(4):
            counts[round_index, available_clients(3, day * 4 + round_index, cycle, 40)] += 1
    # over 40 days, round 0 of a day finds the clients of phase 0 present far more often than those of phase 1/2
    assert counts[0, :5].mean() > 30 and counts[0, 18:23].mean() < 10 and counts[2, 18:23].mean() > 30


def test_straggler_steps_follow_the_draw():
    stragglers = FederationConfig(stragglers={"fraction": 0.6, "min_work": 0.25}).stragglers
    clients, full = list(range(40)), [8] * 39 + [1]
    steps = straggler_steps(1, 0, clients, stragglers, full)
    assert steps == straggler_steps(1, 0, clients, stragglers, full)
    assert 10 < len(steps) < 39 and 39 not in steps  # a one-step round cannot be cut
    assert all(2 <= s < 8 for s in steps.values())  # floor(u * 8) with u in [0.25, 1)
    assert straggler_steps(1, 1, clients, stragglers, full) != steps
    never = FederationConfig(stragglers={"fraction": 0.0}).stragglers
    assert straggler_steps(1, 0, clients, never, full) == {}


def test_a_stragglers_batches_are_the_first_of_a_full_round():
    indices = np.arange(11)
    full = batch_schedule(indices, 4, 2, None, client_generator(1, 2, 3))
    cut = batch_schedule(indices, 4, 2, 4, client_generator(1, 2, 3))
    assert len(full) == 6 and len(cut) == 4
    assert all(np.array_equal(a, b) for a, b in zip(cut, full))


# ----------------------------------------------------------------------------- bad values


@pytest.mark.parametrize("override, message", [
    ("federation.dropout=1.0", "federation.dropout: expected a probability in [0, 1)"),
    ("federation.dropout=[0.1,1.5,0]", "federation.dropout: expected a probability in [0, 1)"),
    ("federation.availability=0.5", "federation.availability acts only with federation.sampling: available"),
    ("federation.sampling=available", "set federation.availability"),
    ("federation.stragglers={min_work: 0}", "federation.stragglers.min_work"),
    ("federation.availability={period: 4, low: 0.9, high: 0.2}", "federation.availability: expected low <= high"),
])
def test_bad_values_are_one_line(override, message):
    with pytest.raises(ConfigError) as error:
        load_config(overrides={**_raw("/nowhere", "/nowhere"), **_nested(override)})
    assert message in str(error.value) and "\n" not in str(error.value)


def _nested(override: str) -> dict:
    key, value = override.split("=", 1)
    section, name = key.split(".")
    extra = {"sampling": "available"} if name == "availability" and value.startswith("{") else {}
    return {section: {**BASE[section], name: yaml.safe_load(value), **extra}}


def test_one_probability_per_client_is_checked_against_the_partition(colour_data_root, tmp_path):
    with pytest.raises(ConfigError, match=r"federation.dropout: 2 probabilities, but the partition made 3 "
                                          r"clients; expected one per client") as error:
        run(load_config(overrides=_raw(colour_data_root, tmp_path, dropout=[0.1, 0.2])))
    assert "\n" not in str(error.value) and not list(tmp_path.glob("avail/*"))  # no run folder was made
    refused = _cli(["run", str(_write(tmp_path, _raw(colour_data_root, tmp_path, sampling="available",
                                                       availability=[0.5] * 4)))])
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1, refused.stderr
    assert "federation.availability: 4 probabilities" in refused.stderr


# ----------------------------------------------------------------------------- the round loop


def _by_hand(config, left_out):
    """The rounds written with the loop's own functions, every client of ``sample_clients``
    training except ``left_out(round, sampled)``: clients that are simply not sampled."""
    fabric = Fabric(accelerator="cpu", devices=1)
    torch.manual_seed(config.seed)
    federation = build_federation(config, fabric)
    head = federation.head
    module = HeadModule(config, head=head)
    optimizer = SlotOptimizer(head.trainable(), config.optim)
    shared = {n: federation.initial[n] for n in head.shared_names()}
    state = ServerState(0, shared, algorithm=config.algorithm.init_server_state(shared))
    for round_index in range(config.federation.rounds):
        sampled = sample_clients(config.seed, round_index, federation.num_clients, config.federation.participation)
        sampled = [k for k in sampled if k not in left_out(round_index, sampled)]
        results = train_clients(federation, state, optimizer, sampled, round_index, module=module)
        apply_round(federation, state, results, ServerRound(round_index, config.seed, federation.num_clients,
                                                            len(sampled)))
    return state


@pytest.mark.parametrize("algorithm", ["fedavg", "scaffold"])
def test_dropped_clients_are_as_if_not_sampled(colour_data_root, tmp_path, algorithm):
    raw = {**_raw(colour_data_root, tmp_path, dropout=0.4), "algorithm": {"name": algorithm}}
    summary = run(load_config(overrides=raw))
    folder = Path(summary["run_dir"])
    lines = _lines(folder)
    dropped = [line["availability/dropped_clients"] for line in lines]
    assert any(dropped) and all(line["availability/reported"] > 0 for line in lines)  # some dropped, some left
    assert dropped == [dropped_clients(3, r, line["availability/sampled_clients"], 0.4, 3) for r, line in
                       enumerate(lines)]
    by_hand = _by_hand(load_config(overrides=raw), lambda r, sampled: dropped[r])
    checkpoint = _checkpoint(folder)
    assert torch.equal(checkpoint["global_shared"]["context"], by_hand.global_shared["context"])  # bitwise
    assert sorted(checkpoint["personal"]) == sorted(by_hand.personal)  # a client dropped every round never trained
    assert summary["availability/total_dropped"] == sum(map(len, dropped))
    assert summary["availability/total_reported"] == sum(line["availability/reported"] for line in lines)


def test_without_availability_options_the_loop_is_the_plain_one(colour_data_root, tmp_path):
    raw = _raw(colour_data_root, tmp_path / "default")
    summary = run(load_config(overrides=raw))
    explicit = run(load_config(overrides=_raw(colour_data_root, tmp_path / "explicit", dropout=0.0,
                                              sampling="uniform")))
    lines = _lines(Path(summary["run_dir"]))
    assert not any(key.startswith("availability/") for line in lines for key in line)
    assert (Path(summary["run_dir"]) / "metrics.jsonl").read_bytes() == \
        (Path(explicit["run_dir"]) / "metrics.jsonl").read_bytes()
    plain = _by_hand(load_config(overrides=raw), lambda r, sampled: [])
    assert torch.equal(_checkpoint(Path(summary["run_dir"]))["global_shared"]["context"],
                       plain.global_shared["context"])


def test_a_round_without_reports_keeps_the_global_model(colour_data_root, tmp_path, capsys):
    raw = _raw(colour_data_root, tmp_path, rounds=3, dropout=[0.7, 0.7, 0.7])
    config = load_config(overrides=raw)
    reported = [len(plan_round(config.federation, 3, r, [1] * 3).reporting) for r in range(3)]
    assert reported == [1, 0, 0]  # this seed's draw: one client reports in round 1, nobody after
    summary = run(config)
    lines = _lines(Path(summary["run_dir"]))
    assert [line["availability/reported"] for line in lines] == reported
    assert summary["availability/rounds_without_reports"] == 2
    assert summary["uploaded_bytes"] == lines[0]["uploaded_bytes"]  # nothing travelled after round 1
    assert "round 2: no sampled client reported" in capsys.readouterr().err
    final = _checkpoint(Path(summary["run_dir"]))["global_shared"]["context"]
    one_round = run(load_config(overrides=_raw(colour_data_root, tmp_path / "one", rounds=1, dropout=[0.7] * 3)))
    assert torch.equal(_checkpoint(Path(one_round["run_dir"]))["global_shared"]["context"], final)  # kept since
    # two processes skip the empty rounds' all-gather together and end where one process does
    raw["runtime"] = {"accelerator": "cpu", "devices": 2, "ddp_timeout_s": 120}
    two = _cli(["run", str(_write(tmp_path, {**raw, "name": "two"}))])
    assert two.returncode == 0, two.stderr[-2000:]
    (two_dir,) = (tmp_path / "two").iterdir()
    assert _lines(two_dir) == lines and torch.equal(_checkpoint(two_dir)["global_shared"]["context"], final)


def test_stragglers_train_their_drawn_steps(colour_data_root, tmp_path):
    raw = _raw(colour_data_root, tmp_path, rounds=2, stragglers={"fraction": 0.7, "min_work": 0.3})
    config = load_config(overrides=raw)
    federation = build_federation(config, Fabric(accelerator="cpu", devices=1))
    full = client_steps(federation)
    head = federation.head
    shared = {n: federation.initial[n] for n in head.shared_names()}
    state = ServerState(0, shared)
    optimizer = SlotOptimizer(head.trainable(), config.optim)
    plans = [plan_round(config.federation, config.seed, r, full) for r in range(2)]
    round_index, plan = next((r, plan) for r, plan in enumerate(plans) if plan.local_steps)  # some client straggles
    results = train_clients(federation, state, optimizer, plan.reporting, round_index, local_steps=plan.local_steps)
    assert {r.client: r.steps for r in results} == {k: plan.local_steps.get(k, full[k]) for k in plan.reporting}
    summary = run(config)
    lines = _lines(Path(summary["run_dir"]))
    for round_index, line in enumerate(lines):
        drawn = plan_round(config.federation, config.seed, round_index, full).local_steps
        assert dict(zip(line["availability/straggled_clients"], line["availability/straggler_steps"])) == drawn
        assert line["availability/straggled"] == len(drawn)


# ---------------------------------------------------------------------- processes and resume


def _cli(args, env_extra=None):
    return subprocess.run([sys.executable, "-m", "fedvlm", *args], capture_output=True, text=True,
                          env={**os.environ, **(env_extra or {})}, timeout=600)


def _write(tmp_path, raw):
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


EVERYTHING = {"participation": 0.67, "dropout": [0.3, 0.3, 0.5], "sampling": "available",
              "availability": [0.9, 1.0, 0.8], "stragglers": {"fraction": 0.5, "min_work": 0.2}}


def test_one_and_two_processes_agree_with_dropout_and_stragglers(colour_data_root, tmp_path):
    raw = _raw(colour_data_root, tmp_path / "results", rounds=3, **EVERYTHING)
    raw["runtime"] = {"execution": "sequential", "accelerator": "cpu", "ddp_timeout_s": 120}
    raw["algorithm"] = {"name": "fednova"}
    config = _write(tmp_path, raw)
    one = _cli(["run", str(config), "name=one", "runtime.devices=1"])
    two = _cli(["run", str(config), "name=two", "runtime.devices=2"])
    assert one.returncode == 0 and two.returncode == 0, two.stderr[-2000:]
    (one_dir,), (two_dir,) = (tmp_path / "results" / "one").iterdir(), (tmp_path / "results" / "two").iterdir()
    a, b = _checkpoint(one_dir), _checkpoint(two_dir)
    assert torch.equal(a["global_shared"]["context"], b["global_shared"]["context"])
    lines = _lines(one_dir)
    assert lines == _lines(two_dir)
    assert sum(line["availability/dropped"] for line in lines) and sum(line["availability/straggled"] for line in lines)


def test_a_killed_run_with_dropout_resumes_bitwise(colour_data_root, tmp_path):
    raw = _raw(colour_data_root, tmp_path / "results", rounds=4, **EVERYTHING)
    raw["runtime"] = {"execution": "sequential"}
    raw["optim"]["keep_state"] = True
    config = _write(tmp_path, raw)
    whole = _cli(["run", str(config), "name=whole"])
    assert whole.returncode == 0, whole.stderr[-2000:]
    killed = _cli(["run", str(config), "name=killed"], {"FEDVLM_KILL_AT": "mid_round@2"})
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = _cli(["run", str(config), "name=killed", "resume=true"], {"FEDVLM_KILL_AT": "after_round@3"})
    assert resumed.returncode == -9, resumed.stderr[-2000:]
    done = _cli(["run", str(config), "name=killed", "resume=true"])
    assert done.returncode == 0, done.stderr[-2000:]
    (whole_dir,) = (tmp_path / "results" / "whole").iterdir()
    (killed_dir,) = (tmp_path / "results" / "killed").iterdir()
    assert (whole_dir / "metrics.jsonl").read_bytes() == (killed_dir / "metrics.jsonl").read_bytes()
    a, b = _checkpoint(whole_dir), _checkpoint(killed_dir)
    assert torch.equal(a["global_shared"]["context"], b["global_shared"]["context"])
    for section in ("personal", "optimizer"):
        assert a[section].keys() == b[section].keys()
        assert all(torch.equal(a[section][k][n], b[section][k][n]) for k in a[section] for n in a[section][k])
    summaries = [json.loads((d / "summary.json").read_text()) for d in (whole_dir, killed_dir)]
    assert summaries[0]["availability/total_dropped"] == summaries[1]["availability/total_dropped"] > 0
