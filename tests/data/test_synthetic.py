"""The synthetic world: determinism, labels consistent with pixels, captions consistent with labels."""

import re

import numpy as np
import pytest

from fedvlm.data.synthetic import (
    WORLD,
    ClientStyle,
    generate,
    generate_arrays,
    render,
    sample_scene,
    sample_styles,
)
from fedvlm.data.synthetic.captions import COUNT_WORDS
from fedvlm.data.synthetic.render import MIN_VISIBLE_PIXELS
from fedvlm.data.synthetic.world import MATERIAL_INDEX, SENTINEL2_BANDS


@pytest.fixture(scope="module")
def scenes():
    """Ten scenes of every class, under four client styles."""
    return list(generate(10 * len(WORLD.scene_classes), seed=11, styles=sample_styles(4, seed=11)))


def test_catalogue_sizes():
    assert 10 <= len(WORLD.scene_classes) <= 20
    assert 15 <= len(WORLD.object_types) <= 20
    assert len(set(WORLD.scene_names)) == len(WORLD.scene_names)
    for scene_class in WORLD.scene_classes:
        assert set(scene_class.objects) <= set(WORLD.object_names), scene_class.name


def test_same_seed_same_bytes_different_seed_different_images():
    styles = sample_styles(3, seed=5)
    first = list(generate(12, seed=5, styles=styles, size=80))
    second = list(generate(12, seed=5, styles=styles, size=80))
    for a, b in zip(first, second):
        assert a.rgb.tobytes() == b.rgb.tobytes()
        assert a.bands.tobytes() == b.bands.tobytes()
        assert a.captions == b.captions and a.objects == b.objects and a.style_id == b.style_id
    other = list(generate(12, seed=6, styles=styles, size=80))
    assert all(a.rgb.tobytes() != b.rgb.tobytes() for a, b in zip(first, other))


def test_any_slice_regenerates_alone_and_workers_do_not_change_results():
    whole = list(generate(6, seed=2))
    tail = list(generate(3, seed=2, start=3))
    assert [s.rgb.tobytes() for s in whole[3:]] == [s.rgb.tobytes() for s in tail]
    rgb, labels, captions, style_ids = generate_arrays(80, seed=2, styles=sample_styles(2, 2), workers=2)
    rgb1, labels1, captions1, style_ids1 = generate_arrays(80, seed=2, styles=sample_styles(2, 2), workers=1)
    assert rgb.tobytes() == rgb1.tobytes() and captions == captions1
    assert (labels == labels1).all() and (style_ids == style_ids1).all()
    assert rgb.shape == (80, 64, 64, 3) and rgb.dtype == np.uint8


def test_classes_are_balanced_and_sizes_follow_the_argument(scenes):
    counts = np.bincount([s.label for s in scenes], minlength=len(WORLD.scene_classes))
    assert (counts == 10).all()
    assert all(s.rgb.shape == (64, 64, 3) and s.rgb.dtype == np.uint8 for s in scenes)
    big = next(generate(1, seed=0, size=96))
    assert big.rgb.shape == (96, 96, 3) and big.bands.shape == (96, 96, len(SENTINEL2_BANDS))


def test_listed_objects_are_visible_in_the_material_map(scenes):
    for scene in scenes:
        size = scene.rgb.shape[0]
        for obj in scene.objects:
            mask = scene.instance_map == obj.instance_id
            assert mask.sum() == obj.visible_pixels >= MIN_VISIBLE_PIXELS
            allowed = [MATERIAL_INDEX[m] for m in WORLD.object_type(obj.kind).materials]
            assert np.isin(scene.material_map[mask], allowed).all(), (scene.scene_class, obj.kind)
            ys, xs = np.nonzero(mask)
            assert obj.bbox == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
            assert 0 <= obj.bbox[0] < obj.bbox[2] <= size and 0 <= obj.bbox[1] < obj.bbox[3] <= size
        # the multi-label target is exactly the set of kinds with a visible instance
        assert scene.object_types == [n for n in WORLD.object_names if n in {o.kind for o in scene.objects}]
        visible_ids = {o.instance_id for o in scene.objects}
        for instance_id, kind in enumerate(scene.instance_kinds, start=1):
            if instance_id not in visible_ids:
                assert (scene.instance_map == instance_id).sum() < MIN_VISIBLE_PIXELS


def test_scene_classes_show_their_signature_objects(scenes):
    signature = {"airport": "runway", "harbor": "ship", "parking lot": "car", "forest": "tree",
                 "river": "river", "lake": "pond", "farmland": "crop_field", "freeway": "road"}
    for name, kind in signature.items():
        members = [s for s in scenes if s.scene_class == name]
        assert sum(kind in s.object_types for s in members) >= 0.8 * len(members), name


def _mentions(caption: str) -> list[tuple[str, str | None]]:
    """(object kind, count word or None) for every object noun in a caption."""
    found = []
    for obj in WORLD.object_types:
        for singular, plural in obj.nouns:
            for noun in (singular, plural):
                for match in re.finditer(rf"(?:^|\s)(?:(a few|lots of|[a-z]+) )?{noun}(?=[\s.,:]|$)", caption):
                    word = match.group(1) if match.group(1) in COUNT_WORDS else None
                    found.append((obj.name, word))
    return found


def test_captions_agree_with_the_labels(scenes):
    other_names = {s.scene_class: [n for n in WORLD.scene_names if n != s.scene_class and n not in s.scene_class]
                   for s in scenes}
    for scene in scenes:
        assert len(scene.captions) == 5
        counts = {}
        for obj in scene.objects:
            counts[obj.kind] = counts.get(obj.kind, 0) + 1
        for caption in scene.captions:
            for kind, word in _mentions(caption):
                assert kind in counts, (caption, scene.object_types)
                if word is not None:
                    low, high = COUNT_WORDS[word]
                    assert low <= counts[kind] <= high, (caption, kind, counts[kind])
            for other in other_names[scene.scene_class]:
                if other in WORLD.object_names and other in counts:
                    continue  # "river" is both a scene class and an object
                assert not re.search(rf"\b{other}\b", caption), (caption, scene.scene_class)


def test_scene_mention_controls_how_often_captions_name_the_scene():
    never = list(generate(32, seed=4, scene_mention=0.0))
    always = list(generate(32, seed=4, scene_mention=1.0))
    assert all(not re.search(rf"\b{s.scene_class}\b", c) for s in never for c in s.captions
               if s.scene_class not in WORLD.object_names)
    assert all(re.search(rf"\b{s.scene_class}\b", c) for s in always for c in s.captions)


def test_bands_follow_the_materials(scenes):
    b04, b08, b11 = (SENTINEL2_BANDS.index(b) for b in ("B04", "B08", "B11"))
    vegetation = np.concatenate([s.bands[np.isin(s.material_map, [MATERIAL_INDEX["tree canopy"], MATERIAL_INDEX["grass"]])]
                                 for s in scenes])
    water = np.concatenate([s.bands[s.material_map == MATERIAL_INDEX["water"]] for s in scenes])
    assert (vegetation[:, b08] > 2 * vegetation[:, b04]).mean() > 0.95  # red edge: NIR >> red
    assert np.median(water[:, b11]) < 0.02 < np.median(vegetation[:, b11])  # water dark in SWIR
    assert all(s.bands.dtype == np.float32 and 0 <= s.bands.min() and s.bands.max() <= 1 for s in scenes)


def test_style_application_is_deterministic_and_identity_is_a_no_op():
    scene = sample_scene(np.random.default_rng(0), "harbor")
    plain = render(scene, ClientStyle.identity())
    style = ClientStyle.sample(seed=3, strength=1.5)
    assert style == ClientStyle.sample(seed=3, strength=1.5)
    once = style.apply(plain.rgb, noise_seed=9)
    assert once.tobytes() == style.apply(plain.rgb, noise_seed=9).tobytes()
    assert once.shape == plain.rgb.shape and once.dtype == np.uint8
    assert not np.array_equal(once, plain.rgb)
    assert np.array_equal(ClientStyle.identity().apply(plain.rgb, noise_seed=9), plain.rgb)
    # a style changes pixels, never labels
    styled = render(scene, style)
    assert styled.objects == plain.objects and styled.captions == plain.captions
    assert np.array_equal(styled.bands, plain.bands)
    assert len({s.style_id for s in sample_styles(5, seed=1)}) == 5
    assert sample_styles(0, seed=1) == [ClientStyle.identity()]
