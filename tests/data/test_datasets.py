import json

import numpy as np
import pytest
from PIL import Image
from scipy.io import savemat

from fedvlm.data.datasets import DATASETS, load_dataset
from fedvlm.errors import DataError


def _image(path, value=128):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, np.uint8)).save(path)


def _tree(root, folder, classes, per_class=2, suffix=".jpg"):
    for c in classes:
        for i in range(per_class):
            _image(root / folder / c / f"{c}_{i:03d}{suffix}")


def test_ucmerced_layout_and_prompt_names(tmp_path):
    classes = ["agricultural", "denseresidential", "storagetanks"] + [f"zclass{i:02d}" for i in range(18)]
    _tree(tmp_path, "UCMerced_LandUse/Images", classes, suffix=".tif")
    dataset = load_dataset("ucmerced", tmp_path)
    assert len(dataset) == 42 and len(dataset.classnames) == 21
    assert dataset.classnames[:3] == ["agricultural", "dense residential", "storage tanks"]
    assert dataset.paths[0].suffix == ".tif"
    assert np.array_equal(np.bincount(dataset.labels), np.full(21, 2))


def test_caltech_skips_background_and_renames(tmp_path):
    classes = ["BACKGROUND_Google", "Faces", "Faces_easy", "airplanes"] + [f"c{i:03d}" for i in range(98)]
    _tree(tmp_path, "caltech-101/101_ObjectCategories", classes, per_class=1)
    dataset = load_dataset("caltech101", tmp_path)
    assert len(dataset.classnames) == 100
    assert "face" in dataset.classnames and "airplane" in dataset.classnames
    assert not any("BACKGROUND" in str(p) or "Faces_easy" in str(p) for p in dataset.paths)
    assert dataset.labels.max() == 99


def test_flowers102_native_layout(tmp_path):
    root = tmp_path / "oxford_flowers"
    labels = np.array([3, 1, 2, 102] + list(range(1, 103)))
    for i in range(len(labels)):
        _image(root / "jpg" / f"image_{i + 1:05d}.jpg")
    savemat(root / "imagelabels.mat", {"labels": labels[None, :]})
    (root / "cat_to_name.json").write_text(json.dumps({str(i): f"flower {i}" for i in range(1, 103)}))
    dataset = load_dataset("flowers102", tmp_path)
    assert dataset.labels[:4].tolist() == [2, 0, 1, 101]
    assert dataset.classnames[101] == "flower 102"


def test_fgvc_aircraft_native_layout(tmp_path):
    data = tmp_path / "fgvc-aircraft-2013b" / "data"
    variants = [f"7{i:02d}-{i}" for i in range(100)]
    data.mkdir(parents=True)
    (data / "variants.txt").write_text("\n".join(variants) + "\n")
    for split_name, ids in (("train", [1, 2]), ("val", [3]), ("test", [4])):
        (data / f"images_variant_{split_name}.txt").write_text("".join(f"{i:07d} {variants[i]}\n" for i in ids))
        for i in ids:
            _image(data / "images" / f"{i:07d}.jpg")
    dataset = load_dataset("fgvc_aircraft", tmp_path)
    assert dataset.labels.tolist() == [1, 2, 3, 4]
    assert dataset.paths[2].name == "0000003.jpg"


def test_missing_dataset_names_path_and_layout(tmp_path):
    with pytest.raises(DataError) as error:
        load_dataset("nwpu_resisc45", tmp_path)
    message = str(error.value)
    assert str(tmp_path / "NWPU-RESISC45") in message and "<class>_<NNN>.jpg" in message
    assert "\n" not in message


def test_wrong_class_count_and_empty_class_are_reported(tmp_path):
    _tree(tmp_path, "Optimal-31/Images", ["airport", "beach"])
    with pytest.raises(DataError, match="has 2 classes, expected 31"):
        load_dataset("optimal31", tmp_path)
    (tmp_path / "EuroSAT" / "2750" / "Forest").mkdir(parents=True)
    with pytest.raises(DataError, match="Forest holds no images"):
        load_dataset("eurosat", tmp_path)


def test_every_registered_dataset_documents_its_layout():
    for name in DATASETS:
        spec = DATASETS.get(name)
        assert spec.layout.startswith(spec.folder.split("/")[0])
        assert spec.template.count("{}") == 1
