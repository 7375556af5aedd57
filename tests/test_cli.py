"""Every user mistake gets one line naming the key, file or value, exit status 2, no traceback."""

import os
import subprocess
import sys

import pytest
import yaml

from fedvlm.cli import main

GOOD = {
    "name": "cli", "model": {"name": "fedvlm-tiny", "pretrained": None},
    "data": {"dataset": "synthetic_scenes"}, "partition": {"name": "dirichlet", "num_clients": 3, "alpha": 0.5},
    "head": {"name": "coop"}, "federation": {"rounds": 1}, "logging": {"progress": False, "wandb": "disabled"},
}


@pytest.fixture()
def config_file(tmp_path, colour_data_root):
    raw = {**GOOD, "data": {**GOOD["data"], "root": str(colour_data_root)},
           "logging": {**GOOD["logging"], "results_dir": str(tmp_path / "results")}}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


CASES = [
    (["partition.alpah=0.3"], "partition.alpah: unknown key; expected one of: name, num_clients, alpha"),
    (["optim.lrr=0.1"], "optim.lrr: unknown key; expected one of: name, lr,"),
    (["bogus=1"], "bogus: unknown key"),
    (["head.name=nosuchhead"], "head.name: unknown head 'nosuchhead'; expected one of:"),
    (["algorithm.name=fedsgd"], "algorithm.name: unknown algorithm 'fedsgd'; expected one of: dp_fedavg, "
                                "fedadagrad, fedadam, fedavg"),
    (["data.dataset=imagenet21k"], "data.dataset: unknown dataset 'imagenet21k'; expected one of:"),
    (["partition.name=shards"], "partition.name: unknown partition 'shards'; expected one of:"),
    (["partition.alpha=0"], "partition.alpha: input should be greater than 0 (got 0)"),
    (["partition.alpha=-1"], "partition.alpha: input should be greater than 0 (got -1)"),
    (["federation.participation=1.5"], "federation.participation: input should be less than or equal to 1 (got 1.5)"),
    (["federation.participation=0"], "federation.participation: input should be greater than 0"),
    (["optim.name=adam"], "optim.name: input should be 'sgd' or 'adamw'"),
    (["data.split=[0.5,0.6]"], "data.split: expected 2 or 3 positive fractions summing to 1"),
    (["partition.num_clients=500"], "partition.num_clients: 500 clients but only 18 training images"),
    (["rounds=3"], "rounds: unknown key"),
    (["federation.rounds"], "override 'federation.rounds': expected key=value"),
    (["data.root=/nonexistent/place"], "/nonexistent/place/synthetic_scenes does not exist; expected synthetic_scenes/<class>/<image>.png"),
    (["model.pretrained=/no/such/weights.safetensors"], "model.pretrained: checkpoint file /no/such/weights.safetensors does not exist"),
    (["model.name=ViT-Z-1"], "model.name: unknown open_clip model 'ViT-Z-1'"),
    (["resume=true"], "resume: no unfinished run of cli"),
]


@pytest.mark.parametrize("overrides,expected", CASES, ids=[c[0][0] for c in CASES])
def test_bad_input_is_one_clear_line(config_file, capsys, overrides, expected):
    status = main(["run", str(config_file), *overrides])
    err = capsys.readouterr().err.strip()
    assert status == 2
    assert err.startswith("error: ") and "\n" not in err, err
    assert expected in err, err


def test_bad_files(tmp_path, capsys):
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml does not exist" in capsys.readouterr().err
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\nmodel: {name: [unclosed\n")
    assert main(["run", str(broken)]) == 2
    assert "invalid YAML at line" in capsys.readouterr().err
    loop = tmp_path / "loop.yaml"
    loop.write_text("base: loop.yaml\nname: x\n")
    assert main(["run", str(loop)]) == 2
    assert "refers back to itself" in capsys.readouterr().err


def test_real_process_exit_status_and_no_traceback(config_file):
    out = subprocess.run([sys.executable, "-m", "fedvlm", "run", str(config_file), "partition.alpha=0"],
                         capture_output=True, text=True, env=os.environ, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip() == "error: partition.alpha: input should be greater than 0 (got 0)"
    assert "Traceback" not in out.stdout + out.stderr


def test_base_file_and_overrides_merge(tmp_path, colour_data_root):
    from fedvlm.config import load_config

    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({**GOOD, "optim": {"lr": 0.002, "batch_size": 16}}))
    child = tmp_path / "child.yaml"
    child.write_text("base: base.yaml\nname: child\nalgorithm: {name: fedprox, mu: 0.1}\noptim: {lr: 0.003}\n")
    config = load_config(child, ["optim.batch_size=4", "partition.name=even_per_class"])
    assert config.name == "child" and config.algorithm.mu == 0.1
    assert config.optim.lr == 0.003 and config.optim.batch_size == 4
    assert config.partition.name == "even_per_class" and not hasattr(config.partition, "alpha")
    assert config.partition.num_clients == 3  # carried over: the new partition accepts it


def test_sweep_and_seeds_expand_into_runs(tmp_path):
    from fedvlm.config import load_configs

    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump({**GOOD, "seeds": [1, 2], "sweep": {"partition.num_clients": [2, 5, 10]}}))
    runs = load_configs(path)
    assert len(runs) == 6
    assert sorted((r.seed, r.partition.num_clients) for r in runs) == [(s, k) for s in (1, 2) for k in (2, 5, 10)]
    assert all(r.sweep_values == {"partition.num_clients": r.partition.num_clients} for r in runs)
    with pytest.raises(Exception, match="sweep: this experiment is 6 runs"):
        __import__("fedvlm.config").config.load_config(path)
    path.write_text(yaml.safe_dump({**GOOD, "sweep": {"partition.num_clientz": [2]}}))
    with pytest.raises(Exception, match="partition.num_clientz: unknown key"):
        load_configs(path)
