"""Helpers for the tests that compare whole runs: bit-for-bit equality of nested checkpoint
state, and a launch of real gloo processes that records what each rank receives. (Not in
conftest.py: several conftest modules share that name, and which one ``from conftest import``
finds depends on the collection order.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch


def assert_bitwise_equal(a, b, where: str = "") -> None:
    """``a`` and ``b`` (nested dicts, lists and tuples of tensors and plain values) are the same,
    tensors bit for bit (``torch.equal``); ``where`` names the first place they differ."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for key in a:
            assert_bitwise_equal(a[key], b[key], f"{where}[{key}]")
    elif isinstance(a, (tuple, list)):
        assert len(a) == len(b), where
        for index, (x, y) in enumerate(zip(a, b)):
            assert_bitwise_equal(x, y, f"{where}[{index}]")
    else:
        assert torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b, where


def launch_recorded(runs: list[dict], folder: Path, devices: int) -> Path:
    """Run the experiment configs ``runs`` (raw dicts) in one launch of ``devices`` real gloo
    processes through tests/recorded_launch.py, which records what every rank receives (and every
    client-store access) under ``folder / "received"``; returns ``folder``."""
    (folder / "runs.json").write_text(json.dumps(runs))
    script = Path(__file__).with_name("recorded_launch.py")
    done = subprocess.run([sys.executable, str(script), str(folder / "runs.json"), str(devices),
                           str(folder / "received")], capture_output=True, text=True, timeout=1500,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return folder
