"""A run of an optimal-transport head logs its plans' marginal error every round and warns once
when it exceeds runtime.ot_marginal_tolerance (docs/RELIABILITY.md, 3c)."""

import json
import warnings
from pathlib import Path

import torch

from fedvlm.config import load_config
from fedvlm.heads.base import normalize
from fedvlm.heads.fedotp import transport_similarity
from fedvlm.ot import MarginalErrorMonitor, OTMarginalWarning
from fedvlm.simulation import run


def _run(data_root, results, **head):
    config = load_config(overrides={
        "name": "ot_marginals", "seed": 3, "model": {"name": "fedvlm-tiny", "pretrained": "synthetic"},
        "data": {"dataset": "synthetic_scenes", "root": str(data_root)},
        "partition": {"name": "dirichlet", "num_clients": 2, "alpha": 1.0},
        "head": {"name": "fedotp", "n_ctx": 2, **head}, "federation": {"rounds": 2},
        "optim": {"lr": 0.01, "batch_size": 8}, "eval": {"personalized": False},
        "runtime": {"ot_marginal_tolerance": 0.05},
        "logging": {"progress": False, "wandb": "disabled", "results_dir": str(results)}})
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = run(config)
    lines = [json.loads(line) for line in (Path(summary["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    return [line["train/ot_marginal_error"] for line in lines], \
        [str(w.message) for w in caught if issubclass(w.category, OTMarginalWarning)]


def test_fedotp_similarity_at_eps_001_with_100_iterations_misses_its_marginals():
    """FedOTP, FedRSCLIP and OTDPP score through transport_similarity. Patches that each match
    half of the prompts (cosine about 0.29) and are orthogonal to the rest, cosines within
    [0, 0.29] as CLIP ViT-B-16's patch-prompt cosines lie: at eps 0.01 the default 100 partial
    Sinkhorn iterations leave the row caps violated; at eps 0.1 they converge."""
    generator = torch.Generator().manual_seed(0)
    batch, classes, prompts_per_class, patches_per_image, dim = 4, 5, 2, 196, 64
    basis = torch.eye(dim)
    prompts = basis[: classes * prompts_per_class].view(classes, prompts_per_class, dim).expand(batch, -1, -1, -1)
    matches = (torch.rand(batch, patches_per_image, classes * prompts_per_class, generator=generator) < 0.5).float()
    noise = torch.randn(batch, patches_per_image, dim, generator=generator)
    noise[..., : classes * prompts_per_class] = 0
    patches = normalize(0.3 * matches @ basis[: classes * prompts_per_class] + normalize(noise))
    monitor = MarginalErrorMonitor(tolerance=0.05)
    with monitor.recording():
        transport_similarity(patches, prompts, partial=True, eps=0.01, mass=0.8, max_iter=100, tol=0.0)
    rough = monitor.end_round(0, warn=False)
    with monitor.recording():
        transport_similarity(patches, prompts, partial=True, eps=0.1, mass=0.8, max_iter=100, tol=0.0)
    assert rough > 0.05 and monitor.end_round(1, warn=False) < 0.05


def test_small_eps_with_100_iterations_is_logged_above_tolerance_and_warned_once(colour_data_root, tmp_path):
    # The tiny model's patch-prompt cosines span about ten times less than CLIP's, so eps 0.001
    # here is the regime of eps 0.01 on ViT-B-16 (the test above).
    errors, warned = _run(colour_data_root, tmp_path, eps=0.001, ot_max_iter=100)
    assert len(errors) == 2 and all(error > 0.05 for error in errors), errors
    assert len(warned) == 1 and "\n" not in warned[0] and "runtime.ot_marginal_tolerance" in warned[0]


def test_converged_setting_is_logged_below_tolerance_without_a_warning(colour_data_root, tmp_path):
    errors, warned = _run(colour_data_root, tmp_path, eps=0.1, ot_max_iter=300)
    assert len(errors) == 2 and all(0 <= error < 0.05 for error in errors), errors
    assert warned == []
