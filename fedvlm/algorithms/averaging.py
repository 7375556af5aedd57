"""FedAvg (McMahan et al. 2017) and its degenerate case without aggregation.

``fedavg``       sample-weighted mean of the shared parameters (FedRSCLIP Eq. 2, 6)
``local``        no aggregation: every client keeps and trains its own copy of everything

The papers' "Centralized" column is FedAvg over one client holding all training data:
``partition: centralized`` (``algorithm: centralized`` is a deprecated alias for it, fedvlm.config).
"""

from __future__ import annotations

from typing import ClassVar

from fedvlm.algorithms.base import ALGORITHMS, AlgorithmConfig


@ALGORITHMS.register("fedavg")
class FedAvg(AlgorithmConfig):
    """Both halves are the defaults: plain local training, the sample-weighted mean."""


@ALGORITHMS.register("local")
class LocalOnly(AlgorithmConfig):
    aggregates: ClassVar[bool] = False

