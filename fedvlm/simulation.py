"""The federated round loop, driven by Lightning Fabric.

One process per device ("rank") keeps one backbone, one head and the cached features for the
whole run. Each round::

    sampled   = clients drawn with the participation rate          (same on every rank)
    mine      = the sampled clients this rank owns (client % world size, every round)
    results   = local training of mine, stacked into slots          (fedvlm.client.training)
    reports   = every client's samples, steps, loss, finiteness      (one small all-gather)
    server    : the algorithm's server step on the sums of the clients' terms (a fixed-point
                all-reduce, bitwise on any process count); private state stays with its owner
    evaluate  : server model on the test split, each client on its own split
    check     : every client's loss and parameters finite         (runtime.on_nonfinite)
    keep      : disk mode: each rank writes its clients' kept state to files (tracking/client_store.py)
    checkpoint, log                                                 (one transaction, tracking/run_folder.py)

Fabric appears only at launch, collectives and device placement: ranks train *different*
clients, so nothing is wrapped in DDP and no gradient is averaged across ranks. Everything random
is derived from (seed, round, client), and every sum runs in client order, so a run gives the
same numbers on any number of processes and a resumed run ends where an uninterrupted one does:
the checkpoint records the metrics lines it covers and the identity of the data and backbone it
was trained on, and resume refuses other inputs (docs/RELIABILITY.md).
"""

from __future__ import annotations

import copy
import hashlib
import math
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from fedvlm.algorithms import ClientUpdate, RoundSums, ServerRound, term_layout, zeros_like_state
from fedvlm.algorithms.reduction import flat, sum_terms, unflat
from fedvlm.backbone.cache import image_features
from fedvlm.backbone.clip import FrozenCLIP
from fedvlm.client.module import HeadModule
from fedvlm.client.optim import SlotOptimizer, check_warmup_ends
from fedvlm.client.optim import learning_rate as scheduled_rate
from fedvlm.client.training import ClientResult, ClientTask, local_step_count, train_pass
from fedvlm.config import ExperimentConfig, FederationConfig, build_config
from fedvlm.data.datasets import DatasetSpec, data_root, data_spec, load_data
from fedvlm.data.partition import client_class_counts, few_shot, hide_labels, random_split, split
from fedvlm.errors import ConfigError
from fedvlm.evaluation import client_scores, per_client_metrics, server_scores
from fedvlm.heads import HEADS, Head
from fedvlm.heads.base import RoundContext
from fedvlm.inputs.build import batch_source, feature_request
from fedvlm.inputs.features import FeatureBatches
from fedvlm.ot import MarginalErrorMonitor
from fedvlm.sections import DiurnalAvailability
from fedvlm.tasks import TASKS, Task, spread
from fedvlm.tracking.client_store import FOLDER as CLIENT_STATE_FOLDER
from fedvlm.tracking.client_store import DiskClientStore, Kept
from fedvlm.tracking.plots import partition_heatmap
from fedvlm.tracking.run_folder import CHECKPOINT_FORMAT, RunFolder, json_safe, new_run_id
from fedvlm.tracking import loggers as lightning_loggers
from fedvlm.tracking.wandb_logger import FedvlmWandbLogger

BYTES_PER_PARAMETER = 4  # prompts and adapters travel as fp32


# ------------------------------------------------------------------------------- the setup


@dataclass
class Federation:
    """Everything fixed for a run: data, clients, backbone, head."""

    config: ExperimentConfig
    task: Task
    classnames: list[str]
    data: FeatureBatches  # features (or pixels) of every image the run uses, one row each
    labels: np.ndarray  # [rows] class ids, or [rows, C] multi-hot
    train: list[np.ndarray]  # rows each client trains on
    test: list[np.ndarray]  # rows each client is evaluated on
    test_rows: np.ndarray  # the whole test split
    backbone: FrozenCLIP
    head: Head
    initial: dict[str, torch.Tensor]  # every trainable parameter at initialisation
    identity: dict[str, str] = field(default_factory=dict)  # what the run trains on (checkpoints, resume)

    @property
    def num_clients(self) -> int:
        return len(self.train)

    @property
    def algorithm(self):
        return self.config.algorithm

    def personal_names(self) -> list[str]:
        """What each client keeps between rounds: its private parameters, or everything when
        nothing is aggregated."""
        return self.head.private_names() if self.algorithm.aggregates else list(self.initial)


@dataclass
class ServerState:
    """Everything that changes during a run: what a checkpoint holds."""

    next_round: int
    global_shared: dict[str, torch.Tensor]
    personal: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    optimizer: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    # the shared parameters each client uploaded in the last round it took part in
    uploads: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    communication: dict[str, int] = field(default_factory=lambda: {"uploaded_bytes": 0, "downloaded_bytes": 0})
    # the algorithm's server state (momentum, moments, SCAFFOLD's c, FedDyn's h), the same on every rank
    algorithm: dict[str, torch.Tensor] = field(default_factory=dict)
    # the algorithm's per-client state (SCAFFOLD's c_i, FedDyn's gradient), kept like ``personal``
    algorithm_clients: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    # every round's metrics line, as metrics.jsonl holds it (JSON types): the checkpoint carries
    # it, so the metrics file and the summary are rebuilt from the state they belong to
    history: list[dict] = field(default_factory=list)
    # runtime.client_state: disk: the client-state files; ``personal``, ``optimizer`` and
    # ``algorithm_clients`` then hold only the round's clients until they are written
    store: DiskClientStore | None = None

    def kept(self, client: int) -> Kept:
        """What ``client`` keeps between rounds (private parameters, optimizer state or None,
        algorithm state or None), in memory or in its file; empty when it never trained."""
        if self.store is not None and client not in self.personal:
            return self.store.read(client)
        return self.personal.get(client, {}), self.optimizer.get(client), self.algorithm_clients.get(client)

    def client_start(self, federation: Federation, client: int,
                     personal: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Every trainable parameter of ``client`` at the start of a round (``personal``: its kept
        private parameters, when already read)."""
        params = dict(federation.initial)
        if federation.algorithm.aggregates:
            params.update(self.global_shared)
        params.update(self.kept(client)[0] if personal is None else personal)
        return params

    def take_round(self) -> dict[int, Kept]:
        """The state the round's clients keep, moved out of memory (disk mode: into the store)."""
        return {k: (self.personal.pop(k), self.optimizer.pop(k, None), self.algorithm_clients.pop(k, None))
                for k in sorted(self.personal)}

    def server_model(self, federation: Federation) -> dict[str, torch.Tensor]:
        """The global model: aggregated shared parameters, private ones at their initial value
        (unless the head reads it otherwise, :meth:`Head.server_model`)."""
        return federation.head.server_model(federation.initial, self.global_shared)


def _splits(config: ExperimentConfig, labels: np.ndarray, official: dict[str, np.ndarray] | None,
            classnames: list[str] | None = None, spec: DatasetSpec | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Train and test rows: the configured fractions (stratified per class for class labels),
    else the dataset's official split, else its default fractions (``spec``'s); then few-shot sampling."""
    spec = spec or data_spec(config.data)
    if config.data.split is None and official:
        train, test = official["train"], official["test"]
    else:
        fractions = config.data.split or spec.default_split
        parts = split(labels, fractions, config.seed) if labels.ndim == 1 else \
            random_split(len(labels), fractions, config.seed)
        train, test = parts[0], parts[-1]
    if config.data.shots:
        if labels.ndim != 1:
            raise ConfigError("data.shots: few-shot sampling needs single-label classes; set data.shots=null")
        train = train[few_shot(labels[train], config.data.shots, config.seed, classnames)]
    return train, test


def _partition(config: ExperimentConfig, labels: np.ndarray, rows: np.ndarray,
               features: torch.Tensor | None, train_features: torch.Tensor | None = None,
               domains: np.ndarray | None = None) -> list[np.ndarray]:
    """Client shares of ``rows`` (dataset rows); ``features`` (pooled, same order as ``rows``)
    for partitions that cluster images instead of reading labels, ``domains`` (every dataset
    row's domain id, or None) for partitions by domain. ``train_features`` marks the test split:
    it is shared out consistently with the train split those features belong to."""
    row_domains = None if domains is None else domains[rows]
    if train_features is None:
        shares = config.partition(labels[rows], config.seed, features=features, domains=row_domains)
    else:
        shares = config.partition.split_test(labels[rows], config.seed, features=features,
                                             train_features=train_features, domains=row_domains)
    return [rows[share] for share in shares]


def num_slots(config: ExperimentConfig, num_clients: int, world_size: int) -> int:
    if config.runtime.execution == "sequential":
        return 1
    sampled = max(1, round(config.federation.participation * num_clients))
    return max(1, min(config.runtime.clients_per_pass, math.ceil(sampled / world_size), num_clients))


def _digest(*parts) -> str:
    """sha256 of strings and arrays (dtype and shape included), 16 hex digits."""
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            part = np.ascontiguousarray(part)
            digest.update(f"{part.dtype}{part.shape}".encode())
            digest.update(part.tobytes())
        else:
            digest.update(str(part).encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def _dataset_identity(config: ExperimentConfig, dataset, train: np.ndarray, test: np.ndarray) -> dict[str, str]:
    """The data a run trains on: file list (relative to the data root; a Hugging Face dataset's
    rows by fingerprint, split, column and row) and labels, class names, and the train/test rows
    the split and few-shot sampling cut from them."""
    root = data_root(config.data.root)
    files = "\n".join(getattr(path, "cache_identity", None) or os.path.relpath(path, root) for path in dataset.paths)
    official = sorted((dataset.official_splits or {}).items())
    return {"dataset": _digest(files, dataset.labels, "\n".join(dataset.classnames), train, test,
                               *[part for name, rows in official for part in (name, np.asarray(rows))]),
            "dataset_size": f"{len(dataset)} images, {len(dataset.classnames)} classes, "
                            f"{len(train)} train / {len(test)} test"}


def _check_identity(expected: dict[str, str] | None, current: dict[str, str], key: str, what: str) -> None:
    """Resume refuses inputs other than the checkpoint's, before it spends time on them."""
    if expected is None or expected.get(key) == current[key]:
        return
    size = f"{key}_size"
    detail = f" ({expected.get(size, 'not recorded')} then, {current[size]} now)" if size in current else ""
    raise ConfigError(f"resume: {what} changed since the checkpoint{detail}; resume with the inputs the run "
                      "started with, or start a new run")


def build_federation(config: ExperimentConfig, fabric, expected_identity: dict[str, str] | None = None) -> Federation:
    """Data, splits, backbone, cached features, partition and head for ``config``.

    ``expected_identity`` (a resumed checkpoint's): the data, backbone and client shares must be
    the ones it was trained on; each is checked as soon as it is known.
    """
    dataset, spec = load_data(config.data)  # data.dataset, or a Hugging Face data.source (fedvlm.data.hub)
    task = TASKS.get(spec.task)(config.eval.threshold, config.eval.top_k)
    train, test = _splits(config, dataset.labels, dataset.official_splits, dataset.classnames, spec)
    identity = _dataset_identity(config, dataset, train, test)
    _check_identity(expected_identity, identity, "dataset",
                    f"the dataset {config.data.name} (its file list, labels or split)")
    config.partition.check(len(train))

    # Only the images the run uses are encoded; rows are renumbered to the feature table.
    used = np.union1d(train, test)
    row_of = np.full(len(dataset), -1, dtype=np.int64)
    row_of[used] = np.arange(len(used))
    head_class = HEADS.get(config.head.name)
    if head_class.output_kind != task.expects:
        raise ConfigError(f"head.name: {config.head.name} returns {head_class.output_kind}, but {config.data.name} "
                          f"is a {spec.task} dataset that scores {task.expects}; choose a {spec.task} head")
    backbone = FrozenCLIP.load(config.model.name, config.model.pretrained, config.model.precision,
                               device=fabric.device)
    identity["backbone"] = backbone.identity()
    _check_identity(expected_identity, identity, "backbone",
                    f"the backbone {config.model.name} ({config.model.pretrained}: weights or preprocessing)")
    if config.runtime.compile:
        backbone.compile()  # GPU only: a no-op on CPU (FrozenCLIP.compile)
    features = image_features(
        backbone, [dataset.paths[i] for i in used], **feature_request(head_class, config.data.augment_views),
        mode=config.runtime.feature_cache, cache_dir=config.runtime.cache_dir,
        batch_size=config.runtime.extract_batch_size, num_workers=config.runtime.num_workers,
        device=fabric.device, rank=fabric.global_rank, world_size=fabric.world_size,
        all_reduce=lambda t: fabric.all_reduce(t.to(fabric.device), reduce_op="sum").cpu(), barrier=fabric.barrier)

    train_features = features.pooled[torch.from_numpy(row_of[train])]
    train_shares = _partition(config, dataset.labels, train, train_features, domains=dataset.domains)
    test_shares = _partition(config, dataset.labels, test, features.pooled[torch.from_numpy(row_of[test])],
                             train_features, domains=dataset.domains)
    identity["clients"] = _digest(*train_shares, "test", *test_shares)
    _check_identity(expected_identity, identity, "clients", "the partition of the data into clients")

    labels = dataset.labels[used]
    train_labels = hide_labels(labels, row_of[train], config.data.hidden_labels, config.seed)
    data = batch_source(config, head_class, dataset, used, backbone, features, labels, train_labels,
                        fabric.device, rank=fabric.global_rank, barrier=fabric.barrier)
    template = config.data.template or spec.template
    slots = num_slots(config, len(train_shares), fabric.world_size)
    head = head_class(config.head, backbone, dataset.classnames, template, num_slots=slots, seed=config.seed)
    head = head.to(fabric.device)
    return Federation(
        config=config, task=task, classnames=dataset.classnames, data=data, labels=labels,
        train=[row_of[s] for s in train_shares], test=[row_of[s] for s in test_shares], test_rows=row_of[test],
        backbone=backbone, head=head, initial=head.read_slot(0), identity=identity)


# ------------------------------------------------------------------------------- one round


def sample_clients(seed: int, round_index: int, num_clients: int, participation: float,
                   among: list[int] | None = None) -> list[int]:
    """The clients of a round: ``max(1, round(participation * K))`` of them, sorted, drawn from
    ``among`` (the clients available this round; None: all K), all of them when fewer are there."""
    count = max(1, round(participation * num_clients))
    candidates = list(range(num_clients)) if among is None else sorted(among)
    if count >= len(candidates):
        return candidates
    chosen = np.random.default_rng([int(seed), int(round_index), 0xC11E]).choice(len(candidates), count, replace=False)
    return sorted(candidates[int(i)] for i in chosen)


# Client availability (docs/AVAILABILITY.md). Each draw has its own stream per (seed, round,
# client), apart from the sampling's and the client's training streams: turning dropout on does
# not change who is sampled, and a client's draw does not depend on which others are sampled.
_AVAILABLE_STREAM, _DROPOUT_STREAM, _STRAGGLER_STREAM = 0xA7A1, 0xD209, 0x5714


def _client_draw(seed: int, round_index: int, client: int, stream: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(round_index), int(client), stream])


def _per_client(value: float | list[float], num_clients: int) -> list[float]:
    return list(value) if isinstance(value, list) else [value] * num_clients


def available_clients(seed: int, round_index: int, availability, num_clients: int) -> list[int]:
    """The clients present this round: client k with probability ``availability[k]`` (or the
    daily cycle's, :class:`fedvlm.sections.DiurnalAvailability`)."""
    presence = availability.presence(round_index, num_clients) if isinstance(availability, DiurnalAvailability) \
        else _per_client(availability, num_clients)
    return [k for k in range(num_clients)
            if _client_draw(seed, round_index, k, _AVAILABLE_STREAM).random() < presence[k]]


def dropped_clients(seed: int, round_index: int, clients: list[int], dropout: float | list[float],
                    num_clients: int) -> list[int]:
    """The sampled ``clients`` that fail to report this round: client k with probability ``dropout[k]``."""
    rates = _per_client(dropout, num_clients)
    return [k for k in clients
            if rates[k] > 0 and _client_draw(seed, round_index, k, _DROPOUT_STREAM).random() < rates[k]]


def straggler_steps(seed: int, round_index: int, clients: list[int], stragglers,
                    client_steps: list[int]) -> dict[int, int]:
    """The stragglers among ``clients`` and the local steps each completes: with probability
    ``stragglers.fraction`` client k does ``max(1, floor(u * client_steps[k]))`` of its steps, u
    uniform in [``stragglers.min_work``, 1) (:class:`fedvlm.sections.StragglerConfig`). Only the
    clients left with fewer steps than a full round straggle (a one-step round cannot be cut)."""
    steps = {}
    for k in clients:
        draw = _client_draw(seed, round_index, k, _STRAGGLER_STREAM)
        if draw.random() < stragglers.fraction:
            work = stragglers.min_work + (1 - stragglers.min_work) * draw.random()
            completed = max(1, math.floor(work * client_steps[k]))
            if completed < client_steps[k]:
                steps[k] = completed
    return steps


@dataclass(frozen=True)
class RoundPlan:
    """Who takes part in a round: sampled (among the available), dropped (sampled, never
    report: they do not train, their state stays as it was), and the stragglers' step budgets."""

    sampled: list[int]
    dropped: list[int] = field(default_factory=list)
    local_steps: dict[int, int] = field(default_factory=dict)  # straggler -> local steps it completes
    available: list[int] | None = None  # None: sampling among all clients

    @property
    def reporting(self) -> list[int]:
        """The clients that train and whose updates reach the server, in client order."""
        dropped = set(self.dropped)
        return [k for k in self.sampled if k not in dropped]

    def metrics(self) -> dict:
        """The round's metrics line entries: the id lists (metrics.jsonl only) and their counts
        (finite scalars: every logger)."""
        stragglers = sorted(self.local_steps)
        line = {"availability/sampled_clients": self.sampled, "availability/dropped_clients": self.dropped,
                "availability/straggled_clients": stragglers,
                "availability/straggler_steps": [self.local_steps[k] for k in stragglers],
                "availability/sampled": len(self.sampled), "availability/dropped": len(self.dropped),
                "availability/reported": len(self.reporting), "availability/straggled": len(stragglers)}
        if self.available is not None:
            line.update({"availability/available_clients": self.available,
                         "availability/available": len(self.available)})
        return line


def plan_round(federation: FederationConfig, seed: int, round_index: int, client_steps: list[int]) -> RoundPlan:
    """The round's :class:`RoundPlan` from the ``federation`` section; ``client_steps[k]``: client
    k's local steps in a full round. Deterministic in (seed, round, client)."""
    num_clients = len(client_steps)
    available = available_clients(seed, round_index, federation.availability, num_clients) \
        if federation.sampling == "available" else None
    sampled = sample_clients(seed, round_index, num_clients, federation.participation, among=available)
    dropped = dropped_clients(seed, round_index, sampled, federation.dropout, num_clients)
    plan = RoundPlan(sampled, dropped, available=available)
    if federation.stragglers is None:
        return plan
    return RoundPlan(sampled, dropped, straggler_steps(seed, round_index, plan.reporting, federation.stragglers,
                                                       client_steps), available)


def owner(client: int, world_size: int) -> int:
    """The rank that trains, evaluates and keeps the private state of ``client``, every round:
    stable, so a client's private parameters, optimizer and algorithm state never move between
    processes (``client % world_size``, the split evaluation uses too)."""
    return client % world_size


def shard_clients(clients: list[int], world_size: int) -> list[list[int]]:
    """The round's clients of each rank (:func:`owner`), in client order."""
    return [[k for k in clients if owner(k, world_size) == rank] for rank in range(world_size)]


def learning_rate(config: ExperimentConfig, round_index: int) -> Callable[[int, int], float]:
    """Round ``round_index``'s schedule: (local step, the client's steps per round) -> lr
    (:func:`fedvlm.client.optim.learning_rate`)."""
    return partial(scheduled_rate, config.optim, config.federation.rounds, round_index)


def client_steps(federation: Federation) -> list[int]:
    """Local steps per round of every client (fixed for the run: its data, batch size, epochs)."""
    config = federation.config
    return [local_step_count(len(rows), config.optim.batch_size, config.federation.local_epochs,
                             config.federation.local_steps) for rows in federation.train]


def train_clients(federation: Federation, state: ServerState, optimizer: SlotOptimizer, clients: list[int],
                  round_index: int, progress=None, module: HeadModule | None = None, fabric=None,
                  local_steps: dict[int, int] | None = None) -> list[ClientResult]:
    """Local training of ``clients`` this round, ``num_slots`` at a time, through the process's
    one ``module`` (:class:`HeadModule` around the federation's head; made here when not given).
    ``local_steps``: the stragglers' step budgets (:class:`RoundPlan`); the others take a full round."""
    local_steps = local_steps or {}
    config, head = federation.config, federation.head
    module = module if module is not None else HeadModule(config, head=head)
    keep_optimizer = config.optim.keep_state
    head.begin_round(RoundContext(round_index, state.global_shared, state.uploads))
    results: list[ClientResult] = []
    for first in range(0, len(clients), head.num_slots):
        group = clients[first : first + head.num_slots]
        tasks = []
        for k in group:  # disk mode: one file read per client, when its pass is about to train
            personal, optimizer_state, algorithm_state = state.kept(k)
            tasks.append(ClientTask(k, federation.train[k], state.client_start(federation, k, personal),
                                    optimizer_state if keep_optimizer else None, algorithm_state,
                                    steps=local_steps.get(k)))
        results += train_pass(
            module, optimizer, tasks, federation.data, batch_size=config.optim.batch_size,
            epochs=config.federation.local_epochs, steps=config.federation.local_steps,
            lr=learning_rate(config, round_index), seed=config.seed, round_index=round_index,
            algorithm=federation.algorithm, global_shared=state.global_shared, server_state=state.algorithm,
            fabric=fabric)
        if progress is not None:
            progress.update(len(group))
    return results


@dataclass(frozen=True)
class ClientReport:
    """What every rank learns of every client of the round: a few numbers, no tensor."""

    client: int
    num_samples: int
    steps: int
    loss: float
    finite: bool  # loss and parameters finite (:func:`nonfinite_clients`)


def gather_reports(fabric, results: list[ClientResult], shards: list[list[int]]) -> list[ClientReport]:
    """Every rank's :class:`ClientReport` on every rank, in client order: one all-gather of
    ``[largest shard, 5]`` numbers (a client's tensors stay where it trained)."""
    diverged = set(nonfinite_clients(results))
    local = [[r.client, r.num_samples, r.steps, r.loss, float(r.client not in diverged)] for r in results]
    if fabric is not None and fabric.world_size > 1:
        table = torch.full((max(len(s) for s in shards), 5), -1.0, dtype=torch.float64)
        if local:
            table[: len(local)] = torch.tensor(local, dtype=torch.float64)
        gathered = fabric.all_gather(table.to(fabric.device)).reshape(-1, 5).cpu()
        local = [row for row in gathered.tolist() if row[0] >= 0]  # shorter shards are padded with -1
    reports = [ClientReport(int(c), int(n), int(steps), float(loss), bool(ok)) for c, n, steps, loss, ok in local]
    return sorted(reports, key=lambda r: r.client)


class Reduction:
    """The collectives of a round's server step (:mod:`fedvlm.algorithms.reduction`): a max and a
    sum all-reduce over the processes, nothing on one process."""

    def __init__(self, fabric=None):
        self.fabric = fabric if fabric is not None and fabric.world_size > 1 else None

    def max(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.fabric.all_reduce(tensor, reduce_op="max")

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.fabric.all_reduce(tensor, reduce_op="sum")

    def sums(self, algorithm, current: dict[str, torch.Tensor], updates: list[ClientUpdate],
             reports: list[ClientReport]) -> RoundSums:
        """The round's :class:`RoundSums` from this rank's ``updates`` and everyone's ``reports``
        (the finite clients whose updates, spread over the ranks, are summed)."""
        collective = self.fabric is not None
        tensors = sum_terms([algorithm.client_terms(current, u) for u in updates], term_layout(algorithm, current),
                            count=len(reports), all_reduce_max=self.max if collective else None,
                            all_reduce_sum=self.sum if collective else None)
        return RoundSums(tensors, tuple(r.client for r in reports), tuple(r.num_samples for r in reports))

    def gather_shared(self, updates: list[ClientUpdate], reports: list[ClientReport],
                      shared: dict[str, torch.Tensor]) -> dict[int, dict[str, torch.Tensor]]:
        """Every client's uploaded shared parameters on every rank (only for heads that read the
        previous round's uploads, FedRSCLIP's DPAC; the server receives them anyway): shared
        tensors only, never a private one."""
        mine = {u.client: u.shared for u in updates}
        if self.fabric is None:
            return mine
        layout = {name: value for name, value in shared.items()}
        counts = self.fabric.all_gather(torch.tensor([len(updates)], device=self.fabric.device)).flatten()
        rows = torch.zeros(int(counts.max()), 1 + sum(v.numel() for v in layout.values()), dtype=torch.float64,
                           device=self.fabric.device)
        for i, update in enumerate(sorted(updates, key=lambda u: u.client)):
            rows[i, 0] = update.client
            rows[i, 1:] = flat(update.shared, layout).to(rows.device)
        gathered = self.fabric.all_gather(rows).reshape(-1, rows.shape[1])
        everyone = {}
        for rank, count in enumerate(counts.tolist()):
            for row in gathered[rank * rows.shape[0] : rank * rows.shape[0] + count]:
                everyone[int(row[0])] = {name: value.to(shared[name].dtype) for name, value in
                                         unflat(row[1:], layout).items()}
        return dict(sorted(everyone.items()))


def apply_round(federation: Federation, state: ServerState, results: list[ClientResult],
                round_info: ServerRound, reports: list[ClientReport] | None = None,
                reduction: Reduction | None = None) -> None:
    """Server step: keep what this rank's clients keep (private parameters, optimizer and
    algorithm state: they stay here, the rank that owns them), then the algorithm's server half
    on the round's sums, one reduction over the ranks (``reports``: every rank's finite clients;
    by default ``results`` are the whole round, one process), and count the bytes."""
    reports = reports if reports is not None else gather_reports(None, results, [])
    reduction = reduction or Reduction()
    shared = federation.head.shared_names()
    personal = federation.personal_names()
    algorithm = federation.algorithm
    for result in results:
        state.personal[result.client] = {n: result.params[n] for n in personal}
        if federation.config.optim.keep_state and result.optimizer_state is not None:
            state.optimizer[result.client] = result.optimizer_state
        if algorithm.client_state:
            state.algorithm_clients[result.client] = result.algorithm_state
    if algorithm.aggregates and shared and reports:
        # Only shared tensors are put into the updates: the server never sees a private one.
        updates = [ClientUpdate(r.client, r.num_samples, {n: r.params[n] for n in shared}, r.extras, r.steps)
                   for r in results]
        everyone = (reduction.gather_shared(updates, reports, state.global_shared)
                    if federation.head.needs_previous_uploads or algorithm.needs_every_update else None)
        if federation.head.needs_previous_uploads:
            state.uploads.update(everyone)
        if algorithm.needs_every_update:  # every rank runs the same step on the same gathered numbers
            gathered = [ClientUpdate(r.client, r.num_samples, everyone[r.client], {}, r.steps) for r in reports]
            global_shared, server_state = algorithm.server_step(state.global_shared, gathered, state.algorithm,
                                                                round_info)
        else:
            sums = reduction.sums(algorithm, state.global_shared, updates, reports)
            global_shared, server_state = algorithm.server_step_from_sums(state.global_shared, sums,
                                                                          state.algorithm, round_info)
        # A server optimiser (momentum, Adam moments, a large server lr) can overflow on finite
        # client updates; nothing of the round is kept then, so the last checkpoint stays finite.
        broken = nonfinite_tensors({**global_shared, **server_state})
        if broken:
            raise ConfigError(f"round {round_info.index + 1}: the server step of algorithm.name="
                              f"{federation.config.algorithm.name} made {', '.join(broken[:3])} non-finite; the "
                              "run stops before saving the round (its last checkpoint is kept); lower the "
                              "algorithm's server learning rate or momentum")
        state.global_shared, state.algorithm = global_shared, server_state
        message = federation.head.parameters_per_client(shared) * BYTES_PER_PARAMETER
        state.communication["uploaded_bytes"] += message * (1 + len(algorithm.uploads)) * len(reports)
        state.communication["downloaded_bytes"] += message * (1 + len(algorithm.broadcasts)) * len(reports)


def collect_client_state(fabric, state: "ServerState", layouts: tuple[dict, dict, dict]) -> tuple[dict, dict, dict]:
    """Every client's private parameters, optimizer and algorithm state (``personal``,
    ``optimizer``, ``algorithm_clients``, each in client order), gathered on rank 0 for the
    checkpoint it writes; other ranks get empty mappings and receive nothing. ``layouts``: an
    example entry of each section (names, shapes, dtypes). On one process: the state as it is.

    The one place where a client's private tensors leave the rank that owns them, and only to the
    rank that writes the checkpoint file, in checkpoint rounds only, and only in memory mode
    (``runtime.client_state: disk`` writes each client's state where it trained instead)."""
    sections = (state.personal, state.optimizer, state.algorithm_clients)
    if fabric is None or fabric.world_size == 1:
        return tuple(dict(sorted(section.items())) for section in sections)
    import torch.distributed as dist  # a gather to one rank: Fabric has only the all-gather

    width = 2 + max(sum(t.numel() for t in layout.values()) for layout in layouts)
    rows = [torch.cat([torch.tensor([client, index], dtype=torch.float64, device=fabric.device),
                       flat(tensors, layouts[index]).to(fabric.device),
                       torch.zeros(width - 2 - sum(t.numel() for t in layouts[index].values()),
                                   dtype=torch.float64, device=fabric.device)])
            for index, section in enumerate(sections) for client, tensors in sorted(section.items())]
    count = fabric.all_reduce(torch.tensor([len(rows)], device=fabric.device), reduce_op="max")
    table = torch.full((max(int(count), 1), width), -1.0, dtype=torch.float64, device=fabric.device)
    if rows:
        table[: len(rows)] = torch.stack(rows)
    is_main = fabric.global_rank == 0
    received = [torch.empty_like(table) for _ in range(fabric.world_size)] if is_main else None
    dist.gather(table, received, dst=0)
    if not is_main:
        return {}, {}, {}
    merged: tuple[dict, dict, dict] = ({}, {}, {})
    for row in torch.cat(received):
        if row[0] >= 0:  # tables of ranks with fewer entries are padded with -1
            index, layout = int(row[1]), layouts[int(row[1])]
            merged[index][int(row[0])] = {name: value.to(device=layout[name].device, dtype=layout[name].dtype)
                                          for name, value in unflat(row[2:], layout).items()}
    return tuple(dict(sorted(m.items())) for m in merged)


def _client_state_for_checkpoint(fabric, state: "ServerState", layouts: tuple[dict, dict, dict]) -> tuple | None:
    """What the checkpoint needs of the clients' kept state. Memory mode: every client's, gathered
    to rank 0 (:func:`collect_client_state`). Disk mode: nothing moves; a barrier makes every
    rank's files of the rounds since the last checkpoint durable before rank 0 commits the
    checkpoint that names them."""
    if state.store is None:
        return collect_client_state(fabric, state, layouts)
    fabric.barrier()
    return None


def _client_store(fabric, config: ExperimentConfig, folder: RunFolder, state: "ServerState",
                  checkpoint: dict | None, layouts: tuple[dict, dict, dict]) -> DiskClientStore | None:
    """The run's client-state store (``runtime.client_state: disk``; None in memory mode), and,
    resuming, the clients' state the checkpoint names, checked on every rank: its files (a
    missing or damaged one is one line and nothing changes), or the state a memory-mode checkpoint
    holds, written to files. A disk-mode checkpoint resumed in memory mode reads each rank's
    clients from their files."""
    manifest = checkpoint.get("client_state", {}) if checkpoint is not None else {}
    disk = config.runtime.client_state == "disk"
    if not disk and not manifest:
        return None
    rank, world_size = fabric.global_rank, fabric.world_size
    store = DiskClientStore(folder.path / CLIENT_STATE_FOLDER, dict(zip(("personal", "optimizer", "algorithm"),
                                                                         layouts)),
                            owns=lambda client: owner(client, world_size) == rank, device=fabric.device)
    first_problem = (lambda client: int(fabric.all_reduce(torch.tensor(client, device=fabric.device),
                                                          reduce_op="min"))) if world_size > 1 else None
    store.resume(manifest, first_problem)
    if not disk:  # back to memory: each rank's clients into memory, where the next checkpoint finds them
        for client in [k for k in manifest if store.owns(k)]:
            personal, optimizer_state, algorithm_state = store.read(client)
            state.personal[client] = personal
            if optimizer_state is not None:
                state.optimizer[client] = optimizer_state
            if algorithm_state is not None:
                state.algorithm_clients[client] = algorithm_state
        return None
    held = sorted({k for section in ("personal", "optimizer", "algorithm_clients")
                   for k in (checkpoint or {}).get(section, {})})
    if held:  # a memory-mode checkpoint: each rank's clients to files, named by the next checkpoint
        store.keep_round(state.next_round, state.take_round(), held)
    return store


def on_device(value, device):
    """``value`` with every tensor in it (dicts and lists walked) on ``device``; others as they are."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {k: on_device(v, device) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(on_device(v, device) for v in value)
    return value


def nonfinite_tensors(tensors: dict) -> list[str]:
    """Names of the tensors (nested dicts walked) holding a NaN or infinity; one host sync."""
    flat = {}
    stack = [("", tensors)]
    while stack:
        prefix, mapping = stack.pop()
        for name, value in mapping.items():
            if isinstance(value, dict):
                stack.append((f"{prefix}{name}/", value))
            elif isinstance(value, torch.Tensor) and value.is_floating_point():
                flat[f"{prefix}{name}"] = value
    if not flat:
        return []
    finite = torch.stack([torch.isfinite(v).all() for v in flat.values()]).cpu()
    return [name for name, ok in zip(flat, finite.tolist()) if not ok]


def nonfinite_clients(results: list[ClientResult]) -> list[int]:
    """Clients whose round ended with a non-finite loss or parameter (training diverged). One
    reduction, so one host sync, per client per round; nothing is checked per step. A client
    that trained on nothing (loss nan, zero steps) has not diverged."""
    diverged = []
    for result in results:
        params = list(result.params.values())
        finite = bool(torch.stack([torch.isfinite(p).all() for p in params]).all()) if params else True
        if not finite or (result.steps > 0 and not math.isfinite(result.loss)):
            diverged.append(result.client)
    return diverged


def finite_results(config: ExperimentConfig, results: list[ClientResult], reports: list[ClientReport],
                   round_index: int, checkpoint: str) -> tuple[list[ClientResult], list[ClientReport], list[int]]:
    """``runtime.on_nonfinite``: 'stop' raises one line naming the round and the clients (before
    anything of the round is applied or saved: the last checkpoint stays the last finite one);
    'skip_client' returns the other clients' results and reports, and the skipped clients."""
    diverged = [r.client for r in reports if not r.finite]
    if diverged and config.runtime.on_nonfinite == "stop":
        raise ConfigError(f"round {round_index + 1}: training diverged, {_clients(diverged)} ended it with a "
                          f"non-finite loss or parameters; {checkpoint}; lower optim.lr or set "
                          "runtime.on_nonfinite=skip_client to leave such clients out of the aggregate")
    return ([r for r in results if r.client not in diverged], [r for r in reports if r.finite], diverged)


def _clients(clients: list[int]) -> str:
    return f"client {clients[0]}" if len(clients) == 1 else f"clients {', '.join(map(str, clients))}"


# ------------------------------------------------------------------------------ evaluation


def evaluation_clients(config: ExperimentConfig, num_clients: int, round_index: int,
                       sampled: list[int] | None) -> list[int]:
    """``eval.clients``: the clients whose personalized metrics a round reports, sorted: all of
    them, the round's ``sampled`` ones (all before any round), or N drawn without replacement
    from the evaluation's own stream of (seed, round), apart from the training sample's."""
    choice = config.eval.clients
    if choice == "all" or (choice == "sampled" and sampled is None):
        return list(range(num_clients))
    if choice == "sampled":
        return sorted(sampled)
    if choice >= num_clients:
        return list(range(num_clients))
    drawn = np.random.default_rng([int(config.seed), int(round_index), 0xE7A1]).choice(num_clients, choice,
                                                                                        replace=False)
    return sorted(int(k) for k in drawn)


def evaluate(federation: Federation, state: ServerState, fabric, round_index: int = 0,
             sampled: list[int] | None = None) -> dict:
    """Metrics of the server model (``global/*``) and of each evaluated client's own model on its
    own test split (``personalized/*``; ``clients/<primary>`` lists the per-client values, of the
    clients ``eval/clients`` names when ``eval.clients`` is not 'all')."""
    config, head, task = federation.config, federation.head, federation.task
    reduce = lambda t: fabric.all_reduce(t.to(fabric.device), reduce_op="sum").cpu()  # noqa: E731
    labels = torch.from_numpy(federation.labels)
    metrics: dict = {}
    if config.eval.global_test and federation.algorithm.aggregates:
        table = server_scores(head, federation.data, federation.test_rows, state.server_model(federation),
                              config.eval.batch_size, fabric.global_rank, fabric.world_size, reduce)
        test_labels = labels[torch.from_numpy(federation.test_rows)]
        metrics.update({f"global/{k}": v for k, v in task.metrics(table, test_labels).items()})
    if config.eval.personalized:
        chosen = evaluation_clients(config, federation.num_clients, round_index, sampled)
        table = client_scores(head, federation.data, federation.test, lambda k: state.client_start(federation, k),
                              config.eval.batch_size, fabric.global_rank, fabric.world_size, reduce, chosen)
        clients = per_client_metrics(task, table, labels, [federation.test[k] for k in chosen])
        for name in sorted({key for c in clients for key in c}):
            values = np.array([c.get(name, np.nan) for c in clients], dtype=float)
            metrics[f"personalized/mean_{name}"] = spread(values).get("mean", float("nan"))
        primary = np.array([c.get(task.primary, np.nan) for c in clients], dtype=float)
        metrics.update({f"personalized/{k}_{task.primary}": v for k, v in spread(primary).items() if k != "mean"})
        metrics[f"clients/{task.primary}"] = primary
        if config.eval.clients != "all":
            metrics["eval/clients"] = chosen
    return metrics


# ---------------------------------------------------------------------------------- driver


# runtime.strategy -> how Lightning starts the processes: spawn and fork (Lightning's
# "ddp_notebook", the one that works from a Jupyter kernel) run a function in new processes;
# everything else re-runs the command in subprocesses
_START_METHODS = {"ddp_spawn": "spawn", "ddp_notebook": "fork"}


def make_fabric(config: ExperimentConfig):
    from lightning.fabric import Fabric
    from lightning.fabric.strategies import DDPStrategy

    runtime = config.runtime
    accelerator = runtime.accelerator
    strategy = "auto"
    if runtime.devices > 1 or runtime.num_nodes > 1:
        on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
        strategy = DDPStrategy(start_method=_START_METHODS.get(runtime.strategy, "popen"),
                               timeout=timedelta(seconds=runtime.ddp_timeout_s),
                               process_group_backend="gloo" if on_cpu else None)
    return Fabric(accelerator=accelerator, devices=runtime.devices, num_nodes=runtime.num_nodes, strategy=strategy,
                  precision="32-true")


def run(config: ExperimentConfig) -> dict:
    """Run an experiment; returns the summary on rank 0 and ``{}`` on other ranks."""
    lightning_loggers.check_installed(config.logging.backends)  # before any data is loaded
    fabric = make_fabric(config)
    if config.runtime.strategy in _START_METHODS and fabric.world_size > 1:
        return fabric.launch(_run_on_rank, config)
    fabric.launch()
    return _run_on_rank(fabric, config)


def _run_on_rank(fabric, config: ExperimentConfig) -> dict:
    started = time.time()
    torch.manual_seed(config.seed)
    is_main = fabric.global_rank == 0
    folder: RunFolder | None = None
    checkpoint: dict | None = None
    try:
        if config.resume:
            folder = RunFolder.for_resume(config.logging.results_dir, config.name, config.resume)
            if is_main:
                folder.lock()  # before reading: the folder cannot change under this process
            checkpoint = _load_resumable(folder, config)
            if checkpoint["next_round"] >= config.federation.rounds and folder.summary_path.is_file():
                return _already_finished(folder, config, is_main)
        federation = build_federation(config, fabric, checkpoint["identity"] if checkpoint else None)
        config.federation.check_clients(federation.num_clients)
        check_warmup_ends(config.optim, config.federation.rounds, client_steps(federation))
        if folder is None:  # a new run's folder is made once its inputs are loaded and valid
            folder = _new_run_folder(fabric, config)
        return _run_rounds(fabric, config, federation, folder, checkpoint, started)
    except BaseException:
        if is_main and folder is not None and checkpoint is None and not config.resume:
            folder.discard_if_empty()  # failed before its first round: leave no half-made folder
        raise
    finally:
        if folder is not None:
            folder.unlock()


def _run_rounds(fabric, config: ExperimentConfig, federation: Federation, folder: RunFolder,
                checkpoint: dict | None, started: float) -> dict:
    is_main = fabric.global_rank == 0
    steps_per_round = client_steps(federation)
    head = federation.head
    # the process's one module and optimizer, reused for every client (clients are slots); moved,
    # never set up by Fabric: no DDP wrapper, ranks train different clients
    module = HeadModule(config, head=head).to(fabric.device)
    optimizer = SlotOptimizer(head.trainable(), config.optim) if head.trainable() else None
    algorithm = config.algorithm
    global_shared = {n: federation.initial[n] for n in head.shared_names()}
    state = ServerState(0, global_shared, algorithm=algorithm.init_server_state(global_shared))
    checkpointed = None  # the round the folder's checkpoint ends with
    if checkpoint is not None:
        checkpoint = on_device(checkpoint, fabric.device)  # loaded on the CPU; the server step runs here
        state = ServerState(checkpoint["next_round"], checkpoint["global_shared"], checkpoint["personal"],
                            checkpoint["optimizer"], checkpoint["uploads"], checkpoint["communication"],
                            history=checkpoint["history"], algorithm=checkpoint["algorithm_server"],
                            algorithm_clients=checkpoint["algorithm_clients"])
        # each rank keeps the clients it owns (owner): the run may resume on another process count
        for section in (state.personal, state.optimizer, state.algorithm_clients):
            for client in [k for k in section if owner(k, fabric.world_size) != fabric.global_rank]:
                del section[client]
        checkpointed = state.next_round
    # an example of what a client keeps, section by section (the checkpoint's gather to rank 0, the
    # store's check of its files)
    client_layouts = ({n: federation.initial[n] for n in federation.personal_names()},
                      optimizer.read_slot(0) if (optimizer and config.optim.keep_state) else {},
                      zeros_like_state(algorithm.client_state, global_shared))
    # the client-state files: their checkpoint's files checked (one line if one is missing or
    # damaged) before anything of the folder changes
    state.store = _client_store(fabric, config, folder, state, checkpoint, client_layouts)
    if checkpoint is not None and is_main:  # the lines the checkpoint covers; later rounds (and a torn line) are redone
        folder.write_metrics(state.history)
    # rank 0's Lightning loggers (logging.backends); the other ranks log nothing
    loggers = _start_logging(config, folder, federation, state.history, resumed_at=checkpointed) if is_main else []
    reduction = Reduction(fabric)

    rounds = config.federation.rounds
    show = config.logging.progress and is_main
    round_bar = tqdm(range(state.next_round, rounds), desc=config.name, unit="round", disable=not show,
                     initial=state.next_round, total=rounds)
    rounds_started = time.time()
    # the largest marginal error of the round's training plans (OT heads), max over the processes
    marginals = MarginalErrorMonitor(config.runtime.ot_marginal_tolerance)
    reduce_max = (lambda t: fabric.all_reduce(t.to(fabric.device), reduce_op="max").cpu()) \
        if fabric.world_size > 1 else None
    for round_index in round_bar:
        plan = plan_round(config.federation, config.seed, round_index, steps_per_round)
        sampled = plan.sampled
        # dropped clients never train: only the reporting ones train, each on its owner
        shards = shard_clients(plan.reporting, fabric.world_size)
        mine = shards[fabric.global_rank]
        with tqdm(total=len(mine), desc=f"round {round_index + 1} clients", unit="client", leave=False,
                  disable=not show) as client_bar, marginals.recording():
            results = train_clients(federation, state, optimizer, mine, round_index, client_bar, module,
                                    fabric, plan.local_steps) if optimizer else []
        # every rank knows the plan: when no client reports, all of them skip the collectives
        reports = gather_reports(fabric, results, shards) if optimizer and plan.reporting else []
        _crash_if_requested("mid_round", round_index + 1)
        kept = (f"the last finite checkpoint (round {checkpointed}) is kept in {folder.checkpoint_path}"
                if checkpointed is not None else "no round was checkpointed yet")
        results, reports, diverged = finite_results(config, results, reports, round_index, kept)
        # the server knows the clients that reported: a dropped client is as if it was not sampled
        round_info = ServerRound(round_index, config.seed, federation.num_clients, len(plan.reporting))
        apply_round(federation, state, results, round_info, reports, reduction)
        state.next_round = round_index + 1
        if state.store is not None:  # this rank's clients of the round to their files; out of memory
            state.store.keep_round(state.next_round, state.take_round(), [r.client for r in reports])
        # lr: the rate of the round's first local step (per-step schedules: of its busiest client)
        first_lr = learning_rate(config, round_index)(0, max((steps_per_round[k] for k in sampled), default=1))
        metrics = {"round": round_index + 1, "clients": len(sampled), "lr": first_lr,
                   "train/loss": _mean([r.loss for r in reports]), **state.communication,
                   **algorithm.round_metrics(state.algorithm, round_info)}
        if config.federation.models_availability:
            metrics.update(plan.metrics())
            if not plan.reporting and is_main:
                print(f"warning: round {round_index + 1}: no sampled client reported (federation.dropout / "
                      "availability); nothing was aggregated and the global model stays", file=sys.stderr, flush=True)
        ot_marginal_error = marginals.end_round(round_index, reduce_max, warn=is_main)
        if ot_marginal_error is not None:
            metrics["train/ot_marginal_error"] = ot_marginal_error
        if diverged:
            metrics["nonfinite_clients"] = diverged
            if is_main:
                print(f"warning: round {round_index + 1}: {_clients(diverged)} ended it with a "
                      "non-finite loss or parameters; their updates are left out (runtime.on_nonfinite=skip_client)",
                      file=sys.stderr, flush=True)
        last = round_index == rounds - 1
        if (round_index + 1) % config.eval.every == 0 or last:
            metrics.update(evaluate(federation, state, fabric, round_index, sampled))
        state.history.append(json_safe(metrics))
        every = config.logging.checkpoint_every
        save = last or bool(every and state.next_round % every == 0)
        clients = _client_state_for_checkpoint(fabric, state, client_layouts) if save else None  # every rank joins
        if is_main:
            if _commit(config, federation, folder, state, loggers, save, clients):
                checkpointed = state.next_round
            primary = federation.task.primary
            round_bar.set_postfix({name: f"{metrics[key]:.3f}" for name, key in
                                   (("global", f"global/{primary}"), ("personalized", f"personalized/mean_{primary}"))
                                   if key in metrics})
        fabric.barrier()
        if save and state.store is not None:  # the commit is on disk: the versions it superseded go
            state.store.committed_now()
        _crash_if_requested("after_round", round_index + 1)
    if not state.history:  # no round to run (rounds: 0): the evaluation is the run's one line
        metrics = {"round": rounds, **evaluate(federation, state, fabric), **state.communication}
        state.history.append(json_safe(metrics))
        clients = _client_state_for_checkpoint(fabric, state, client_layouts)
        if is_main:
            _commit(config, federation, folder, state, loggers, save=True, clients=clients)
    # The summary is made of the last committed line, never of live values: a run resumed after its
    # final checkpoint writes the summary an uninterrupted run writes.
    final = state.history[-1]
    summary = _summary(config, federation, state, final, folder, time.time() - started,
                       time.time() - rounds_started)
    if is_main:
        _crash_if_requested("before_summary", rounds)
        folder.write_summary(summary)
        primary = f"clients/{federation.task.primary}"
        summary["wandb_dir"] = None
        for logger in _wandb(loggers):
            if primary in final:
                logger.log_table("personalized/clients",
                                 ["client", "train_images", "test_images", federation.task.primary],
                                 [[k, len(federation.train[k]), len(federation.test[k]),
                                   math.nan if a is None else float(a)]
                                  for k, a in zip(final.get("eval/clients", range(len(final[primary]))),
                                                  final[primary])])
            summary["wandb_dir"] = logger.directory
        lightning_loggers.finish(loggers, summary)
        return summary
    return {}  # other ranks: the summary is rank 0's to report


def _commit(config: ExperimentConfig, federation: Federation, folder: RunFolder, state: ServerState,
            loggers: list, save: bool, clients: tuple[dict, dict, dict] | None = None) -> bool:
    """Record a round (rank 0): the checkpoint first (the commit point; it holds the metrics
    lines), then ``metrics.jsonl`` rewritten from them, then the Lightning loggers, step = round.
    A kill between any two steps leaves files a resumed run makes consistent again. ``clients``:
    every client's kept state (:func:`collect_client_state`)."""
    if save:
        _crash_if_requested("before_checkpoint", state.next_round)
        folder.save_checkpoint(_checkpoint(config, federation, state, clients))
        _crash_if_requested("after_checkpoint", state.next_round)
    folder.write_metrics(state.history)
    lightning_loggers.log_round(loggers, state.history[-1])
    return save


_KILL_POINTS = ("mid_round", "before_checkpoint", "after_checkpoint", "after_round", "before_summary")


def _crash_if_requested(point: str, completed_rounds: int) -> None:
    """``FEDVLM_KILL_AT=<point>@<round>`` kills the process (SIGKILL, no clean-up) at one of
    :data:`_KILL_POINTS` of that round: after training, before anything is applied or saved
    (``mid_round``); after its client-state files are written, before its checkpoint
    (``before_checkpoint``); between its checkpoint and its metrics line (``after_checkpoint``); at its
    end (``after_round``; ``FEDVLM_KILL_AFTER_ROUND=N`` is ``after_round@N``); after the final
    checkpoint, before ``summary.json`` (``before_summary``). How the resume tests crash at known
    instants."""
    assert point in _KILL_POINTS
    wanted = os.environ.get("FEDVLM_KILL_AT", "")
    if os.environ.get("FEDVLM_KILL_AFTER_ROUND"):
        wanted += f",after_round@{os.environ['FEDVLM_KILL_AFTER_ROUND']}"
    if f"{point}@{completed_rounds}" in wanted.split(","):
        os.kill(os.getpid(), signal.SIGKILL)


def _mean(values: list[float]) -> float:
    finite = [v for v in values if v == v]
    return float(np.mean(finite)) if finite else float("nan")


def _checkpoint(config: ExperimentConfig, federation: Federation, state: ServerState,
                clients: tuple[dict, dict, dict] | None = None) -> dict:
    """What ``checkpoints/last.pt`` holds: tensors, numbers, strings, lists and mappings only, so
    it loads with ``weights_only=True`` (schema: fedvlm.tracking.run_folder.checkpoint_problem).
    ``clients``: every client's (personal, optimizer, algorithm) state in client order, gathered
    from the ranks that own them; by default this process's."""
    personal, optimizer, algorithm_clients = clients or collect_client_state(None, state, ({}, {}, {}))
    return {"format": CHECKPOINT_FORMAT, "config": config.to_dict(), "identity": dict(federation.identity),
            "next_round": state.next_round, "global_shared": state.global_shared, "personal": personal,
            "optimizer": optimizer, "uploads": state.uploads, "communication": dict(state.communication),
            "history": state.history, "algorithm_server": state.algorithm,
            "algorithm_clients": algorithm_clients,
            # disk mode: the round of each client's current file (its state is not in this file)
            "client_state": state.store.manifest() if state.store is not None else {}}


# Keys that may differ between a run and its resumption (where and how it runs, not what).
_RESUMABLE_DIFFERENCES = ("resume", "runtime", "logging")


def _load_resumable(folder: RunFolder, config: ExperimentConfig) -> dict:
    """The folder's checkpoint, safely loaded, when it was written by a run of these settings."""
    checkpoint = folder.load_checkpoint()
    saved, current = _as_current_settings(checkpoint["config"]), config.to_dict()
    for key in current:
        if key not in _RESUMABLE_DIFFERENCES and saved.get(key) != current.get(key):
            raise ConfigError(f"resume: {key} differs from the run in {folder.path} "
                              f"(saved {saved.get(key)!r}); resume with the same experiment settings")
    return checkpoint


def _as_current_settings(saved: dict) -> dict:
    """A checkpoint's settings read by today's schema, so that a run saved before a key existed
    resumes: the key takes its default, which is the behaviour the run was trained with (a new
    key's default keeps the old behaviour), and a deprecated spelling maps as it does in a YAML.
    Settings today's schema refuses are compared as saved (and so differ, in one line)."""
    try:
        return build_config(copy.deepcopy(saved)).to_dict()
    except ConfigError:
        return saved


def _already_finished(folder: RunFolder, config: ExperimentConfig, is_main: bool) -> dict:
    """Resuming a finished run changes nothing: one line, and the summary it wrote."""
    if not is_main:
        return {}
    print(f"resume: {folder.path} already finished its {config.federation.rounds} rounds (summary.json); "
          "nothing to do", flush=True)
    return {**folder.read_summary(), "already_finished": True}


def _new_run_folder(fabric, config: ExperimentConfig) -> RunFolder:
    results_dir = config.logging.results_dir
    run_id = fabric.broadcast(new_run_id(config.seed) if fabric.global_rank == 0 else None)
    if fabric.global_rank != 0:
        return RunFolder(Path(results_dir) / config.name / run_id)
    folder = RunFolder.create(results_dir, config.name, run_id)
    folder.write_config(config.to_dict())
    return folder


def _start_logging(config: ExperimentConfig, folder: RunFolder, federation: Federation, history: list[dict],
                   resumed_at: int | None) -> list:
    counts = client_class_counts(federation.labels, federation.train, len(federation.classnames))  # [K, C]
    np.savetxt(folder.path / "partition.csv", counts, fmt="%d", delimiter=",",
               header=",".join(federation.classnames), comments="")
    partition_name = config.partition.name
    image = partition_heatmap(counts, federation.classnames, folder.path / "partition.png",
                              f"{config.data.name}: {partition_name}, {len(counts)} clients (train images)")
    tags = [config.head.name, config.algorithm.name, config.data.name, partition_name, f"seed{config.seed}",
            *config.logging.tags]
    # A resumed run logs to a new W&B run of the same name and group: an offline W&B run cannot
    # be reopened by a second process. metrics.jsonl stays the one complete record.
    run_id = folder.run_id if resumed_at is None else f"{folder.run_id}-from{resumed_at}"
    loggers = lightning_loggers.build_loggers(
        config.logging.backends, config.logging.wandb, folder.path, project=config.logging.project,
        entity=config.logging.entity, group=config.name, name=folder.run_id, run_id=run_id, tags=tags,
        config={**config.to_dict(), "resumed_from_round": resumed_at}, resumed=resumed_at is not None)
    lightning_loggers.replay(loggers, history)
    for logger in _wandb(loggers):
        logger.log_image("partition/heatmap", [str(image)])
        logger.log_table("partition/counts", ["client", *federation.classnames],
                         [[k, *map(int, row)] for k, row in enumerate(counts)])
    return loggers


def _wandb(loggers: list) -> list[FedvlmWandbLogger]:
    """The W&B logger among ``loggers`` (none or one): images and tables go to it alone."""
    return [logger for logger in loggers if isinstance(logger, FedvlmWandbLogger)]


def _availability_totals(history: list[dict]) -> dict:
    """Over the run's rounds: clients sampled, dropped, reported and straggled, and the rounds in
    which no sampled client reported (read from the committed lines, so a resumed run agrees)."""
    counts = ("sampled", "dropped", "reported", "straggled")
    totals = {f"availability/total_{name}": sum(line.get(f"availability/{name}", 0) for line in history)
              for name in counts}
    totals["availability/rounds_without_reports"] = sum(
        1 for line in history if "availability/reported" in line and line["availability/reported"] == 0)
    return totals


def _summary(config, federation: Federation, state: ServerState, metrics: dict, folder: RunFolder, seconds: float,
             round_seconds: float) -> dict:
    head = federation.head
    shared, private = head.parameters_per_client(head.shared_names()), head.parameters_per_client(head.private_names())
    return {
        "experiment": config.name, "run_id": folder.run_id, "run_dir": str(folder.path), "seed": config.seed,
        "method": config.head.name, "algorithm": config.algorithm.name, "dataset": config.data.name,
        "num_clients": federation.num_clients, "rounds": config.federation.rounds,
        "primary_metric": federation.task.primary,
        **{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in metrics.items()},
        "parameters": {"backbone": federation.backbone.num_parameters(), "trainable_per_client": shared + private,
                       "shared_per_client": shared, "private_per_client": private},
        **(_availability_totals(state.history) if config.federation.models_availability else {}),
        "wall_time_s": round(seconds, 2),
        # of wall_time_s, the round loop (training, aggregation, evaluation, checkpoints); the rest is
        # set-up: data, backbone, feature extraction, logging
        "rounds_time_s": round(round_seconds, 2),
    }
