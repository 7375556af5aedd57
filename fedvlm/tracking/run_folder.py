"""The run folder every run writes, whatever else is configured::

    results/<experiment>/<run-id>/
        config.yaml          the full validated config
        metrics.jsonl        one JSON line per round
        summary.json         final metrics, communication, parameter counts, wall time
        partition.csv/.png   client x class image counts (train split)
        checkpoints/last.pt  everything needed to resume
        client_state/        each client's kept state, one file per client and round it trained in
                             (runtime.client_state: disk; fedvlm/tracking/client_store.py)
        .lock                held (flock) by the one process that writes the folder
        wandb/               the W&B run (offline by default)

The folder's state is a small transaction (docs/RELIABILITY.md, section 4). The checkpoint is the
commit point: it holds the metrics lines of every round it covers, so ``metrics.jsonl`` and
``summary.json`` are views of it that a resumed run rewrites from it; every file is written to a
temporary file, fsynced and renamed, so a kill at any instant leaves whole files; and
``summary.json`` is only written after the final checkpoint, so a folder with a summary is a
finished run.

Checkpoints are read with ``torch.load(weights_only=True)`` (tensors, numbers, strings, lists and
mappings; nothing on disk can run code) and their schema is checked: anything else is one
:class:`~fedvlm.errors.ConfigError` line.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import secrets
import shutil
import time
import warnings
from pathlib import Path

import torch
import yaml

from fedvlm.errors import ConfigError

CHECKPOINT_FORMAT = 4  # 2: weights_only-safe, with the metrics history and the data/backbone identity;
# 3: + the algorithm's server state and per-client state (fedvlm.algorithms); 4: + client_state, the
# round of each client's current file in <run>/client_state/ (runtime.client_state: disk; empty in
# memory mode). Format 3 still reads: it is format 4 with every client's state in the checkpoint.
READABLE_FORMATS = (3, 4)


def new_run_id(seed: int) -> str:
    """Timestamp, seed and a random tag: runs started in the same second by one process (a sweep) stay apart.

    The tag comes from the OS entropy pool, never from the seeded generators, so it changes no result.
    """
    return time.strftime("%Y%m%d-%H%M%S") + f"-s{seed}-{secrets.token_hex(3)}"


def json_safe(value):
    """``value`` as plain JSON types: non-finite floats become null, arrays and tuples lists."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy arrays and scalars
        value = value.tolist()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


def metrics_line(metrics: dict) -> str:
    return json.dumps(json_safe(metrics)) + "\n"


def write_atomically(path: Path, data: bytes | None = None, save=None) -> None:
    """Write ``data`` (or call ``save(stream)``) into a temporary file beside ``path``, fsync it and
    rename it over ``path``: a reader, or a resumed run after a kill, sees the old file or the
    new one, never a part. The folder is fsynced too, so the rename survives a power cut."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("wb") as stream:
        if save is not None:
            save(stream)
        else:
            stream.write(data)
        stream.flush()
        os.fsync(stream.fileno())
    os.replace(temporary, path)
    folder = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(folder)
    finally:
        os.close(folder)


class RunFolder:
    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock: int | None = None

    @property
    def run_id(self) -> str:
        return self.path.name

    @property
    def checkpoint_path(self) -> Path:
        return self.path / "checkpoints" / "last.pt"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def summary_path(self) -> Path:
        return self.path / "summary.json"

    @classmethod
    def create(cls, results_dir: str | Path, experiment: str, run_id: str) -> "RunFolder":
        """A new folder ``results_dir/experiment/run_id``, locked. ``experiment`` is a validated
        run name (:data:`fedvlm.config.RunName`): one path component, so the folder stays below
        ``results_dir``."""
        folder = cls(Path(results_dir) / experiment / run_id)
        if Path(experiment).name != experiment or experiment in ("", ".", ".."):
            raise ConfigError(f"name: {experiment!r} is not a folder name; expected one path component")
        try:
            folder.path.mkdir(parents=True, exist_ok=False)  # never write into another run's folder
            (folder.path / "checkpoints").mkdir()
        except OSError as error:
            raise ConfigError(f"logging.results_dir: cannot create {folder.path} ({error.strerror or error}); "
                              "expected a writable folder") from None
        return folder.lock()

    @classmethod
    def for_resume(cls, results_dir: str | Path, experiment: str, resume: bool | str) -> "RunFolder":
        """The run to continue: the given folder, else the newest unfinished run of the
        experiment, else (every run finished) the newest finished one, which resumes to a no-op."""
        if isinstance(resume, str):
            folder = cls(Path(resume))
            if not folder.checkpoint_path.is_file():
                raise ConfigError(f"resume: {folder.path} has no checkpoint ({folder.checkpoint_path}); expected a "
                                  "run folder written by fedvlm run")
            return folder
        runs = sorted((p for p in (Path(results_dir) / experiment).glob("*")
                       if (p / "checkpoints" / "last.pt").is_file()), key=lambda p: p.stat().st_mtime)
        unfinished = [p for p in runs if not (p / "summary.json").exists()]
        if not runs:
            raise ConfigError(f"resume: no unfinished run of {experiment} with a checkpoint under "
                              f"{Path(results_dir) / experiment}; expected a run killed before its last round")
        return cls((unfinished or runs)[-1])

    # ---------------------------------------------------------------------------- the lock

    def lock(self) -> "RunFolder":
        """Hold an exclusive lock on the folder until :meth:`unlock` or the process ends (a kill
        included: the kernel drops it). A second process that wants to write it fails in one line."""
        if self._lock is not None:
            return self
        descriptor = os.open(self.path / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise ConfigError(f"resume: {self.path} is being written by another process (it holds "
                              f"{self.path / '.lock'}); wait for it to end, or resume another run") from None
        self._lock = descriptor
        return self

    def unlock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)  # closing the descriptor releases the flock
            self._lock = None

    # ---------------------------------------------------------------------------- files

    def write_config(self, config: dict) -> None:
        write_atomically(self.path / "config.yaml", yaml.safe_dump(config, sort_keys=False).encode())

    def read_config(self) -> dict:
        return yaml.safe_load((self.path / "config.yaml").read_text())

    def write_metrics(self, history: list[dict]) -> None:
        """``metrics.jsonl`` as exactly these lines (rewritten whole: never a line cut short)."""
        write_atomically(self.metrics_path, "".join(metrics_line(m) for m in history).encode())

    def read_metrics(self) -> list[dict]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(line) for line in self.metrics_path.read_text().splitlines() if line.strip()]

    def write_summary(self, summary: dict) -> None:
        write_atomically(self.summary_path, (json.dumps(json_safe(summary), indent=2) + "\n").encode())

    def read_summary(self) -> dict:
        return json.loads(self.summary_path.read_text())

    def save_checkpoint(self, state: dict) -> None:
        self.checkpoint_path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(self.checkpoint_path, save=lambda stream: torch.save(state, stream))

    def load_checkpoint(self) -> dict:
        return read_checkpoint(self.checkpoint_path)

    def holds_a_record(self) -> bool:
        """Whether anything here is worth keeping: a checkpoint or a metrics line, in this folder
        or in a stage's folder below it (fedvlm patch)."""
        return any(p.is_file() and p.stat().st_size > 0
                   for pattern in ("last.pt", "metrics.jsonl") for p in self.path.rglob(pattern))

    def discard_if_empty(self) -> bool:
        """Remove the folder when a run failed before it recorded anything (bad input found after
        the folder was made): no half-made run folder is left behind. A folder holding a
        checkpoint or a metrics line is never removed."""
        self.unlock()
        if not self.path.is_dir() or self.holds_a_record():
            return False
        shutil.rmtree(self.path, ignore_errors=True)
        try:  # results/<experiment>/, when this was its only run; another run may be making its folder
            self.path.parent.rmdir()
        except OSError:
            pass
        return True


# ------------------------------------------------------------------------------ checkpoints


def read_checkpoint(path: Path) -> dict:
    """A checkpoint written by fedvlm run, loaded without unpickling code and checked against its
    schema; a planted, truncated, random or foreign file is one ConfigError line."""
    path = Path(path)
    expected = f"expected checkpoints/last.pt written by fedvlm run (format {CHECKPOINT_FORMAT})"
    try:
        with warnings.catch_warnings():  # torch warns about foreign pickle streams: the one line below says it
            warnings.simplefilter("ignore")
            state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise ConfigError(f"checkpoint {path}: does not exist; {expected}") from None
    except Exception as error:  # UnpicklingError, RuntimeError (zip), EOFError, ...: all mean "not ours"
        reason = str(error).strip().splitlines()[0][:120] if str(error).strip() else type(error).__name__
        raise ConfigError(f"checkpoint {path}: cannot be read safely ({type(error).__name__}: {reason}); "
                          f"{expected}") from None
    problem = checkpoint_problem(state)
    if problem:
        raise ConfigError(f"checkpoint {path}: {problem}; {expected}")
    return state


_SCHEMA = {"format": int, "config": dict, "identity": dict, "next_round": int, "global_shared": dict,
           "personal": dict, "optimizer": dict, "uploads": dict, "communication": dict, "history": list,
           "algorithm_server": dict, "algorithm_clients": dict, "client_state": dict}


def checkpoint_problem(state) -> str | None:
    """What is wrong with a loaded checkpoint, or None: keys, their types, tensors where tensors go."""
    if not isinstance(state, dict):
        return f"holds a {type(state).__name__}, not a mapping"
    if state.get("format") not in READABLE_FORMATS:
        return f"has format {state.get('format')!r} (an older fedvlm or another program wrote it)"
    if state["format"] == 3:
        state["format"], state["client_state"] = CHECKPOINT_FORMAT, {}
    missing = [key for key in _SCHEMA if key not in state]
    if missing:
        return f"lacks {', '.join(missing)}"
    for key, kind in _SCHEMA.items():
        if not isinstance(state[key], kind) or (kind is int and isinstance(state[key], bool)):
            return f"{key} is a {type(state[key]).__name__}, not a {kind.__name__}"
    if state["next_round"] < 0 or len(state["history"]) > state["next_round"] + 1:
        return f"next_round {state['next_round']} does not fit its {len(state['history'])} metrics lines"

    def tensors(mapping, where: str) -> str | None:
        if not isinstance(mapping, dict):
            return f"{where} is a {type(mapping).__name__}, not a mapping"
        for name, value in mapping.items():
            if not isinstance(name, str) or not isinstance(value, torch.Tensor):
                return f"{where}[{name!r}] is a {type(value).__name__}, not a tensor"
        return None

    problems = [tensors(state["global_shared"], "global_shared"), tensors(state["algorithm_server"], "algorithm_server")]
    for section in ("personal", "optimizer", "uploads", "algorithm_clients"):
        for client, entry in state[section].items():
            if not isinstance(client, int):
                return f"{section} has the key {client!r}, not a client number"
            problems.append(tensors(entry, f"{section}[{client}]"))
    if not all(isinstance(k, int) and not isinstance(k, bool) and isinstance(v, int) and not isinstance(v, bool)
               and 0 <= v <= state["next_round"] for k, v in state["client_state"].items()):
        return "client_state is not a mapping of client numbers to rounds of the checkpoint"
    if not all(isinstance(k, str) and isinstance(v, int) for k, v in state["communication"].items()):
        return "communication is not a mapping of names to byte counts"
    if not all(isinstance(line, dict) for line in state["history"]):
        return "history holds something other than metrics lines"
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in state["identity"].items()):
        return "identity is not a mapping of names to digests"
    return next((p for p in problems if p), None)
