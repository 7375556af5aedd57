"""Training losses, registered by name for configs: ``LOSSES.get("asl")(gamma_neg=4.0)``.

Multi-label targets are ``[B, C]`` with entries 1 (present), 0 (absent) and -1 (unknown: the
part-annotation benchmark masks labels, FedMPT Sec. 5). Unknown entries are not negatives:
they add exactly zero to the loss and to its gradient.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fedvlm.registry import Registry

LOSSES: Registry[type[nn.Module]] = Registry("loss")

Reduction = Literal["sum", "mean", "none"]


def asymmetric_loss(
    logits: Tensor,
    targets: Tensor,
    gamma_neg: float = 4.0,
    gamma_pos: float = 0.0,
    clip: float = 0.05,
    eps: float = 1e-8,
    focal_grad: bool = False,
    reduction: Reduction = "sum",
) -> Tensor:
    """Asymmetric Loss (Ridnik et al., ICCV 2021; FedMPT Eq. 3 and 12) on logits.

    logits: ``[B, C]``, turned into probabilities p = sigmoid(logits); targets: ``[B, C]`` in
    {1, 0, -1}. See :func:`asymmetric_loss_from_probabilities` for the formula and arguments.
    """
    return asymmetric_loss_from_probabilities(
        torch.sigmoid(logits), targets, gamma_neg, gamma_pos, clip, eps, focal_grad, reduction
    )


def asymmetric_loss_from_probabilities(
    probabilities: Tensor,
    targets: Tensor,
    gamma_neg: float = 4.0,
    gamma_pos: float = 0.0,
    clip: float = 0.05,
    eps: float = 1e-8,
    focal_grad: bool = False,
    reduction: Reduction = "sum",
) -> Tensor:
    """Asymmetric Loss on probabilities ``[B, C]`` in [0, 1] (heads return logits and train
    through :func:`asymmetric_loss`; FedMPT's P' is in logit units there, not a probability).

    Per entry, with p_m = max(p - clip, 0) (probability shifting: easy negatives below
    ``clip`` are discarded)::

        positive (y = 1): -(1 - p)^gamma_pos * log(p)
        negative (y = 0): -p_m^gamma_neg * log(1 - p_m)
        unknown (y = -1): 0

    FedMPT Eq. 12 prints the negative term without the shift; we follow its Eq. 3 and the ASL
    reference code, which shift. Logarithms are clamped at ``eps`` as in the reference code.
    focal_grad: let the gradient flow through the focusing weights (1 - p)^gamma, p_m^gamma.
    The default False treats them as constants, like the reference's
    ``disable_torch_grad_focal_loss=True``.
    reduction: "sum" over known entries (the reference), "mean" over known entries, or "none"
    (``[B, C]``, zeros at unknown entries).
    """
    known = targets >= 0
    positive = (targets > 0).to(probabilities.dtype)
    negative = 1 - positive
    shifted = (probabilities - clip).clamp(min=0)  # p_m; clip = 0 gives p back
    log_likelihood = positive * torch.log(probabilities.clamp(min=eps)) + negative * torch.log(
        (1 - shifted).clamp(min=eps)
    )
    if gamma_pos > 0 or gamma_neg > 0:
        with torch.set_grad_enabled(focal_grad and torch.is_grad_enabled()):
            # 1 - p_t: the probability of being wrong, (1 - p) for positives, p_m for negatives.
            wrongness = positive * (1 - probabilities) + negative * shifted
            focusing = torch.pow(wrongness, positive * gamma_pos + negative * gamma_neg)
        log_likelihood = log_likelihood * focusing
    # where() rather than a multiplication by the mask: an unknown entry must not even carry a
    # 0 * inf = nan gradient.
    loss = torch.where(known, -log_likelihood, torch.zeros_like(log_likelihood))
    return _reduce(loss, known, reduction)


def masked_binary_cross_entropy(logits: Tensor, targets: Tensor, reduction: Reduction = "mean") -> Tensor:
    """Multi-label binary cross-entropy on logits ``[B, C]``; targets in {1, 0, -1}, -1 ignored.

    reduction: "mean" over known entries (torch's default), "sum", or "none" (``[B, C]``).
    """
    known = targets >= 0
    loss = F.binary_cross_entropy_with_logits(logits, (targets > 0).to(logits.dtype), reduction="none")
    loss = torch.where(known, loss, torch.zeros_like(loss))
    return _reduce(loss, known, reduction)


def _reduce(loss: Tensor, known: Tensor, reduction: Reduction) -> Tensor:
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if reduction == "mean":
        return loss.sum() / known.sum().clamp(min=1)
    raise ValueError(f"reduction must be 'sum', 'mean' or 'none', got {reduction!r}")


@LOSSES.register("asl")
class AsymmetricLoss(nn.Module):
    """:func:`asymmetric_loss` as a module: ``AsymmetricLoss()(logits [B, C], targets [B, C])``."""

    def __init__(
        self,
        gamma_neg: float = 4.0,
        gamma_pos: float = 0.0,
        clip: float = 0.05,
        eps: float = 1e-8,
        focal_grad: bool = False,
        reduction: Reduction = "sum",
    ):
        super().__init__()
        self.gamma_neg, self.gamma_pos, self.clip, self.eps = gamma_neg, gamma_pos, clip, eps
        self.focal_grad, self.reduction = focal_grad, reduction

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return asymmetric_loss(
            logits, targets, self.gamma_neg, self.gamma_pos, self.clip, self.eps, self.focal_grad, self.reduction
        )

    def extra_repr(self) -> str:
        return f"gamma_neg={self.gamma_neg}, gamma_pos={self.gamma_pos}, clip={self.clip}, reduction={self.reduction!r}"


@LOSSES.register("bce")
class MaskedBCEWithLogitsLoss(nn.Module):
    """:func:`masked_binary_cross_entropy` as a module (multi-label, unknown labels ignored)."""

    def __init__(self, reduction: Reduction = "mean"):
        super().__init__()
        self.reduction = reduction

    def forward(self, logits: Tensor, targets: Tensor) -> Tensor:
        return masked_binary_cross_entropy(logits, targets, self.reduction)


# Single-label classification: logits [B, C], integer labels [B].
LOSSES.register("cross_entropy")(nn.CrossEntropyLoss)
