"""What a W&B dashboard can group and tabulate: sweep values as tags and a one-row final table
per run (fedvlm/tracking/wandb_logger.py), checked on the run and in the offline run's files."""

from fedvlm.tracking.wandb_logger import WandbLogger, final_row, sweep_tags

SUMMARY = {"experiment": "exp", "run_id": "r1", "method": "coop", "algorithm": "fedavg", "dataset": "toy",
           "num_clients": 4, "seed": 2, "global/accuracy": 0.5, "personalized/mean_accuracy": 0.25,
           "personalized/min_accuracy": 0.1, "clients/accuracy": [0.1, 0.4], "uploaded_bytes": 10,
           "downloaded_bytes": 12, "parameters": {"shared_per_client": 8}}
SWEEP = {"partition.num_clients": 4, "head.modules": ["prompts", "adapters"]}


def test_final_row_and_tags():
    columns, row = final_row(SUMMARY, SWEEP)
    assert columns == ["experiment", "run_id", "method", "algorithm", "dataset", "num_clients", "seed",
                       "partition.num_clients", "head.modules", "global/accuracy", "personalized/mean_accuracy",
                       "personalized/min_accuracy", "uploaded_bytes", "downloaded_bytes"]
    assert row == ["exp", "r1", "coop", "fedavg", "toy", 4, 2, 4, "prompts+adapters", 0.5, 0.25, 0.1, 10, 12]
    assert sweep_tags(SWEEP) == ["num_clients=4", "modules=prompts+adapters"]


def test_offline_run_holds_the_final_table_and_sweep_tags(tmp_path):
    logger = WandbLogger("offline", tmp_path, "fedvlm", None, group="exp", name="r1", run_id="r1",
                         tags=["coop", "seed2"], config={"name": "exp", "sweep_values": SWEEP})
    logger.log({"round": 1, "global/accuracy": 0.5})
    assert set(logger.run.tags) == {"coop", "seed2", "num_clients=4", "modules=prompts+adapters"}
    assert logger.run.group == "exp"
    logger.finish(SUMMARY)
    tables = list(tmp_path.glob("wandb/offline-run-*/files/media/table/final/results_*.table.json"))
    assert len(tables) == 1
    assert '"data":[["exp","r1","coop","fedavg","toy",4,2,4,"prompts+adapters",0.5,0.25,0.1,10,12]]' in \
        tables[0].read_text().replace(" ", "")
