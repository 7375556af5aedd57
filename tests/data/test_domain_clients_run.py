"""``partition.name: domain`` through the simulation: build_federation hands every image's domain
to the partition, so each client of ``experiments/datasets/synthetic_domains.yaml`` holds exactly
one domain of the synthetic domains twin, in training and in test, and the run completes."""

import numpy as np
from lightning.fabric import Fabric

from fedvlm.config import load_config
from fedvlm.data.datasets import load_dataset
from fedvlm.data.synthetic import generate_dataset
from fedvlm.simulation import build_federation, run


def test_every_client_of_a_domain_run_holds_one_domain(tmp_path, monkeypatch):
    generate_dataset(tmp_path / "data" / "synthetic_world", layouts=["synthetic_domains"], num_images=160,
                     seed=0, num_styles=4, size=32)
    monkeypatch.setenv("FEDVLM_CACHE", str(tmp_path / "cache"))
    config = load_config("experiments/datasets/synthetic_domains.yaml", [
        f"data.root={tmp_path / 'data'}", f"logging.results_dir={tmp_path / 'results'}", "logging.wandb=disabled",
        "logging.progress=false", "federation.rounds=1", "eval.every=1", "data.shots=null", "model.pretrained=null",
        "runtime.accelerator=cpu", "seeds=[1]"])
    dataset = load_dataset("synthetic_domains", tmp_path / "data")
    federation = build_federation(config, Fabric(accelerator="cpu", devices=1))
    # no shots: the run's table holds every image, in dataset order
    assert len(federation.labels) == len(dataset)
    held = [(set(dataset.domains[train].tolist()), set(dataset.domains[test].tolist()))
            for train, test in zip(federation.train, federation.test)]
    assert len(held) == 4 and all(len(a) == 1 and a == b for a, b in held), held
    assert sorted(next(iter(a)) for a, _ in held) == [0, 1, 2, 3]  # each domain has its client
    summary = run(config)
    assert 0.0 <= summary["metrics"]["global/accuracy"] <= 1.0 if "metrics" in summary else summary
