"""``make bench``: measure fedvlm's speed and memory goals and write docs/BENCHMARKS.md.

    python -m benchmarks.run [--quick] [--only NAME ...] [--out docs/BENCHMARKS.md] [--device cpu|cuda]

On a GPU machine everything but the processes comparison (which needs two GPUs, else it stays on
the CPU) runs on the GPU; write to another file there (``--out docs/BENCHMARKS-gpu.md``).

Every figure is measured in this one run on this machine, and reported as a ratio where the goal
is a ratio (issue 7):

* client batching: CoOp client-steps per second, clients stacked in one forward vs one by one,
  at 10, 50 and 100 clients, on the tiny model and on full-size ViT-B-16 (random weights);
* feature cache: one local epoch with cached image features vs the image encoder in the loop;
* batched Sinkhorn: one call for the whole batch x classes vs a loop of POT calls, same plans;
* processes: the same federated experiment on 2 processes vs 1 (gloo on CPU);
* memory: peak memory per stacked client and the clients that fit in 20 GiB (tiny model);
* shared prefix: the text encoder with the prompts' common prefix run once vs once per class;
* published style: one local epoch the way published prompt-learning code runs it vs fedvlm;
* algorithms: the round loop under each registered algorithm relative to FedAvg;
* head module: the HeadModule's hook-driven local loop vs the plain loop it replaced;
* flops: achieved FLOP/s of a batched local step over the machine's peak matrix-product FLOP/s;
* scale: bytes between ranks per round (reduction vs the old all-gather) and round time and peak
  memory at 100 / 1,000 / 10,000 clients with a fixed number taking part.
"""

from __future__ import annotations

import argparse
import inspect
import math
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import fedvlm  # noqa: F401  (torchvision compat before open_clip)
from benchmarks.common import classnames, coop_round, one_client_step, synchronize
from benchmarks.flops import flops
from fedvlm.backbone.clip import FrozenCLIP

ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ benchmarks


def client_batching(quick: bool, device: str) -> list[dict]:
    """CoOp, one local round (32 images per client, batch 8, 10 classes): client-steps per second
    with the clients stacked in one forward (``runtime.execution: batched``) vs one by one
    (``sequential``), both on cached features. Best of ``repeats`` timings after a warm-up."""
    rows = []
    models = [("fedvlm-tiny", (10, 50, 100), 3)] + ([] if quick else [("ViT-B-16", (10, 50), 2)])
    for name, counts, repeats in models:
        backbone = FrozenCLIP.load(name, None, device=device)
        # ViT-B-16 on a CPU: one local step per client keeps the run short
        steps = 1 if name == "ViT-B-16" and device == "cpu" else None
        coop_round(backbone, 2, 2, 32, 8, 10, steps, device)  # warm-up: thread pools, allocator, token caches
        for clients in counts:
            sequential = max((coop_round(backbone, clients, 1, 32, 8, 10, steps, device) for _ in range(repeats)),
                             key=lambda r: r["client_steps_per_s"])
            batched = max((coop_round(backbone, clients, clients, 32, 8, 10, steps, device) for _ in range(repeats)),
                          key=lambda r: r["client_steps_per_s"])
            rows.append({"model": name, "clients": clients, "classes": 10,
                         "sequential_steps_per_s": sequential["client_steps_per_s"],
                         "batched_steps_per_s": batched["client_steps_per_s"],
                         "speedup": batched["client_steps_per_s"] / sequential["client_steps_per_s"]})
    return rows


def feature_cache(quick: bool, device: str) -> list[dict]:
    """One local epoch of CoOp (64 images, batch 32 as in the papers, 10 classes): pooled features
    from the cache vs the image encoder run on every batch (what published prompt-learning code
    does). The cached step still runs the text encoder forward and backward (the prompts change).
    Best of 3 epochs after a warm-up one (of 1 for ViT-B-16's encoder loop on a CPU)."""
    from fedvlm.client.batches import FeatureBatches
    from fedvlm.client.optim import SlotOptimizer
    from fedvlm.config import OptimConfig
    from fedvlm.heads.coop import CoOpConfig, CoOpHead

    rows = []
    for name in ["fedvlm-tiny"] + ([] if quick else ["ViT-B-16"]):
        backbone = FrozenCLIP.load(name, None, device=device)
        size, images, batch_size, num_classes = backbone.image_size, 64, 32, 10
        pixels = torch.randn(images, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
        labels = (torch.arange(images) % num_classes).to(device)
        head = CoOpHead(CoOpConfig(name="coop"), backbone, classnames(num_classes), "a photo of a {}.").to(device)
        optimizer = SlotOptimizer(head.trainable(), OptimConfig())
        step = lambda image, batch_labels: one_client_step(head, optimizer, image, batch_labels)  # noqa: E731

        def encoder_in_loop():
            for start in range(0, images, batch_size):
                step(backbone.encode_images(pixels[start : start + batch_size]).pooled, labels[start : start + batch_size])

        cached = FeatureBatches(backbone.encode_images(pixels).pooled.cpu(), None, labels.cpu(), device)  # computed once

        def from_cache():
            for start in range(0, images, batch_size):
                rows_ = np.arange(start, min(start + batch_size, images))
                batch = cached.batch(rows_, np.zeros(len(rows_), dtype=np.int64))
                step(batch.image, batch.labels)

        in_loop = _best_of(1 if name == "ViT-B-16" and device == "cpu" else 3, encoder_in_loop, device)
        with_cache = _best_of(3, from_cache, device)
        rows.append({"model": name, "images": images, "encoder_in_loop_s": in_loop, "cached_s": with_cache,
                     "speedup": in_loop / with_cache})
    return rows


def batched_sinkhorn(quick: bool, device: str) -> list[dict]:
    """FedOTP-sized problems: B images x C classes, each M patches x N prompts. The batched call:
    best of 3 after a warm-up; the POT loop: one pass (hundreds of calls)."""
    import ot

    from fedvlm.ot import sinkhorn

    rows = []
    for batch, classes, patches, prompts in [(8, 10, 49, 2)] + ([] if quick else [(32, 45, 196, 4)]):
        generator = torch.Generator().manual_seed(0)
        # float64: POT's stopping rule at 1e-9 is below float32's resolution (it would run to numItermax)
        cost = torch.rand(batch, classes, patches, prompts, generator=generator, dtype=torch.float64)
        a = torch.full((patches,), 1 / patches, dtype=torch.float64)
        b = torch.full((prompts,), 1 / prompts, dtype=torch.float64)
        cost, a, b = cost.to(device), a.to(device), b.to(device)  # POT runs on the tensors' device too
        eps, iterations = 0.1, 100
        ours = sinkhorn(cost, eps=eps, max_iter=iterations, tol=1e-9)
        ours_s = _best_of(3, lambda: sinkhorn(cost, eps=eps, max_iter=iterations, tol=1e-9), device)
        began = time.perf_counter()
        reference = torch.stack([torch.stack([ot.sinkhorn(a, b, cost[i, c], eps, numItermax=1000, stopThr=1e-9)
                                              for c in range(classes)]) for i in range(batch)])
        synchronize(device)
        pot_s = time.perf_counter() - began
        rows.append({"problems": f"{batch}x{classes} of {patches}x{prompts}", "batched_s": ours_s, "pot_loop_s": pot_s,
                     "speedup": pot_s / ours_s, "max_plan_difference": float((ours - reference).abs().max())})
    return rows


def processes(quick: bool, device: str) -> list[dict]:
    """The same experiment (synthetic scenes, 2,000 images, tiny CLIP, CoOp + FedAvg, 20 clients,
    evaluated after the last round) on 1 and 2 processes (gloo). ``wall``: the whole command (start-up, feature extraction, rounds);
    ``loop``: the round loop alone (summary.json's rounds_time_s). Two comparisons: 1 process using every
    core through intra-op threads vs 2 processes (Fabric gives each cores / processes threads),
    and 1 vs 2 processes at one thread each (the clients' sharding alone), with the clients of a
    process batched or one by one. With ``--device cuda`` and two GPUs or more: one GPU per process
    (NCCL); with one GPU this runs on the CPU (gloo)."""
    rows = []
    accelerator = "cuda" if device == "cuda" and torch.cuda.device_count() >= 2 else "cpu"
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "data"
        _write_scenes(data, classes=10, per_class=60 if quick else 200)
        if accelerator == "cuda":
            settings = [("batched", "one GPU per process", None), ("sequential", "one GPU per process", None)]
        else:
            settings = [("batched", "all cores", None)] + \
                ([] if quick else [("batched", "1 thread per process", "1"), ("sequential", "1 thread per process", "1")])
        for execution, label, omp in settings:
            timings = {}
            for devices in (1, 2):
                name = f"bench_{devices}_{execution}_{omp or 'all'}"
                command = [sys.executable, "-m", "fedvlm", "run", str(ROOT / "experiments" / "bench_processes.yaml"),
                           f"data.root={data}", f"logging.results_dir={folder}/results", f"runtime.devices={devices}",
                           f"name={name}", "logging.wandb=disabled", "logging.progress=false",
                           f"federation.rounds={2 if quick else 5}", f"runtime.execution={execution}",
                           f"runtime.accelerator={accelerator}"]
                env = {**os.environ, "FEDVLM_CACHE": f"{folder}/cache"}
                env.pop("OMP_NUM_THREADS", None)
                if omp:
                    env["OMP_NUM_THREADS"] = omp
                began = time.perf_counter()
                subprocess.run(command, check=True, capture_output=True, env=env)
                timings[f"wall_{devices}"] = time.perf_counter() - began
                summary = json.loads(next((Path(folder) / "results" / name).glob("*/summary.json")).read_text())
                timings[f"loop_{devices}"] = summary["rounds_time_s"]
            rows.append({"accelerator": accelerator, "execution": execution, "threads": label, "wall_1_s": timings["wall_1"], "wall_2_s": timings["wall_2"],
                         "loop_1_s": timings["loop_1"], "loop_2_s": timings["loop_2"],
                         "loop_speedup": timings["loop_1"] / timings["loop_2"],
                         "loop_scaling_efficiency": timings["loop_1"] / timings["loop_2"] / 2})
    return rows


def memory(quick: bool, device: str) -> list[dict]:
    """Peak memory of one CoOp round with S clients stacked, each in a fresh process: resident
    memory on the CPU, allocated GPU memory with ``--device cuda``.

    The process's peak (VmHWM) is reset after the model is loaded (``/proc/self/clear_refs``, Linux)
    so that loading, which peaks higher than a small round, does not hide the round's own peak.
    """
    peaks = {}
    for clients in (64, 256) if quick else (128, 256, 512):
        if device == "cuda":
            code = ("import fedvlm, torch; from benchmarks.common import coop_round; "
                    "from fedvlm.backbone.clip import FrozenCLIP; b = FrozenCLIP.load('fedvlm-tiny', None, device='cuda'); "
                    "torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated(); "
                    f"coop_round(b, {clients}, {clients}, 32, 8, 10, steps=2, device='cuda'); "
                    "print(base, torch.cuda.max_memory_allocated())")
        else:
            code = ("import fedvlm, torch; from pathlib import Path; from benchmarks.common import coop_round, peak_rss; "
                    "from fedvlm.backbone.clip import FrozenCLIP; b = FrozenCLIP.load('fedvlm-tiny', None); "
                    "Path('/proc/self/clear_refs').write_text('5'); base = peak_rss(); "
                    f"coop_round(b, {clients}, {clients}, 32, 8, 10, steps=2); "
                    "print(base, peak_rss())")
        output = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT)
        base, peak = map(int, output.stdout.split()[-2:])
        peaks[clients] = (base, peak)
    counts = sorted(peaks)
    per_client = (peaks[counts[-1]][1] - peaks[counts[0]][1]) / (counts[-1] - counts[0])
    fixed = peaks[counts[0]][1] - per_client * counts[0]
    fits = int((20 * 2**30 - fixed) / per_client) if per_client > 0 else None
    return [{"clients": k, "before_round_MiB": peaks[k][0] / 2**20, "peak_MiB": peaks[k][1] / 2**20} for k in counts] + \
        [{"clients": "per stacked client", "peak_MiB": per_client / 2**20, "fit_in_20GiB": fits}]


def shared_prefix(quick: bool, device: str) -> list[dict]:
    """Text encoder forward + backward for CoOp prompts (the cost of a local step on cached
    features): the prefix every class prompt shares ([SOS] and the context) run once
    (``FrozenCLIP.encode_with_shared_prefix``) vs once per class. 16 context tokens (CoOp's and
    PromptFL's setting) and 4 (FedRSCLIP's), 10 and 100 classes; the prompts of 10 stacked clients
    on the tiny model, of one client on ViT-B-16. Best of 3 after a warm-up."""
    from fedvlm.heads.prompts import PromptLayout

    rows = []
    for name, clients in [("fedvlm-tiny", 10)] + ([] if quick else [("ViT-B-16", 1)]):
        backbone = FrozenCLIP.load(name, None, device=device)
        for n_ctx, num_classes in [(4, 10), (16, 10), (16, 100)] if not quick else [(16, 10)]:
            layout = PromptLayout(backbone, classnames(num_classes), n_ctx)
            context = torch.randn(clients, n_ctx, backbone.text_width, device=device, requires_grad=True)
            timings = {}
            for share in (False, True):
                backbone.share_text_prefix = share
                timings[share] = _best_of(3, lambda: layout.encode(backbone, context).sum().backward(), device)
            backbone.share_text_prefix = True
            rows.append({"model": name, "clients": clients, "context_tokens": n_ctx, "classes": num_classes,
                         "prompt_tokens": layout.token_embeddings.shape[1], "shared_tokens": layout.shared_prefix,
                         "per_class_s": timings[False], "shared_prefix_s": timings[True],
                         "speedup": timings[False] / timings[True]})
    return rows


def published_style(quick: bool, device: str) -> list[dict]:
    """One local epoch of CoOp (4 context tokens, 10 classes, 32 images per client, batch 32) for
    4 clients, run the way published prompt-learning code runs it (clients one after another,
    the image encoder on every batch, the text encoder over the whole 77-token context) vs
    fedvlm's defaults (image features from the cache, prompts cut after their EOT, the shared
    prefix run once, the 4 clients stacked in one forward). fedvlm's cache is built before the
    timing starts: it is built once per dataset, not per round."""
    from fedvlm.client.batches import FeatureBatches
    from fedvlm.client.training import ClientTask, train_pass
    from fedvlm.client.optim import SlotOptimizer
    from fedvlm.config import OptimConfig
    from fedvlm.heads.coop import CoOpConfig, CoOpHead

    rows = []
    clients, per_client, batch_size, num_classes = 4, 32, 32, 10
    for name in ["fedvlm-tiny"] + ([] if quick else ["ViT-B-16"]):
        backbone = FrozenCLIP.load(name, None, device=device)
        size = backbone.image_size
        pixels = torch.randn(clients * per_client, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)
        labels = (torch.arange(len(pixels)) % num_classes).to(device)
        config = CoOpConfig(name="coop", n_ctx=4)

        def published():
            head = CoOpHead(config, backbone, classnames(num_classes), "a photo of a {}.").to(device)
            optimizer = SlotOptimizer(head.trainable(), OptimConfig())
            for client in range(clients):
                for start in range(client * per_client, (client + 1) * per_client, batch_size):
                    image = backbone.encode_images(pixels[start : start + batch_size]).pooled
                    one_client_step(head, optimizer, image, labels[start : start + batch_size])

        cached = FeatureBatches(backbone.encode_images(pixels).pooled.cpu(), None, labels.cpu(), device)

        def fedvlm():
            head = CoOpHead(config, backbone, classnames(num_classes), "a photo of a {}.", num_slots=clients).to(device)
            optimizer = SlotOptimizer(head.trainable(), OptimConfig(batch_size=batch_size))
            start = head.read_slot(0)
            tasks = [ClientTask(k, np.arange(k * per_client, (k + 1) * per_client), start, None) for k in range(clients)]
            train_pass(head, optimizer, tasks, cached, batch_size=batch_size, epochs=1, steps=None, lr=0.002, seed=0,
                       round_index=0)

        trim, share = backbone.can_trim_text, backbone.share_text_prefix
        backbone.can_trim_text = backbone.share_text_prefix = False
        published_s = _best_of(1 if name == "ViT-B-16" and device == "cpu" else 3, published, device)
        backbone.can_trim_text, backbone.share_text_prefix = trim, share
        fedvlm_s = _best_of(3, fedvlm, device)
        rows.append({"model": name, "clients": clients, "images": len(pixels), "published_style_s": published_s,
                     "fedvlm_s": fedvlm_s, "speedup": published_s / fedvlm_s})
    return rows


def head_module(quick: bool, device: str) -> list[dict]:
    """CoOp on the tiny CLIP, one local round (32 images per client, batch 8, 10 classes), clients
    stacked ``slots`` at a time: client-steps per second of ``train_pass`` driving the HeadModule's
    hooks (training_step, backward, on_before_optimizer_step, SlotOptimizer.step,
    on_train_batch_end) vs the plain loop it replaced (autograd.grad, then the optimizer's
    elementwise update; written out in the benchmark as the reference). Both end with the same parameters
    (``max_difference``). Best of 7 interleaved timings, each after a warm-up."""
    from fedvlm.client.batches import FeatureBatches
    from fedvlm.client.module import HeadModule
    from fedvlm.client.optim import SlotOptimizer
    from fedvlm.client.training import ClientTask, batch_schedule, client_generator, train_pass
    from fedvlm.config import OptimConfig
    from fedvlm.heads.coop import CoOpConfig, CoOpHead

    backbone = FrozenCLIP.load("fedvlm-tiny", None, device=device)
    rows = []
    for clients, slots in ((10, 1), (10, 10)) if quick else ((10, 1), (10, 10), (50, 50)):
        torch.manual_seed(0)
        n = clients * 32
        data = FeatureBatches(torch.randn(n, backbone.embed_dim), None, torch.randint(0, 10, (n,)), device)
        head = CoOpHead(CoOpConfig(name="coop", n_ctx=4), backbone, classnames(10), "a photo of a {}.",
                        num_slots=slots).to(device)
        module = HeadModule(head=head).to(device)
        optimizer = SlotOptimizer(head.trainable(), OptimConfig(batch_size=8))
        start = head.read_slot(0)
        groups = [[ClientTask(k, np.arange(k * 32, (k + 1) * 32), start, None)
                   for k in range(first, min(first + slots, clients))] for first in range(0, clients, slots)]
        ends = {}

        def hooks():
            for tasks in groups:
                for r in train_pass(module, optimizer, tasks, data, batch_size=8, epochs=1, steps=None, lr=0.01,
                                    seed=0, round_index=0):
                    ends[("hooks", r.client)] = r.params["context"]

        def plain():  # the loop before HeadModule: autograd.grad and the elementwise update
            params = head.trainable()
            for tasks in groups:
                for slot, task in enumerate(tasks):
                    head.write_slot(slot, task.start)
                    optimizer.write_slot(slot, None)
                schedules = [batch_schedule(t.indices, 8, 1, None, client_generator(0, 0, t.client)) for t in tasks]
                for step in range(max(len(s) for s in schedules)):
                    live = [slot for slot, s in enumerate(schedules) if step < len(s)]
                    active = torch.zeros(slots, dtype=torch.bool, device=device)
                    active[live] = True
                    batch = data.batch(np.concatenate([schedules[s][step] for s in live]),
                                       np.concatenate([np.full(len(schedules[s][step]), s) for s in live]))
                    per_slot = head.training_loss(batch) * active
                    grads = torch.autograd.grad(per_slot.sum(), list(params.values()))
                    optimizer.update(dict(zip(params, grads)), torch.full((slots,), 0.01, device=device), active)
                    head.after_step(active)
                for slot, task in enumerate(tasks):  # what a pass hands back: parameters and optimizer state
                    ends[("plain", task.client)] = head.read_slot(slot)["context"]
                    optimizer.read_slot(slot)

        steps = clients * 4
        # interleaved, best of 7 each: on a shared machine the load changes between two timings
        hooks_s, plain_s = math.inf, math.inf
        for _ in range(7):
            hooks_s, plain_s = min(hooks_s, _best_of(1, hooks, device)), min(plain_s, _best_of(1, plain, device))
        difference = max(float((ends[("hooks", k)] - ends[("plain", k)]).abs().max()) for k in range(clients))
        rows.append({"clients": clients, "slots": slots, "plain_steps_per_s": steps / plain_s,
                     "head_module_steps_per_s": steps / hooks_s, "ratio": plain_s / hooks_s,
                     "max_difference": difference})
    return rows


def _best_of(repeats: int, work, device: str = "cpu") -> float:
    """The fastest of ``repeats`` timings of ``work()`` after one untimed warm-up call."""
    work()
    timings = []
    for _ in range(repeats):
        synchronize(device)
        began = time.perf_counter()
        work()
        synchronize(device)
        timings.append(time.perf_counter() - began)
    return min(timings)


def _write_scenes(root: Path, classes: int, per_class: int, size: int = 64) -> None:
    """A colour-and-texture ImageFolder (enough to time the loop; the accuracy is not the point)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(classes):
        folder = root / "synthetic_scenes" / f"class_{c:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        colour = rng.integers(0, 255, 3)
        for i in range(per_class):
            pixels = np.clip(colour + rng.normal(0, 40, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:03d}.png")


def algorithms(quick: bool, device: str) -> list[dict]:
    """The round loop of one experiment (``experiments/bench_processes.yaml``: synthetic scenes, tiny
    CLIP, CoOp, 20 clients, every client every round) under each registered algorithm, against
    FedAvg: summary.json's ``rounds_time_s`` (training, the algorithm's client and server halves,
    aggregation; feature extraction is cached by a warm-up run and not counted). In-process, one
    run after another; best of two runs per algorithm (one with ``--quick``)."""
    from fedvlm.algorithms import ALGORITHMS
    from fedvlm.config import load_config
    from fedvlm.simulation import run as run_experiment

    names = ["fedavg"] + [name for name in ALGORITHMS.names() if name not in ("fedavg", "centralized")]
    repeats = 1 if quick else 2
    rows, times = [], {}
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "data"
        _write_scenes(data, classes=10, per_class=30 if quick else 100)
        os.environ["FEDVLM_CACHE"] = f"{folder}/cache"
        accelerator = "cuda" if device == "cuda" else "cpu"

        def once(name: str, index: int) -> float:
            config = load_config(ROOT / "experiments" / "bench_processes.yaml", [
                f"data.root={data}", f"logging.results_dir={folder}/results", f"name=bench_{name}_{index}",
                f"algorithm.name={name}", "logging.wandb=disabled", "logging.progress=false",
                f"federation.rounds={2 if quick else 5}", f"runtime.accelerator={accelerator}",
                "runtime.feature_cache=disk"])
            return run_experiment(config)["rounds_time_s"]

        once("fedavg", -1)  # warm-up: fills the feature cache, thread pools, token caches
        for name in names:
            times[name] = min(once(name, index) for index in range(repeats))
    for name in names:
        rows.append({"algorithm": name, "rounds": 2 if quick else 5, "rounds_time_s": times[name],
                     "relative_to_fedavg": times[name] / times["fedavg"]})
    return rows


def scale(quick: bool, device: str) -> list[dict]:
    """Scale (issue 16). Bytes: what each rank receives from the collectives of one round (setup
    and evaluation off; measured by tests/recorded_launch.py around the real gloo Fabric, 2
    processes, tiny CLIP, 8 clients all taking part), against the all-gather fedvlm used before
    (every client's parameters, optimizer and algorithm state as float64 rows to every rank,
    computed from the run's own sizes); on 1 process neither moves a byte. Clients: round time
    (summary.json ``rounds_time_s`` / rounds) and the process's peak resident memory (VmHWM,
    whole run: data, features, rounds) at 100, 1,000 and 10,000 clients with 10 taking part per
    round, 2 local steps of batch 8 each, ``eval.clients: sampled`` (plus the server model on the
    1,200 test images every round), tiny CLIP, CoOp + FedAvg, one process; 12,000 images of 16 px
    shared out iid. ``wall_s`` of the first setting includes the feature extraction, which the
    others read from the disk cache. Client state: the same data, CoOp with 32 context tokens
    trained by ``algorithm: local`` with AdamW and ``optim.keep_state`` (every client keeps its
    own prompt and both Adam moments, 36 KiB), 100 clients per round for K / 100 rounds (one
    local step each), so about 63 % of the K clients hold state at the end; evaluation off, one
    checkpoint at the end. Peak resident memory (VmHWM, one process) with ``runtime.client_state``
    memory vs disk, the round time, the clients holding state, and the bytes of their state on
    disk (``client_state/``) and in the checkpoint."""
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        rows += _bytes_between_ranks(Path(folder), quick)
        rows += _clients_at_scale(Path(folder), quick, device)
        rows += _client_state_at_scale(Path(folder), quick, device)
    return rows


def _bytes_between_ranks(folder: Path, quick: bool) -> list[dict]:
    from fedvlm.algorithms import ALGORITHMS

    data = folder / "bytes_data"
    _write_scenes(data, classes=4, per_class=16)
    rounds = 2
    settings = {"coop_fedavg": ({"name": "coop", "n_ctx": 4}, {"name": "fedavg"}, False),
                "coop_scaffold": ({"name": "coop", "n_ctx": 4}, {"name": "scaffold"}, False),
                "fedotp_fedavg_keep_state": ({"name": "fedotp"}, {"name": "fedavg"}, True)}
    runs = [{"name": name, "seed": 1, "model": {"name": "fedvlm-tiny", "pretrained": None},
             "data": {"dataset": "synthetic_scenes", "root": str(data)}, "head": head, "algorithm": algorithm,
             "partition": {"name": "iid", "num_clients": 8}, "federation": {"rounds": rounds, "participation": 1.0},
             "optim": {"lr": 0.01, "batch_size": 8, "keep_state": keep},
             "eval": {"global_test": False, "personalized": False},
             "runtime": {"execution": "batched", "accelerator": "cpu", "ddp_timeout_s": 600},
             "logging": {"progress": False, "wandb": "disabled", "results_dir": str(folder / "bytes_results")}}
            for name, (head, algorithm, keep) in settings.items()]
    (folder / "runs.json").write_text(json.dumps(runs))
    env = {**os.environ, "FEDVLM_CACHE": f"{folder}/cache", "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(ROOT / "tests" / "recorded_launch.py"), str(folder / "runs.json"), "2",
                    str(folder / "received")], check=True, capture_output=True, env=env, cwd=ROOT)
    received = torch.load(folder / "received" / "rank1.pt", weights_only=True)
    per_run = _split_by_run(received, len(runs))
    rows = []
    for run, records in zip(runs, per_run):
        (run_dir,) = (folder / "bytes_results" / run["name"]).iterdir()
        checkpoint = torch.load(run_dir / "checkpoints/last.pt", weights_only=True)
        algorithm = ALGORITHMS.get(run["algorithm"]["name"])
        numel = lambda section: max((sum(t.numel() for t in entry.values()) for entry in checkpoint[section].values()),
                                    default=0)  # noqa: E731
        shared = sum(t.numel() for t in checkpoint["global_shared"].values())
        private = numel("personal")
        per_client = shared + private + numel("optimizer") + numel("algorithm_clients") + len(algorithm.uploads) * shared
        world, clients = 2, 8
        old = world * math.ceil(clients / world) * (4 + per_client) * 8  # the all-gather's float64 rows
        new = sum(r["values"].numel() * 8 for r in records if r["phase"] == "round") / rounds
        rows.append({"measure": "bytes per round, rank 1 of 2", "setting": run["name"],
                     "shared_per_client": shared, "private_and_state_per_client": per_client - shared,
                     "old_gather_bytes": old, "reduction_bytes": new, "old_over_new": old / new,
                     "bytes_on_1_process": 0})
    return rows


def _split_by_run(received: list[dict], runs: int) -> list[list[dict]]:
    """The records of each run of a recorded launch (each starts with a "start" marker)."""
    parts = []
    for record in received:
        if record["phase"] == "start":
            parts.append([])
        else:
            parts[-1].append(record)
    assert len(parts) == runs, (len(parts), runs)
    return parts


def _clients_at_scale(folder: Path, quick: bool, device: str) -> list[dict]:
    counts = (100, 1000) if quick else (100, 1000, 10000)
    participants, rounds = 10, 3
    data = folder / "scale_data"
    _write_scenes(data, classes=10, per_class=(max(counts) * 6 // 5) // 10, size=16)
    experiment = folder / "scale.yaml"
    experiment.write_text(json.dumps({  # JSON is YAML
        "name": "scale", "seed": 1, "model": {"name": "fedvlm-tiny", "pretrained": None},
        "data": {"dataset": "synthetic_scenes", "root": str(data), "split": [0.9, 0.1]},
        "head": {"name": "coop", "n_ctx": 4}, "algorithm": {"name": "fedavg"},
        "federation": {"local_steps": 2},  # the same work per participant, whatever its share of the images
        "optim": {"lr": 0.01, "batch_size": 8}, "eval": {"clients": "sampled"},
        "runtime": {"accelerator": "cuda" if device == "cuda" else "cpu", "feature_cache": "disk"},
        "logging": {"progress": False, "wandb": "disabled", "results_dir": str(folder / "scale_results")}}))
    rows = []
    for clients in counts:
        code = ("import json, resource, sys; import fedvlm; from fedvlm.cli import main; "
                f"code = main(['run', {str(experiment)!r}] + sys.argv[1:]); "
                "print('peak_kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(code)")
        name = f"scale_{clients}"
        overrides = [f"name={name}", f"federation.rounds={rounds}", f"federation.participation={participants / clients}",
                     "partition.name=iid", f"partition.num_clients={clients}"]
        env = {**os.environ, "FEDVLM_CACHE": f"{folder}/cache"}
        done = subprocess.run([sys.executable, "-c", code, *overrides], capture_output=True, text=True, env=env,
                              cwd=ROOT)
        if done.returncode != 0:
            raise RuntimeError(done.stderr[-2000:])
        peak = int(done.stdout.split("peak_kib")[-1].split()[0])
        summary = json.loads(next((folder / "scale_results" / name).glob("*/summary.json")).read_text())
        rows.append({"measure": "round at scale", "setting": f"{clients} clients, {participants} per round",
                     "round_s": summary["rounds_time_s"] / rounds, "peak_rss_MiB": peak / 1024,
                     "wall_s": summary["wall_time_s"]})
    return rows


def _client_state_at_scale(folder: Path, quick: bool, device: str) -> list[dict]:
    """Peak memory with every client's kept state in memory vs in files (runtime.client_state),
    on the data and feature cache :func:`_clients_at_scale` made."""
    counts = (100, 1000) if quick else (100, 1000, 10000)
    participants = 100
    experiment = folder / "client_state.yaml"
    experiment.write_text(json.dumps({  # JSON is YAML
        "name": "client_state", "seed": 1, "model": {"name": "fedvlm-tiny", "pretrained": None},
        "data": {"dataset": "synthetic_scenes", "root": str(folder / "scale_data"), "split": [0.9, 0.1]},
        "head": {"name": "coop", "n_ctx": 32}, "algorithm": {"name": "local"},
        "federation": {"local_steps": 1},
        "optim": {"name": "adamw", "lr": 0.001, "batch_size": 8, "keep_state": True},
        "eval": {"global_test": False, "personalized": False},
        "runtime": {"accelerator": "cuda" if device == "cuda" else "cpu", "feature_cache": "disk"},
        "logging": {"progress": False, "wandb": "disabled", "checkpoint_every": 0,
                    "results_dir": str(folder / "client_state_results")}}))
    code = ("import json, resource, sys; import fedvlm; from fedvlm.cli import main; "
            f"code = main(['run', {str(experiment)!r}] + sys.argv[1:]); "
            "print('peak_kib', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss); sys.exit(code)")
    rows = []
    for clients in counts:
        rounds = clients // participants
        for mode in ("memory", "disk"):
            name = f"client_state_{clients}_{mode}"
            overrides = [f"name={name}", f"federation.rounds={rounds}",
                         f"federation.participation={participants / clients}", "partition.name=iid",
                         f"partition.num_clients={clients}", f"runtime.client_state={mode}"]
            done = subprocess.run([sys.executable, "-c", code, *overrides], capture_output=True, text=True,
                                  env={**os.environ, "FEDVLM_CACHE": f"{folder}/cache"}, cwd=ROOT)
            if done.returncode != 0:
                raise RuntimeError(done.stderr[-2000:])
            run_dir = next((folder / "client_state_results" / name).glob("*/"))
            summary = json.loads((run_dir / "summary.json").read_text())
            checkpoint = torch.load(run_dir / "checkpoints" / "last.pt", weights_only=True)
            store = run_dir / "client_state"
            rows.append({"measure": "client state", "setting": f"{clients} clients, {participants} per round, "
                                                               f"{rounds} rounds",
                         "client_state": mode, "clients_with_state": len(checkpoint["personal"]) or
                         len(checkpoint["client_state"]), "peak_rss_MiB": int(done.stdout.split("peak_kib")[-1].split()[0]) / 1024,
                         "round_s": summary["rounds_time_s"] / rounds,
                         "state_files_MiB": sum(p.stat().st_size for p in store.iterdir()) / 2**20 if store.is_dir() else 0,
                         "checkpoint_MiB": (run_dir / "checkpoints" / "last.pt").stat().st_size / 2**20})
    return rows


BENCHMARKS = {"client_batching": client_batching, "feature_cache": feature_cache, "batched_sinkhorn": batched_sinkhorn,
              "processes": processes, "memory": memory, "shared_prefix": shared_prefix,
              "published_style": published_style, "algorithms": algorithms, "head_module": head_module,
              "scale": scale, "flops": flops}


# --------------------------------------------------------------------------------- report


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return (f"{cpu}, {os.cpu_count()} logical cores, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), GPU: {gpu}, Python {platform.python_version()}")


def _table(rows: list[dict]) -> str:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    fmt = lambda v: f"{v:.3g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def _sections(report: str) -> dict[str, str]:
    """The ``## name`` sections of a written report, by name, in their order."""
    parts = report.split("\n## ")[1:]
    return {part.split("\n", 1)[0].strip(): "## " + part.rstrip() + "\n" for part in parts}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small sizes only (a smoke run of every benchmark)")
    parser.add_argument("--only", nargs="*", choices=sorted(BENCHMARKS), help="run only these")
    parser.add_argument("--out", default=str(ROOT / "docs" / "BENCHMARKS.md"))
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cuda" if torch.cuda.is_available() else "cpu",
                        help="where models and features live (default: cuda when a GPU is visible)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda: no CUDA device is visible to torch")
    results, load_before = {}, os.getloadavg()
    for name in args.only or list(BENCHMARKS):
        began = time.perf_counter()
        print(f"[bench] {name} ...", flush=True)
        results[name] = BENCHMARKS[name](args.quick, args.device)
        print(_table(results[name]), f"\n({time.perf_counter() - began:.0f} s)", flush=True)
    command = "python -m benchmarks.run" + (" --quick" if args.quick else "") + \
        (f" --only {' '.join(args.only)}" if args.only else "") + f" --device {args.device}"
    text = [f"# Benchmarks\n\nMeasured {time.strftime('%Y-%m-%d')} with `{command}` (`make bench`).\n",
            f"Machine: {_machine()}. Load average (1, 5, 15 min) before: "
            f"{', '.join(f'{x:.1f}' for x in load_before)}; after: {', '.join(f'{x:.1f}' for x in os.getloadavg())} "
            "(a load above the core count means other jobs shared the machine).\n"]
    sections = {name: f"## {name}\n\n{inspect.cleandoc(BENCHMARKS[name].__doc__ or '')}\n\n{_table(rows)}\n"
                for name, rows in results.items()}
    out, raw = Path(args.out), Path(args.out).with_suffix(".json")
    if args.only and out.exists() and raw.exists():
        # --only replaces its own sections of an existing report and keeps the others (with their
        # own header lines, which say when and on what load those were measured)
        previous = out.read_text()
        sections = {**_sections(previous), **sections}
        results = {**json.loads(raw.read_text()), **results}
        text = [previous.split("\n## ")[0].rstrip() + "\n",
                f"Re-measured {time.strftime('%Y-%m-%d')} with `{command}`: {', '.join(args.only)}. " + text[1]]
    text += list(sections.values())
    out.write_text("\n".join(text))
    raw.write_text(json.dumps(results, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
