"""How well a backbone's region features match class text, zero-shot, on a multi-label test split.

Scores every test image by the cosine between hand-written class prompts and (a) the pooled
embedding, (b) the best patch token, (c) the mean patch token, (d) DualCoOp's region aggregation
(softmax over regions of 20 cos, weighted sum) with and without the pooled embedding among the
regions; prints the mAP of each. Patch-level heads (DualCoOp, PositiveCoOp, FedMPT) can only do
as well as these features allow.

    python scripts/multilabel_region_probe.py --dataset synthetic_voc --data-root data \\
        --model fedvlm-tiny --pretrained synthetic
"""

from __future__ import annotations

import argparse

import fedvlm  # noqa: F401  (torchvision compatibility first)
import torch
import torch.nn.functional as F

from fedvlm.backbone.cache import image_features
from fedvlm.backbone.clip import FrozenCLIP
from fedvlm.data.datasets import DATASETS, load_dataset
from fedvlm.metrics import mean_average_precision


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dataset", default="synthetic_voc")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--model", default="fedvlm-tiny")
    parser.add_argument("--pretrained", default="synthetic")
    args = parser.parse_args(argv)
    backbone = FrozenCLIP.load(args.model, args.pretrained)
    dataset = load_dataset(args.dataset, args.data_root)
    test = torch.from_numpy(dataset.official_splits["test"])
    features = image_features(backbone, [dataset.paths[i] for i in test], patches=True)
    labels = torch.from_numpy(dataset.labels)[test]
    template = DATASETS.get(args.dataset).template
    text = F.normalize(backbone.encode_text([template.format(c) for c in dataset.classnames]), dim=-1)
    pooled = F.normalize(features.pooled, dim=-1) @ text.T  # [N, C]
    patches = torch.einsum("nmd,cd->nmc", F.normalize(features.patches, dim=-1), text)  # [N, M, C]
    regions = 20 * torch.cat([pooled[:, None], patches], dim=1)
    rows = {
        "pooled embedding": pooled,
        "best patch": patches.max(1).values,
        "mean patch": patches.mean(1),
        "DualCoOp aggregation, pooled + patches": (torch.softmax(regions, 1) * regions).sum(1),
        "DualCoOp aggregation, patches only": (torch.softmax(regions[:, 1:], 1) * regions[:, 1:]).sum(1),
    }
    for name, scores in rows.items():
        print(f"{name:40s} mAP {100 * mean_average_precision(scores, labels):.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
