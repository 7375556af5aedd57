"""FedvlmWandbLogger (fedvlm/tracking/wandb_logger.py): what a W&B dashboard can group, filter and
tabulate, checked in the offline run's own record file; the same logger fed by Fabric and by a
``lightning.Trainer``."""

import struct
import time
from pathlib import Path

import lightning as L
import torch
from lightning.fabric import Fabric
from PIL import Image
from wandb.proto import wandb_internal_pb2

from fedvlm.tracking.wandb_logger import FedvlmWandbLogger, final_row, sweep_tags

SUMMARY = {"experiment": "exp", "run_id": "r1", "method": "coop", "algorithm": "fedavg", "dataset": "toy",
           "num_clients": 4, "seed": 2, "global/accuracy": 0.5, "personalized/mean_accuracy": 0.25,
           "personalized/min_accuracy": 0.1, "clients/accuracy": [0.1, 0.4], "uploaded_bytes": 10,
           "downloaded_bytes": 12, "parameters": {"shared_per_client": 8}}
SWEEP = {"partition.num_clients": 4, "head.modules": ["prompts", "adapters"]}


def _logger(run_dir, **config):
    return FedvlmWandbLogger("offline", run_dir, "fedvlm", None, group="exp", name="r1", run_id="r1",
                             tags=["coop", "seed2"], config={"name": "exp", **config})


def run_records(run_dir: Path) -> list:
    """The records of the offline run's ``run-*.wandb`` file: W&B's LevelDB-style log (a 7-byte
    ':W&B' header, then 32 KiB blocks of chunks, each with a 7-byte header: crc, length, type)."""
    (path,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    records, position, pending = [], 7, b""
    while position + 7 <= len(data):
        if 32768 - position % 32768 < 7:  # a block's tail too short for a header is padding
            position += 32768 - position % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if position + 7 + length > len(data):  # a chunk still being written
            break
        pending += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):  # a whole record, or the last chunk of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            records.append(record)
            pending = b""
    return records


def finished_records(run_dir: Path, seconds: float = 60.0) -> list:
    """The run file's records once it holds the exit record: W&B's service process may still be
    writing it for a moment after ``run.finish()`` returns."""
    deadline = time.monotonic() + seconds
    while True:
        records = run_records(run_dir)
        if any(record.WhichOneof("record_type") == "exit" for record in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


def history(run_dir: Path) -> list[dict]:
    rows = []
    for record in finished_records(run_dir):
        if record.WhichOneof("record_type") == "history":
            rows.append({item.key or "/".join(item.nested_key): item.value_json for item in record.history.item})
    return rows


def step_metrics(run_dir: Path) -> dict[str, str]:
    return {record.metric.glob_name or record.metric.name: record.metric.step_metric
            for record in finished_records(run_dir) if record.WhichOneof("record_type") == "metric"}


def test_final_row_and_tags():
    columns, row = final_row(SUMMARY, SWEEP)
    assert columns == ["experiment", "run_id", "method", "algorithm", "dataset", "num_clients", "seed",
                       "partition.num_clients", "head.modules", "global/accuracy", "personalized/mean_accuracy",
                       "personalized/min_accuracy", "uploaded_bytes", "downloaded_bytes"]
    assert row == ["exp", "r1", "coop", "fedavg", "toy", 4, 2, 4, "prompts+adapters", 0.5, 0.25, 0.1, 10, 12]
    assert sweep_tags(SWEEP) == ["num_clients=4", "modules=prompts+adapters"]


def test_offline_run_holds_the_final_table_and_sweep_tags(tmp_path):
    logger = _logger(tmp_path, sweep_values=SWEEP)
    logger.log_metrics({"round": 1, "global/accuracy": 0.5}, step=1)
    assert set(logger.experiment.tags) == {"coop", "seed2", "num_clients=4", "modules=prompts+adapters"}
    assert logger.experiment.group == "exp"
    logger.finish(SUMMARY)
    tables = list(tmp_path.glob("wandb/offline-run-*/files/media/table/final/results_*.table.json"))
    assert len(tables) == 1
    assert '"data":[["exp","r1","coop","fedavg","toy",4,2,4,"prompts+adapters",0.5,0.25,0.1,10,12]]' in \
        tables[0].read_text().replace(" ", "")


def test_fabric_log_dict_logs_by_round_with_round_as_every_charts_x_axis(tmp_path):
    logger = _logger(tmp_path)
    fabric = Fabric(accelerator="cpu", devices=1, loggers=[logger])
    for round_number in (1, 2, 3):
        fabric.log_dict({"global/accuracy": 0.1 * round_number, "lr": float("nan"),
                         "clients/accuracy": [0.2, None, 0.4]}, step=round_number)
    Image.new("RGB", (4, 4)).save(tmp_path / "heatmap.png")
    logger.log_image("partition/heatmap", [str(tmp_path / "heatmap.png")])
    logger.log_table("partition/counts", ["client", "red"], [[0, 3], [1, 5]])
    logger.finish({"experiment": "exp", "global/accuracy": 0.3})

    media = {key.split("/")[1]: value for row in history(tmp_path) for key, value in row.items()
             if key.startswith("partition/") and key.endswith("/_type")}
    assert media == {"heatmap": '"images/separated"', "counts": '"table-file"'}
    # round is defined, and is the x axis of every other key (not Lightning's trainer/global_step)
    assert step_metrics(tmp_path) == {"round": "", "*": "round"}
    rows = [row for row in history(tmp_path) if "global/accuracy" in row]
    assert [row["round"] for row in rows] == ["1", "2", "3"]
    assert all("trainer/global_step" not in row and "lr" not in row for row in rows)  # NaN left out
    assert all(row["clients/accuracy/_type"] == '"histogram"' for row in rows)  # one histogram per round
    (offline_run,) = tmp_path.glob("wandb/offline-run-*")  # the run folder's one offline run, named by its id
    assert offline_run.name.endswith("-r1") and (offline_run / "run-r1.wandb").stat().st_size > 0


class _TinyModule(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(2, 1)

    def training_step(self, batch, batch_index):
        inputs, targets = batch
        loss = torch.nn.functional.mse_loss(self.layer(inputs), targets)
        self.log("train/loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        generator = torch.Generator().manual_seed(0)
        data = torch.utils.data.TensorDataset(torch.randn(8, 2, generator=generator), torch.randn(8, 1, generator=generator))
        return torch.utils.data.DataLoader(data, batch_size=4)


def test_a_trainer_logs_through_the_same_logger(tmp_path):
    logger = _logger(tmp_path)
    trainer = L.Trainer(logger=logger, max_steps=2, log_every_n_steps=1, accelerator="cpu", devices=1,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        default_root_dir=tmp_path)
    trainer.fit(_TinyModule())
    assert trainer.global_step == 2
    logger.finish({"experiment": "exp"})
    rows = [row for row in history(tmp_path) if "train/loss" in row]
    # the Trainer's step reaches W&B as the step metric; the loss is a finite number
    assert [row["round"] for row in rows] == ["0", "1"]
    assert all(float(row["train/loss"]) >= 0 for row in rows)
