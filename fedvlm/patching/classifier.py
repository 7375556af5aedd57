"""The frozen zero-shot classification head of both stages (Algorithm 1, ``cls_head``).

For every class, each template is filled with the class name and encoded by the frozen text
tower; the normalised embeddings are averaged and normalised again (CLIP's prompt ensembling).
Logits are ``logit_scale * normalise(image) @ W^T`` with ``W [C, D]`` these class embeddings.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# CLIP's EuroSAT prompts (Radford et al. 2021, the satellite set reused by the paper, Sec. IV-B).
SATELLITE_TEMPLATES = ("a centered satellite photo of {}.", "a centered satellite photo of a {}.",
                       "a centered satellite photo of the {}.")


@torch.no_grad()
def class_embeddings(backbone, classnames: list[str], templates: list[str]) -> torch.Tensor:
    """``[C, D]``: the normalised mean of every template's normalised text embedding per class."""
    per_template = torch.stack([F.normalize(backbone.encode_text([t.format(c) for c in classnames]), dim=-1)
                                for t in templates])  # [T, C, D]
    return F.normalize(per_template.mean(0), dim=-1)


def zero_shot_logits(backbone, image_embeddings: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
    """``[B, C]`` = logit_scale * cos(image, class) (Algorithm 1 lines 14-15)."""
    return backbone.logit_scale * F.normalize(image_embeddings, dim=-1) @ classes.T
