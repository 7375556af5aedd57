"""The federated round loop, driven by Lightning Fabric.

One process per device ("rank") keeps one backbone, one head and the cached features for the
whole run. Each round::

    sampled   = clients drawn with the participation rate          (same on every rank)
    mine      = this rank's share of them, balanced by sample count
    results   = local training of mine, stacked into slots          (fedvlm.client.training)
    results   = all ranks' results, in client order                 (one all-gather)
    server    : shared parameters aggregated, private state kept    (fedvlm.server)
    evaluate  : server model on the test split, each client on its own split
    log, checkpoint

Fabric appears only at launch, collectives and device placement: ranks train *different*
clients, so nothing is wrapped in DDP and no gradient is averaged across ranks. Everything random
is derived from (seed, round, client), and every sum runs in client order, so a run gives the
same numbers on any number of processes and a resumed run ends where an uninterrupted one does.
"""

from __future__ import annotations

import math
import os
import signal
import time
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from fedvlm.backbone.cache import image_features
from fedvlm.backbone.clip import FrozenCLIP
from fedvlm.client.batches import FeatureBatches, PixelBatches
from fedvlm.client.optim import SlotOptimizer, check_warmup_ends
from fedvlm.client.optim import learning_rate as scheduled_rate
from fedvlm.client.training import ClientResult, ClientTask, local_step_count, train_pass
from fedvlm.config import ExperimentConfig
from fedvlm.data.datasets import DATASETS, load_dataset
from fedvlm.data.partition import client_class_counts, few_shot, hide_labels, random_split, split
from fedvlm.errors import ConfigError
from fedvlm.evaluation import client_scores, per_client_metrics, server_scores
from fedvlm.heads import HEADS, Head
from fedvlm.heads.base import RoundContext
from fedvlm.ot import MarginalErrorMonitor
from fedvlm.server import ClientUpdate
from fedvlm.tasks import TASKS, Task, spread
from fedvlm.tracking.plots import partition_heatmap
from fedvlm.tracking.run_folder import RunFolder, new_run_id
from fedvlm.tracking.wandb_logger import WandbLogger

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

    def client_start(self, federation: Federation, client: int) -> dict[str, torch.Tensor]:
        params = dict(federation.initial)
        if federation.algorithm.aggregates:
            params.update(self.global_shared)
        params.update(self.personal.get(client, {}))
        return params

    def server_model(self, federation: Federation) -> dict[str, torch.Tensor]:
        """The global model: aggregated shared parameters, private ones at their initial value
        (unless the head reads it otherwise, :meth:`Head.server_model`)."""
        return federation.head.server_model(federation.initial, self.global_shared)


def _splits(config: ExperimentConfig, labels: np.ndarray, official: dict[str, np.ndarray] | None
            ) -> tuple[np.ndarray, np.ndarray]:
    """Train and test rows: the configured fractions (stratified per class for class labels),
    else the dataset's official split, else its default fractions; then few-shot sampling."""
    spec = DATASETS.get(config.data.dataset)
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
        train = train[few_shot(labels[train], config.data.shots, config.seed)]
    return train, test


def _partition(config: ExperimentConfig, labels: np.ndarray, rows: np.ndarray,
               features: torch.Tensor | None, train_features: torch.Tensor | None = None) -> list[np.ndarray]:
    """Client shares of ``rows`` (dataset rows); ``features`` (pooled, same order as ``rows``)
    for partitions that cluster images instead of reading labels. ``train_features`` marks the
    test split: it is shared out consistently with the train split those features belong to."""
    if config.algorithm.single_client:
        return [rows]
    if train_features is None:
        shares = config.partition(labels[rows], config.seed, features=features)
    else:
        shares = config.partition.split_test(labels[rows], config.seed, features=features,
                                             train_features=train_features)
    return [rows[share] for share in shares]


def num_slots(config: ExperimentConfig, num_clients: int, world_size: int) -> int:
    if config.runtime.execution == "sequential":
        return 1
    sampled = max(1, round(config.federation.participation * num_clients))
    return max(1, min(config.runtime.clients_per_pass, math.ceil(sampled / world_size), num_clients))


def build_federation(config: ExperimentConfig, fabric) -> Federation:
    """Data, splits, backbone, cached features, partition and head for ``config``."""
    dataset = load_dataset(config.data.dataset, config.data.root)
    spec = DATASETS.get(config.data.dataset)
    task = TASKS.get(spec.task)(config.eval.threshold, config.eval.top_k)
    train, test = _splits(config, dataset.labels, dataset.official_splits)
    if not config.algorithm.single_client:
        config.partition.check(len(train))

    # Only the images the run uses are encoded; rows are renumbered to the feature table.
    used = np.union1d(train, test)
    row_of = np.full(len(dataset), -1, dtype=np.int64)
    row_of[used] = np.arange(len(used))
    head_class = HEADS.get(config.head.name)
    if head_class.output_kind != task.expects:
        raise ConfigError(f"head.name: {config.head.name} returns {head_class.output_kind}, but {config.data.dataset} "
                          f"is a {spec.task} dataset that scores {task.expects}; choose a {spec.task} head")
    backbone = FrozenCLIP.load(config.model.name, config.model.pretrained, config.model.precision,
                               device=fabric.device)
    if config.runtime.compile and fabric.device.type == "cuda":
        backbone.text_tower.transformer = torch.compile(backbone.text_tower.transformer, dynamic=True)
    features = image_features(
        backbone, [dataset.paths[i] for i in used], patches=head_class.needs_patches,
        mode=config.runtime.feature_cache, cache_dir=config.runtime.cache_dir,
        batch_size=config.runtime.extract_batch_size, num_workers=config.runtime.num_workers,
        device=fabric.device, rank=fabric.global_rank, world_size=fabric.world_size,
        all_reduce=lambda t: fabric.all_reduce(t.to(fabric.device), reduce_op="sum").cpu(), barrier=fabric.barrier,
        views=0 if head_class.needs_pixels else config.data.augment_views)

    train_features = features.pooled[torch.from_numpy(row_of[train])]
    train_shares = _partition(config, dataset.labels, train, train_features)
    test_shares = _partition(config, dataset.labels, test, features.pooled[torch.from_numpy(row_of[test])],
                             train_features)

    labels = dataset.labels[used]
    train_labels = hide_labels(labels, row_of[train], config.data.hidden_labels, config.seed)
    as_tensor = lambda a: torch.from_numpy(a) if a is not None else None  # noqa: E731
    if head_class.needs_pixels:
        data = PixelBatches([dataset.paths[i] for i in used], backbone.preprocess, features.pooled,
                            torch.from_numpy(labels), fabric.device, as_tensor(train_labels))
    else:
        data = FeatureBatches(features.pooled, features.patches, torch.from_numpy(labels), fabric.device,
                              as_tensor(train_labels), features.view_pooled, features.view_patches)
    data = head_class.batch_source(data, dataset, used, backbone, config, fabric)  # e.g. + captions
    template = config.data.template or spec.template
    slots = num_slots(config, len(train_shares), fabric.world_size)
    head = head_class(config.head, backbone, dataset.classnames, template, num_slots=slots, seed=config.seed)
    head = head.to(fabric.device)
    return Federation(
        config=config, task=task, classnames=dataset.classnames, data=data, labels=labels,
        train=[row_of[s] for s in train_shares], test=[row_of[s] for s in test_shares], test_rows=row_of[test],
        backbone=backbone, head=head, initial=head.read_slot(0))


# ------------------------------------------------------------------------------- one round


def sample_clients(seed: int, round_index: int, num_clients: int, participation: float) -> list[int]:
    """The clients of a round: ``max(1, round(participation * K))`` of them, sorted."""
    count = max(1, round(participation * num_clients))
    if count >= num_clients:
        return list(range(num_clients))
    chosen = np.random.default_rng([int(seed), int(round_index), 0xC11E]).choice(num_clients, count, replace=False)
    return sorted(int(k) for k in chosen)


def shard_clients(clients: list[int], sizes: list[int], world_size: int) -> list[list[int]]:
    """Split clients over ranks balanced by work (largest first onto the least-loaded rank)."""
    loads = [0] * world_size
    shards: list[list[int]] = [[] for _ in range(world_size)]
    for client in sorted(clients, key=lambda k: (-sizes[k], k)):
        rank = min(range(world_size), key=lambda r: (loads[r], r))
        shards[rank].append(client)
        loads[rank] += max(sizes[client], 1)
    return [sorted(shard) for shard in shards]


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
                  round_index: int, progress=None) -> list[ClientResult]:
    config, head = federation.config, federation.head
    keep_optimizer = config.optim.keep_state
    head.begin_round(RoundContext(round_index, state.global_shared, state.uploads))
    results: list[ClientResult] = []
    for first in range(0, len(clients), head.num_slots):
        group = clients[first : first + head.num_slots]
        tasks = [ClientTask(k, federation.train[k], state.client_start(federation, k),
                            state.optimizer.get(k) if keep_optimizer else None) for k in group]
        results += train_pass(
            head, optimizer, tasks, federation.data, batch_size=config.optim.batch_size,
            epochs=config.federation.local_epochs, steps=config.federation.local_steps,
            lr=learning_rate(config, round_index), seed=config.seed, round_index=round_index,
            penalty=federation.algorithm.local_penalty, global_shared=state.global_shared)
        if progress is not None:
            progress.update(len(group))
    return results


def gather_results(fabric, results: list[ClientResult], shards: list[list[int]], params: dict[str, torch.Tensor],
                   optimizer_state: dict[str, torch.Tensor]) -> list[ClientResult]:
    """Every rank's results on every rank, in client order: one all-gather of flat vectors.

    ``params`` and ``optimizer_state`` are example tensors giving the name, shape and dtype of
    every packed entry (optimizer state is packed only when clients keep it across rounds).
    """
    if fabric.world_size == 1:
        return sorted(results, key=lambda r: r.client)
    layout = {**{("p", n): t for n, t in params.items()}, **{("o", n): t for n, t in optimizer_state.items()}}
    size = 4 + sum(t.numel() for t in layout.values())
    local = torch.full((max(len(s) for s in shards), size), -1.0, dtype=torch.float64)
    for i, r in enumerate(results):
        entries = [(r.params if kind == "p" else r.optimizer_state)[n].flatten().double() for kind, n in layout]
        local[i] = torch.cat([torch.tensor([r.client, r.num_samples, r.steps, r.loss], dtype=torch.float64), *entries])
    gathered = fabric.all_gather(local.to(fabric.device)).cpu().reshape(-1, size)
    everyone = []
    for row in gathered[gathered[:, 0] >= 0]:
        values, offset = {"p": {}, "o": {}}, 4
        for (kind, name), example in layout.items():
            values[kind][name] = row[offset : offset + example.numel()].reshape(example.shape).to(example.dtype)
            offset += example.numel()
        everyone.append(ClientResult(int(row[0]), int(row[1]), values["p"], values["o"] or None, float(row[3]),
                                     int(row[2])))
    return sorted(everyone, key=lambda r: r.client)


def apply_round(federation: Federation, state: ServerState, results: list[ClientResult]) -> None:
    """Server step: aggregate shared parameters, store what clients keep, count the bytes."""
    shared = federation.head.shared_names()
    personal = federation.personal_names()
    for result in results:
        state.personal[result.client] = {n: result.params[n] for n in personal}
        if federation.config.optim.keep_state and result.optimizer_state is not None:
            state.optimizer[result.client] = result.optimizer_state
    if federation.algorithm.aggregates and shared:
        # Only shared tensors are put into the updates: the server never sees a private one.
        updates = [ClientUpdate(r.client, r.num_samples, {n: r.params[n] for n in shared}) for r in results]
        if federation.head.needs_previous_uploads:
            state.uploads.update({u.client: u.shared for u in updates})
        state.global_shared = federation.algorithm.aggregate(state.global_shared, updates)
        message = federation.head.parameters_per_client(shared) * BYTES_PER_PARAMETER
        state.communication["uploaded_bytes"] += message * len(results)
        state.communication["downloaded_bytes"] += message * len(results)


# ------------------------------------------------------------------------------ evaluation


def evaluate(federation: Federation, state: ServerState, fabric) -> dict:
    """Metrics of the server model (``global/*``) and of every client's own model on its own
    test split (``personalized/*``; ``clients/<primary>`` lists the per-client values)."""
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
        table = client_scores(head, federation.data, federation.test, lambda k: state.client_start(federation, k),
                              config.eval.batch_size, fabric.global_rank, fabric.world_size, reduce)
        clients = per_client_metrics(task, table, labels, federation.test)
        for name in sorted({key for c in clients for key in c}):
            values = np.array([c.get(name, np.nan) for c in clients], dtype=float)
            metrics[f"personalized/mean_{name}"] = spread(values).get("mean", float("nan"))
        primary = np.array([c.get(task.primary, np.nan) for c in clients], dtype=float)
        metrics.update({f"personalized/{k}_{task.primary}": v for k, v in spread(primary).items() if k != "mean"})
        metrics[f"clients/{task.primary}"] = primary
    return metrics


# ---------------------------------------------------------------------------------- driver


def make_fabric(config: ExperimentConfig):
    from lightning.fabric import Fabric
    from lightning.fabric.strategies import DDPStrategy

    runtime = config.runtime
    accelerator = runtime.accelerator
    strategy = "auto"
    if runtime.devices > 1 or runtime.num_nodes > 1:
        on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
        strategy = DDPStrategy(start_method="spawn" if runtime.strategy == "ddp_spawn" else "popen",
                               timeout=timedelta(seconds=runtime.ddp_timeout_s),
                               process_group_backend="gloo" if on_cpu else None)
    return Fabric(accelerator=accelerator, devices=runtime.devices, num_nodes=runtime.num_nodes, strategy=strategy,
                  precision="32-true")


def run(config: ExperimentConfig) -> dict:
    """Run an experiment; returns the summary on rank 0 and ``{}`` on other ranks."""
    fabric = make_fabric(config)
    if config.runtime.strategy == "ddp_spawn" and fabric.world_size > 1:
        return fabric.launch(_run_on_rank, config)
    fabric.launch()
    return _run_on_rank(fabric, config)


def _run_on_rank(fabric, config: ExperimentConfig) -> dict:
    started = time.time()
    torch.manual_seed(config.seed)
    is_main = fabric.global_rank == 0
    folder, resumed = _open_run_folder(fabric, config)
    federation = build_federation(config, fabric)
    steps_per_round = client_steps(federation)
    check_warmup_ends(config.optim, config.federation.rounds, steps_per_round)
    head = federation.head
    optimizer = SlotOptimizer(head.trainable(), config.optim) if head.trainable() else None
    state = ServerState(0, {n: federation.initial[n] for n in head.shared_names()})
    if resumed is not None:
        state = resumed
        if is_main:
            folder.keep_metrics_through(state.next_round)
    logger = _start_logging(config, folder, federation, resumed_at=resumed.next_round if resumed else None) if is_main else None

    packed_optimizer = optimizer.read_slot(0) if (optimizer and config.optim.keep_state) else {}

    rounds = config.federation.rounds
    sizes = [len(rows) for rows in federation.train]
    metrics: dict = {}
    show = config.logging.progress and is_main
    round_bar = tqdm(range(state.next_round, rounds), desc=config.name, unit="round", disable=not show,
                     initial=state.next_round, total=rounds)
    rounds_started = time.time()
    # the largest marginal error of the round's training plans (OT heads), max over the processes
    marginals = MarginalErrorMonitor(config.runtime.ot_marginal_tolerance)
    reduce_max = (lambda t: fabric.all_reduce(t.to(fabric.device), reduce_op="max").cpu()) \
        if fabric.world_size > 1 else None
    for round_index in round_bar:
        sampled = sample_clients(config.seed, round_index, federation.num_clients, config.federation.participation)
        shards = shard_clients(sampled, sizes, fabric.world_size)
        mine = shards[fabric.global_rank]
        with tqdm(total=len(mine), desc=f"round {round_index + 1} clients", unit="client", leave=False,
                  disable=not show) as client_bar, marginals.recording():
            results = train_clients(federation, state, optimizer, mine, round_index, client_bar) if optimizer else []
        results = gather_results(fabric, results, shards, federation.initial, packed_optimizer) if optimizer else []
        apply_round(federation, state, results)
        state.next_round = round_index + 1
        # lr: the rate of the round's first local step (per-step schedules: of its busiest client)
        first_lr = learning_rate(config, round_index)(0, max(steps_per_round[k] for k in sampled))
        metrics = {"round": round_index + 1, "clients": len(sampled), "lr": first_lr,
                   "train/loss": _mean([r.loss for r in results]), **state.communication}
        ot_marginal_error = marginals.end_round(round_index, reduce_max, warn=is_main)
        if ot_marginal_error is not None:
            metrics["train/ot_marginal_error"] = ot_marginal_error
        last = round_index == rounds - 1
        if (round_index + 1) % config.eval.every == 0 or last:
            metrics.update(evaluate(federation, state, fabric))
        if is_main:
            _log_round(logger, folder, metrics)
            primary = federation.task.primary
            round_bar.set_postfix({name: f"{metrics[key]:.3f}" for name, key in
                                   (("global", f"global/{primary}"), ("personalized", f"personalized/mean_{primary}"))
                                   if key in metrics})
        every = config.logging.checkpoint_every
        if is_main and (last or (every and (round_index + 1) % every == 0)):
            folder.save_checkpoint(_checkpoint(config, state))
        fabric.barrier()
        _crash_if_requested(round_index + 1)
    if rounds == 0 or not metrics:
        metrics = {"round": rounds, **evaluate(federation, state, fabric), **state.communication}
        if is_main:
            _log_round(logger, folder, metrics)
    summary = _summary(config, federation, state, metrics, folder, time.time() - started,
                       time.time() - rounds_started)
    if is_main:
        folder.write_summary(summary)
        primary = f"clients/{federation.task.primary}"
        if primary in metrics:
            logger.log_table("personalized/clients", ["client", "train_images", "test_images", federation.task.primary],
                             [[k, len(federation.train[k]), len(federation.test[k]), float(a)]
                              for k, a in enumerate(metrics[primary])])
        logger.finish(summary)
        summary["wandb_dir"] = logger.directory
        return summary
    return {}  # other ranks: the summary is rank 0's to report


def _crash_if_requested(completed_rounds: int) -> None:
    """``FEDVLM_KILL_AFTER_ROUND=N`` kills the process (SIGKILL, no clean-up) after round N's
    checkpoint: how the resume tests reproduce a crash at a known point."""
    if os.environ.get("FEDVLM_KILL_AFTER_ROUND") == str(completed_rounds):
        os.kill(os.getpid(), signal.SIGKILL)


def _mean(values: list[float]) -> float:
    finite = [v for v in values if v == v]
    return float(np.mean(finite)) if finite else float("nan")


def _log_round(logger: WandbLogger, folder: RunFolder, metrics: dict) -> None:
    line = {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in metrics.items()}
    folder.append_metrics(line)
    logger.log({k: v for k, v in metrics.items() if not isinstance(v, np.ndarray)})
    for key, values in metrics.items():
        if isinstance(values, np.ndarray):
            logger.log_histogram(metrics["round"], key, values)


def _checkpoint(config: ExperimentConfig, state: ServerState) -> dict:
    return {"config": config.to_dict(), "next_round": state.next_round, "global_shared": state.global_shared,
            "personal": state.personal, "optimizer": state.optimizer, "uploads": state.uploads,
            "communication": state.communication}


# Keys that may differ between a run and its resumption (where and how it runs, not what).
_RESUMABLE_DIFFERENCES = ("resume", "runtime", "logging")


def _open_run_folder(fabric, config: ExperimentConfig) -> tuple[RunFolder, ServerState | None]:
    results_dir = config.logging.results_dir
    if config.resume:
        folder = RunFolder.for_resume(results_dir, config.name, config.resume)
        checkpoint = folder.load_checkpoint()
        saved, current = checkpoint["config"], config.to_dict()
        for key in current:
            if key not in _RESUMABLE_DIFFERENCES and saved.get(key) != current.get(key):
                raise ConfigError(f"resume: {key} differs from the run in {folder.path} "
                                  f"(saved {saved.get(key)!r}); resume with the same experiment settings")
        state = ServerState(checkpoint["next_round"], checkpoint["global_shared"], checkpoint["personal"],
                            checkpoint["optimizer"], checkpoint["uploads"], checkpoint["communication"])
        return folder, state
    run_id = fabric.broadcast(new_run_id(config.seed) if fabric.global_rank == 0 else None)
    folder = RunFolder(Path(results_dir) / config.name / run_id)
    if fabric.global_rank == 0:
        folder = RunFolder.create(results_dir, config.name, run_id)
        folder.write_config(config.to_dict())
    return folder, None


def _start_logging(config: ExperimentConfig, folder: RunFolder, federation: Federation,
                   resumed_at: int | None) -> WandbLogger:
    counts = client_class_counts(federation.labels, federation.train, len(federation.classnames))  # [K, C]
    np.savetxt(folder.path / "partition.csv", counts, fmt="%d", delimiter=",",
               header=",".join(federation.classnames), comments="")
    partition_name = "centralized" if config.algorithm.single_client else config.partition.name
    image = partition_heatmap(counts, federation.classnames, folder.path / "partition.png",
                              f"{config.data.dataset}: {partition_name}, {len(counts)} clients (train images)")
    tags = [config.head.name, config.algorithm.name, config.data.dataset, partition_name, f"seed{config.seed}",
            *config.logging.tags]
    # A resumed run logs to a new W&B run of the same name and group: an offline W&B run cannot
    # be reopened by a second process. metrics.jsonl stays the one complete record.
    run_id = folder.run_id if resumed_at is None else f"{folder.run_id}-from{resumed_at}"
    logger = WandbLogger(config.logging.wandb, folder.path, config.logging.project, config.logging.entity,
                         group=config.name, name=folder.run_id, run_id=run_id, tags=tags,
                         config={**config.to_dict(), "resumed_from_round": resumed_at})
    logger.log_image("partition/heatmap", image)
    logger.log_table("partition/counts", ["client", *federation.classnames], [[k, *map(int, row)] for k, row in enumerate(counts)])
    return logger


def _summary(config, federation: Federation, state: ServerState, metrics: dict, folder: RunFolder, seconds: float,
             round_seconds: float) -> dict:
    head = federation.head
    shared, private = head.parameters_per_client(head.shared_names()), head.parameters_per_client(head.private_names())
    return {
        "experiment": config.name, "run_id": folder.run_id, "run_dir": str(folder.path), "seed": config.seed,
        "method": config.head.name, "algorithm": config.algorithm.name, "dataset": config.data.dataset,
        "num_clients": federation.num_clients, "rounds": config.federation.rounds,
        "primary_metric": federation.task.primary,
        **{k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in metrics.items()},
        "parameters": {"backbone": federation.backbone.num_parameters(), "trainable_per_client": shared + private,
                       "shared_per_client": shared, "private_per_client": private},
        "wall_time_s": round(seconds, 2),
        # of wall_time_s, the round loop (training, aggregation, evaluation, checkpoints); the rest is
        # set-up: data, backbone, feature extraction, logging
        "rounds_time_s": round(round_seconds, 2),
    }
