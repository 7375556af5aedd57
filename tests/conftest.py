"""Shared fixtures. ``import fedvlm`` comes first: it makes torchvision importable beside a
CPU-only torch before anything (torchmetrics, open_clip) imports it."""

import fedvlm  # noqa: F401  (installs the torchvision compat hook)

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# Every test run is offline and writes nothing outside its temporary folders.
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: on the shared 2-core machine, intra-op threads only wait for each other (a
    head test runs 20x slower with two threads under load). A module opts in with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.getbasetemp() / "fedvlm-cache"
    monkeypatch.setenv("FEDVLM_CACHE", str(cache))
    monkeypatch.setenv("MPLCONFIGDIR", str(cache / "matplotlib"))


COLOURS = {"red_field": (200, 40, 40), "green_forest": (30, 160, 40), "blue_lake": (40, 60, 200),
           "grey_city": (128, 128, 128)}


def write_colour_folder(root: Path, per_class: int = 12, size: int = 64, classes: int = 3, seed: int = 0) -> Path:
    """An ImageFolder of noisy single-colour images (classes separable by colour)."""
    rng = np.random.default_rng(seed)
    for name, colour in list(COLOURS.items())[:classes]:
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(np.array(colour)[None, None] + rng.normal(0, 40, (size, size, 3)), 0, 255)
            Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{i:03d}.png")
    return root


@pytest.fixture(scope="session")
def colour_data_root(tmp_path_factory) -> Path:
    """A data root holding ``synthetic_scenes`` as a small colour ImageFolder (3 x 12 images)."""
    root = tmp_path_factory.mktemp("data")
    write_colour_folder(root / "synthetic_scenes")
    return root


@pytest.fixture(scope="session")
def tiny_backbone():
    from fedvlm.backbone.clip import FrozenCLIP

    return FrozenCLIP.load("fedvlm-tiny", None)


def assert_bitwise_equal(a, b, where: str = "") -> None:
    """``a`` and ``b`` (nested dicts, lists and tuples of tensors and plain values) are the same,
    tensors bit for bit (``torch.equal``); ``where`` names the first place they differ."""
    import torch

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
    import json
    import subprocess
    import sys

    (folder / "runs.json").write_text(json.dumps(runs))
    script = Path(__file__).with_name("recorded_launch.py")
    done = subprocess.run([sys.executable, str(script), str(folder / "runs.json"), str(devices),
                           str(folder / "received")], capture_output=True, text=True, timeout=1500,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    return folder
