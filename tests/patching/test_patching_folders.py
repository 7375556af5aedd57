"""fedvlm patch makes its run folder like fedvlm run does (docs/RELIABILITY.md, 2 and 6b): a safe
name below logging.results_dir, and no half-made folder when a stage fails on bad input."""

import pytest

from fedvlm.errors import ConfigError, DataError
from fedvlm.patching.pipeline import load_patching_config, run_patching


def _raw(tmp_path, name="patch_fail"):
    section = {"data": {"dataset": "synthetic_bigearthnet", "root": str(tmp_path / "missing"),
                        "split": [0.6, 0.2, 0.2]},
               "partition": {"name": "iid", "num_clients": 2}, "head": {"name": "paint"},
               "federation": {"rounds": 1}, "eval": {"personalized": False}}
    return {"name": name, "model": {"name": "fedvlm-tiny", "pretrained": None},
            "logging": {"results_dir": str(tmp_path / "results"), "wandb": "disabled", "progress": False},
            "patch": section, "supported": {"dataset": "synthetic_scenes", "split": [0.5, 0.25, 0.25]},
            "alphas": [0.0, 1.0]}


def test_a_failed_patching_run_leaves_no_folder(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        run_patching(load_patching_config(None, _raw(tmp_path)))
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").rglob("*"))


@pytest.mark.parametrize("name", ["../outside", "/tmp/absolute", "a/b"])
def test_patching_names_are_folder_names(tmp_path, name):
    with pytest.raises(ConfigError, match="^name: expected a folder name"):
        load_patching_config(None, _raw(tmp_path, name))
