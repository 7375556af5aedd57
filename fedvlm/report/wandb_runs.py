"""W&B beside the run folders: upload offline runs (``fedvlm sync``) and read runs back from a
W&B project for the report (``fedvlm report --wandb ENTITY/PROJECT``). Both need the network
and a W&B login (``wandb login`` or ``WANDB_API_KEY``); without them each fails in one line.

The run folders stay the complete record: a run read from W&B has its per-round scalars and
final summary, but neither per-client values nor partition counts (those are W&B tables).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlparse

from fedvlm.errors import UserError
from fedvlm.report.runs import Run

DEFAULT_BASE_URL = "https://api.wandb.ai"


def base_url() -> str:
    return os.environ.get("WANDB_BASE_URL") or DEFAULT_BASE_URL


def check_reachable(what: str, timeout: float = 5.0) -> None:
    """One TCP connection to the W&B server, so that a machine without network fails at once in
    one line instead of in retries."""
    url = urlparse(base_url())
    host, port = url.hostname or "", url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as error:
        reason = getattr(error, "strerror", None) or type(error).__name__
        raise UserError(f"{what}: cannot reach the W&B server {base_url()} ({reason}); "
                        "run it again on a machine with network access") from None


# ---------------------------------------------------------------------------------- sync


def offline_runs(results_dirs, include_synced: bool = False) -> list[Path]:
    """``wandb/offline-run-*`` folders under the results directories (or given directly),
    oldest first; runs already uploaded (W&B leaves a ``*.wandb.synced`` marker) are skipped
    unless ``include_synced``."""
    found: set[Path] = set()
    for directory in map(Path, results_dirs):
        if not directory.exists():
            raise UserError(f"sync: {directory} does not exist; expected a results directory or a run folder")
        if directory.name.startswith("offline-run-"):
            found.add(directory)
        else:
            found.update(p for p in directory.rglob("offline-run-*") if p.is_dir() and p.parent.name == "wandb")
    runs = sorted(found, key=lambda p: p.name)
    if not include_synced:
        runs = [p for p in runs if not any(p.glob("*.wandb.synced"))]
    return runs


def sync_offline_runs(results_dirs, project: str | None = None, entity: str | None = None,
                      include_synced: bool = False, dry_run: bool = False) -> list[Path]:
    """Upload every offline W&B run under ``results_dirs`` with ``wandb sync`` (same groups,
    tags and names as logged). ``dry_run`` only lists them. Returns the runs (to be) uploaded."""
    runs = offline_runs(results_dirs, include_synced)
    if dry_run or not runs:
        return runs
    check_reachable("sync")
    command = [sys.executable, "-m", "wandb", "sync"]
    if project:
        command += ["--project", project]
    if entity:
        command += ["--entity", entity]
    if include_synced:
        command.append("--include-synced")
    result = subprocess.run([*command, *map(str, runs)], stdin=subprocess.DEVNULL, capture_output=True, text=True)
    if result.returncode != 0:
        lines = [line.strip() for line in (result.stderr + result.stdout).splitlines() if line.strip()]
        raise UserError(f"sync: wandb sync failed ({lines[-1] if lines else f'exit status {result.returncode}'}); "
                        "log in with `wandb login` or set WANDB_API_KEY")
    return runs


# ---------------------------------------------------------------------------------- read back


def load_wandb_runs(paths: list[str], finished_only: bool = True) -> list[Run]:
    """Runs of the W&B projects ``paths`` (``entity/project``) as :class:`Run` objects: config,
    per-round history (rows with a ``round``) and the final summary the run logged."""
    check_reachable("report --wandb")
    import wandb

    api = wandb.Api(timeout=60)
    runs = []
    for path in paths:
        if path.count("/") != 1:
            raise UserError(f"report --wandb: {path!r}: expected ENTITY/PROJECT")
        try:
            remote_runs = list(api.runs(path))
        except Exception as error:  # the W&B client raises many types; the message is what helps
            raise UserError(f"report --wandb: cannot list runs of {path}: {str(error).splitlines()[0]}") from None
        for remote in remote_runs:
            if finished_only and remote.state != "finished":
                continue
            summary = {k: v for k, v in dict(remote.summary).items() if not k.startswith("_")
                       and isinstance(v, (int, float, str))}
            history = [{k: v for k, v in row.items() if not k.startswith("_")}
                       for row in remote.scan_history() if row.get("round") is not None]
            config = dict(remote.config)
            config.setdefault("name", remote.group or summary.get("experiment"))
            summary.setdefault("run_id", remote.name)
            runs.append(Run(None, config, history, summary if remote.state == "finished" else {}, None, source="wandb"))
    return runs
