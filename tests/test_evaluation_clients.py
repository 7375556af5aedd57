"""eval.clients: personalized metrics of all clients, of the round's sampled ones, or of a
seeded sample of N, logged as eval/clients; the per-client values are those 'all' gives."""

import json
from pathlib import Path

import pytest

from fedvlm.config import load_config
from fedvlm.errors import ConfigError
from fedvlm.simulation import evaluation_clients, run, sample_clients

BASE = {
    "name": "evalclients", "seed": 5,
    "model": {"name": "fedvlm-tiny", "pretrained": None},
    "data": {"dataset": "synthetic_scenes"},
    "partition": {"name": "dirichlet", "num_clients": 6, "alpha": 1.0},
    "head": {"name": "coop", "n_ctx": 4},
    "federation": {"rounds": 3, "participation": 0.5},
    "optim": {"lr": 0.01, "batch_size": 8},
    "logging": {"progress": False, "wandb": "disabled"},
}


def _lines(data_root, results, clients):
    raw = {**json.loads(json.dumps(BASE)), "eval": {"clients": clients}}
    raw["data"]["root"], raw["logging"]["results_dir"] = str(data_root), str(results)
    raw["name"] = f"eval{clients}"
    summary = run(load_config(overrides=raw))
    return [json.loads(line) for line in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()]


def test_sampled_and_n_clients_report_those_clients_values_of_all(colour_data_root, tmp_path):
    every = _lines(colour_data_root, tmp_path, "all")
    two = _lines(colour_data_root, tmp_path, 2)
    sampled = _lines(colour_data_root, tmp_path, "sampled")
    assert all("eval/clients" not in line and len(line["clients/accuracy"]) == 6 for line in every)
    draws = [line["eval/clients"] for line in two]
    assert all(len(d) == 2 and d == sorted(d) for d in draws) and len({tuple(d) for d in draws}) > 1
    for round_index, (full, part, trained) in enumerate(zip(every, two, sampled)):
        assert trained["eval/clients"] == sample_clients(5, round_index, 6, 0.5)  # the round's clients
        for line in (part, trained):
            assert line["clients/accuracy"] == [full["clients/accuracy"][k] for k in line["eval/clients"]]
            assert line["global/accuracy"] == full["global/accuracy"] and line["train/loss"] == full["train/loss"]


def test_the_evaluation_sample_is_its_own_seeded_stream():
    config = load_config(overrides={**BASE, "eval": {"clients": 3}})
    assert evaluation_clients(config, 100, 4, None) == evaluation_clients(config, 100, 4, [1, 2])
    assert evaluation_clients(config, 100, 4, None) != evaluation_clients(config, 100, 5, None)
    assert evaluation_clients(config, 100, 4, None) != sample_clients(5, 4, 100, 0.03)  # not the training draw
    assert evaluation_clients(config, 2, 4, None) == [0, 1]  # N >= K: everyone
    with pytest.raises(ConfigError, match="eval.clients"):
        load_config(overrides={**BASE, "eval": {"clients": 0}})
