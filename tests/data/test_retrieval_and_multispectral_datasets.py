"""Caption datasets (RSICD / RSITMD JSON layouts) and multispectral datasets (EuroSAT-MS,
BigEarthNet) read into the tables runs use."""

import json

import numpy as np
import pytest
from PIL import Image

from fedvlm.data.captioned import CaptionedImages, scene_of
from fedvlm.data.datasets import load_dataset
from fedvlm.data.multispectral import (BIGEARTHNET19_CLASSES, MultispectralImages, rgb_composite,
                                       to_bigearthnet19)
from fedvlm.errors import DataError


def _write_caption_set(root, json_name, folder, suffix, files):
    (root / folder).mkdir(parents=True)
    images, sentence = [], 0
    for image_id, (name, split, count) in enumerate(files):
        Image.new("RGB", (8, 8), (image_id * 20, 0, 0)).save(root / folder / f"{name}{suffix}")
        sentences = [{"raw": f"caption {k} of {name}.", "tokens": [], "imgid": image_id, "sentid": sentence + k}
                     for k in range(count)]
        sentence += count
        images.append({"filename": f"{name}{suffix}", "imgid": image_id, "split": split,
                       "sentids": [s["sentid"] for s in sentences], "sentences": sentences})
    (root / json_name).write_text(json.dumps({"images": images, "dataset": "x"}))


def test_scene_class_comes_from_the_file_name():
    assert scene_of("storagetanks_33.jpg") == "storagetanks"
    assert scene_of("dense_residential_4.tif") == "dense_residential"
    assert scene_of("00017.jpg") == "unlabelled"


@pytest.mark.parametrize("name,json_name,folder,suffix", [("rsicd", "dataset_rsicd.json", "RSICD_images", ".jpg"),
                                                          ("rsitmd", "dataset_RSITMD.json", "images", ".tif")])
def test_caption_json_reads_into_images_with_captions_labels_and_splits(tmp_path, name, json_name, folder, suffix):
    root = tmp_path / name.upper()
    files = [("airport_1", "train", 5), ("denseresidential_1", "train", 5), ("airport_2", "val", 5),
             ("storagetanks_7", "test", 3), ("denseresidential_2", "test", 5)]
    _write_caption_set(root, json_name, folder, suffix, files)
    data = load_dataset(name, tmp_path)
    assert isinstance(data, CaptionedImages) and len(data) == 5
    assert data.classnames == ["airport", "dense residential", "storage tanks"]
    assert data.labels.tolist() == [0, 1, 0, 2, 1]
    assert {k: v.tolist() for k, v in data.official_splits.items()} == {"train": [0, 1], "val": [2], "test": [3, 4]}
    assert len(data.captions) == 23
    assert [len(c) for c in data.captions_of()] == [5, 5, 5, 3, 5]
    assert all(data.captions[t].endswith(f"of {files[i][0]}.") for i, c in enumerate(data.captions_of()) for t in c)


def test_missing_image_is_reported_by_path(tmp_path):
    root = tmp_path / "RSICD"
    _write_caption_set(root, "dataset_rsicd.json", "RSICD_images", ".jpg", [("beach_1", "train", 5)])
    (root / "RSICD_images" / "beach_1.jpg").unlink()
    with pytest.raises(DataError, match="beach_1.jpg"):
        load_dataset("rsicd", tmp_path)


def test_rgb_composite_is_b04_b03_b02_times_gain():
    bands = np.zeros((1, 1, 4), dtype=np.float32)
    bands[0, 0] = [0.1, 0.2, 0.3, 0.9]  # B02, B03, B04, B08
    assert rgb_composite(bands, ["B02", "B03", "B04", "B08"], gain=2.5)[0, 0].tolist() == [191, 128, 64]


def test_bigearthnet19_merges_and_drops_level3_labels():
    names = ["Continuous urban fabric", "Discontinuous urban fabric", "Airports", "Sea and ocean"]
    labels = np.array([[1, 0, 0, 0], [0, 1, 1, 0], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=np.float32)
    mapped, classes = to_bigearthnet19(labels, names)
    assert classes == BIGEARTHNET19_CLASSES and len(classes) == 19
    urban, marine = classes.index("Urban fabric"), classes.index("Marine waters")
    assert mapped[:, urban].tolist() == [1, 1, 0, 0] and mapped[:, marine].tolist() == [0, 0, 0, 1]
    assert mapped[2].sum() == 0  # airports are not in the 19-class nomenclature


@pytest.fixture(scope="module")
def synthetic_world(tmp_path_factory):
    from fedvlm.data.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("data")
    generate_dataset(root / "synthetic_world", layouts=["multispectral"], num_images=10, seed=3, num_styles=1)
    return root


def test_eurosat_ms_pairs_every_band_file_with_its_rgb_image(synthetic_world):
    data = load_dataset("synthetic_eurosat_ms", synthetic_world)
    assert isinstance(data, MultispectralImages) and len(data) == 10
    assert all(rgb.parent.parent.name == "EuroSAT_RGB" and rgb.stem == bands.stem
               for rgb, bands in zip(data.paths, data.band_paths))
    assert data.load_bands(0).shape[-1] == 13 and data.band_names[3] == "B04"
    assert all(name in data.classnames for name in ["airport", "harbor"])


def test_bigearthnet_patches_get_rgb_composites_of_their_bands(synthetic_world):
    data = load_dataset("synthetic_bigearthnet", synthetic_world)
    assert len(data) == 10 and data.labels.shape == (10, len(data.classnames)) and data.labels.sum() > 0
    first = np.asarray(Image.open(data.paths[0]))
    assert first.shape[-1] == 3
    np.testing.assert_array_equal(first, rgb_composite(data.load_bands(0), data.band_names))
    assert load_dataset("synthetic_bigearthnet", synthetic_world).paths == data.paths  # written once, reused
