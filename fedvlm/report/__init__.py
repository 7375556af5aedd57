"""Analysis of finished runs: comparison tables (methods x settings, mean ± std over seeds of
the final metric), plots, partition statistics, and W&B collection and sync.

Everything reads run folders (``results/<experiment>/<run-id>/``) and knows no method by name::

    from fedvlm.report import load_runs, runs_frame, comparison_table
    runs = load_runs("results")
    frame = runs_frame(runs)                       # one row per run
    table = comparison_table(frame[frame.experiment == "demo"])

``fedvlm report RESULTS_DIR`` (:func:`build_report`) writes every table and plot; the notebooks
in ``notebooks/`` call these same functions.
"""

from fedvlm.report.build import Comparison, Report, build_report, comparisons, pick_comparison
from fedvlm.report.communication import communication_table, cost_to_reach
from fedvlm.report.partitions import partition_statistics, partition_summary
from fedvlm.report.plots import (plot_client_spread, plot_communication, plot_communication_curves,
                                 plot_heterogeneity, plot_partitions, plot_rounds, plot_sweep)
from fedvlm.report.runs import (Run, client_frame, find_run_folders, history_frame, load_runs, read_run,
                                runs_frame)
from fedvlm.report.tables import (comparison_table, latest_runs, markdown_tables, seed_statistics, wide_table)

__all__ = [
    "Comparison", "Report", "Run", "build_report", "client_frame", "communication_table", "comparison_table",
    "comparisons", "cost_to_reach", "pick_comparison",
    "find_run_folders", "history_frame", "latest_runs", "load_runs", "markdown_tables", "partition_statistics",
    "partition_summary", "plot_client_spread", "plot_communication", "plot_communication_curves",
    "plot_heterogeneity", "plot_partitions", "plot_rounds", "plot_sweep", "read_run", "runs_frame",
    "seed_statistics", "wide_table",
]
