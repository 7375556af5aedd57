"""Heads: the small trainable parts on the frozen CLIP. Importing this package registers them all."""

from fedvlm.heads.base import Batch, Head, HeadConfig, slot_mean
from fedvlm.heads.registry import HEADS
from fedvlm.heads import coop, zeroshot  # noqa: F401  (registration)
from fedvlm.heads import fedotp, fedpgp, fedrsclip, full_model, maple, otdpp  # noqa: F401  (registration)
from fedvlm.heads import fedtpg, promptsrc, tcp  # noqa: F401  (registration; issue 13 baselines)
from fedvlm.heads import dualcoop, fedmpt, positive_coop  # noqa: F401  (registration; multi-label)
from fedvlm.heads import fedmvp, ram, scpnet  # noqa: F401  (registration; multi-label)
from fedvlm.heads import clip_adapter, rdb, retrieval_full_model  # noqa: F401  (registration; retrieval)
from fedvlm.heads import ms_student, paint  # noqa: F401  (registration; patching and alignment)
from fedvlm.heads import kgcoop  # noqa: F401  (registration; single-label baseline)
from fedvlm.heads import cocoop  # noqa: F401  (registration; single-label baseline)
from fedvlm.heads import prograd  # noqa: F401  (registration; single-label baseline)
from fedvlm.heads import plot  # noqa: F401  (registration; single-label baseline)

__all__ = ["HEADS", "Head", "HeadConfig", "Batch", "slot_mean"]
