"""Every experiment file under experiments/ loads and validates, sweeps expanded, as `make exp`
and `fedvlm run` / `fedvlm patch` would read it (files starting with "_" are bases, read through
the files that name them). A renamed key or head breaks this test, not a user's run."""

from pathlib import Path

import pytest

import fedvlm.heads  # noqa: F401  (head registrations)
from fedvlm.config import load_configs
from fedvlm.heads import HEADS
from fedvlm.patching.pipeline import load_patching_config

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"
FILES = sorted(p for p in EXPERIMENTS.rglob("*.yaml") if not p.name.startswith("_"))


def test_the_papers_tables_are_all_there():
    assert len(FILES) > 60
    for name in ("fedmpt_voc.yaml", "fedavg_pl_ucm.yaml", "demo.yaml"):
        assert EXPERIMENTS / name in FILES


@pytest.mark.parametrize("path", FILES, ids=lambda p: str(p.relative_to(EXPERIMENTS)))
def test_experiment_file_validates(path):
    if path.parent.name == "patching":
        config = load_patching_config(path)
        assert config.name
        return
    runs = load_configs(path)
    assert runs and all(run.head.name in HEADS for run in runs)
    assert len({(run.name, run.seed, repr(run.to_dict())) for run in runs}) == len(runs)  # no duplicate runs


def test_the_algorithm_sweep_covers_every_federated_algorithm():
    from fedvlm.algorithms import ALGORITHMS

    runs = load_configs(EXPERIMENTS / "synthetic" / "algorithms.yaml")
    swept = {run.algorithm.name for run in runs}
    registered = {name for name in ALGORITHMS.names() if not name.startswith("test_")} - {"local", "centralized"}
    assert swept == registered and all(run.head.name == "coop" for run in runs)
    assert {type(run.algorithm).__name__ for run in runs if run.algorithm.name == "scaffold"} == {"Scaffold"}
