"""Every writer of a real on-disk layout round-trips through the reader of that layout."""

import csv
import json
import xml.etree.ElementTree as ET

import numpy as np
import pytest

from fedvlm.data.formats import (
    load_rgb,
    read_bigearthnet,
    read_caption_dataset,
    read_coco,
    read_eurosat_ms,
    read_imagefolder,
    read_voc2007,
)
from fedvlm.data.formats.coco import CATEGORY_IDS
from fedvlm.data.formats.multispectral import BIGEARTHNET_BANDS, EUROSAT_BANDS, camel_case
from fedvlm.data.synthetic import WORLD, generate, generate_dataset, sample_styles
from fedvlm.data.synthetic.world import SENTINEL2_BANDS
from fedvlm.errors import ConfigError, DataError, UserError

NUM_IMAGES, SEED, STYLES = 40, 5, 2


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    summary = generate_dataset(root, num_images=NUM_IMAGES, seed=SEED, num_styles=STYLES, size=64)
    scenes = list(generate(NUM_IMAGES, SEED, sample_styles(STYLES, SEED), 64))
    with open(root / "samples.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return root, summary, scenes, rows


def _multi_hot(kinds, names):
    return np.array([1.0 if n in kinds else 0.0 for n in names], dtype=np.float32)


def test_summary_and_index(dataset):
    root, summary, scenes, rows = dataset
    assert summary["num_images"] == NUM_IMAGES and len(rows) == NUM_IMAGES
    assert json.loads((root / "summary.json").read_text())["seed"] == SEED
    for row, scene in zip(rows, scenes):
        assert row["scene_class"] == scene.scene_class and int(row["style_id"]) == scene.style_id
        assert row["objects"] == ";".join(scene.object_types)


def test_imagefolder_round_trip(dataset):
    root, _, scenes, _ = dataset
    paths, labels, folders, metadata = read_imagefolder(root / "synthetic_scenes")
    assert folders == sorted(c.folder for c in WORLD.scene_classes)
    by_id = {int(m["sample_id"]): (p, label, m) for p, label, m in zip(paths, labels, metadata)}
    assert sorted(by_id) == list(range(NUM_IMAGES))
    for sample_id, scene in enumerate(scenes):
        path, label, row = by_id[sample_id]
        assert folders[label].replace("_", " ") == scene.scene_class
        assert np.array_equal(load_rgb(path), scene.rgb)  # PNG is lossless
        assert row["objects"].split(";") == (scene.object_types or [""])
        assert int(row["style_id"]) == scene.style_id and int(row["seed"]) == scene.seed


def test_voc2007_round_trip(dataset):
    root, _, scenes, rows = dataset
    names = WORLD.object_names
    splits = {split: read_voc2007(root / "VOCdevkit", split) for split in ("train", "val", "trainval", "test")}
    assert splits["trainval"].class_names == sorted(names)  # alphabetical, like the devkit
    assert len(splits["trainval"].paths) + len(splits["test"].paths) == NUM_IMAGES
    assert sorted(splits["train"].image_ids + splits["val"].image_ids) == splits["trainval"].image_ids
    data = splits["trainval"]
    for image_id, path, label in zip(data.image_ids, data.paths, data.labels):
        scene = scenes[int(image_id)]
        assert np.array_equal(label, _multi_hot(scene.object_types, data.class_names))
        assert np.abs(load_rgb(path).astype(int) - scene.rgb).mean() < 6  # JPEG quality 95
    # boxes: 1-based inclusive pixel coordinates
    scene = next(s for s in scenes if s.objects)
    sample_id = scenes.index(scene)
    xml = ET.parse(root / "VOCdevkit/VOC2007/Annotations" / f"{sample_id:06d}.xml").getroot()
    boxes = [(o.findtext("name"), tuple(int(o.find("bndbox").findtext(t)) for t in ("xmin", "ymin", "xmax", "ymax")))
             for o in xml.iter("object")]
    assert boxes == [(o.kind, (o.bbox[0] + 1, o.bbox[1] + 1, o.bbox[2], o.bbox[3])) for o in scene.objects]
    # the per-class lists agree with the annotations (0 = only difficult instances)
    negative = read_voc2007(root, "trainval", difficult="negative")
    main = root / "VOCdevkit/VOC2007/ImageSets/Main"
    for column, name in enumerate(negative.class_names):
        flags = dict(line.split() for line in (main / f"{name}_trainval.txt").read_text().splitlines())
        for row, image_id in enumerate(negative.image_ids):
            flag = int(flags[image_id])
            assert (flag == 1) == (negative.labels[row, column] == 1)
            assert (flag == -1) == (data.labels[row, column] == 0)


def test_voc_difficult_modes(dataset):
    root, _, scenes, _ = dataset
    positive = read_voc2007(root, "test", difficult="positive").labels
    negative = read_voc2007(root, "test", difficult="negative").labels
    ignore = read_voc2007(root, "test", difficult="ignore").labels
    assert ((positive == 1) >= (negative == 1)).all()
    assert np.array_equal(ignore == -1, (positive == 1) & (negative == 0))
    with pytest.raises(ValueError):
        read_voc2007(root, "test", difficult="maybe")


def test_coco_round_trip(dataset):
    root, _, scenes, _ = dataset
    content = json.loads((root / "coco/annotations/instances_train2014.json").read_text())
    ids = [c["id"] for c in content["categories"]]
    assert ids != list(range(1, len(ids) + 1)) and ids == list(CATEGORY_IDS[: len(ids)])
    display = [o.display_name for o in WORLD.object_types]
    total = 0
    for split in ("train2014", "val2014"):
        data = read_coco(root / "coco", split)
        assert data.class_names == display
        total += len(data.paths)
        for image_id, path, label in zip(data.image_ids, data.paths, data.labels):
            scene = scenes[int(image_id) - 1]
            assert path.parent.name == split and path.name == f"COCO_{split}_{int(image_id):012d}.jpg"
            assert np.array_equal(label, _multi_hot({WORLD.object_type(k).display_name for k in scene.object_types},
                                                    display))
            assert load_rgb(path).shape == scene.rgb.shape
    assert total == NUM_IMAGES
    annotation = content["annotations"][0]
    scene = scenes[annotation["image_id"] - 1]
    x0, y0, x1, y1 = scene.objects[0].bbox
    assert annotation["bbox"] == [x0, y0, x1 - x0, y1 - y0] and annotation["iscrowd"] == 0


@pytest.mark.parametrize("folder, json_name, images", [("RSICD", "dataset_rsicd.json", "RSICD_images"),
                                                        ("RSITMD", "dataset_RSITMD.json", "images")])
def test_caption_datasets_round_trip(dataset, folder, json_name, images):
    root, _, scenes, rows = dataset
    data = read_caption_dataset(root / folder)
    assert len(data.image_paths) == NUM_IMAGES and len(data.captions) == 5 * NUM_IMAGES
    assert [data.splits.count(s) for s in ("train", "val", "test")] == [32, 4, 4]  # 80/10/10
    key = "rsicd" if folder == "RSICD" else "rsitmd"
    by_file = {row[key].split("/")[-1]: int(row["sample_id"]) for row in rows}
    for index, (path, filename) in enumerate(zip(data.image_paths, data.filenames)):
        assert path.parent.name == images and path.is_file()
        scene = scenes[by_file[filename]]
        assert [c for c, i in zip(data.captions, data.caption_image) if i == index] == scene.captions
    content = json.loads((root / folder / json_name).read_text())
    entry = content["images"][0]
    assert set(entry) >= {"filename", "imgid", "split", "sentences", "sentids"}
    assert set(entry["sentences"][0]) == {"raw", "tokens", "imgid", "sentid"}
    assert entry["sentences"][0]["tokens"] == entry["sentences"][0]["raw"].rstrip(".").replace(",", "").replace(":", "").split()
    assert len(read_caption_dataset(root / folder, split="test").image_paths) == 4
    if folder == "RSITMD":
        assert "keywords" in entry


def test_eurosat_ms_round_trip_with_rgb_pairs(dataset):
    root, _, scenes, rows = dataset
    assert EUROSAT_BANDS == SENTINEL2_BANDS
    data = read_eurosat_ms(root)
    assert data.class_names == sorted(camel_case(n) for n in WORLD.scene_names)
    assert data.band_names == list(SENTINEL2_BANDS) and len(data) == NUM_IMAGES
    by_file = {row["eurosat"]: int(row["sample_id"]) for row in rows}
    for i, path in enumerate(data.paths):
        scene = scenes[by_file[path.relative_to(root).as_posix()]]
        bands = data.load(i)
        assert bands.shape == (64, 64, 13) and bands.dtype == np.float32
        assert np.abs(bands - scene.bands).max() <= 0.5e-4 + 1e-7  # uint16 digital numbers
        assert data.class_names[data.labels[i]] == camel_case(scene.scene_class)
        assert data.rgb_paths[i].stem == path.stem
        assert np.abs(load_rgb(data.rgb_paths[i]).astype(int) - scene.rgb).mean() < 6
    assert data.stack().shape == (NUM_IMAGES, 64, 64, 13)


def test_bigearthnet_round_trip(dataset):
    root, _, scenes, rows = dataset
    data = read_bigearthnet(root)
    by_folder = {row["bigearthnet"]: int(row["sample_id"]) for row in rows}
    b04 = BIGEARTHNET_BANDS.index("B04")
    for i, folder in enumerate(data.paths):
        scene = scenes[by_folder[folder.relative_to(root).as_posix()]]
        assert sorted(folder.glob("*.tif")) and len(list(folder.glob("*.tif"))) == 12
        bands = data.load(i)
        assert bands.shape == (64, 64, 12)
        assert np.abs(bands[..., b04] - scene.bands[..., SENTINEL2_BANDS.index("B04")]).max() <= 0.5e-4 + 1e-7
        assert [data.class_names[c] for c in np.flatnonzero(data.labels[i])] == scene.land_cover()
    metadata = json.loads(next(data.paths[0].glob("*_labels_metadata.json")).read_text())
    assert set(metadata) >= {"labels", "coordinates", "projection", "tile_source", "acquisition_date"}


def test_generate_dataset_refuses_to_mix_and_rejects_unknown_layouts(dataset, tmp_path):
    root = dataset[0]
    with pytest.raises(UserError, match="already exists"):
        generate_dataset(root, layouts=("imagefolder",), num_images=2)
    with pytest.raises(ConfigError, match="unknown layout 'pascal'"):
        generate_dataset(tmp_path, layouts=("pascal",), num_images=2)
    summary = generate_dataset(tmp_path, layouts=("captions",), num_images=3, seed=1, num_styles=0)
    assert sorted(summary["layouts"]) == ["rsicd", "rsitmd"] and not (tmp_path / "VOCdevkit").exists()


def test_malformed_inputs_name_the_path(dataset, tmp_path):
    root = dataset[0]
    missing = tmp_path / "nowhere"
    for reader in (read_imagefolder, read_voc2007, read_coco, read_caption_dataset, read_eurosat_ms, read_bigearthnet):
        with pytest.raises(DataError, match=str(missing)):
            reader(missing)
    corrupt = tmp_path / "broken.png"
    corrupt.write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=f"{corrupt}.*corrupt"):
        load_rgb(corrupt)
    with pytest.raises(DataError, match="does not exist"):
        load_rgb(tmp_path / "absent.jpg")

    voc = tmp_path / "voc/VOCdevkit/VOC2007"
    (voc / "ImageSets/Main").mkdir(parents=True)
    (voc / "Annotations").mkdir()
    (voc / "ImageSets/Main/trainval.txt").write_text("000001\n")
    (voc / "ImageSets/Main/car_trainval.txt").write_text("000001  1\n")
    (voc / "Annotations/000001.xml").write_text("<annotation><object><name>car")
    with pytest.raises(DataError, match="000001.xml is not valid XML"):
        read_voc2007(tmp_path / "voc")

    coco = tmp_path / "coco/annotations"
    coco.mkdir(parents=True)
    (coco / "instances_train2014.json").write_text(json.dumps({"images": [], "annotations": []}))
    with pytest.raises(DataError, match="instances_train2014.json lacks COCO field 'categories'"):
        read_coco(tmp_path / "coco")

    captions = tmp_path / "captions"
    (captions / "images").mkdir(parents=True)
    (captions / "dataset_RSITMD.json").write_text(json.dumps({"images": [{"filename": "a.tif"}]}))
    with pytest.raises(DataError, match="dataset_RSITMD.json lacks field 'split'"):
        read_caption_dataset(captions)

    eurosat = tmp_path / "eurosat/EuroSAT_MS/Forest"
    eurosat.mkdir(parents=True)
    (eurosat / "Forest_1.tif").write_bytes(b"II*\x00garbage")
    data = read_eurosat_ms(tmp_path / "eurosat")
    with pytest.raises(DataError, match="Forest_1.tif is unreadable or corrupt"):
        data.load(0)

    patch = tmp_path / "ben/BigEarthNet-v1.0/S2A_X_0_0"
    patch.mkdir(parents=True)
    with pytest.raises(DataError, match="S2A_X_0_0_labels_metadata.json does not exist"):
        read_bigearthnet(tmp_path / "ben")
