"""How far a batched local step is from the machine's matrix-product limit (issue 16, item 4).

A CoOp local step on cached features is the text encoder forward and backward over every slot's
class prompts (the shared prefix run once per slot, ``fedvlm.backbone.shared_prefix``), the
projection and the logits. :func:`local_step_flops` counts its floating-point operations from
the model's shapes; the benchmark divides the counted FLOPs by the measured step time and by the
FLOP/s of one large float32 ``torch.mm`` on the same machine.

Counting convention (a product of an ``[m, k]`` and a ``[k, n]`` matrix is ``2 m k n`` FLOPs;
only matrix products are counted, not norms, softmax, GELU or copies):

* forward: every linear layer, both attention products (``Q K^T`` and ``P V``, over the whole
  key range, as if unmasked), the text projection and the logits;
* backward: the text tower is frozen, so a product with a frozen weight costs **one** product
  (the input's gradient; no weight gradient exists), not the 2x forward of training a model
  whose weights learn. The attention products have two activation operands: 2x forward, the
  gradient of each operand. Autograd skips what no output reads: the last block's prefix
  attention output, out-projection and MLP (only the suffixes' EOT rows are read; the last
  block's prefix gives them its keys and values alone). The suffixes' class-name tokens are
  frozen, but they are spliced into one tensor with the context, so their first block does
  get an input gradient (zero, yet computed). Counted
  this way the figure is the work autograd actually asks for; the flash-attention kernel on a
  CPU also recomputes the scores in its backward (one more ``Q K^T``), which is not counted
  as useful work.

``tests/test_flops.py`` checks the count against ``torch.utils.flop_counter.FlopCounterMode``
run on the same step (attention through the math backend, whose products the counter sees): equal to the
count on the tiny model (1, 3 and 5 slots, 4 and 16 context tokens) and, checked once by hand,
on ViT-B-16 (2 slots: 5,308,497,920 forward, 5,274,132,480 backward, both exactly).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from benchmarks.common import classnames, synchronize
from fedvlm.backbone.clip import FrozenCLIP
from fedvlm.heads.base import Batch
from fedvlm.heads.coop import CoOpConfig, CoOpHead


def coop_step_inputs(backbone: FrozenCLIP, slots: int, num_classes: int, batch_per_slot: int, n_ctx: int = 4,
                     device="cpu") -> tuple[CoOpHead, Batch]:
    """A CoOp head of ``slots`` clients and one batch of ``batch_per_slot`` samples per slot."""
    torch.manual_seed(0)
    head = CoOpHead(CoOpConfig(name="coop", n_ctx=n_ctx), backbone, classnames(num_classes), "a photo of a {}.",
                    num_slots=slots).to(device)
    rows = slots * batch_per_slot
    batch = Batch(labels=torch.randint(0, num_classes, (rows,)),
                  slot=torch.from_numpy(np.repeat(np.arange(slots), batch_per_slot)),
                  image=torch.randn(rows, backbone.embed_dim)).to(device)
    return head, batch


def local_step(head: CoOpHead, batch: Batch) -> None:
    """Forward and backward of one local step (the optimizer's elementwise update is not counted)."""
    head.training_loss(batch).sum().backward()
    head.context.grad = None


def local_step_flops(head: CoOpHead, batch: Batch) -> dict[str, int]:
    """FLOPs of :func:`local_step` from the shapes (module docstring): ``{"forward", "backward"}``.

    U slots present, C classes, prompts of a shared prefix of P tokens and suffixes of S tokens
    (cut after the longest EOT), B samples; per text block of width d with MLP width m: linear
    layers ``2 d (3d + d + m) + 2 m d`` per token, attention ``4 T_q T_k d`` per sequence."""
    backbone, layout = head.backbone, head.layout
    if not (backbone.share_text_prefix and layout.shared_prefix > 1 and layout.num_classes > 1):
        raise ValueError("local_step_flops counts the shared-prefix path (CoOp, class at the end)")
    blocks = backbone.text_tower.transformer.resblocks
    d, m = backbone.text_width, blocks[0].mlp.c_fc.out_features
    units, classes, rows = len(batch.present_slot_ids()), layout.num_classes, len(batch.slot)
    prefix = layout.shared_prefix
    suffix = int(layout.eot.max()) + 1 - prefix
    embed = backbone.embed_dim
    qkv, rest = 2 * d * 3 * d, 2 * d * d + 2 * d * m + 2 * m * d  # per token
    prefix_tokens, suffix_tokens = units * prefix, units * classes * suffix
    prefix_attention = 4 * units * prefix * prefix * d
    suffix_attention = 4 * units * classes * suffix * (prefix + suffix) * d
    per_block = (prefix_tokens + suffix_tokens) * (qkv + rest) + prefix_attention + suffix_attention
    forward = len(blocks) * per_block
    backward = len(blocks) * (per_block + prefix_attention + suffix_attention)
    # the last block's prefix outputs are read by nothing: no backward through its attention output,
    # out-projection and MLP (its q/k/v projection still passes the keys' and values' gradient)
    backward -= prefix_tokens * rest + 2 * prefix_attention
    head_products = 2 * units * classes * d * embed + 2 * rows * classes * embed  # projection, logits
    return {"forward": forward + head_products, "backward": backward + head_products}


def peak_matmul_flops(size: int = 2048, repeats: int = 3, device="cpu") -> float:
    """FLOP/s of the fastest of ``repeats`` float32 ``[size, size] @ [size, size]`` products."""
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(size, size, generator=generator).to(device) for _ in range(2))
    torch.mm(a, b)  # warm-up: thread pool, allocator
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        began = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - began)
    return 2 * size**3 / best


def flops(quick: bool, device: str) -> list[dict]:
    """FLOP efficiency of a batched CoOp local step (4 context tokens, 10 classes, 8 samples per
    client, every client's prompts in one text-encoder forward and backward): FLOPs counted from
    the model's shapes (``benchmarks/flops.py``: matrix products only; with the text tower frozen
    a product with a frozen weight costs one product in the backward, the input's gradient, and
    the attention products two), divided by the measured step time (best of 5 after a warm-up),
    over the FLOP/s of one float32 2048 x 2048 ``torch.mm`` (best of 3): the share of the
    machine's matrix-product peak the step achieves. Tiny model at 50 clients, ViT-B-16 (random
    weights; its text tower is what CoOp trains through) at 10."""
    peak = peak_matmul_flops(1024 if quick else 2048, device=device)
    rows = []
    for name, slots in [("fedvlm-tiny", 50)] + ([] if quick else [("ViT-B-16", 10)]):
        backbone = FrozenCLIP.load(name, None, device=device)
        head, batch = coop_step_inputs(backbone, slots, 10, 8, device=device)
        counted = local_step_flops(head, batch)
        local_step(head, batch)  # warm-up
        best = float("inf")
        for _ in range(2 if quick else 5):
            synchronize(device)
            began = time.perf_counter()
            local_step(head, batch)
            synchronize(device)
            best = min(best, time.perf_counter() - began)
        total = counted["forward"] + counted["backward"]
        rows.append({"model": name, "clients": slots, "prompt_tokens_per_client":
                     head.layout.shared_prefix + 10 * (int(head.layout.eot.max()) + 1 - head.layout.shared_prefix),
                     "step_GFLOP": total / 1e9, "step_s": best, "achieved_GFLOP_per_s": total / best / 1e9,
                     "peak_mm_GFLOP_per_s": peak / 1e9, "efficiency": total / best / peak})
    return rows
