"""How many regions FedMPT's condition-guided OT spreads each class over (docs/MULTILABEL.md, "The
condition-guided OT reading"): the mean over test images, conditions and classes of
``fedvlm.heads.fedmpt.effective_regions`` of the head's region weights, with the zero-shot mAP of
the same weights' prediction, for the initial head of a config and, given run folders, for their
trained server models (``checkpoints/last.pt``'s aggregated shared parameters).

    python scripts/fedmpt_effective_regions.py experiments/synthetic/multilabel.yaml \
        [--override head.ot_marginals=patches_to_conditions] [--run results/<name>/<run folder> ...]
"""

from __future__ import annotations

import argparse

import fedvlm  # noqa: F401  (torchvision compatibility first)
import torch

from fedvlm.backbone.cache import image_features
from fedvlm.backbone.clip import FrozenCLIP
from fedvlm.config import load_config
from fedvlm.data.datasets import DATASETS, load_dataset
from fedvlm.heads import HEADS, Batch
from fedvlm.heads.fedmpt import effective_regions
from fedvlm.metrics import mean_average_precision


def measure(head, pooled: torch.Tensor, patches: torch.Tensor, labels: torch.Tensor, batch_size: int = 50) -> dict:
    """Mean effective regions (of M) and test mAP (%) of ``head`` in slot 0 on the given rows."""
    counts, scores = [], []
    with torch.no_grad():
        for start in range(0, len(pooled), batch_size):
            rows = slice(start, start + batch_size)
            batch = Batch(labels=labels[rows], slot=torch.zeros(len(pooled[rows]), dtype=torch.long),
                          image=pooled[rows], patches=patches[rows])
            weights = head.region_weights(batch)  # [B, N, M, C]
            counts.append(effective_regions(weights).flatten())
            scores.append(head(batch))
    regions = weights.shape[-2]
    return {"effective_regions": float(torch.cat(counts).mean()), "of": regions,
            "mAP": 100 * mean_average_precision(torch.cat(scores), labels)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config", help="an experiment YAML with head.name: fedmpt")
    parser.add_argument("--override", action="append", default=[], help="dotted key=value, as for fedvlm run")
    parser.add_argument("--run", action="append", default=[], help="a run folder whose final server model to measure")
    args = parser.parse_args(argv)
    config = load_config(args.config, args.override)
    backbone = FrozenCLIP.load(config.model.name, config.model.pretrained)
    dataset = load_dataset(config.data.dataset, config.data.root)
    test = torch.from_numpy(dataset.official_splits["test"])
    features = image_features(backbone, [dataset.paths[i] for i in test.tolist()], patches=True)
    labels = torch.from_numpy(dataset.labels)[test]
    template = config.data.template or DATASETS.get(config.data.dataset).template
    head = HEADS.get(config.head.name)(config.head, backbone, dataset.classnames, template, num_slots=1, seed=config.seed)
    initial = head.read_slot(0)
    print(f"initial head ({config.head.name}, {getattr(config.head, 'ot_marginals', '-')}):",
          measure(head, features.pooled, features.patches, labels))
    for folder in args.run:
        checkpoint = torch.load(f"{folder}/checkpoints/last.pt", map_location="cpu", weights_only=False)
        head.write_slot(0, head.server_model(initial, checkpoint["global_shared"]))
        print(f"{folder}:", measure(head, features.pooled, features.patches, labels))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
