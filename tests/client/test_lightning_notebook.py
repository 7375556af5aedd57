"""notebooks/04_lightning.ipynb runs top to bottom in a kernel on this interpreter: a module from
the YAML fitted by lightning.Trainer, a federated run in the kernel, a batch scored."""

import nbformat

from fedvlm.report.notebooks import NOTEBOOKS_DIR, execute_notebook

PATH = NOTEBOOKS_DIR / "04_lightning.ipynb"


def test_lightning_notebook_is_stored_without_outputs():
    notebook = nbformat.read(PATH, as_version=4)
    nbformat.validate(notebook)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    source = "".join(c.source for c in code)
    assert "L.Trainer" in source and "HeadModule" in source and "run(config)" in source


def test_lightning_notebook_runs_top_to_bottom(colour_data_root, tmp_path, monkeypatch):
    monkeypatch.setenv("FEDVLM_DATA_ROOT", str(colour_data_root))
    notebook = execute_notebook(PATH, tmp_path / "results", timeout=300)
    outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
    assert "centralized (Trainer) test accuracy:" in text and "federated global accuracy:" in text
    assert "scores (8, 3)" in text  # 8 test images, the colour world's 3 classes
    assert len(list((tmp_path / "results").glob("synthetic_fedavg_pl/*/summary.json"))) == 1
