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
