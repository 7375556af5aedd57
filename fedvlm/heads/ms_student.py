"""The aligned multispectral student ("Mind the Modality Gap" Sec. III-B, Algorithm 1 ``align``).

A student image encoder for the multispectral bands (a ViT from timm, e.g. ``vit_small_patch16_224``
with ``in_chans`` = the number of bands, as SSL4EO-S12's ViT-S/16; optionally loaded from a
checkpoint) plus a linear projection to CLIP's embedding width when the widths differ, is
distilled into the (patched) CLIP image space:

    E_i = M_patched(x_i)         the teacher: CLIP's image encoder on the RGB image, frozen, so its
                                 embeddings are the run's cached image features (model.pretrained
                                 is the patched checkpoint)
    E~_i = P(M_sat(x~_i))        the student on the bands of the same scene
    loss = MSE(E_i, E~_i) + lambda * CE(h(E~_i), y)         Eq. 1, lambda = 0.05

with h the frozen prompt-ensembled text head (fedvlm/patching/classifier.py). ``loss: mse`` or
``ce`` keeps one term (the loss variants of Tables III-IV). Evaluation (``forward``) is the
student's zero-shot classification through h: accuracy or mAP by the dataset's task. Federated:
each client distils on its own scenes and the server averages the student (every parameter is
shared). Like the full-model head, a slot holds a whole student: ``runtime.clients_per_pass: 1``
for ViT-S-sized students.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from pydantic import Field
from torch import nn
from torch.func import functional_call

from fedvlm.sections import Section
from fedvlm.errors import ConfigError
from fedvlm.heads.base import Batch, Head, HeadConfig, normalize, slot_mean
from fedvlm.heads.registry import HEADS
from fedvlm.patching.classifier import class_embeddings, zero_shot_logits
from fedvlm.patching.losses import MultiLabelLoss, alignment_loss


class StudentConfig(Section):
    architecture: str = "vit_small_patch16_224"  # a timm model name
    in_channels: int = Field(13, gt=0)  # bands: 13 for EuroSAT-MS, 12 for BigEarthNet-S2
    image_size: int = Field(224, gt=0)  # bands are resized to this
    kwargs: dict[str, Any] = {}  # more timm.create_model arguments (patch_size, embed_dim, depth, ...)
    checkpoint: str | None = None  # a state dict for the student (e.g. SSL4EO-S12 ViT-S/16 weights)
    checkpoint_prefix: str = ""  # stripped from checkpoint keys (MoCo: "module.base_encoder.")


class MSStudentConfig(HeadConfig):
    student: StudentConfig = StudentConfig()
    loss: Literal["mse_ce", "mse", "ce"] = "mse_ce"
    ce_weight: float = Field(0.05, ge=0)  # lambda
    mse_on: Literal["raw", "normalized"] = "raw"  # the embeddings MSE compares
    projection: Literal["auto", "always"] = "auto"  # auto: only when the widths differ
    templates: list[str] | None = None
    multilabel_loss: MultiLabelLoss = "soft_ce"


def create_student(config: StudentConfig) -> nn.Module:
    import timm

    try:
        student = timm.create_model(config.architecture, pretrained=False, in_chans=config.in_channels,
                                    num_classes=0, img_size=config.image_size, **config.kwargs)
    except (RuntimeError, TypeError, ValueError) as error:
        raise ConfigError(f"head.student: cannot build {config.architecture} with {config.kwargs} "
                          f"({type(error).__name__}: {str(error).splitlines()[0][:160]})") from None
    if config.checkpoint:
        state = torch.load(config.checkpoint, map_location="cpu", weights_only=True)
        state = state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state
        prefix = config.checkpoint_prefix
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        missing, unexpected = student.load_state_dict(state, strict=False)
        if len(missing) == len(list(student.state_dict())):
            raise ConfigError(f"head.student.checkpoint: no key of {config.checkpoint} matches {config.architecture} "
                              f"(set checkpoint_prefix?)")
    return student.eval()


@HEADS.register("ms_student")
class MSStudentHead(Head):
    Config = MSStudentConfig
    inputs = frozenset({"image", "bands"})  # image: the teacher embeddings E_i

    def __init__(self, config: MSStudentConfig, backbone, classnames, template, num_slots=1, seed=0):
        super().__init__(config, backbone, classnames, template, num_slots, seed)
        with torch.random.fork_rng():
            torch.manual_seed(seed)
            student = create_student(config.student)
        object.__setattr__(self, "student", student)  # a template module; each slot's weights are ours
        self._names = {name.replace(".", "__"): name for name, _ in student.named_parameters()}
        self.encoder = nn.ParameterDict({k: self.slot_parameter(student.get_parameter(n))
                                         for k, n in self._names.items()})
        width, dim = student.num_features, backbone.embed_dim
        if config.projection == "always" or width != dim:
            bound = 1 / width ** 0.5
            weight = (torch.rand(width, dim, generator=self.generator) * 2 - 1) * bound
            self.projection_weight = self.slot_parameter(weight)  # [S, width, D]
            self.projection_bias = self.slot_parameter(torch.zeros(dim))
        self.register_buffer("class_features", class_embeddings(backbone, list(classnames),
                                                                config.templates or [template]), persistent=False)

    def embed(self, batch: Batch) -> torch.Tensor:
        """The student's embeddings ``[B, D]`` of the batch's bands (E~_i)."""
        bands = batch.extras["bands"]
        out = None
        for slot in batch.present_slot_ids():
            rows = torch.nonzero(batch.slot == slot).flatten()
            params = {name: self.encoder[key][slot] for key, name in self._names.items()}
            features = functional_call(self.student, params, (bands[rows],))
            if hasattr(self, "projection_weight"):
                features = features @ self.projection_weight[slot] + self.projection_bias[slot]
            if out is None:
                out = features.new_zeros(len(batch.slot), features.shape[-1])
            out[rows] = features
        return out

    def forward(self, batch: Batch) -> torch.Tensor:
        return zero_shot_logits(self.backbone, self.embed(batch), self.class_features)

    def training_loss(self, batch: Batch) -> torch.Tensor:
        student, teacher = self.embed(batch), batch.image
        logits = zero_shot_logits(self.backbone, student, self.class_features)
        if self.config.mse_on == "normalized":
            student, teacher = normalize(student), normalize(teacher)
        per_sample = alignment_loss(student, teacher, logits, batch.labels, self.config.loss, self.config.ce_weight,
                                    self.config.multilabel_loss)
        return slot_mean(per_sample, batch.slot, self.num_slots)

    @classmethod
    def input_options(cls, config: MSStudentConfig) -> dict:
        return {"bands": {"channels": config.student.in_channels, "size": config.student.image_size,
                          "channels_key": "head.student.in_channels"}}
