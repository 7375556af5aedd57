""""Centralized" is one concept, the partition; ``algorithm: centralized`` is its deprecated alias
and must give the same run, number for number."""

import json
from pathlib import Path

import pytest
import torch
import yaml

from fedvlm.config import load_config
from fedvlm.describe import describe
from fedvlm.simulation import run

BASE = {
    "name": "central", "seed": 3,
    "model": {"name": "fedvlm-tiny", "pretrained": None},
    "data": {"dataset": "synthetic_scenes"},
    "partition": {"name": "dirichlet", "num_clients": 3, "alpha": 1.0},
    "head": {"name": "coop", "n_ctx": 4},
    "algorithm": {"name": "fedprox", "mu": 0.1},
    "federation": {"rounds": 2},
    "optim": {"lr": 0.01, "batch_size": 8},
    "logging": {"progress": False},
}


def _write(path: Path, raw: dict) -> Path:
    path.write_text(yaml.safe_dump(raw))
    return path


def test_the_algorithm_spelling_becomes_the_partition_with_fedavg(tmp_path):
    base = _write(tmp_path / "base.yaml", BASE)
    by_algorithm = load_config(base, ["algorithm.name=centralized"])  # renaming drops fedprox's mu
    by_partition = load_config(base, ["partition.name=centralized", "algorithm.name=fedavg"])
    assert by_algorithm.algorithm.name == "fedavg" and by_algorithm.partition.name == "centralized"
    assert by_algorithm.to_dict() == by_partition.to_dict()
    child = _write(tmp_path / "child.yaml", {"base": "base.yaml", "algorithm": {"name": "centralized"}})
    assert load_config(child).to_dict() == by_partition.to_dict()
    assert describe(by_algorithm) == describe(by_partition)
    assert describe(by_algorithm)["transmitted_parameters"] == 0  # one client talks to no one


def test_both_spellings_train_the_same_model(colour_data_root, tmp_path):
    summaries = []
    for spelling, overrides in (("algorithm", {"algorithm": {"name": "centralized"}}),
                                ("partition", {"partition": {"name": "centralized"}, "algorithm": {"name": "fedavg"}})):
        raw = json.loads(json.dumps(BASE))
        raw.update(overrides)
        raw["data"]["root"] = str(colour_data_root)
        raw["logging"]["results_dir"] = str(tmp_path / spelling)
        summaries.append(run(load_config(overrides=raw)))
    first, second = summaries
    assert first["num_clients"] == second["num_clients"] == 1
    assert first["clients/accuracy"][0] == first["global/accuracy"]
    for key in ("global/accuracy", "uploaded_bytes", "personalized/mean_accuracy"):
        assert first[key] == second[key], key
    checkpoints = [torch.load(Path(s["run_dir"]) / "checkpoints/last.pt", weights_only=True) for s in summaries]
    assert checkpoints[0]["global_shared"].keys() == checkpoints[1]["global_shared"].keys()
    for name, value in checkpoints[0]["global_shared"].items():
        assert torch.equal(value, checkpoints[1]["global_shared"][name]), name
    lines = [(Path(s["run_dir"]) / "metrics.jsonl").read_text().splitlines() for s in summaries]
    strip = lambda line: {k: v for k, v in json.loads(line).items() if "seconds" not in k and "time" not in k}  # noqa: E731
    assert [strip(line) for line in lines[0]] == [strip(line) for line in lines[1]]


@pytest.mark.parametrize("path", ["experiments/centralized_ucm.yaml"])
def test_the_shipped_centralized_experiment_loads_as_the_partition(path):
    config = load_config(path)
    assert config.partition.name == "centralized" and config.partition.num_clients == 1
    assert config.algorithm.name == "fedavg"
