"""The analysis notebooks run top to bottom (nbclient, a kernel on this interpreter) on the
session's small results set, show their tables and plots, and are stored without outputs."""

import json

import nbformat
import numpy as np
from nbclient.exceptions import CellExecutionError
import pytest
import yaml

from fedvlm.report.notebooks import execute_notebook, notebook_paths

NAMES = ["01_compare_methods", "02_heterogeneity", "03_communication"]
PLOTS = {
    "01_compare_methods": ["rounds_global_accuracy.png", "rounds_personalized_mean_accuracy.png",
                           "sweep_global_accuracy.png", "clients.png"],
    "02_heterogeneity": ["partitions.png", "skew_personalized_mean_accuracy.png"],
    "03_communication": ["communication.png", "communication_rounds_global_accuracy.png"],
}


def test_notebooks_are_stored_without_outputs():
    assert [p.stem for p in notebook_paths()] == NAMES
    for path in notebook_paths():
        notebook = nbformat.read(path, as_version=4)
        nbformat.validate(notebook)
        code = [c for c in notebook.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), path.name
        assert "parameters" in code[0].metadata.get("tags", []) and "FEDVLM_RESULTS" in code[0].source
        assert "import fedvlm.report" in "".join(c.source for c in code)  # calls the library, no copied logic


def _outputs(notebook, kind):
    return [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs
            if kind in getattr(o, "data", {})]


@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_top_to_bottom(name, report_results, tmp_path):
    path = next(p for p in notebook_paths() if p.stem == name)
    notebook = execute_notebook(path, report_results, tmp_path / "out", executed_path=tmp_path / f"{name}.ipynb")
    errors = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors
    assert all(c.execution_count for c in notebook.cells if c.cell_type == "code")
    assert len(_outputs(notebook, "image/png")) >= len(PLOTS[name])
    for plot in PLOTS[name]:
        assert (tmp_path / "out" / plot).stat().st_size > 5000, plot
    assert (tmp_path / f"{name}.ipynb").exists()
    text = "\n".join(o.data.get("text/plain", "") + o.data.get("text/markdown", "")
                     for o in _outputs(notebook, "text/plain"))
    if name == "01_compare_methods":
        # the sweep table's coop cell at 2 clients, computed here from the metrics files
        values = []
        for folder in (report_results / "sweep").iterdir():
            config = yaml.safe_load((folder / "config.yaml").read_text())
            if config["head"]["name"] == "coop" and config["partition"]["num_clients"] == 2:
                last = json.loads((folder / "metrics.jsonl").read_text().splitlines()[-1])
                values.append(100 * last["global/accuracy"])
        assert f"| coop/fedavg | {np.mean(values):.2f} ± {np.std(values, ddof=1):.2f}" in text.replace("**", "")
    if name == "02_heterogeneity":
        assert "label_skew" in text and "classes_per_client" in text
    if name == "03_communication":
        assert "bytes_to_target" in text and "metric_per_MB" in text


def test_a_failing_cell_fails_the_run(tmp_path):
    cells = [nbformat.v4.new_code_cell("import os\nRESULTS = os.environ['FEDVLM_RESULTS']"),
             nbformat.v4.new_code_cell("raise ValueError('broken analysis')")]
    notebook = nbformat.v4.new_notebook(cells=cells)
    path = tmp_path / "broken.ipynb"
    nbformat.write(notebook, path)
    with pytest.raises(CellExecutionError, match="broken analysis"):
        execute_notebook(path, tmp_path)
