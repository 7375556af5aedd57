"""Comparison tables from run folders written by hand: exact values, last round (never the best
round), mean ± sample std over seeds, single seeds, repeats, unfinished runs, setting order."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import yaml

from fedvlm.report import build_report, client_frame, comparison_table, comparisons, load_runs, runs_frame, wide_table
from fedvlm.report.partitions import partition_summary
from fedvlm.report.tables import markdown_tables, table_metrics


def write_run(root, experiment, run_id, seed, accuracies, head="coop", algorithm="fedavg", sweep=None,
              finished=True, partition=None, bytes_per_round=100, metric="accuracy", model="fedvlm-tiny"):
    """A run folder as fedvlm run writes it; ``accuracies`` is the global ``metric`` per round."""
    folder = root / experiment / run_id
    folder.mkdir(parents=True)
    sweep = sweep or {}
    config = {"name": experiment, "seed": seed, "model": {"name": model, "pretrained": None},
              "data": {"dataset": "toy", "root": "/data"},
              "partition": {"name": "dirichlet", "num_clients": 2, "alpha": 0.5}, "head": {"name": head},
              "algorithm": {"name": algorithm}, "federation": {"rounds": len(accuracies)}, "sweep_values": sweep}
    for key, value in sweep.items():
        section, name = key.split(".")
        config[section][name] = value
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    lines = []
    for round_index, accuracy in enumerate(accuracies, start=1):
        lines.append({"round": round_index, "uploaded_bytes": bytes_per_round * round_index,
                      "downloaded_bytes": bytes_per_round * round_index, f"global/{metric}": accuracy,
                      f"personalized/mean_{metric}": accuracy / 2, f"clients/{metric}": [accuracy / 2, accuracy / 2]})
        if metric == "mAP":
            lines[-1].update({"global/CF1": accuracy / 4, "personalized/mean_CF1": accuracy / 8})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    if finished:
        summary = {"experiment": experiment, "run_id": run_id, "seed": seed, "method": head, "algorithm": algorithm,
                   "dataset": "toy", "num_clients": 2, "rounds": len(accuracies), "primary_metric": metric,
                   **lines[-1], "parameters": {"shared_per_client": 8, "trainable_per_client": 8}}
        (folder / "summary.json").write_text(json.dumps(summary))
    if partition is not None:
        pd.DataFrame(partition, columns=["a", "b", "c"]).to_csv(folder / "partition.csv", index=False)
    return folder


def cell(table, metric, method, setting):
    row = table[(table["metric"] == metric) & (table["method"] == method) & (table["setting"] == setting)]
    assert len(row) == 1, row
    return row.iloc[0]


def test_cells_are_last_round_mean_and_sample_std_over_seeds(tmp_path):
    # The best round (0.9) comes before the last one: the table must use the last round.
    write_run(tmp_path, "exp", "20260101-000001-s1", 1, [0.9, 0.50], sweep={"partition.num_clients": 2})
    write_run(tmp_path, "exp", "20260101-000002-s2", 2, [0.2, 0.60], sweep={"partition.num_clients": 2})
    write_run(tmp_path, "exp", "20260101-000003-s3", 3, [0.3, 0.70], sweep={"partition.num_clients": 2})
    write_run(tmp_path, "exp", "20260101-000004-s1", 1, [0.1, 0.25], sweep={"partition.num_clients": 10})
    table = comparison_table(runs_frame(load_runs(tmp_path)))

    two = cell(table, "global/accuracy", "coop/fedavg", "num_clients=2")
    assert two["mean"] == pytest.approx(60.0)
    assert two["std"] == pytest.approx(np.std([50, 60, 70], ddof=1))  # 10.0
    assert (two["n_seeds"], two["seeds"], two["scale"]) == (3, "1 2 3", 100.0)
    assert cell(table, "personalized/mean_accuracy", "coop/fedavg", "num_clients=2")["mean"] == pytest.approx(30.0)
    ten = cell(table, "global/accuracy", "coop/fedavg", "num_clients=10")
    assert ten["mean"] == pytest.approx(25.0) and math.isnan(ten["std"]) and ten["n_seeds"] == 1

    wide = wide_table(table, "global/accuracy")
    assert list(wide.columns) == ["num_clients=2", "num_clients=10"]  # numeric order, not text order
    assert wide.loc["coop/fedavg", "num_clients=2"] == "60.00 ± 10.00"
    assert wide.loc["coop/fedavg", "num_clients=10"] == "25.00"  # one seed: the mean alone


def test_methods_are_rows_and_swept_settings_are_columns(tmp_path):
    for seed in (1, 2):
        for head, base in (("coop", 0.6), ("zeroshot", 0.3)):
            for alpha in (0.1, 1.0):
                sweep = {"head.name": head, "partition.alpha": alpha}
                write_run(tmp_path, "grid", f"2026010{seed}-{head}-{alpha}-s{seed}", seed,
                          [base + alpha / 10 + seed / 100], head=head, sweep=sweep)
    frame = runs_frame(load_runs(tmp_path))
    table = comparison_table(frame)
    assert set(table["method"]) == {"coop/fedavg", "zeroshot/fedavg"}
    assert set(table["setting"]) == {"alpha=0.1", "alpha=1"}
    assert list(table.columns[:4]) == ["metric", "method", "setting", "partition.alpha"]
    expected = np.mean([0.3 + 0.1 + 0.01, 0.3 + 0.1 + 0.02]) * 100
    assert cell(table, "global/accuracy", "zeroshot/fedavg", "alpha=1")["mean"] == pytest.approx(expected)
    markdown = markdown_tables(table, "grid", ["coop/fedavg", "zeroshot/fedavg"], ["alpha=0.1", "alpha=1"])
    assert "| method \\ alpha | 0.1 | 1 |" in markdown
    assert "| coop/fedavg | **62.50 ± 0.71** | **71.50 ± 0.71** |" in markdown  # best mean per column in bold
    assert "mean ± std over 2 seeds (1, 2)" in markdown


def test_newest_repeat_counts_and_unfinished_runs_are_left_out(tmp_path):
    write_run(tmp_path, "exp", "20260101-000001-s1", 1, [0.10])
    write_run(tmp_path, "exp", "20260102-000001-s1", 1, [0.40])  # the same setting and seed, run again later
    write_run(tmp_path, "exp", "20260103-000001-s2", 2, [0.99], finished=False)  # killed: no summary.json
    runs = load_runs(tmp_path)
    assert [r.finished for r in runs] == [True, True, False]
    table = comparison_table(runs_frame(runs))
    only = cell(table, "global/accuracy", "coop/fedavg", "final")
    assert only["mean"] == pytest.approx(40.0) and only["n_seeds"] == 1
    report = build_report([tmp_path], tmp_path / "report", plots_too=False)
    index = report.index.read_text()
    assert "1 unfinished runs" in index and "1 older runs repeat" in index
    assert "| coop/fedavg | 40.00 | 20.00 |" in (tmp_path / "report" / "exp" / "table.md").read_text()


def test_ablation_over_a_head_key_is_one_row_per_value(tmp_path):
    for i, modules in enumerate([["prompts"], ["prompts", "adapters"]]):
        write_run(tmp_path, "ablation", f"2026010{i}-s1", 1, [0.5 + i / 10], head="fedmpt",
                  sweep={"head.modules": modules})
    table = comparison_table(runs_frame(load_runs(tmp_path)))
    assert set(table["method"]) == {"fedmpt/fedavg modules=prompts", "fedmpt/fedavg modules=prompts+adapters"}
    assert set(table["setting"]) == {"final"}
    both = cell(table, "global/accuracy", "fedmpt/fedavg modules=prompts+adapters", "final")
    assert both["mean"] == pytest.approx(60)


def test_experiments_without_a_sweep_use_the_keys_that_differ(tmp_path):
    write_run(tmp_path, "byhand", "20260101-s1", 1, [0.5])
    folder = write_run(tmp_path, "byhand", "20260102-s1", 1, [0.7])
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config["partition"]["num_clients"] = 40  # fedvlm run ... partition.num_clients=40
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    table = comparison_table(runs_frame(load_runs(tmp_path)))
    assert cell(table, "global/accuracy", "coop/fedavg", "num_clients=40")["mean"] == pytest.approx(70)
    assert cell(table, "global/accuracy", "coop/fedavg", "num_clients=2")["mean"] == pytest.approx(50)


def test_experiments_on_one_dataset_with_the_same_sweep_share_a_table(tmp_path):
    write_run(tmp_path, "fedavg_x", "20260101-s1", 1, [0.5], sweep={"partition.num_clients": 2})
    write_run(tmp_path, "zeroshot_x", "20260102-s1", 1, [0.2], head="zeroshot", sweep={"partition.num_clients": 2})
    report = build_report([tmp_path], tmp_path / "out", plots_too=False)
    names = [c.name for c in report.comparisons]
    assert names == ["fedavg_x", "zeroshot_x", "toy-by-num_clients"]
    shared = (tmp_path / "out" / "toy-by-num_clients" / "table.md").read_text()
    assert "| coop/fedavg | **50.00** |" in shared and "| zeroshot/fedavg | 20.00 |" in shared
    assert not list((tmp_path / "out").rglob("*.png"))


def test_method_files_that_each_sweep_the_dataset_make_a_methods_by_datasets_table(tmp_path):
    for head in ("coop", "fedotp"):
        for dataset, value in (("eurosat", 0.8), ("dtd", 0.4)):
            write_run(tmp_path, f"table1_{head}", f"20260101-{head}-{dataset}", 1, [value + (head == "fedotp") / 10],
                      head=head, sweep={"data.dataset": dataset})
    write_run(tmp_path, "other_backbone", "20260102-x", 1, [0.1], sweep={"data.dataset": "dtd"}, model="ViT-B-16")
    found = {c.name: c for c in comparisons(load_runs(tmp_path))}
    assert set(found) == {"table1_coop", "table1_fedotp", "other_backbone", "2-datasets-by-dataset"}
    wide = wide_table(found["2-datasets-by-dataset"].table(), "global/accuracy")
    assert wide.to_dict("index") == {"coop/fedavg": {"dataset=dtd": "40.00", "dataset=eurosat": "80.00"},
                                     "fedotp/fedavg": {"dataset=dtd": "50.00", "dataset=eurosat": "90.00"}}


def test_multilabel_primary_metric_comes_first(tmp_path):
    write_run(tmp_path, "voc", "20260101-s1", 1, [0.4, 0.8], metric="mAP")
    frame = runs_frame(load_runs(tmp_path))
    assert table_metrics(frame) == ["global/mAP", "personalized/mean_mAP", "global/CF1", "personalized/mean_CF1"]
    assert client_frame(load_runs(tmp_path))["metric"].tolist() == ["mAP", "mAP"]


def test_partition_statistics_by_hand():
    iid = partition_summary(np.array([[2, 2, 2], [2, 2, 2]]))
    assert iid["label_skew"] == pytest.approx(0) and iid["entropy"] == pytest.approx(1)
    assert iid["classes_per_client"] == 3 and iid["size_cv"] == 0
    disjoint = partition_summary(np.array([[4, 0, 0], [0, 4, 4]]))
    # pooled mix (1/3, 1/3, 1/3): client 0 (1, 0, 0) is 2/3 away, client 1 (0, .5, .5) is 1/3 away
    assert disjoint["label_skew"] == pytest.approx(0.5)
    assert disjoint["classes_per_client"] == 1.5
    assert disjoint["size_cv"] == pytest.approx(np.std([4, 8]) / 6)
