"""HeadModule under lightning.Trainer: the same numbers as the federated loop's centralized run,
checkpoints that hold the head only, and the strategy that launches from a notebook."""

import json

import lightning as L
import pytest
import torch

from fedvlm.backbone.clip import FrozenCLIP
from fedvlm.client.module import HeadModule
from fedvlm.config import load_config
from fedvlm.errors import ConfigError
from fedvlm.datamodule import FeatureDataModule
from fedvlm.simulation import make_fabric, run


def _config(data_root, results, **sections):
    raw = {"name": "central", "seed": 5, "model": {"name": "fedvlm-tiny", "pretrained": None},
           "data": {"dataset": "synthetic_scenes", "root": str(data_root)}, "algorithm": {"name": "centralized"},
           "head": {"name": "coop", "n_ctx": 4}, "federation": {"rounds": 3},
           # momentum and a per-step cosine: the optimizer state reset per round and the schedule must match too
           "optim": {"lr": 0.02, "batch_size": 8, "momentum": 0.9, "scheduler": "cosine",
                     "schedule_over": "run_steps", "warmup_steps": 2},
           "logging": {"progress": False, "wandb": "disabled", "results_dir": str(results)}}
    raw.update(sections)
    return load_config(overrides=raw)


def _trainer(config, **options):
    return L.Trainer(max_epochs=config.federation.rounds, accelerator="cpu", devices=1, logger=False,
                     enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                     deterministic=True, **options)


def _fit(config, **options):
    torch.manual_seed(config.seed)  # as a run starts
    data = FeatureDataModule(config)
    data.prepare_data()
    data.setup("fit")
    module = HeadModule(config, data.classnames, data.template, backbone=data.backbone)
    trainer = _trainer(config, **options)
    trainer.fit(module, datamodule=data)
    return module, data, trainer


def test_trainer_fit_ends_where_the_federated_centralized_run_ends(colour_data_root, tmp_path):
    config = _config(colour_data_root, tmp_path / "results")
    summary = run(config)
    federated = torch.load(f"{summary['run_dir']}/checkpoints/last.pt", weights_only=True)
    module, data, _ = _fit(config, enable_checkpointing=False, check_val_every_n_epoch=config.federation.rounds)
    trained = module.head.read_slot(0)
    assert set(trained) == {"context"}
    assert torch.equal(trained["context"], federated["global_shared"]["context"])  # bitwise
    assert not torch.equal(trained["context"], data.federation.initial["context"])  # it trained
    # the validation hooks score the whole test split with the task's metric, as the run's global/accuracy
    assert module.last_metrics["accuracy"] == pytest.approx(summary["global/accuracy"])


def test_a_trainer_checkpoint_holds_the_head_only_and_knows_its_backbone(colour_data_root, tmp_path):
    config = _config(colour_data_root, tmp_path / "results", federation={"rounds": 1})
    module, _, trainer = _fit(config, enable_checkpointing=False, limit_val_batches=0)
    path = tmp_path / "head.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=True)  # tensors, numbers and strings: no code runs on load
    assert list(saved["state_dict"]) == ["head.context"]
    assert saved["fedvlm"]["backbone"] == module.backbone.identity()
    fresh = HeadModule.load_from_checkpoint(path, weights_only=True)
    assert torch.equal(fresh.head.read_slot(0)["context"], module.head.read_slot(0)["context"])
    other = FrozenCLIP.load("fedvlm-tiny", "synthetic")
    with pytest.raises(ConfigError) as refused:
        HeadModule.load_from_checkpoint(path, weights_only=True, backbone=other)
    assert "\n" not in str(refused.value) and "model.pretrained" in str(refused.value)


def test_ddp_notebook_builds_the_fork_launcher(colour_data_root, tmp_path):
    from lightning.fabric.strategies import DDPStrategy
    from lightning.fabric.strategies.launchers.multiprocessing import _MultiProcessingLauncher

    config = _config(colour_data_root, tmp_path, runtime={"strategy": "ddp_notebook", "devices": 2,
                                                          "accelerator": "cpu"})
    fabric = make_fabric(config)
    assert isinstance(fabric.strategy, DDPStrategy) and fabric.world_size == 2
    assert isinstance(fabric.strategy.launcher, _MultiProcessingLauncher)
    assert fabric.strategy.launcher._start_method == "fork"
    with pytest.raises(ConfigError, match="runtime.strategy"):
        _config(colour_data_root, tmp_path, runtime={"strategy": "ddp_fork_typo"})
    json.dumps(config.to_dict())  # the setting round-trips through the run's config.yaml
