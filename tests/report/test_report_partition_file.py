"""A run folder whose partition.csv is not a count table (an older fedvlm wrote class names with
commas unquoted) is still read: a one-line warning, no partition statistics, no crash."""

import yaml

from fedvlm.report.runs import read_run


def _run_folder(tmp_path, partition_text):
    folder = tmp_path / "exp" / "run1"
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump({"name": "exp", "seed": 1}))
    (folder / "metrics.jsonl").write_text('{"round": 1, "global/accuracy": 0.5}\n')
    (folder / "partition.csv").write_text(partition_text)
    return folder


def test_counts_are_read(tmp_path):
    run = read_run(_run_folder(tmp_path, "forest,\"Beaches, dunes\"\n3,4\n0,7\n"))
    assert run.partition.to_numpy().tolist() == [[3, 4], [0, 7]]
    assert list(run.partition.columns) == ["forest", "Beaches, dunes"]


def test_unquoted_commas_warn_and_drop_the_partition(tmp_path, capsys):
    folder = _run_folder(tmp_path, "forest,Beaches, dunes\n3,4,\n0,7,\n")
    run = read_run(folder)
    assert run.partition is None and run.history[0]["round"] == 1
    warning = capsys.readouterr().err.strip()
    assert warning.count("\n") == 0 and str(folder / "partition.csv") in warning and "image counts" in warning
