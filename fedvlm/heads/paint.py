"""PAINT's fine-tuning stage ("Mind the Modality Gap" Sec. III-A, Algorithm 1 lines 33-36):
fine-tune CLIP's image encoder on the patching task with the frozen prompt-ensembled text head as
the classifier, so no task-specific parameter is added.

The fine-tuning machinery is the full-model baseline's (fedvlm/heads/full_model.py: one slot's
copy of the image encoder per client, run with ``torch.func.functional_call``); here its
classifier is the frozen class embeddings of :func:`fedvlm.patching.classifier.class_embeddings`
(``templates``, default the dataset's template) with no bias, so only the encoder trains and the
server averages it (federated PAINT: clients fine-tune, the server averages, and the pipeline
interpolates the average with the zero-shot weights, fedvlm/patching/pipeline.py). Multi-label
patching tasks (BigEarthNet) use ``multilabel_loss`` (fedvlm/patching/losses.py).
"""

from __future__ import annotations

import torch

from fedvlm.heads.full_model import FullModelConfig, FullModelHead
from fedvlm.heads.registry import HEADS
from fedvlm.patching.classifier import class_embeddings
from fedvlm.patching.losses import MultiLabelLoss, label_loss


class PaintConfig(FullModelConfig):
    templates: list[str] | None = None  # prompt ensemble; null: the dataset's template
    multilabel_loss: MultiLabelLoss = "soft_ce"


@HEADS.register("paint")
class PaintHead(FullModelHead):
    Config = PaintConfig

    def __init__(self, config: PaintConfig, backbone, classnames, template, num_slots=1, seed=0):
        super().__init__(config, backbone, classnames, template, num_slots, seed)
        weight = class_embeddings(backbone, list(classnames), config.templates or [template])
        with torch.no_grad():
            self.classifier_weight.copy_(weight.expand_as(self.classifier_weight))
            self.classifier_bias.zero_()
        self.classifier_weight.requires_grad_(False)  # frozen: not trained, not sent
        self.classifier_bias.requires_grad_(False)

    def sample_loss(self, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return label_loss(scores, labels, self.config.multilabel_loss)
