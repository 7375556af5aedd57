"""A small real results set, made once per test session: the report, CLI and notebook tests all
read it. Tiny random-weight CLIP, 3 colour classes, 2 rounds, no W&B.

    sweep:  coop and zero-shot (FedAvg), 2 and 3 clients, seeds 1 and 2    (8 runs)
    local:  coop trained locally (no global model), 2 and 3 clients,
            seed 1 only, 1 round                                          (2 runs)
"""

from pathlib import Path

import pytest

from fedvlm.config import load_configs
from fedvlm.simulation import run

BASE = {
    "model": {"name": "fedvlm-tiny", "pretrained": None},
    "data": {"dataset": "synthetic_scenes"},
    "partition": {"name": "dirichlet", "num_clients": 2, "alpha": 1.0},
    "head": {"name": "coop", "n_ctx": 2},
    "federation": {"rounds": 2},
    "optim": {"lr": 0.01, "batch_size": 8},
    "logging": {"progress": False, "wandb": "disabled", "checkpoint_every": 0},
}
EXPERIMENTS = {
    "sweep": {"seeds": [1, 2], "sweep": {"head.name": ["coop", "zeroshot"], "partition.num_clients": [2, 3]}},
    "local": {"algorithm": {"name": "local"}, "federation": {"rounds": 1}, "sweep": {"partition.num_clients": [2, 3]}},
}


def make_results(results: Path, data_root: Path) -> Path:
    for name, settings in EXPERIMENTS.items():
        raw = {**BASE, "name": name, **settings,
               "data": {**BASE["data"], "root": str(data_root)},
               "logging": {**BASE["logging"], "results_dir": str(results)}}
        for config in load_configs(overrides=raw):
            run(config)
    return results


@pytest.fixture(scope="session")
def report_results(tmp_path_factory, colour_data_root) -> Path:
    return make_results(tmp_path_factory.mktemp("report") / "results", colour_data_root)
