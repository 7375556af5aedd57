"""The PAINT fine-tuning head and the multispectral student: frozen text head, what trains, Eq. 1,
slots, batched == sequential."""

import numpy as np
import pytest
import torch

from head_checks import CLASSES, TEMPLATE, TensorBatches, assert_batched_equals_sequential, perturb_slot
from fedvlm.heads.ms_student import MSStudentConfig, MSStudentHead
from fedvlm.heads.paint import PaintConfig, PaintHead
from fedvlm.patching.classifier import class_embeddings, zero_shot_logits
from fedvlm.patching.losses import alignment_loss

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors: one intra-op thread is faster

TEMPLATES = ["a photo of a {}.", "an aerial photo of a {}."]
STUDENT = {"architecture": "vit_small_patch16_224", "in_channels": 5, "image_size": 16,
           "kwargs": {"patch_size": 8, "embed_dim": 16, "depth": 1, "num_heads": 2}}


class BandTensorBatches(TensorBatches):
    """Random 5-band 16 px scenes beside the image features."""

    def __init__(self, backbone, count=24):
        super().__init__(backbone, count=count)
        self.bands = torch.randn(count, 5, 16, 16, generator=torch.Generator().manual_seed(3))

    def batch(self, rows, slot, train=True, views=None):
        batch = super().batch(rows, slot, train)
        batch.extras["bands"] = self.bands[torch.as_tensor(np.asarray(rows))]
        return batch


@pytest.fixture(scope="module")
def data(tiny_backbone):
    return BandTensorBatches(tiny_backbone)


def test_paint_classifies_through_the_frozen_prompt_ensemble_and_tunes_only_the_encoder(tiny_backbone, data):
    head = PaintHead(PaintConfig(name="paint", templates=TEMPLATES), tiny_backbone, CLASSES, TEMPLATE)
    batch = data.batch(np.arange(4), np.zeros(4))
    expected = zero_shot_logits(tiny_backbone, batch.image, class_embeddings(tiny_backbone, CLASSES, TEMPLATES))
    torch.testing.assert_close(head(batch), expected, atol=1e-4, rtol=1e-5)
    assert head.parameters_per_client() == sum(p.numel() for p in tiny_backbone.model.visual.parameters())
    assert not any(name.startswith("classifier") for name in head.trainable())


def _student(backbone, slots=1, **options):
    return MSStudentHead(MSStudentConfig(name="ms_student", student=STUDENT, templates=TEMPLATES, **options), backbone,
                         CLASSES, TEMPLATE, num_slots=slots, seed=0)


def test_student_loss_is_eq1_with_a_projection_to_clip_width(tiny_backbone, data):
    head = _student(tiny_backbone)
    assert head.projection_weight.shape == (1, 16, tiny_backbone.embed_dim)
    batch = data.batch(np.arange(6), np.zeros(6))
    student = head.embed(batch)
    logits = zero_shot_logits(tiny_backbone, student, class_embeddings(tiny_backbone, CLASSES, TEMPLATES))
    torch.testing.assert_close(head(batch), logits)
    expected = alignment_loss(student, batch.image, logits, batch.labels, "mse_ce", 0.05).mean()
    torch.testing.assert_close(head.training_loss(batch)[0], expected)
    head.training_loss(batch).sum().backward()
    assert head.encoder["patch_embed__proj__weight"].grad.abs().sum() > 0


def test_student_slots_are_independent_and_batched_equals_sequential(tiny_backbone, data):
    head = _student(tiny_backbone, slots=2)
    perturb_slot(head, 1)
    rows, slot = np.arange(4), np.array([0, 1, 1, 0])
    together = head(data.batch(rows, slot))
    alone = head(data.batch(rows[slot == 1], np.ones(2, dtype=int)))
    torch.testing.assert_close(together[torch.from_numpy(slot == 1)], alone, atol=1e-5, rtol=1e-5)
    assert_batched_equals_sequential(lambda slots: _student(tiny_backbone, slots), data, lr=0.01)
