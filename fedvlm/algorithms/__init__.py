"""Federated algorithms, registered by name (``algorithm.name`` in a config); one file each,
holding both halves (:mod:`fedvlm.algorithms.base` describes the interface).

The server only ever sees :class:`ClientUpdate` objects, which carry a client's *shared*
parameters, its sample count and the algorithm's extra uploads; private parameters never reach
an algorithm: not its penalty, its gradient correction, its clipping, its noise or its aggregate.
"""

from fedvlm.algorithms.base import (ALGORITHMS, AlgorithmConfig, ClientUpdate, RoundSums, ServerRound, fedavg,
                                    flat_norm, round_sums, term_layout, weighted_mean, zeros_like_state)
from fedvlm.algorithms.averaging import FedAvg, LocalOnly
from fedvlm.algorithms.fedprox import FedProx

__all__ = ["ALGORITHMS", "AlgorithmConfig", "ClientUpdate", "FedAvg", "FedProx", "LocalOnly", "RoundSums",
           "ServerRound", "fedavg", "flat_norm", "round_sums", "term_layout", "weighted_mean", "zeros_like_state"]

# one import per algorithm file: importing registers it
from fedvlm.algorithms import dp_fedavg, fedawa, feddyn, fednova, fedopt, scaffold  # noqa: E402,F401
