"""The prompt-learning benchmarks (CoOp's datasets, ImageNet and its shifts, CIFAR, DomainNet,
Office-Caltech10, the synthetic domains), each read by its real reader from files the synthetic
world wrote in that layout, plus one-line errors for missing or malformed trees and a planted
malicious pickle."""

import csv
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fedvlm.data.datasets import DATASETS, load_dataset
from fedvlm.data.synthetic import WORLD, generate_dataset
from fedvlm.errors import ConfigError, DataError

SCENES = WORLD.scene_names


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """160 scenes (10 per class) in every benchmark layout, under <root>/synthetic_world."""
    root = tmp_path_factory.mktemp("benchmarks")
    generate_dataset(root / "synthetic_world", layouts=["benchmarks"], num_images=160, size=32)
    with open(root / "synthetic_world" / "samples.csv") as handle:
        samples = list(csv.DictReader(handle))
    return root, samples


def _read(name, root):
    """The real reader on the synthetic files (the class-count check is for the real release)."""
    spec = DATASETS.get(name)
    synthetic = spec.folder.startswith("synthetic_world/")
    location = root / spec.folder if synthetic else root / "synthetic_world" / spec.folder
    return spec.read(location, spec)


def _scene_of(dataset):
    return [dataset.classnames[label] for label in dataset.labels]


@pytest.mark.parametrize("name", ["oxford_pets", "food101", "stanford_cars", "sun397", "ucf101"])
def test_coop_split_datasets_keep_the_split_file_rows_and_names(world, name):
    root, samples = world
    dataset = _read(name, root)
    by_path = {row[name]: row for row in samples}
    assert dataset.classnames == SCENES  # "dense_residential" in the file -> "dense residential"
    image_dir = {"oxford_pets": "images", "food101": "images", "stanford_cars": ".", "sun397": "SUN397",
                 "ucf101": "UCF-101-midframes"}[name]
    base = root / "synthetic_world" / DATASETS.get(name).folder / image_dir
    assert [by_path[p.relative_to(base).as_posix()]["scene_class"] for p in dataset.paths] == _scene_of(dataset)
    rows = dataset.official_splits
    assert sorted(rows) == ["test", "train", "val"] and (len(rows["train"]), len(rows["val"]), len(rows["test"])) == \
        (80, 32, 48)
    assert np.array_equal(np.sort(np.concatenate(list(rows.values()))), np.arange(len(dataset)))
    assert all(len(set(dataset.labels[r])) == len(SCENES) for r in rows.values())  # every class in every split


def test_each_coop_layout_names_files_as_its_release(world):
    root, _ = world
    assert _read("oxford_pets", root).paths[0].parent.name == "images"  # flat Breed_<n>.jpg
    assert {p.parent.name for p in _read("stanford_cars", root).paths} == {"cars_train", "cars_test"}
    sun = _read("sun397", root).paths[0]
    assert sun.parent.parent.name == sun.parent.name[0]  # SUN397/<letter>/<class>/
    assert _read("ucf101", root).paths[0].name.startswith("v_")


def test_the_real_class_count_is_checked(world):
    root, _ = world
    with pytest.raises(DataError, match="has 16 classes, expected 37"):
        load_dataset("oxford_pets", root / "synthetic_world")


def test_imagenet_and_its_shifted_test_sets(world):
    root, _ = world
    imagenet = _read("imagenet", root)
    assert imagenet.classnames == SCENES and {len(v) for v in imagenet.official_splits.values()} == {112, 48}
    assert all(p.parent.name == f"n{label:08d}" for p, label in zip(imagenet.paths, imagenet.labels))
    test_rows = imagenet.official_splits["test"]
    test_names = sorted(p.name for p in np.asarray(imagenet.paths, dtype=object)[test_rows])
    for name in ("imagenet_v2", "imagenet_sketch"):
        shifted = _read(name, root)
        assert shifted.classnames == SCENES and sorted(p.name for p in shifted.paths) == test_names
        assert all(p.name.startswith(f"n{shifted.labels[i]:08d}") for i, p in enumerate(shifted.paths))
    for name in ("imagenet_a", "imagenet_r"):  # 200-class subsets: labels over the classes present
        subset = _read(name, root)
        assert subset.classnames == SCENES[:8] and set(subset.labels) == set(range(8))
        assert all(p.name.startswith(f"n{label:08d}") for p, label in zip(subset.paths, subset.labels))


def test_cifar_batches_decode_losslessly_once(world):
    root, samples = world
    for name, folder in (("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")):
        dataset = _read(name, root)
        assert dataset.classnames == SCENES and len(dataset.official_splits["train"]) == 144
        order = [row for row in samples if row[name].startswith("train")] + \
            [row for row in samples if row[name].startswith("test")]
        assert [r["scene_class"] for r in order] == _scene_of(dataset)
        batch = pickle.loads((root / "synthetic_world" / folder / ("test_batch" if name == "cifar10" else "test"))
                             .read_bytes(), encoding="bytes")
        first_test = dataset.paths[dataset.official_splits["test"][0]]
        expected = batch[b"data"][0].reshape(3, 32, 32).transpose(1, 2, 0)
        assert np.array_equal(np.asarray(Image.open(first_test)), expected)
        stamp = first_test.stat().st_mtime_ns
        _read(name, root)
        assert first_test.stat().st_mtime_ns == stamp  # unchanged batches are not decoded again


def test_a_planted_malicious_pickle_is_refused_without_running(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return os.mkdir, (str(marker),)

    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"a"], b"x": Payload()}, protocol=3))
    with pytest.raises(DataError, match=r"batches.meta names the global (posix|os)\.mkdir; .* refused") as error:
        load_dataset("cifar10", tmp_path)
    assert not marker.exists() and "\n" not in str(error.value)


def test_the_numpy_1_module_path_of_the_real_releases_is_read(tmp_path):
    """The released batches name numpy.core.multiarray (numpy 1); numpy 2 is installed here."""
    from fedvlm.data.formats.cifar import safe_load

    array = np.arange(6, dtype=np.uint8).reshape(2, 3)
    path = tmp_path / "batch"
    path.write_bytes(pickle.dumps({b"data": array}, protocol=3).replace(b"numpy._core.multiarray",
                                                                         b"numpy.core.multiarray"))
    assert b"numpy.core.multiarray" in path.read_bytes()
    assert np.array_equal(safe_load(path, "x")[b"data"], array)
    path.write_bytes(pickle.dumps({b"data": array}, protocol=2))  # Python 3 writes bytes via _codecs.encode
    with pytest.raises(DataError, match="names the global _codecs.encode"):
        safe_load(path, "x")


def test_cifar_truncated_batch_and_wrong_shape_are_one_line_errors(world, tmp_path):
    root, _ = world
    source = root / "synthetic_world" / "cifar-10-batches-py"
    copy = tmp_path / "cifar-10-batches-py"
    copy.mkdir()
    for name in ["batches.meta", "test_batch"] + [f"data_batch_{i}" for i in range(1, 6)]:
        (copy / name).write_bytes((source / name).read_bytes())
    (copy / "data_batch_3").write_bytes((source / "data_batch_3").read_bytes()[:200])
    with pytest.raises(DataError, match="data_batch_3 is not a readable pickle"):
        load_dataset("cifar10", tmp_path)
    wrong_shape = {b"data": np.zeros((2, 5), np.uint8), b"labels": [0, 1]}
    (copy / "data_batch_3").write_bytes(pickle.dumps(wrong_shape, protocol=3))
    with pytest.raises(DataError, match=r"no b'data' uint8 array of shape \[N, 3072\]"):
        load_dataset("cifar10", tmp_path)


def test_domainnet_keeps_the_official_lists_and_each_images_domain(world):
    root, samples = world
    dataset = _read("domainnet", root)
    assert dataset.domain_names == ["clipart", "infograph", "painting", "quickdraw"]  # the four styles written
    style = {row["domainnet"]: int(row["style_id"]) for row in samples}
    base = root / "synthetic_world" / "domainnet"
    assert [style[p.relative_to(base).as_posix()] for p in dataset.paths] == dataset.domains.tolist()
    assert [p.parent.name.replace("_", " ") for p in dataset.paths] == _scene_of(dataset)
    assert set(dataset.official_splits) == {"train", "test"}
    clipart = _read("domainnet_clipart", root)
    assert clipart.classnames == dataset.classnames and set(clipart.domains) == {0} and \
        len(clipart) == int((dataset.domains == 0).sum())


@pytest.mark.parametrize("name,domains", [("office_caltech10", ["amazon", "caltech", "dslr", "webcam"]),
                                          ("synthetic_domains", ["style_0", "style_1", "style_2", "style_3"])])
def test_domain_folders_give_every_image_its_domain(world, name, domains):
    root, samples = world
    dataset = _read(name, root)
    assert dataset.domain_names == domains
    assert [domains[d] for d in dataset.domains] == [p.parent.parent.name for p in dataset.paths]
    styles = sorted(int(row["style_id"]) for row in samples)
    assert sorted(dataset.domains.tolist()) == styles  # the client style is the domain
    single = _read(f"{name}_{domains[2]}", root)
    assert single.classnames == dataset.classnames and len(single) == int((dataset.domains == 2).sum())


def test_synthetic_domains_load_by_name_and_partition_one_domain_per_client(world):
    root, _ = world
    dataset = load_dataset("synthetic_domains", root)
    from fedvlm.data.partition import PARTITIONS

    shares = PARTITIONS.get("domain")(name="domain", num_clients=4)(dataset.labels, 0, domains=dataset.domains)
    assert [set(dataset.domains[s]) for s in shares] == [{0}, {1}, {2}, {3}]
    with pytest.raises(ConfigError, match="has no domains"):
        PARTITIONS.get("domain")(name="domain", num_clients=4)(_read("food101", root).labels, 0)


# ------------------------------------------------------------------------ malformed trees


def _coop_copy(world, tmp_path, name="food101"):
    root, _ = world
    spec = DATASETS.get(name)
    table = json.loads((root / "synthetic_world" / spec.folder / "split_zhou_Food101.json").read_text())
    target = tmp_path / spec.folder
    (target / "images").mkdir(parents=True)
    return spec, table, target


def test_coop_split_errors_name_the_file_and_the_expectation(world, tmp_path):
    spec, table, target = _coop_copy(world, tmp_path)
    with pytest.raises(DataError, match="split_zhou_Food101.json does not exist; expected food-101/"):
        load_dataset("food101", tmp_path)
    split_file = target / "split_zhou_Food101.json"
    split_file.write_text(json.dumps({"train": [], "val": []}))
    with pytest.raises(DataError, match="does not hold the lists train, val and test"):
        load_dataset("food101", tmp_path)
    bad = dict(table, train=[["x.jpg", "3", "apple"]] + table["train"])
    split_file.write_text(json.dumps(bad))
    with pytest.raises(DataError, match=r"train\[0\] is .*; expected \[image path, label >= 0, class name\]"):
        load_dataset("food101", tmp_path)
    clash = dict(table, train=[[table["train"][0][0], 0, "not airport"]] + table["train"])
    split_file.write_text(json.dumps(clash))
    with pytest.raises(DataError, match="label 0 is named both"):
        load_dataset("food101", tmp_path)
    split_file.write_text(json.dumps(table))
    with pytest.raises(DataError, match="is missing; expected food-101/") as error:
        load_dataset("food101", tmp_path)  # the images were not copied
    assert "\n" not in str(error.value)


def test_imagenet_errors(world, tmp_path):
    root, _ = world
    base = tmp_path / "imagenet"
    with pytest.raises(DataError, match="imagenet does not exist; expected imagenet/"):
        load_dataset("imagenet", tmp_path)
    (base / "images" / "train" / "n00000000").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(base / "images" / "train" / "n00000000" / "a.JPEG")
    (base / "classnames.txt").write_text("n00000000 airport\nbroken\n")
    with pytest.raises(DataError, match=r"classnames.txt:2 is 'broken'; expected '<wnid> <class name>'"):
        _read_at("imagenet", tmp_path)
    (base / "classnames.txt").write_text("n00000009 harbor\n")
    (base / "images" / "val" / "n00000000").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(base / "images" / "val" / "n00000000" / "b.JPEG")
    with pytest.raises(DataError, match="n00000000 is not a wnid listed in"):
        _read_at("imagenet", tmp_path)
    v2 = tmp_path / "imagenetv2"
    (v2 / "imagenetv2-matched-frequency-format-val" / "cat").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(v2 / "imagenetv2-matched-frequency-format-val" / "cat" / "c.jpeg")
    (v2 / "classnames.txt").write_text("n00000000 airport\n")
    with pytest.raises(DataError, match="folder .*cat is not a label 0..0"):
        _read_at("imagenet_v2", tmp_path)


def _read_at(name, root):
    spec = DATASETS.get(name)
    return spec.read(root / spec.folder, spec)


def test_domain_tree_errors(world, tmp_path):
    base = tmp_path / "office_caltech_10"
    for domain in ("amazon", "caltech", "dslr"):
        (base / domain / "mug").mkdir(parents=True)
        Image.new("RGB", (4, 4)).save(base / domain / "mug" / "1.jpg")
    with pytest.raises(DataError, match="webcam does not exist; expected office_caltech_10/<domain>/<class>"):
        _read_at("office_caltech10", tmp_path)
    (base / "webcam" / "bike").mkdir(parents=True)
    with pytest.raises(DataError, match="webcam holds other class folders than .*amazon"):
        _read_at("office_caltech10", tmp_path)
    dn = tmp_path / "domainnet"
    (dn / "clipart" / "cat").mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(dn / "clipart" / "cat" / "1.jpg")
    (dn / "clipart_train.txt").write_text("clipart/cat/1.jpg 0\nsketch/cat/2.jpg 0\n")
    (dn / "clipart_test.txt").write_text("")
    with pytest.raises(DataError, match=r"clipart_train.txt:2 is 'sketch/cat/2.jpg 0'; expected 'clipart/<class>"):
        _read_at("domainnet", tmp_path)
    (dn / "clipart_train.txt").write_text("clipart/cat/1.jpg 1\n")
    with pytest.raises(DataError, match="no listed image has label 0"):
        _read_at("domainnet", tmp_path)
    with pytest.raises(DataError, match="sketch does not exist"):
        _read_at("domainnet_sketch", tmp_path)


def test_every_new_dataset_is_registered_with_a_layout():
    for name in ("oxford_pets", "food101", "stanford_cars", "sun397", "ucf101", "imagenet", "imagenet_v2",
                 "imagenet_sketch", "imagenet_a", "imagenet_r", "cifar10", "cifar100", "domainnet",
                 "domainnet_quickdraw", "office_caltech10", "office_caltech10_webcam", "synthetic_domains"):
        spec = DATASETS.get(name)
        assert spec.folder in spec.layout and Path(spec.folder).parts[-1] in spec.layout
