"""Label losses through the frozen text head, and the alignment objective (Eq. 1).

Both stages classify through CLIP's text head at CLIP's temperature (logit_scale = 100 for real
CLIP). For single-label data the loss is cross-entropy. For multi-label data (BigEarthNet) the
paper still writes "CE" (Eq. 1, Sec. V: "a multi-label optimization objective for the label loss
part"); three readings are offered (``multilabel_loss``):

* ``soft_ce`` (default): cross-entropy against the multi-hot target normalised to sum to one,
  -sum_c (y_c / sum y) log softmax(z)_c. It keeps the softmax over classes that CLIP's scaled
  cosine logits are made for.
* ``bce``: binary cross-entropy per class on the same logits (saturates at CLIP's temperature).
* ``asl``: the Asymmetric Loss fedvlm's multi-label heads train with.

Unknown labels (-1) are left out of all three.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from fedvlm.losses import asymmetric_loss, masked_binary_cross_entropy

MultiLabelLoss = Literal["soft_ce", "bce", "asl"]


def label_loss(logits: torch.Tensor, labels: torch.Tensor, multilabel: MultiLabelLoss = "soft_ce") -> torch.Tensor:
    """Per-sample loss ``[B]``: labels ``[B]`` class ids, or ``[B, C]`` in {1, 0, -1}."""
    if labels.dim() == 1:
        return F.cross_entropy(logits, labels, reduction="none")
    if multilabel == "soft_ce":
        positive = (labels > 0).to(logits.dtype)
        target = positive / positive.sum(-1, keepdim=True).clamp(min=1)  # a row without positives adds 0
        return -(target * logits.log_softmax(-1)).sum(-1)
    if multilabel == "bce":
        known = (labels >= 0).sum(-1).clamp(min=1)
        return masked_binary_cross_entropy(logits, labels, reduction="none").sum(-1) / known
    return asymmetric_loss(logits, labels, reduction="none").sum(-1)


def alignment_loss(student: torch.Tensor, teacher: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor,
                   terms: Literal["mse_ce", "mse", "ce"] = "mse_ce", ce_weight: float = 0.05,
                   multilabel: MultiLabelLoss = "soft_ce") -> torch.Tensor:
    """Eq. 1 per sample: ``MSE(E_i, E~_i) + lambda * CE(y_pred, y_true)`` -> ``[B]``.

    student, teacher: ``[B, D]`` embeddings (MSE is the mean over the D entries, torch's
    ``MSELoss``); logits: ``[B, C]`` of the student through the frozen text head. ``terms``
    keeps both or one of the two (the loss variants of Tables III-IV).
    """
    loss = torch.zeros(len(student), dtype=student.dtype, device=student.device)
    if terms in ("mse_ce", "mse"):
        loss = loss + ((student - teacher) ** 2).mean(-1)
    if terms in ("mse_ce", "ce"):
        loss = loss + (ce_weight if terms == "mse_ce" else 1.0) * label_loss(logits, labels, multilabel)
    return loss
