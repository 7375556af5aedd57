"""fedvlm report writes only below the folder it was given, whatever the run folders it reads
say (docs/RELIABILITY.md, section 2): output names derived from their contents are sanitised."""

import json
import shutil

import pytest
import yaml

from fedvlm.config import load_config
from fedvlm.errors import UserError
from fedvlm.report import build_report
from fedvlm.report.build import slug
from fedvlm.simulation import run

HOSTILE = ["..", "../../escaped", "/tmp/absolute", ".", "", "./..", "a/../../b", "..\\..", "~"]


def test_slugs_are_single_safe_components():
    for name in HOSTILE:
        component = slug(name)
        assert component and "/" not in component and not component.startswith(".")


@pytest.fixture(scope="module")
def crafted(tmp_path_factory, colour_data_root):
    """Results holding one real finished run and copies of it whose experiment names (config and
    summary) try to leave the output folder."""
    results = tmp_path_factory.mktemp("crafted") / "results"
    summary = run(load_config(overrides={
        "name": "real", "model": {"name": "fedvlm-tiny", "pretrained": None},
        "data": {"dataset": "synthetic_scenes", "root": str(colour_data_root)},
        "partition": {"name": "dirichlet", "num_clients": 2}, "head": {"name": "coop", "n_ctx": 2},
        "federation": {"rounds": 1}, "optim": {"batch_size": 8},
        "logging": {"results_dir": str(results), "wandb": "disabled", "progress": False}}))
    for number, name in enumerate(HOSTILE):
        copy = results / f"crafted{number}" / "run"
        shutil.copytree(summary["run_dir"], copy)
        config = yaml.safe_load((copy / "config.yaml").read_text())
        config["name"] = name
        config["data"]["dataset"] = name  # the cross-experiment comparisons are named after datasets
        (copy / "config.yaml").write_text(yaml.safe_dump(config))
        saved = json.loads((copy / "summary.json").read_text())
        saved.update(experiment=name, dataset=name, primary_metric=f"../{name}", run_id=f"run{number}")
        (copy / "summary.json").write_text(json.dumps(saved))
    return results


def _everything(root):
    return {p for p in root.rglob("*")}


def test_crafted_run_folders_write_nothing_outside_out(crafted, tmp_path):
    out = tmp_path / "nested" / "out"
    before = _everything(crafted.parent)
    report = build_report([crafted], out, plots_too=True)
    assert _everything(crafted.parent) == before  # nothing beside the results
    assert sorted(p.name for p in tmp_path.iterdir()) == ["nested"] and list((tmp_path / "nested").iterdir()) == [out]
    assert report.files and all(f.resolve().is_relative_to(out.resolve()) for f in report.files)
    assert not (tmp_path / "escaped").exists() and not (tmp_path / "b").exists()


def test_a_link_out_of_the_output_folder_is_refused(crafted, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "real").symlink_to(outside, target_is_directory=True)  # where the 'real' experiment's tables go
    with pytest.raises(UserError, match="points outside the output folder"):
        build_report([crafted], out, plots_too=False)
    assert not any(outside.iterdir())
    link = crafted / "report"  # the default output folder, planted as a link
    link.symlink_to(outside, target_is_directory=True)
    try:
        with pytest.raises(UserError, match="points outside"):
            build_report([crafted], plots_too=False)
    finally:
        link.unlink()
    assert not any(outside.iterdir())
