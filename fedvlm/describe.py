"""``fedvlm describe``: what a method costs, counted on the real architecture without training.

The backbone is the run's architecture (its activation follows ``model.pretrained``, see
``fedvlm.backbone.clip.uses_quick_gelu``) with random weights (no download: the counts do not
depend on them), the head is built as in a run, and the parameters are counted: total, frozen
(backbone), trainable per client, shared (transmitted each way per participating client per
round) and private.
"""

from __future__ import annotations

from fedvlm.backbone.clip import FrozenCLIP
from fedvlm.config import ExperimentConfig
from fedvlm.data.datasets import data_spec, load_data
from fedvlm.errors import DataError
from fedvlm.heads import HEADS
from fedvlm.simulation import BYTES_PER_PARAMETER


def _classnames(config: ExperimentConfig) -> tuple[list[str], str]:
    spec = data_spec(config.data)
    try:
        return load_data(config.data)[0].classnames, "class names from the dataset"
    except DataError:
        count = spec.num_classes or 10
        return [f"class {i}" for i in range(count)], "placeholder names: dataset not on disk"


def describe(config: ExperimentConfig) -> dict:
    backbone = FrozenCLIP.load(config.model.name, config.model.pretrained, config.model.precision, load_weights=False)
    classnames, classes_from = _classnames(config)
    spec = data_spec(config.data)
    head = HEADS.get(config.head.name)(config.head, backbone, classnames, config.data.template or spec.template,
                                       num_slots=1, seed=config.seed)
    frozen = backbone.num_parameters()
    shared = head.parameters_per_client(head.shared_names())
    private = head.parameters_per_client(head.private_names())
    clients = config.partition.num_clients
    aggregates = config.algorithm.aggregates and config.partition.name != "centralized"  # one client talks to no one
    per_round = max(1, round(config.federation.participation * clients))
    transmitted = shared if aggregates else 0
    return {
        "experiment": config.name, "model": config.model.name, "pretrained": config.model.pretrained,
        "activation": backbone.activation,
        "head": config.head.name, "algorithm": config.algorithm.name, "classes": len(classnames),
        "classes_from": classes_from,
        "total_parameters": frozen + shared + private, "frozen_parameters": frozen,
        "trainable_parameters": shared + private, "transmitted_parameters": transmitted,
        "private_parameters": private if aggregates else shared + private,
        "bytes_per_client_per_direction": transmitted * BYTES_PER_PARAMETER,
        "clients_per_round": per_round,
        "bytes_per_round": 2 * per_round * transmitted * BYTES_PER_PARAMETER,
    }


def _bytes(count: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if count < 1024 or unit == "GiB":
            return f"{count:.1f} {unit}" if unit != "B" else f"{count} B"
        count /= 1024
    return str(count)


def format_description(c: dict) -> str:
    rows = [
        ("experiment", c["experiment"]),
        ("model", f"{c['model']} ({c['activation']}; counted with random weights; pretrained: {c['pretrained']})"),
        ("head / algorithm", f"{c['head']} / {c['algorithm']} ({c['classes']} classes; {c['classes_from']})"),
        ("total parameters", f"{c['total_parameters']:,}"),
        ("frozen (backbone)", f"{c['frozen_parameters']:,}"),
        ("trainable per client", f"{c['trainable_parameters']:,}"),
        ("transmitted per round", f"{c['transmitted_parameters']:,} per client each way "
                                  f"({_bytes(c['bytes_per_client_per_direction'])})"),
        ("private per client", f"{c['private_parameters']:,} (never leave the client)"),
        ("traffic per round", f"{_bytes(c['bytes_per_round'])} up+down for {c['clients_per_round']} clients"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
