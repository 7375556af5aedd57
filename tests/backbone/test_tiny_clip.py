"""The tiny CLIP pretrained on the synthetic world: loads like a real open_clip checkpoint, knows
the world's scene classes zero-shot, and is trained deterministically."""

import hashlib
import json

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from fedvlm.backbone.pretrain_tiny import (
    SHIPPED_CHECKPOINT,
    TINY_IMAGE_SIZE,
    TINY_MODEL_NAME,
    ZERO_SHOT_TEMPLATE,
    encode_text_trimmed,
    pretrain_tiny,
    register_model_configs,
    tiny_checkpoint_path,
)
from fedvlm.data.synthetic import WORLD, generate_arrays, sample_styles


@pytest.fixture(scope="module")
def shipped():
    register_model_configs()
    path = tiny_checkpoint_path(build_if_missing=False)
    model, _, preprocess = open_clip.create_model_and_transforms(TINY_MODEL_NAME, pretrained=str(path))
    model.eval()
    return path, model, preprocess


def test_shipped_checkpoint_loads_through_the_open_clip_pretrained_path(shipped):
    path, model, preprocess = shipped
    assert path == SHIPPED_CHECKPOINT
    stored = load_file(str(path))
    state = model.state_dict()
    assert set(stored) == set(state)
    for name, tensor in stored.items():
        assert torch.equal(state[name], tensor.to(state[name].dtype)), name
    record = json.loads(path.with_name(path.name + ".json").read_text())
    assert record["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert 0.4 <= record["zero_shot"]["accuracy"] <= 0.8
    assert model.visual.image_size == (TINY_IMAGE_SIZE, TINY_IMAGE_SIZE)


def test_zero_shot_scene_accuracy_is_far_above_chance(shipped):
    """Plain open_clip calls on a fresh downstream split (its own seed and client styles)."""
    _, model, preprocess = shipped
    images, labels, _, _ = generate_arrays(320, seed=123, styles=sample_styles(4, seed=123))
    tokenizer = open_clip.get_tokenizer(TINY_MODEL_NAME)
    with torch.no_grad():
        pixels = torch.stack([preprocess(Image.fromarray(image)) for image in images])
        image_features = model.encode_image(pixels, normalize=True)
        prompts = tokenizer([ZERO_SHOT_TEMPLATE.format(name) for name in WORLD.scene_names])
        text_features = model.encode_text(prompts, normalize=True)
    accuracy = float(((image_features @ text_features.T).argmax(-1).numpy() == labels).mean())
    chance = 1 / len(WORLD.scene_names)
    assert accuracy >= 3 * chance, accuracy


def test_trimmed_text_encoder_equals_encode_text(shipped):
    _, model, _ = shipped
    tokens = open_clip.get_tokenizer(TINY_MODEL_NAME)(["a harbor.", "many cars parked in rows next to a building."])
    with torch.no_grad():
        assert torch.allclose(encode_text_trimmed(model, tokens), model.encode_text(tokens, normalize=True), atol=1e-5)


def test_pretraining_is_deterministic(tmp_path, one_thread):
    """Two short runs with the same seed write byte-identical checkpoints."""
    runs = [pretrain_tiny(tmp_path / f"run{i}.safetensors", seed=3, num_images=32, epochs=1, batch_size=16,
                          max_steps=2, workers=1, eval_images=0, log=lambda _: None) for i in range(2)]
    assert runs[0]["steps"] == 2 and np.isfinite(runs[0]["final_loss"])
    assert runs[0]["sha256"] == runs[1]["sha256"]
    first, second = (load_file(str(tmp_path / f"run{i}.safetensors")) for i in range(2))
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_orientation_moves_region_labels_with_the_pixels():
    """A flipped/transposed image's region grid is the grid of the flipped/transposed pixel map."""
    from fedvlm.backbone.pretrain_tiny import orient
    from fedvlm.data.synthetic import generate
    from fedvlm.data.synthetic.regions import region_labels, region_pixel_labels

    scene = next(generate(1, seed=5, size=64))
    pixels = torch.from_numpy(region_pixel_labels(scene))[None]  # [1, 64, 64]
    grid = torch.from_numpy(region_labels(scene, 8))[None]  # [1, 8, 8]
    for flip in ([True, False], [False, True], [True, True]):
        flip = torch.tensor([flip])
        moved = orient(pixels, flip)[0].numpy()
        cells = moved.reshape(8, 8, 8, 8).transpose(0, 2, 1, 3).reshape(64, 64)
        expected = np.array([np.bincount(c, minlength=33).argmax() for c in cells]).reshape(8, 8)
        assert np.array_equal(orient(grid, flip)[0].numpy(), expected)
        assert not np.array_equal(orient(grid, flip)[0].numpy(), grid[0].numpy())  # the flip did something


def test_region_alignment_loss_is_the_cross_entropy_over_region_texts():
    from fedvlm.backbone.pretrain_tiny import region_alignment_loss

    generator = torch.Generator().manual_seed(0)
    patches, texts = torch.randn(2, 3, 4, generator=generator), torch.randn(5, 4, generator=generator)
    targets = torch.tensor([[0, 4, 2], [1, 1, 3]])
    expected = 0.0
    for b in range(2):
        for m in range(3):
            cos = [float(torch.nn.functional.cosine_similarity(patches[b, m], texts[r], dim=0)) for r in range(5)]
            logits = torch.tensor(cos) * 7.0
            expected += float(-torch.log_softmax(logits, 0)[targets[b, m]]) / 6
    assert abs(float(region_alignment_loss(patches, texts, targets, 7.0)) - expected) < 1e-5
