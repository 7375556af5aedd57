"""How heterogeneous a partition is, from its ``partition.csv`` (client x class image counts).

For counts ``n[k, c]`` (client k, class c), client shares ``p_k = n[k] / sum_c n[k, c]`` and the
pooled class mix ``q = sum_k n[k] / sum n``:

- ``label_skew``: mean over clients of the total variation distance ``0.5 * |p_k - q|_1``
  (0 = every client sees the pooled mix, i.e. IID; near 1 = clients hold disjoint classes);
- ``classes_per_client``: mean number of classes a client holds at least one image of;
- ``size_cv``: std / mean of the client sizes (0 = equal sizes);
- ``entropy``: mean normalised entropy of ``p_k`` (1 = uniform over the classes).

For multi-label data the counts are images containing each class, so shares are label shares.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def partition_summary(counts: np.ndarray) -> dict[str, float]:
    """Statistics of one ``[K, C]`` count table (see the module docstring)."""
    counts = np.asarray(counts, dtype=float)
    sizes = counts.sum(1)
    held = sizes > 0
    pooled = counts.sum(0) / max(counts.sum(), 1)
    shares = counts[held] / sizes[held, None]
    classes = counts.shape[1]
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.where(shares > 0, shares * np.log(shares), 0).sum(1) / np.log(classes) if classes > 1 else \
            np.zeros(len(shares))
    return {
        "clients": int(counts.shape[0]), "classes": int(classes), "images": int(counts.sum()),
        "images_per_client": float(sizes.mean()), "min_images": int(sizes.min()), "max_images": int(sizes.max()),
        "size_cv": float(sizes.std() / sizes.mean()) if sizes.mean() > 0 else float("nan"),
        "classes_per_client": float((counts > 0).sum(1).mean()),
        "label_skew": float(0.5 * np.abs(shares - pooled).sum(1).mean()) if len(shares) else float("nan"),
        "entropy": float(entropy.mean()) if len(shares) else float("nan"),
    }


def partition_statistics(runs: list, frame: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per run with a partition.csv: identity columns (from ``frame`` when given) and
    the statistics of :func:`partition_summary`."""
    rows = []
    for run in runs:
        if run.partition is None or run.partition.empty:
            continue
        rows.append({"run_id": run.run_id, "experiment": run.experiment, "seed": run.seed,
                     **partition_summary(run.partition.to_numpy())})
    stats = pd.DataFrame(rows)
    if frame is not None and not stats.empty:
        stats = stats.merge(frame[["run_id", "method", "setting"]], on="run_id", how="left")
    return stats
