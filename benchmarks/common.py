"""Shared helpers: a synthetic client population and timing."""

from __future__ import annotations

import time

import numpy as np
import torch

from fedvlm.backbone.clip import FrozenCLIP
from fedvlm.client.batches import FeatureBatches
from fedvlm.client.optim import SlotOptimizer
from fedvlm.client.training import ClientTask, train_pass
from fedvlm.config import OptimConfig
from fedvlm.heads.coop import CoOpConfig, CoOpHead


def classnames(count: int) -> list[str]:
    words = ["airport", "beach", "bridge", "desert", "forest", "harbor", "island", "lake", "meadow", "river",
             "runway", "stadium", "terrace", "wetland", "railway", "parking lot", "storage tank", "church",
             "mountain", "palace"]
    return [words[i % len(words)] + ("" if i < len(words) else f" {i}") for i in range(count)]


def synchronize(device) -> None:
    """Wait for the device's queued work (GPU kernels run asynchronously), so timings are whole."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def coop_round(backbone: FrozenCLIP, num_clients: int, slots: int, images_per_client: int, batch_size: int,
               num_classes: int, steps: int | None = None, device="cpu") -> dict:
    """One local round of CoOp for ``num_clients`` clients, ``slots`` at a time, on ``device``
    (where the backbone is); returns timing."""
    torch.manual_seed(0)
    n = num_clients * images_per_client
    data = FeatureBatches(torch.randn(n, backbone.embed_dim), None, torch.randint(0, num_classes, (n,)), device)
    head = CoOpHead(CoOpConfig(name="coop", n_ctx=4), backbone, classnames(num_classes), "a photo of a {}.",
                    num_slots=slots).to(device)
    optimizer = SlotOptimizer(head.trainable(), OptimConfig(batch_size=batch_size))
    start = head.read_slot(0)
    client_steps = 0
    began = time.perf_counter()
    for first in range(0, num_clients, slots):
        tasks = [ClientTask(k, np.arange(k * images_per_client, (k + 1) * images_per_client), start, None)
                 for k in range(first, min(first + slots, num_clients))]
        results = train_pass(head, optimizer, tasks, data, batch_size=batch_size, epochs=1, steps=steps, lr=0.01,
                             seed=0, round_index=0)
        client_steps += sum(r.steps for r in results)
    synchronize(device)
    seconds = time.perf_counter() - began
    return {"client_steps": client_steps, "seconds": seconds, "client_steps_per_s": client_steps / seconds}


def one_client_step(head: CoOpHead, optimizer: SlotOptimizer, image: torch.Tensor, labels: torch.Tensor,
                    lr: float = 0.002) -> None:
    """One SGD step of a one-slot head on a batch of pooled image features, as a published
    one-client-at-a-time loop takes it."""
    from fedvlm.heads.base import Batch

    params, device = head.trainable(), image.device
    batch = Batch(labels=labels.to(device), slot=torch.zeros(len(labels), dtype=torch.long, device=device), image=image)
    grads = torch.autograd.grad(head.training_loss(batch).sum(), list(params.values()))
    optimizer.update(dict(zip(params, grads)), torch.full((1,), lr, device=device),
                   torch.ones(1, dtype=torch.bool, device=device))


def peak_rss() -> int:
    """This process's peak resident memory in bytes since start or the last reset (Linux VmHWM)."""
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    return int(line.split()[1]) * 1024
