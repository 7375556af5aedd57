"""What accuracy costs in communication: bytes moved against the metric they bought.

Bytes are the run's own counters (``uploaded_bytes``/``downloaded_bytes`` in metrics.jsonl: the
shared parameters each sampled client uploads and downloads, fp32), summed over rounds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fedvlm.report.tables import as_percent, latest_runs, method_order, setting_order


def cost_to_reach(history: pd.DataFrame, metric: str, fraction: float = 0.9) -> pd.DataFrame:
    """Per run: the first evaluated round whose ``metric`` reaches ``fraction`` of the run's
    final value, and the cumulative bytes moved by then."""
    rows = []
    for run_id, part in history[history[metric].notna()].groupby("run_id", sort=False):
        part = part.sort_values("round")
        final = part[metric].iloc[-1]
        reached = part[part[metric] >= fraction * final].iloc[0]
        rows.append({"run_id": run_id, "round_to_target": int(reached["round"]),
                     "bytes_to_target": float(reached["total_bytes"])})
    return pd.DataFrame(rows, columns=["run_id", "round_to_target", "bytes_to_target"])


def communication_table(frame: pd.DataFrame, history: pd.DataFrame, metric: str, fraction: float = 0.9
                        ) -> pd.DataFrame:
    """One row per (method, setting), means over seeds: shared parameters per client, bytes per
    round, total bytes, the final ``metric`` (mean, std; % for metrics in [0, 1]), the round and
    bytes at which it first reached ``fraction`` of its final value, and metric points per MB."""
    runs = latest_runs(frame)
    runs = runs[runs[metric].notna()] if metric in runs else runs.iloc[0:0]
    if runs.empty:
        return pd.DataFrame()
    reach = cost_to_reach(history[history["run_id"].isin(runs["run_id"])], metric, fraction)
    runs = runs.merge(reach, on="run_id", how="left")
    scale = 100.0 if as_percent(runs[metric]) else 1.0
    runs["bytes_per_round"] = runs["total_bytes"] / runs["rounds_done"].clip(lower=1)
    table = runs.groupby(["method", "setting"], sort=False).agg(
        shared_per_client=("shared_per_client", "first"), bytes_per_round=("bytes_per_round", "mean"),
        total_bytes=("total_bytes", "mean"), final_mean=(metric, "mean"), final_std=(metric, "std"),
        seeds=("seed", "count"), round_to_target=("round_to_target", "mean"),
        bytes_to_target=("bytes_to_target", "mean")).reset_index()
    table["final_mean"] *= scale
    table["final_std"] *= scale
    megabytes = table["total_bytes"] / 1e6
    table["metric_per_MB"] = np.where(megabytes > 0, table["final_mean"] / megabytes.where(megabytes > 0), np.nan)
    order = {m: i for i, m in enumerate(method_order(runs))}
    settings = {s: i for i, s in enumerate(setting_order(runs))}
    table = table.sort_values(["method", "setting"], key=lambda c: c.map(order if c.name == "method" else settings))
    table.attrs["metric"], table.attrs["fraction"] = metric, fraction
    return table.reset_index(drop=True)
