"""Multi-label datasets (FedMPT): the NUS-WIDE, MLRSNet and MultiScene layouts round-trip through
their readers, and every registered multi-label dataset reads its official split."""

import json
import warnings

import numpy as np
import pytest
from PIL import Image

from fedvlm.cli import main
from fedvlm.data.datasets import DATASETS, load_dataset
from fedvlm.data.formats.mlrsnet import MLRSNetWriter, read_mlrsnet
from fedvlm.data.formats.multiscene import MultiSceneWriter, read_multiscene
from fedvlm.data.formats.nuswide import NUSWIDEWriter, image_relative_path, read_nuswide
from fedvlm.data.formats.voc import VOCWriter
from fedvlm.data.synthetic import generate, generate_dataset
from fedvlm.errors import DataError

RNG = np.random.default_rng(0)


def _rgb(value):
    return np.full((8, 8, 3), value, np.uint8)


def _labels(n, c):
    labels = (RNG.random((n, c)) < 0.3).astype(np.float32)
    labels[np.arange(n), RNG.integers(c, size=n)] = 1  # every image has a label
    return labels


def test_nuswide_round_trip_with_windows_paths_and_missing_images(tmp_path):
    concepts = ["airport", "animal", "beach", "sky"]
    writer = NUSWIDEWriter(tmp_path, concepts, windows_prefix="C:\\ImageData\\Flickr\\")
    truth = {"train": _labels(5, 4), "test": _labels(3, 4)}
    for split, labels in truth.items():
        for i, row in enumerate(labels):
            writer.add(_rgb(i), row, split, folder=f"folder{i % 2}", name=f"{i:04d}_{split}.jpg")
    writer.close()
    assert image_relative_path("C:\\ImageData\\Flickr\\actor\\0001_2124494179.jpg") == "actor/0001_2124494179.jpg"
    for split, labels in truth.items():
        data = read_nuswide(tmp_path, split)
        assert data.class_names == concepts
        np.testing.assert_array_equal(data.labels, labels)
        assert data.paths[1] == tmp_path / "Flickr" / "folder1" / f"0001_{split}.jpg"
    (tmp_path / "Flickr" / "folder1" / "0001_train.jpg").unlink()  # Flickr copies lack images
    with pytest.warns(UserWarning, match="1 of 5 train images are missing"):
        data = read_nuswide(tmp_path, "train")
    np.testing.assert_array_equal(data.labels, truth["train"][[0, 2, 3, 4]])
    with pytest.raises(DataError, match="Labels_sky_Test.txt"):
        (tmp_path / "Groundtruth" / "TrainTestLabels" / "Labels_sky_Test.txt").write_text("1\n")
        read_nuswide(tmp_path, "test")


def test_mlrsnet_round_trip_across_category_files(tmp_path):
    names = ["airplane", "bare soil", "habor", "trees"]
    writer = MLRSNetWriter(tmp_path, names)
    rows = []
    for category, count in (("airplane", 3), ("harbor&port", 2)):
        for row in _labels(count, len(names)):
            writer.add(_rgb(10), row, category)
            rows.append(row)
    writer.close()
    data = read_mlrsnet(tmp_path)
    assert data.class_names == names and len(data.paths) == 5
    np.testing.assert_array_equal(data.labels, np.stack(rows))
    assert data.paths[3] == tmp_path / "Images" / "harbor&port" / "harbor&port_00001.jpg"
    (tmp_path / "labels" / "airplane.csv").write_text("image,airplane,trees\nairplane_00001.jpg,1,0\n")
    with pytest.raises(DataError, match="other labels"):
        read_mlrsnet(tmp_path)


def test_multiscene_round_trip_and_registration(tmp_path):
    from fedvlm.data.datasets import _MULTISCENE_CATEGORIES

    root = tmp_path / "MultiScene-Clean"
    writer = MultiSceneWriter(root, list(_MULTISCENE_CATEGORIES))
    truth = {"train": _labels(4, 36), "test": _labels(2, 36)}
    for split, labels in truth.items():
        for i, row in enumerate(labels):
            writer.add(_rgb(i), row, split, f"{split}_{i:05d}")
    writer.close()
    data = read_multiscene(root, "test")
    np.testing.assert_array_equal(data.labels, truth["test"])
    assert data.paths[0] == root / "images" / "test_00000.jpg"
    dataset = load_dataset("multiscene", tmp_path)
    assert DATASETS.get("multiscene").task == "multilabel"
    assert dataset.labels.shape == (6, 36)
    np.testing.assert_array_equal(dataset.official_splits["train"], np.arange(4))
    np.testing.assert_array_equal(dataset.official_splits["test"], [4, 5])
    names = dict(zip(_MULTISCENE_CATEGORIES, dataset.classnames))
    assert names["BaseballField"] == "baseball field" and names["OilFiled"] == "oil field"
    (root / "images" / "train_00002.jpg").unlink()
    with pytest.raises(DataError, match="train_00002.jpg"):
        load_dataset("multiscene", tmp_path)


def test_nuswide_and_mlrsnet_registrations(tmp_path):
    concepts = [f"concept{i:02d}" for i in range(81)]
    writer = NUSWIDEWriter(tmp_path / "NUS-WIDE", concepts)
    for split, count in (("train", 3), ("test", 2)):
        for i, row in enumerate(_labels(count, 81)):
            writer.add(_rgb(i), row, split, "f", f"{split}{i}.jpg")
    writer.close()
    nus = load_dataset("nuswide", tmp_path)
    assert nus.labels.shape == (5, 81) and len(nus.official_splits["test"]) == 2
    labels = [f"label {i}" for i in range(59)] + ["habor"]
    writer = MLRSNetWriter(tmp_path / "MLRSNet", labels)
    for row in _labels(4, 60):
        writer.add(_rgb(1), row, "airport")
    writer.close()
    mlrs = load_dataset("mlrsnet", tmp_path)
    assert mlrs.official_splits is None and mlrs.classnames[-1] == "harbor"
    assert DATASETS.get("mlrsnet").default_split == (0.8, 0.2)


def test_voc_coco_and_synthetic_registrations(tmp_path):
    generate_dataset(tmp_path / "synthetic_world", layouts=["voc2007"], num_images=16, seed=2)
    synthetic = load_dataset("synthetic_voc", tmp_path)
    assert "swimming pool" in synthetic.classnames and "baseball field" in synthetic.classnames  # display names
    assert len(synthetic.official_splits["train"]) + len(synthetic.official_splits["test"]) == 16
    assert set(np.unique(synthetic.labels)) <= {0.0, 1.0}

    # VOC2007: a 20-class devkit tree (the world's 19 objects + one VOC name) read through trainval/test.
    from fedvlm.data.synthetic import WORLD

    writer = VOCWriter(tmp_path, WORLD.object_names + ["diningtable"])
    scenes = list(generate(10, seed=4))
    for i, scene in enumerate(scenes):
        writer.add(i, scene, "test" if i < 4 else ("train" if i % 2 else "val"))
    writer.close()
    voc = load_dataset("voc2007", tmp_path)
    assert len(voc.official_splits["test"]) == 4 and len(voc.official_splits["train"]) == 6
    assert "dining table" in voc.classnames
    column = voc.classnames.index("car")
    present = ["car" in s.object_types for s in scenes]
    ordered = [present[i] for i in range(4, 10)] + [present[i] for i in range(4)]  # trainval rows, then test
    np.testing.assert_array_equal(voc.labels[:, column] == 1, ordered)

    # COCO 2014: instances JSON with 80 categories (gapped ids), train2014 and val2014.
    root = tmp_path / "coco"
    categories = [{"id": 1 + i + i // 10, "name": f"thing {i}", "supercategory": "x"} for i in range(80)]
    for split, images in (("train2014", [1, 2]), ("val2014", [3])):
        folder = root / split
        folder.mkdir(parents=True)
        entries = []
        for image_id in images:
            name = f"COCO_{split}_{image_id:012d}.jpg"
            Image.fromarray(_rgb(image_id)).save(folder / name)
            entries.append({"id": image_id, "file_name": name, "width": 8, "height": 8})
        annotations = [{"id": 10 * i, "image_id": i, "category_id": categories[i].get("id"), "bbox": [0, 0, 1, 1]}
                       for i in images]
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"instances_{split}.json").write_text(
            json.dumps({"images": entries, "annotations": annotations, "categories": categories}))
    coco = load_dataset("coco2014", tmp_path)
    assert coco.labels.shape == (3, 80) and coco.classnames[0] == "thing 0"
    np.testing.assert_array_equal(coco.official_splits["test"], [2])
    assert coco.labels[2, 3] == 1 and coco.labels.sum() == 3


def test_missing_voc_fails_in_one_line_naming_it(tmp_path, capsys):
    code = main(["run", "experiments/fedmpt_voc.yaml", f"data.root={tmp_path}", "logging.wandb=disabled",
                 f"logging.results_dir={tmp_path / 'results'}"])
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1
    assert "dataset voc2007" in error and str(tmp_path / "VOCdevkit" / "VOC2007") in error
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DataError, match="NUS-WIDE.*does not exist"):
            load_dataset("nuswide", tmp_path)


def test_label_files_with_values_other_than_0_or_1_are_refused(tmp_path):
    """A -1 in a 0/1 label file would silently become "unknown" (left out of loss and metrics); a
    COCO annotation naming an image the JSON does not list is named as such, not as a missing field."""
    from fedvlm.data.formats.coco import read_coco

    writer = NUSWIDEWriter(tmp_path / "nus", ["sky", "tree"])
    for split in ("train", "test"):
        writer.add(_rgb(1), np.array([1, 0]), split, "f", f"{split}.jpg")
    writer.close()
    (tmp_path / "nus" / "Groundtruth" / "TrainTestLabels" / "Labels_tree_Train.txt").write_text("-1\n")
    with pytest.raises(DataError, match="Labels_tree_Train.txt holds a line that is not 0 or 1"):
        read_nuswide(tmp_path / "nus", "train")

    writer = MLRSNetWriter(tmp_path / "mlrs", ["airplane", "trees"])
    writer.add(_rgb(1), np.array([1, 0]), "airport")
    writer.close()
    (tmp_path / "mlrs" / "labels" / "airport.csv").write_text("image,airplane,trees\nairport_00001.jpg,1,-1\n")
    with pytest.raises(DataError, match="not 0 or 1"):
        read_mlrsnet(tmp_path / "mlrs")

    writer = MultiSceneWriter(tmp_path / "ms", ["Apron", "Beach"])
    writer.add(_rgb(1), np.array([1, 0]), "train", "a")
    writer.close()
    (tmp_path / "ms" / "Tra.csv").write_text("name,Apron,Beach\na,1,2\n")
    with pytest.raises(DataError, match="not 0 or 1"):
        read_multiscene(tmp_path / "ms", "train")

    (tmp_path / "coco" / "annotations").mkdir(parents=True)
    (tmp_path / "coco" / "annotations" / "instances_val2014.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "a.jpg"}], "categories": [{"id": 3, "name": "car"}],
        "annotations": [{"id": 9, "image_id": 2, "category_id": 3}]}))
    with pytest.raises(DataError, match="annotation 9 names image 2"):
        read_coco(tmp_path / "coco", "val2014")
