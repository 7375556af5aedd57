"""Why prompt-only heads trained with ASL can fall below zero-shot CLIP (docs/results/multilabel.md).

On the training split, centrally (no federation), prints:
(a) the ASL of zero-shot CLIP's logits, of the best constant logit, and of zero-shot logits
    after a learned per-class scale and bias (38 numbers; ranking within a class kept when the
    scale stays positive);
(b) a linear probe (per-class weight and bias on the pooled embedding, zero-shot init) trained
    with ASL: how far the frozen features, the labels, the loss and mAP allow;
(c) CoOp initialised to the dataset's template, trained with ASL (SGD 0.01 cosine, momentum
    0.9, weight decay 5e-4, batch 32, as experiments/synthetic/multilabel.yaml): train and test
    mAP, the spread of its logits and how alike its class text features become.

    python scripts/multilabel_calibration_probe.py --dataset synthetic_voc --data-root data
"""

from __future__ import annotations

import argparse

import fedvlm  # noqa: F401  (torchvision compatibility first)
import torch
import torch.nn.functional as F

from fedvlm.backbone.cache import image_features
from fedvlm.backbone.clip import FrozenCLIP
from fedvlm.data.datasets import DATASETS, load_dataset
from fedvlm.heads.base import Batch
from fedvlm.heads.coop import CoOpConfig, CoOpHead
from fedvlm.losses import asymmetric_loss
from fedvlm.metrics import mean_average_precision


def asl(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean over images of the ASL summed over classes (the heads' training loss)."""
    return asymmetric_loss(scores, targets, reduction="none").sum(-1).mean()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="synthetic_voc")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--model", default="fedvlm-tiny")
    parser.add_argument("--pretrained", default="synthetic")
    parser.add_argument("--epochs", type=int, default=20)
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    backbone = FrozenCLIP.load(args.model, args.pretrained)
    dataset = load_dataset(args.dataset, args.data_root)
    features = image_features(backbone, list(dataset.paths), patches=False)
    labels = torch.from_numpy(dataset.labels)
    train, test = (torch.from_numpy(dataset.official_splits[s]) for s in ("train", "test"))
    template = DATASETS.get(args.dataset).template
    text = F.normalize(backbone.encode_text([template.format(c) for c in dataset.classnames]), dim=-1)
    pooled = F.normalize(features.pooled, dim=-1)
    zero_shot = backbone.logit_scale * pooled @ text.T  # [N, C]
    mAP = lambda s, rows: 100 * mean_average_precision(s[rows], labels[rows])  # noqa: E731

    # (a) calibration alone
    constant = min(asl(torch.full_like(labels[train], z), labels[train]).item() for z in torch.linspace(-5, 5, 101))
    scale, bias = torch.ones(len(text), requires_grad=True), torch.zeros(len(text), requires_grad=True)
    optimizer = torch.optim.Adam([scale, bias], lr=0.05)
    for _ in range(500):
        loss = asl(scale * zero_shot[train] + bias, labels[train])
        optimizer.zero_grad(), loss.backward(), optimizer.step()
    calibrated = (scale * zero_shot + bias).detach()
    print(f"(a) ASL on train: zero-shot {asl(zero_shot[train], labels[train]):.2f}, best constant logit {constant:.2f}, "
          f"zero-shot with per-class scale and bias {asl(calibrated[train], labels[train]):.2f} "
          f"(mean scale {scale.mean():.2f}, {int((scale < 0).sum())} of {len(scale)} negative)")
    print(f"    mAP train / test: zero-shot {mAP(zero_shot, train):.1f} / {mAP(zero_shot, test):.1f}, "
          f"calibrated {mAP(calibrated, train):.1f} / {mAP(calibrated, test):.1f}")

    # (b) linear probe
    weight = (backbone.logit_scale * text).clone().requires_grad_(True)
    offset = torch.zeros(len(text), requires_grad=True)
    optimizer = torch.optim.Adam([weight, offset], lr=0.01)
    for _ in range(400):
        loss = asl(pooled[train] @ weight.T + offset, labels[train])
        optimizer.zero_grad(), loss.backward(), optimizer.step()
    probe = (pooled @ weight.T + offset).detach()
    print(f"(b) linear probe: ASL train {asl(probe[train], labels[train]):.2f}, "
          f"mAP train {mAP(probe, train):.1f} / test {mAP(probe, test):.1f}")

    # (c) CoOp from the template
    words = template.split("{}")[0].strip()
    n_ctx = int(backbone.eot_positions(backbone.tokenize([words]))[0]) - 1
    head = CoOpHead(CoOpConfig(name="coop", n_ctx=n_ctx, ctx_init=words), backbone, dataset.classnames, template)
    batch = lambda rows: Batch(labels[rows], torch.zeros(len(rows), dtype=torch.long), features.pooled[rows])  # noqa: E731
    optimizer = torch.optim.SGD(head.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    steps_per_epoch = -(-len(train) // 32)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs * steps_per_epoch)
    for epoch in range(args.epochs + 1):
        if epoch:
            order = train[torch.randperm(len(train))]
            for start in range(0, len(order), 32):
                loss = head.training_loss(batch(order[start:start + 32])).sum()
                optimizer.zero_grad(), loss.backward(), optimizer.step(), schedule.step()
        if epoch in (0, 1, 2, 4, 8, args.epochs):
            with torch.no_grad():
                scores = head(batch(torch.arange(len(labels))))
                classes = head.text_features(torch.tensor([0]))[0]
                off_diagonal = (classes @ classes.T)[~torch.eye(len(classes), dtype=torch.bool)].mean()
            print(f"(c) CoOp epoch {epoch:2d}: ASL train {asl(scores[train], labels[train]):5.2f}, "
                  f"mAP train {mAP(scores, train):.1f} / test {mAP(scores, test):.1f}, "
                  f"logit std per class {scores[train].std(0).mean():.2f}, "
                  f"mean cos between class texts {off_diagonal:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
