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

