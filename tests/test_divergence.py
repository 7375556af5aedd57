"""Divergence (docs/RELIABILITY.md, section 5): a client whose loss or parameters are not finite
after a round stops the run in one line, keeping the last finite checkpoint
(``runtime.on_nonfinite: stop``), or is left out of the aggregate (``skip_client``); a run that
fails before its first round leaves no folder behind (section 6b)."""

import json
import math
from pathlib import Path

import pytest
import torch

from fedvlm.config import load_config
from fedvlm.errors import ConfigError, DataError
from fedvlm.heads import HEADS
from fedvlm.heads.coop import CoOpConfig, CoOpHead
from fedvlm.server import ALGORITHMS, FedAvg
from fedvlm.simulation import run

from test_simulation import _cli, _config, _write


class _DivergingConfig(CoOpConfig):
    pass


@HEADS.register("test_diverging")
class DivergingHead(CoOpHead):
    """CoOp whose client 1 gets a NaN loss from round ``2`` on: a divergence at a known place."""

    Config = _DivergingConfig

    def begin_round(self, context):
        super().begin_round(context)
        self.round_index = context.round_index

    def begin_pass(self, clients):
        super().begin_pass(clients)
        self.clients = list(clients)

    def training_loss(self, batch):
        loss = super().training_loss(batch)  # [S]
        poison = [math.nan if self.round_index >= 1 and client == 1 else 0.0 for client in self.clients]
        return loss + torch.tensor(poison + [0.0] * (self.num_slots - len(poison)), dtype=loss.dtype)


AGGREGATED: list = []


@ALGORITHMS.register("test_recording_clients")
class RecordingClients(FedAvg):
    def server_step_from_sums(self, current, sums, server_state, round_info):
        AGGREGATED.append(list(sums.clients))
        return super().server_step_from_sums(current, sums, server_state, round_info)


def _all_finite(checkpoint) -> bool:
    tensors = list(checkpoint["global_shared"].values())
    for section in ("personal", "optimizer", "uploads"):
        tensors += [t for entry in checkpoint[section].values() for t in entry.values()]
    return all(torch.isfinite(t).all() for t in tensors)


def _diverging(colour_data_root, results, on_nonfinite, **sections):
    return load_config(overrides=_config(colour_data_root, results, head={"name": "test_diverging", "n_ctx": 4},
                                         algorithm={"name": "test_recording_clients"},
                                         runtime={"on_nonfinite": on_nonfinite},
                                         federation={"rounds": 3}, logging={"wandb": "disabled"}, **sections))


def test_stop_names_the_round_and_clients_and_keeps_the_last_finite_checkpoint(colour_data_root, tmp_path):
    with pytest.raises(ConfigError) as error:
        run(_diverging(colour_data_root, tmp_path, "stop"))
    message = str(error.value)
    assert message.startswith("round 2: training diverged, client 1 ended it") and "\n" not in message
    (folder,) = (tmp_path / "e2e").iterdir()
    checkpoint = torch.load(folder / "checkpoints/last.pt", weights_only=True)
    assert checkpoint["next_round"] == 1 and _all_finite(checkpoint) and "(round 1) is kept" in message
    assert len((folder / "metrics.jsonl").read_text().splitlines()) == 1 and not (folder / "summary.json").exists()


def test_skip_client_leaves_diverged_clients_out_of_the_aggregate(colour_data_root, tmp_path, capsys):
    AGGREGATED.clear()
    summary = run(_diverging(colour_data_root, tmp_path, "skip_client"))
    assert AGGREGATED == [[0, 1, 2], [0, 2], [0, 2]]
    folder = Path(summary["run_dir"])
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]
    assert [line.get("nonfinite_clients") for line in lines] == [None, [1], [1]]
    assert lines[-1]["uploaded_bytes"] == lines[0]["uploaded_bytes"] * (3 + 2 + 2) // 3  # skipped uploads not counted
    assert _all_finite(torch.load(folder / "checkpoints/last.pt", weights_only=True))
    assert math.isfinite(summary["train/loss"]) and summary["nonfinite_clients"] == [1]
    assert "warning: round 2: client 1 ended it with a non-finite loss" in capsys.readouterr().err


def test_a_diverging_learning_rate_stops_in_one_line(colour_data_root, tmp_path):
    raw = _config(colour_data_root, tmp_path / "results", federation={"rounds": 3}, optim={"lr": 1e15},
                  logging={"wandb": "disabled"})
    stopped = _cli(["run", str(_write(tmp_path / "exp.yaml", raw))])
    assert stopped.returncode == 2 and stopped.stderr.count("\n") == 1, stopped.stderr
    assert stopped.stderr.startswith("error: round 2: training diverged, clients 0, 1, 2 ended it")
    (folder,) = (tmp_path / "results" / "e2e").iterdir()
    assert _all_finite(torch.load(folder / "checkpoints/last.pt", weights_only=True))


def test_failed_runs_leave_no_half_made_folder(colour_data_root, tmp_path):
    results = tmp_path / "results"
    # bad input found while loading (no folder is made before the inputs are valid)
    with pytest.raises(DataError):
        run(load_config(overrides=_config(tmp_path / "no_data", results)))
    with pytest.raises(ConfigError):
        run(load_config(overrides=_config(colour_data_root, results, partition={"num_clients": 100})))
    # bad input found after the folder was made, before a round was recorded (divergence in round 1)
    with pytest.raises(ConfigError, match="round 1: training diverged"):
        run(load_config(overrides=_config(colour_data_root, results, optim={"lr": 1e30},
                                          logging={"wandb": "disabled"})))
    assert not results.exists() or not any(results.rglob("*"))
    raw = _config(tmp_path / "no_data", results)
    failed = _cli(["run", str(_write(tmp_path / "exp.yaml", raw))])
    assert failed.returncode == 2 and failed.stderr.count("\n") == 1 and not any(results.rglob("*"))


def test_an_overflowing_server_step_stops_and_keeps_the_last_finite_checkpoint(colour_data_root, tmp_path):
    """Finite client updates, but a server learning rate that overflows (FedAvgM at 1e39): the round
    is not saved, the error is one line naming the round and the algorithm."""
    config = load_config(overrides=_config(colour_data_root, tmp_path, federation={"rounds": 3},
                                           algorithm={"name": "fedavgm", "server_lr": 1e39},
                                           logging={"wandb": "disabled", "checkpoint_every": 1}))
    with pytest.raises(ConfigError) as error:
        run(config)
    message = str(error.value)
    assert message.startswith("round 1: the server step of algorithm.name=fedavgm made") and "\n" not in message
    # nothing of round 1 was recorded, so no half-made run folder is left either
    assert not (tmp_path / "e2e").exists() or not any((tmp_path / "e2e").rglob("last.pt"))
