"""`make bench` stays runnable: its quick batched-Sinkhorn run writes the report and the batched
plans equal POT's. (Speed figures are read from docs/BENCHMARKS.md, never asserted here.)"""

import json

from benchmarks.run import main


def test_quick_sinkhorn_benchmark_writes_its_report_and_matches_pot(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    assert main(["--quick", "--only", "batched_sinkhorn", "--out", str(out)]) == 0
    text = out.read_text()
    assert "python -m benchmarks.run --quick --only batched_sinkhorn --device cpu" in text and "## batched_sinkhorn" in text
    rows = json.loads(out.with_suffix(".json").read_text())["batched_sinkhorn"]
    assert rows and all(row["max_plan_difference"] < 1e-6 for row in rows)
    assert all(row["batched_s"] > 0 and row["pot_loop_s"] > 0 for row in rows)


def test_only_replaces_its_own_sections_and_the_flops_rows_are_within_the_peak(tmp_path):
    out = tmp_path / "BENCHMARKS.md"
    assert main(["--quick", "--only", "batched_sinkhorn", "--out", str(out)]) == 0
    assert main(["--quick", "--only", "flops", "--out", str(out)]) == 0
    text = out.read_text()
    assert "## batched_sinkhorn" in text and "## flops" in text  # the earlier section is kept
    assert "Re-measured" in text and "--only flops" in text
    rows = json.loads(out.with_suffix(".json").read_text())
    assert rows["batched_sinkhorn"] and rows["flops"]
    # a step cannot beat the machine's own large-product rate by much (the peak is one timing)
    assert all(0 < row["efficiency"] < 1.5 and row["step_GFLOP"] > 0 for row in rows["flops"])
