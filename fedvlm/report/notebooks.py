"""Run the analysis notebooks (``notebooks/*.ipynb``) top to bottom on a results directory.

The notebooks read ``FEDVLM_RESULTS`` (the results directory), ``FEDVLM_EXPERIMENT`` (which
comparison to plot; default: the one with most runs) and ``FEDVLM_NOTEBOOK_OUT`` (where their
PNG files go) in their first cell. They are executed with nbclient in a kernel that is *this*
interpreter (a kernelspec written to a temporary folder), so a fresh clone's ``.venv`` runs
them without any kernel registered in Jupyter::

    python -m fedvlm.report.notebooks results/ --out results/report/notebooks
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

from fedvlm.errors import UserError

NOTEBOOKS_DIR = Path(__file__).resolve().parents[2] / "notebooks"
KERNEL_NAME = "fedvlm-python"


def _kernel_manager(kernel_dir: Path):
    """A kernel manager whose only kernel runs ``sys.executable`` (the venv's python)."""
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import AsyncKernelManager

    spec_dir = kernel_dir / KERNEL_NAME
    spec_dir.mkdir(parents=True, exist_ok=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "fedvlm (this interpreter)", "language": "python"}))
    specs = KernelSpecManager(kernel_dirs=[str(kernel_dir)], ensure_native_kernel=False)
    # IPC sockets in the temporary folder: local only (ipykernel warns about unencrypted TCP).
    ipc = {"transport": "ipc", "ip": str(kernel_dir / "kernel")} if sys.platform.startswith("linux") else {}
    return AsyncKernelManager(kernel_name=KERNEL_NAME, kernel_spec_manager=specs, **ipc)


def execute_notebook(path: str | Path, results_dir: str | Path, out_dir: str | Path | None = None,
                     experiment: str | None = None, executed_path: str | Path | None = None, timeout: int = 600):
    """Execute ``path`` on ``results_dir``; returns the executed notebook (nbformat node), also
    written to ``executed_path`` when given. A failing cell raises nbclient's CellExecutionError."""
    import nbformat
    from jupyter_core.utils import run_sync
    from nbclient import NotebookClient

    path = Path(path)
    notebook = nbformat.read(path, as_version=4)
    env = {**os.environ, "FEDVLM_RESULTS": str(Path(results_dir).resolve())}
    if out_dir is not None:
        env["FEDVLM_NOTEBOOK_OUT"] = str(Path(out_dir).resolve())
    if experiment is not None:
        env["FEDVLM_EXPERIMENT"] = experiment
    with tempfile.TemporaryDirectory(prefix="fedvlm-kernel-") as kernel_dir:
        manager = _kernel_manager(Path(kernel_dir))
        client = NotebookClient(notebook, km=manager, timeout=timeout,
                                resources={"metadata": {"path": str(path.parent)}})
        try:
            client.execute(env=env)
        finally:  # nbclient leaves a kernel it did not create running
            if manager.has_kernel:
                run_sync(manager.shutdown_kernel)(now=True)
    if executed_path is not None:
        Path(executed_path).parent.mkdir(parents=True, exist_ok=True)
        nbformat.write(notebook, executed_path)
    return notebook


# notebooks that show how to use fedvlm rather than analyse a results directory (their own tests run them)
USAGE_NOTEBOOKS = ("04_lightning",)


def notebook_paths() -> list[Path]:
    """The analysis notebooks."""
    return sorted(p for p in NOTEBOOKS_DIR.glob("[0-9][0-9]_*.ipynb") if p.stem not in USAGE_NOTEBOOKS)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedvlm.report.notebooks",
                                     description="Execute the analysis notebooks on a results directory.")
    parser.add_argument("results", help="results directory, e.g. results/")
    parser.add_argument("--out", default=None, help="folder for executed notebooks and their plots "
                                                     "(default: <results>/report/notebooks)")
    parser.add_argument("--experiment", default=None, help="comparison to plot (default: the one with most runs)")
    args = parser.parse_args(argv)
    out = Path(args.out) if args.out else Path(args.results) / "report" / "notebooks"
    try:
        if not Path(args.results).is_dir():
            raise UserError(f"notebooks: results directory {args.results} does not exist")
        for notebook in notebook_paths():
            execute_notebook(notebook, args.results, out / notebook.stem, args.experiment, out / notebook.name)
            print(f"executed {out / notebook.name}", flush=True)
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
