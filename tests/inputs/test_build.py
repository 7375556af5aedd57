"""A head's declared inputs -> its batch source: every registered head declares known inputs, the
sources are the right ones, and a dataset that lacks what a head reads is one line."""

import numpy as np
import pytest
import torch

from fedvlm.backbone.cache import FeatureTable
from fedvlm.config import load_config
from fedvlm.data.datasets import load_dataset
from fedvlm.errors import ConfigError
from fedvlm.heads import HEADS
from fedvlm.inputs.bands import BandBatches, band_batches
from fedvlm.inputs.build import KNOWN_INPUTS, batch_source, check_inputs, feature_request
from fedvlm.inputs.captions import CaptionBatches, caption_batches
from fedvlm.inputs.features import FeatureBatches, PixelBatches

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from fedvlm.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("data")
    generate_dataset(root / "synthetic_world", layouts=["bigearthnet", "rsicd"], num_images=12, seed=3, num_styles=1)
    return root


@pytest.mark.parametrize("name", [n for n in HEADS.names() if not n.startswith("test_")])
def test_every_registered_head_declares_known_inputs_and_no_batch_source(name):
    head = HEADS.get(name)
    inputs = check_inputs(head)
    assert inputs and inputs <= KNOWN_INPUTS
    assert inputs & {"image", "pixels"}, "every head reads images, as features or as pixels"
    assert not hasattr(head, "batch_source"), "batch sources live in fedvlm.inputs, not on heads"


def test_an_unknown_input_is_refused():
    class Typo(HEADS.get("coop")):
        inputs = frozenset({"image", "patch"})

    with pytest.raises(TypeError, match=r"Typo.inputs: unknown \['patch'\]"):
        check_inputs(Typo)


def test_feature_request_follows_the_inputs():
    assert feature_request(HEADS.get("coop"), 2) == {"patches": False, "views": 2}
    assert feature_request(HEADS.get("dualcoop"), 0) == {"patches": True, "views": 0}
    assert feature_request(HEADS.get("full_model"), 2) == {"patches": False, "views": 0}  # encodes pixels itself


def _features(n: int, dim: int, patches: bool = False) -> FeatureTable:
    g = torch.Generator().manual_seed(0)
    return FeatureTable(torch.randn(n, dim, generator=g), torch.randn(n, 4, dim, generator=g) if patches else None)


def test_sources_by_declared_inputs(world, tiny_backbone):
    dim = tiny_backbone.embed_dim
    scenes = load_dataset("synthetic_bigearthnet", world)
    rows = np.arange(len(scenes))
    config = load_config(overrides={"name": "x", "data": {"dataset": "synthetic_bigearthnet", "root": str(world)},
                                    "partition": {"name": "iid"}, "head": {"name": "dualcoop"}})
    source = batch_source(config, HEADS.get("dualcoop"), scenes, rows, tiny_backbone, _features(len(rows), dim, True),
                          scenes.labels, None, "cpu")
    assert type(source) is FeatureBatches
    assert source.batch(rows[:3], np.zeros(3, dtype=int)).patches.shape == (3, 4, dim)

    config = load_config(overrides={"name": "x", "data": {"dataset": "synthetic_bigearthnet", "root": str(world)},
                                    "partition": {"name": "iid"}, "head": {"name": "ms_student", "student": {
                                        "architecture": "vit_small_patch16_224", "in_channels": 12, "image_size": 16,
                                        "kwargs": {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}}}})
    source = batch_source(config, HEADS.get("ms_student"), scenes, rows, tiny_backbone, _features(len(rows), dim),
                          scenes.labels, None, "cpu")
    assert type(source) is BandBatches and type(source.images) is FeatureBatches
    assert source.batch(rows[:2], np.zeros(2, dtype=int)).extras["bands"].shape == (2, 12, 16, 16)

    captioned = load_dataset("synthetic_rsicd", world)
    rows = np.arange(len(captioned))
    config = load_config(overrides={"name": "x", "data": {"dataset": "synthetic_rsicd", "root": str(world)},
                                    "head": {"name": "retrieval_full_model"}})
    source = batch_source(config, HEADS.get("retrieval_full_model"), captioned, rows, tiny_backbone,
                          _features(len(rows), dim), captioned.labels, None, "cpu")
    assert type(source) is CaptionBatches and type(source.images) is PixelBatches
    assert source.token_ids and not source.tokens  # caption_token_ids declared, caption_tokens not
    batch = source.batch(rows[:2], np.zeros(2, dtype=int))
    assert batch.pixels.shape[0] == 2 and batch.extras["caption_token_ids"].shape[:2] == (2, 1)


def test_a_dataset_without_captions_or_bands_is_one_line(world, tiny_backbone):
    scenes = load_dataset("synthetic_bigearthnet", world)
    captioned = load_dataset("synthetic_rsicd", world)
    images = FeatureBatches(torch.zeros(len(scenes), 4), None, torch.zeros(len(scenes)), "cpu")
    with pytest.raises(ConfigError, match=r"^data.dataset: synthetic_bigearthnet has no captions; retrieval heads"):
        caption_batches(images, scenes, np.arange(3), tiny_backbone, "cpu", dataset_name="synthetic_bigearthnet",
                        augment_views=0)
    with pytest.raises(ConfigError, match=r"^data.augment_views: retrieval heads draw captions"):
        caption_batches(images, captioned, np.arange(3), tiny_backbone, "cpu", dataset_name="synthetic_rsicd",
                        augment_views=2)
    with pytest.raises(ConfigError, match=r"^data.dataset: synthetic_rsicd has no multispectral bands"):
        band_batches(images, captioned, np.arange(3), "cpu", dataset_name="synthetic_rsicd", channels=12, size=16,
                     channels_key="head.student.in_channels")
    with pytest.raises(ConfigError, match=r"^head.student.in_channels: 13, but synthetic_bigearthnet has 12 bands$"):
        band_batches(images, scenes, np.arange(3), "cpu", dataset_name="synthetic_bigearthnet", channels=13, size=16,
                     channels_key="head.student.in_channels")


def test_old_import_paths_re_export_the_moved_sources():
    import fedvlm.client.batches
    import fedvlm.patching.batches
    import fedvlm.retrieval.batches

    assert fedvlm.client.batches.FeatureBatches is FeatureBatches
    assert fedvlm.client.batches.PixelBatches is PixelBatches
    assert fedvlm.retrieval.batches.CaptionBatches is CaptionBatches
    assert fedvlm.patching.batches.BandBatches is BandBatches
