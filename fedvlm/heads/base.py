"""What every head is: trainable parameters on a frozen CLIP, split into shared and private.

A head holds the parameters of ``num_slots`` clients at once: every trainable tensor has a
leading *slot* axis ``[S, ...]`` and every batch carries ``slot [B]``, the slot each sample's
client occupies. One slot (S = 1) is the sequential, one-client-at-a-time case; S > 1 trains
several clients in one forward pass (one text-encoder call for every client's prompts). A head
only has to keep a sample's computation inside its own slot; then each client's loss and update
are exactly its own.

Parameters are *shared* (sent to the server and aggregated) unless their name is listed in
``private`` (they never leave the client). The simulation moves client state in and out of slots
with :meth:`Head.read_slot` / :meth:`Head.write_slot`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from einops import repeat
from pydantic import Field
from torch import nn

from fedvlm.backbone.clip import FrozenCLIP
from fedvlm.batch import Batch, slot_mean  # noqa: F401  (re-exported: heads import them from here)
from fedvlm.sections import ComponentConfig, Section
from fedvlm.losses import asymmetric_loss


class ASLConfig(Section):
    """``head.asl``: the Asymmetric Loss every head trains with on multi-hot labels (FedMPT Eq. 3
    and 12: gamma_- = ``gamma_neg``, gamma_+ = ``gamma_pos``, the hard threshold c = ``clip``).

    The defaults are the ASL authors' training setting (Ridnik et al., ICCV 2021, the reference
    ``train.py``: gamma_neg 4, gamma_pos 0, clip 0.05), fedvlm's setting since issue 5. FedMPT
    only states gamma_- >= gamma_+ (Sec. 3.1) and ablates the values in its Sup. Mat. B, which is
    not in papers/fedmpt.txt; the authors' code (``Launch_FL.py --neg 2 --pos 1``) and DualCoOp's
    (``ASL_GAMMA_NEG = 2``, ``ASL_GAMMA_POS = 1``) train with 2 / 1 and clip 0.05. The key lives
    on every head, so a sweep over ``head.name`` keeps one loss for every method
    (docs/MULTILABEL.md, "ASL settings"); single-label heads ignore it (cross-entropy).
    """

    gamma_neg: float = Field(4.0, ge=0)
    gamma_pos: float = Field(0.0, ge=0)
    clip: float = Field(0.05, ge=0, lt=1)


class HeadConfig(ComponentConfig):
    """``head:`` section; each head extends it with its own keys."""

    asl: ASLConfig = Field(default_factory=ASLConfig)


@dataclass
class RoundContext:
    round_index: int
    global_shared: dict[str, torch.Tensor]  # the server's shared state sent this round
    # shared parameters each client uploaded last round (what the server saw), by client id
    previous_uploads: dict[int, dict[str, torch.Tensor]]


class Head(nn.Module):
    """Base class. Subclasses define ``Config``, create slot-stacked parameters, ``forward``."""

    Config: type[HeadConfig] = HeadConfig
    private: tuple[str, ...] = ()  # names of parameters that never leave the client
    # What the head's batches must carry; fedvlm.inputs.build turns this into the batch source:
    #   "image"             batch.image [B, D], the cached pooled image embeddings
    #   "patches"           batch.patches [B, M, D], the cached projected patch tokens
    #   "pixels"            batch.pixels [B, 3, H, W]: the head runs the image encoder itself (no
    #                       augmented views; batch.image still holds the cached pooled features)
    #   "captions"          each image's captions, batch.extras["caption_*"] (fedvlm.inputs.captions)
    #   "caption_tokens"    + their token features and sentence structure (hierarchical attention)
    #   "caption_token_ids" + their token ids (heads that run the text tower themselves)
    #   "bands"             batch.extras["bands"], multispectral bands (fedvlm.inputs.bands)
    inputs: ClassVar[frozenset[str]] = frozenset({"image"})
    # begin_round's context.previous_uploads is filled only for heads that read it (FedRSCLIP's
    # DPAC): keeping every client's upload costs K copies of the shared state (86 M x K for the
    # full-model baseline).
    needs_previous_uploads: bool = False
    # What ``forward`` returns at evaluation, matched against the task's ``expects``: "scores"
    # ([B, C] class scores) or "embeddings" (retrieval heads: [B, 1 + K, D], an image and its
    # K captions, see fedvlm.heads.retrieval).
    output_kind: str = "scores"
    # True: the head's text inputs differ per image (CoCoOp's image-conditioned prompts), so
    # evaluation does not memoise text forwards (fedvlm.evaluation: each would be stored once, never reused)
    text_per_image: bool = False

    def __init__(self, config: HeadConfig, backbone: FrozenCLIP, classnames: list[str], template: str,
                 num_slots: int = 1, seed: int = 0):
        super().__init__()
        self.config = config
        # Not a registered submodule: the backbone is frozen, shared by every head and client,
        # and must not appear in the head's parameters or state.
        object.__setattr__(self, "backbone", backbone)
        self.classnames = list(classnames)
        self.template = template
        self.num_slots = num_slots
        self.generator = torch.Generator().manual_seed(int(seed))

    # ---------------------------------------------------------------- parameters and roles

    def slot_parameter(self, initial: torch.Tensor) -> nn.Parameter:
        """An ``[S, *initial.shape]`` parameter, every slot starting from ``initial``."""
        return nn.Parameter(repeat(initial.detach(), "... -> s ...", s=self.num_slots).clone())

    def trainable(self) -> dict[str, nn.Parameter]:
        return {name: p for name, p in self.named_parameters() if p.requires_grad}

    def shared_names(self) -> list[str]:
        return [name for name in self.trainable() if name not in self.private]

    def private_names(self) -> list[str]:
        return [name for name in self.trainable() if name in self.private]

    def read_slot(self, slot: int, names: list[str] | None = None) -> dict[str, torch.Tensor]:
        """A detached copy of one client's parameters (``clone``: the slot is reused next)."""
        params = self.trainable()
        return {name: params[name].detach()[slot].clone() for name in (names or list(params))}

    @torch.no_grad()
    def write_slot(self, slot: int, state: dict[str, torch.Tensor]) -> None:
        params = self.trainable()
        for name, value in state.items():
            params[name][slot].copy_(value)

    def parameters_per_client(self, names: list[str] | None = None) -> int:
        params = self.trainable()
        return sum(params[name][0].numel() for name in (names if names is not None else list(params)))

    # ---------------------------------------------------------------------------- compute

    def forward(self, batch: Batch) -> torch.Tensor:
        """Class logits ``[B, C]``."""
        raise NotImplementedError

    def training_loss(self, batch: Batch) -> torch.Tensor:
        """Per-slot loss ``[S]``: the mean loss of each client's samples (plus any regulariser)."""
        return slot_mean(self.sample_loss(self(batch), batch.labels), batch.slot, self.num_slots)

    def sample_loss(self, scores: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Per-sample loss ``[B]``: cross-entropy for class labels ``[B]``; for multi-label
        targets ``[B, C]`` in {1, 0, -1} the Asymmetric Loss with ``head.asl``'s settings summed
        over classes (unknown labels excluded), the loss FedMPT trains every method with."""
        if labels.dim() == 1:
            return F.cross_entropy(scores, labels, reduction="none")
        asl = self.config.asl
        return asymmetric_loss(scores, labels, gamma_neg=asl.gamma_neg, gamma_pos=asl.gamma_pos, clip=asl.clip,
                               reduction="none").sum(-1)

    def begin_round(self, context: "RoundContext") -> None:
        """Hook called before a rank trains its clients of a round (e.g. FedRSCLIP's alignment
        term needs the shared prompts the server received last round)."""

    def begin_pass(self, clients: list[int]) -> None:
        """Hook called when clients are loaded into slots for training: ``clients[s]`` is the id
        of the client in slot s (e.g. FedRSCLIP's DPAC leaves the client's own upload out)."""

    def after_step(self, active: torch.Tensor) -> None:
        """Hook called after every optimizer step of local training; ``active [S]`` marks the
        slots that stepped (e.g. RDB's EMA teacher follows its slot's parameters)."""

    def output_shape(self, data) -> tuple[int, ...]:
        """The shape of one row of the evaluation table (what ``forward`` returns per sample)."""
        return (len(self.classnames),)

    @classmethod
    def input_options(cls, config: HeadConfig) -> dict[str, dict[str, Any]]:
        """Settings of declared inputs that come from the head's own config section, by input
        name (none by default; the multispectral student's band count and size)."""
        return {}

    def server_model(self, initial: dict[str, torch.Tensor], global_shared: dict[str, torch.Tensor]
                     ) -> dict[str, torch.Tensor]:
        """The parameters the server model is evaluated with: the aggregated shared parameters
        and the private ones at their initial value. A head whose paper reads the global model
        differently overrides this (e.g. FedOTP's ``global_model: global_only``)."""
        return {**initial, **global_shared}


def normalize(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x, dim=-1)
