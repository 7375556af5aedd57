"""Heads: the small trainable parts on the frozen CLIP. Importing this package registers them all."""

from fedvlm.heads.base import Batch, Head, HeadConfig, slot_mean
from fedvlm.heads.registry import HEADS
from fedvlm.heads import coop, zeroshot  # noqa: F401  (registration)
from fedvlm.heads import fedotp, fedpgp, fedrsclip, full_model, maple, otdpp  # noqa: F401  (registration)

__all__ = ["HEADS", "Head", "HeadConfig", "Batch", "slot_mean"]
