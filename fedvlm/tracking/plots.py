"""Plots saved as PNG files a person can open (matplotlib, no display needed)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


def _pyplot():
    os.environ.setdefault("MPLCONFIGDIR", str(Path.home() / ".cache" / "fedvlm" / "matplotlib"))
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def partition_heatmap(counts: np.ndarray, classnames: list[str], path: Path, title: str) -> Path:
    """Clients x classes image counts as a heatmap (numbers written in when the grid is small)."""
    plt = _pyplot()
    clients, classes = counts.shape
    figure, axes = plt.subplots(figsize=(max(6.0, min(2 + 0.35 * classes, 24)), max(3.5, min(1.5 + 0.3 * clients, 16))))
    image = axes.imshow(counts, aspect="auto", cmap="viridis", interpolation="nearest")
    axes.set_xlabel("class")
    axes.set_ylabel("client")
    axes.set_title(title, fontsize=9)
    if classes <= 50:
        axes.set_xticks(range(classes), [c[:18] for c in classnames], rotation=90, fontsize=7)
    if clients <= 50:
        axes.set_yticks(range(clients), [str(k) for k in range(clients)], fontsize=7)
    if clients * classes <= 400:
        for k in range(clients):
            for c in range(classes):
                axes.text(c, k, str(counts[k, c]), ha="center", va="center", fontsize=6,
                          color="white" if counts[k, c] < counts.max() / 2 else "black")
    figure.colorbar(image, ax=axes, label="images")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
