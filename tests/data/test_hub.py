"""Hugging Face datasets as ``data.source`` (fedvlm/data/hub.py): real ``datasets`` objects built
here (``Dataset.from_dict`` with images, ``save_to_disk``, an ``imagefolder`` tree, a local HF
cache entry read with ``HF_DATASETS_OFFLINE=1``), run end to end on the tiny CLIP, no network."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image as PILImage

from conftest import write_colour_folder
from fedvlm.backbone.cache import clear_memory_cache
from fedvlm.cli import main
from fedvlm.config import load_config
from fedvlm.data.captioned import CaptionedImages
from fedvlm.data.datasets import load_data
from fedvlm.data.hub import HubImage
from fedvlm.errors import ConfigError, DataError
from fedvlm.sections import DataConfig
from fedvlm.simulation import run

datasets = pytest.importorskip("datasets")  # the `hf` extra
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, Sequence, Value  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

REPOSITORY = Path(__file__).resolve().parents[2]
NAMES = ["red_field", "green_forest", "blue_lake"]
COLOURS = [(200, 40, 40), (30, 160, 40), (40, 60, 200)]


def _image(colours: list, rng, size: int = 32) -> PILImage.Image:
    """Noisy stripes of the given colours (one colour: a plain noisy image)."""
    pixels = np.zeros((size, size, 3))
    for i, colour in enumerate(colours):
        pixels[:, i * size // len(colours):(i + 1) * size // len(colours)] = colour
    return PILImage.fromarray(np.clip(pixels + rng.normal(0, 30, pixels.shape), 0, 255).astype(np.uint8))


def _classes(per_class: int = 8, seed: int = 0) -> Dataset:
    rng = np.random.default_rng(seed)
    labels = [c for c in range(3) for _ in range(per_class)]
    features = Features({"image": Image(), "label": ClassLabel(names=NAMES)})
    return Dataset.from_dict({"image": [_image([COLOURS[c]], rng) for c in labels], "label": labels}, features=features)


TAGS = [[0], [1], [2], [0, 1], [1, 2], [0, 2]]


def _tags(repeats: int = 4) -> Dataset:
    rng = np.random.default_rng(1)
    tags = TAGS * repeats
    features = Features({"image": Image(), "tags": Sequence(ClassLabel(names=["red", "green", "blue"])),
                         "note": Value("int64")})
    return Dataset.from_dict({"image": [_image([COLOURS[t] for t in row], rng) for row in tags], "tags": tags,
                              "note": list(range(len(tags)))}, features=features)


def _captions(per_class: int = 6) -> Dataset:
    rng = np.random.default_rng(2)
    labels = [c for c in range(3) for _ in range(per_class)]
    words = ["red", "green", "blue"]
    captions = [[f"a {words[c]} field", f"{words[c]} ground seen from above"] for c in labels]
    features = Features({"image": Image(), "scene": ClassLabel(names=NAMES), "sentences": Sequence(Value("string"))})
    return Dataset.from_dict({"image": [_image([COLOURS[c]], rng) for c in labels], "scene": labels,
                              "sentences": captions}, features=features)


@pytest.fixture(scope="module")
def saved(tmp_path_factory) -> Path:
    """save_to_disk folders: one Dataset, a DatasetDict (train/test), multi-label, captions, an
    imagefolder tree, and datasets without a label column or with unlabelled rows."""
    root = tmp_path_factory.mktemp("hub")
    _classes().save_to_disk(str(root / "classes"))
    both = _classes(per_class=10, seed=5)
    DatasetDict(train=both.select(range(0, 30, 2)), test=both.select(range(1, 30, 2))).save_to_disk(
        str(root / "classes_dict"))
    _tags().save_to_disk(str(root / "tags"))
    _captions().save_to_disk(str(root / "captions"))
    folder = write_colour_folder(root / "tree", per_class=8, size=32)
    datasets.load_dataset("imagefolder", data_dir=str(folder), cache_dir=str(root / "hf-cache")).save_to_disk(
        str(root / "imagefolder"))
    _classes().select_columns(["image"]).save_to_disk(str(root / "images_only"))
    unlabelled = _classes().cast_column("label", Value("int64")).map(lambda row: {"label": -1})
    unlabelled.cast_column("label", ClassLabel(names=NAMES)).save_to_disk(str(root / "unlabelled"))
    (root / "empty").mkdir()
    return root


def _data(source: str, **hf) -> DataConfig:
    return DataConfig(source=source, hf=hf)


# ------------------------------------------------------------------------------- reading


def test_classlabel_names_are_the_class_names_and_rows_open_as_images(saved):
    dataset, spec = load_data(_data(f"disk:{saved / 'classes'}"))
    reference = _classes()
    assert spec.task == "classification" and spec.template == "a photo of a {}."
    assert dataset.classnames == ["red field", "green forest", "blue lake"]
    assert dataset.labels.dtype == np.int64 and list(dataset.labels) == reference["label"]
    assert dataset.official_splits is None  # one split: data.split (default 50/50) cuts it
    item = dataset.paths[5]
    assert isinstance(item, HubImage)
    fingerprint = datasets.load_from_disk(str(saved / "classes"))._fingerprint
    assert item.cache_identity == f"hf:{fingerprint}|all|image|5"
    with item.open_image() as image:  # PNG in the arrow file: the very pixels written
        assert np.array_equal(np.asarray(image.convert("RGB")), np.asarray(reference[5]["image"].convert("RGB")))


def test_a_dataset_dict_keeps_its_train_and_test_splits_unless_a_split_is_named(saved):
    dataset, _ = load_data(_data(f"disk:{saved / 'classes_dict'}"))
    assert len(dataset) == 30
    assert list(dataset.official_splits["train"]) == list(range(15))
    assert list(dataset.official_splits["test"]) == list(range(15, 30))
    train_only, _ = load_data(_data(f"disk:{saved / 'classes_dict'}", split="test"))
    assert len(train_only) == 15 and train_only.official_splits is None
    assert train_only.paths[0].cache_identity.split("|")[1] == "test"


def test_sequence_of_classlabel_is_multi_hot(saved):
    dataset, spec = load_data(_data(f"disk:{saved / 'tags'}"))
    assert spec.task == "multilabel"
    assert dataset.classnames == ["red", "green", "blue"]
    assert dataset.labels.shape == (24, 3) and dataset.labels.dtype == np.float32
    expected = np.zeros((6, 3), dtype=np.float32)
    for row, tags in enumerate(TAGS):
        expected[row, tags] = 1
    assert np.array_equal(dataset.labels[:6], expected) and np.array_equal(dataset.labels[6:12], expected)


def test_a_caption_column_is_retrieval_with_the_classlabel_as_scene(saved):
    dataset, spec = load_data(_data(f"disk:{saved / 'captions'}", caption_column="sentences"))
    assert spec.task == "retrieval" and isinstance(dataset, CaptionedImages)
    assert dataset.classnames == ["red field", "green forest", "blue lake"] and list(dataset.labels[:7]) == [0] * 6 + [1]
    assert len(dataset.captions) == 36 and dataset.captions[:2] == ["a red field", "red ground seen from above"]
    assert list(dataset.caption_image[:4]) == [0, 0, 1, 1]
    # the caption column is also found when it is the only string column and no label column is named
    found, spec = load_data(_data(f"disk:{saved / 'captions'}"))
    assert spec.task == "classification"  # a ClassLabel is there: captions only when named
    plain = datasets.load_from_disk(str(saved / "captions")).remove_columns(["scene"])
    plain.save_to_disk(str(saved / "captions_plain"))
    found, spec = load_data(_data(f"disk:{saved / 'captions_plain'}"))
    assert spec.task == "retrieval" and found.classnames == ["unlabelled"] and len(found.captions) == 36


def test_an_imagefolder_tree_reads_its_folder_names_as_classes(saved):
    dataset, spec = load_data(_data(f"disk:{saved / 'imagefolder'}"))
    assert spec.task == "classification"
    assert dataset.classnames == ["blue lake", "green forest", "red field"]  # imagefolder sorts the folders
    assert np.bincount(dataset.labels).tolist() == [8, 8, 8]
    assert list(dataset.official_splits or {}) == []  # imagefolder's one split: train
    with dataset.paths[0].open_image() as image:
        assert image.size == (32, 32)


def test_rows_feed_the_pixel_batches_and_the_feature_cache_workers(saved, tiny_backbone):
    import torch

    from fedvlm.backbone.cache import image_features
    from fedvlm.inputs.features import PixelBatches

    dataset, _ = load_data(_data(f"disk:{saved / 'classes'}"))
    reference = datasets.load_from_disk(str(saved / "classes"))
    source = PixelBatches(dataset.paths, tiny_backbone.preprocess, torch.zeros(len(dataset), 4),
                          torch.from_numpy(dataset.labels), "cpu")
    batch = source.batch(np.array([0, 5]), np.zeros(2, dtype=np.int64))
    expected = torch.stack([tiny_backbone.preprocess(reference[i]["image"].convert("RGB")) for i in (0, 5)])
    assert torch.equal(batch.pixels, expected)
    in_process = image_features(tiny_backbone, dataset.paths[:8], patches=False)
    clear_memory_cache()
    in_workers = image_features(tiny_backbone, dataset.paths[:8], patches=False, num_workers=2)  # rows pickled
    assert torch.equal(in_process.pooled, in_workers.pooled)


# ------------------------------------------------------------------------------- one-line errors


@pytest.fixture()
def config_file(tmp_path, saved):
    raw = {"name": "hub", "model": {"name": "fedvlm-tiny", "pretrained": None},
           "data": {"source": f"disk:{saved / 'classes'}"}, "partition": {"name": "dirichlet", "num_clients": 2},
           "federation": {"rounds": 1}, "logging": {"progress": False, "wandb": "disabled",
                                                     "results_dir": str(tmp_path / "results")}}
    path = tmp_path / "hub.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


ERRORS = [
    (["data.hf.label_column=nope"], "data.hf.label_column: disk:{saved}/classes has no column 'nope'; its columns: "
                                    "image (Image), label (ClassLabel(3 names))"),
    (["data.hf.label_column=image"], "data.hf.label_column: column 'image' of disk:{saved}/classes is Image, expected "
                                     "ClassLabel or Sequence(ClassLabel)"),
    (["data.hf.image_column=label"], "data.hf.image_column: column 'label' of disk:{saved}/classes is "
                                     "ClassLabel(3 names), expected Image"),
    (["data.source=disk:{saved}/classes_dict", "data.hf.split=validation"],
     "data.hf.split: disk:{saved}/classes_dict has no split 'validation'; expected one of: train, test"),
    (["data.source=disk:{saved}/classes", "data.hf.split=test"],
     "data.hf.split: disk:{saved}/classes holds one dataset (split all), not the split 'test'"),
    (["data.source=disk:{saved}/nowhere"], "data.source: {saved}/nowhere does not exist; expected a folder written "
                                           "by Dataset.save_to_disk or DatasetDict.save_to_disk"),
    (["data.source=disk:{saved}/empty"], "data.source: {saved}/empty is not a save_to_disk folder"),
    (["data.source=disk:{saved}/images_only"], "data.source: disk:{saved}/images_only has no label or caption "
                                               "column; expected a ClassLabel"),
    (["data.source=disk:{saved}/unlabelled"], "data.hf.label_column: 24 rows of disk:{saved}/unlabelled[all] have no "
                                              "label (-1 in 'label')"),
    (["data.source=hf://fedvlm-test/not-cached"], "data.source: cannot load hf://fedvlm-test/not-cached"),
    (["data.source=hf:/typo"], "data.source: expected hf://owner/name or disk:/path/to/a/save_to_disk/folder"),
    (["data.hf.config_name=x"], "data.hf.config_name: applies to hf:// sources only"),
    (["data.dataset=synthetic_scenes", "data.hf.split=train"], "data.hf: applies to data.source only"),
]


@pytest.mark.parametrize("overrides,expected", ERRORS, ids=[" ".join(e[0]) for e in ERRORS])
def test_a_missing_column_split_or_path_is_one_line(config_file, saved, capsys, overrides, expected):
    status = main(["run", str(config_file), *[o.format(saved=saved) for o in overrides]])
    err = capsys.readouterr().err.strip()
    assert status == 2 and err.startswith("error: ") and "\n" not in err, err
    assert expected.format(saved=saved) in err, err


def test_one_mapping_gives_exactly_one_of_dataset_and_source(saved):
    with pytest.raises(ConfigError, match=r"^data: give exactly one of data.dataset .* got both$"):
        load_config(overrides={"name": "x", "data": {"dataset": "synthetic_scenes", "source": "hf://a/b"}})
    with pytest.raises(ConfigError, match=r"^data: give exactly one of data.dataset .* got neither$"):
        load_config(overrides={"name": "x", "data": {"split": [0.5, 0.5]}})


def test_a_source_override_replaces_the_yaml_dataset_and_keeps_the_rest(saved, config_file):
    config = load_config(REPOSITORY / "experiments" / "demo.yaml", [f"data.source=disk:{saved / 'classes'}"])
    assert config.data.dataset is None and config.data.split == [0.5, 0.5] and config.data.name == "disk:classes"
    back = load_config(config_file, ["data.dataset=synthetic_scenes"])  # and the reverse
    assert back.data.source is None and back.data.dataset == "synthetic_scenes"
    with pytest.raises(ConfigError, match="got both"):  # one mapping giving both stays an error
        load_config(config_file, ["data.dataset=synthetic_scenes", f"data.source=disk:{saved / 'classes'}"])


def test_task_specific_keys_follow_the_source_task(saved):
    with pytest.raises(ConfigError, match="data.hidden_labels: applies to multilabel datasets only, and "
                                          "disk:classes is a classification dataset"):
        load_config(overrides={"name": "x", "data": {"source": f"disk:{saved / 'classes'}", "hidden_labels": 0.5}})
    load_config(overrides={"name": "x", "data": {"source": f"disk:{saved / 'tags'}", "hidden_labels": 0.5},
                           "partition": {"name": "iid"}})


def test_fedvlm_imports_without_datasets():
    code = ("import sys, fedvlm.cli, fedvlm.simulation, fedvlm.config, fedvlm.data.datasets; "
            "assert 'datasets' not in sys.modules, 'datasets imported'")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPOSITORY, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(REPOSITORY)})
    assert result.returncode == 0, result.stderr[-2000:]


# ------------------------------------------------------------------------------- end to end


def _run_config(source: str, results: Path, cache: Path, **sections) -> dict:
    raw = {"name": "hub_e2e", "seed": 2, "model": {"name": "fedvlm-tiny", "pretrained": None},
           "data": {"source": source}, "partition": {"name": "dirichlet", "num_clients": 2, "alpha": 1.0},
           "head": {"name": "coop", "n_ctx": 2}, "federation": {"rounds": 2},
           "optim": {"lr": 0.01, "batch_size": 8},
           "runtime": {"feature_cache": "disk", "cache_dir": str(cache)},
           "logging": {"progress": False, "backends": ["csv"], "results_dir": str(results)}}
    for key, value in sections.items():
        raw[key] = {**raw.get(key, {}), **value} if key not in ("head", "partition") else value
    return raw


def _entries(cache: Path) -> dict[str, int]:
    """Feature-cache entries and the time each was written."""
    return {p.name: (p / "meta.json").stat().st_mtime_ns for p in (cache / "features").iterdir()}


def test_a_saved_dataset_trains_and_its_fingerprint_keys_the_feature_cache(saved, tmp_path):
    cache = tmp_path / "cache"
    clear_memory_cache()  # an earlier test's features of these rows would skip the disk cache
    first = run(load_config(overrides=_run_config(f"disk:{saved / 'classes'}", tmp_path / "r1", cache)))
    assert first["dataset"] == "disk:classes" and first["rounds"] == 2 and first["num_clients"] == 2
    written = _entries(cache)
    assert len(written) == 1
    clear_memory_cache()  # a new process: only the disk cache is left
    second = run(load_config(overrides=_run_config(f"disk:{saved / 'classes'}", tmp_path / "r2", cache)))
    assert _entries(cache) == written  # read back, not re-encoded and rewritten
    assert second["global/accuracy"] == first["global/accuracy"] and second["train/loss"] == first["train/loss"]

    changed = datasets.load_from_disk(str(saved / "classes")).to_dict()  # one image altered: a new fingerprint
    changed["image"][0] = _image([COLOURS[2]], np.random.default_rng(9))
    Dataset.from_dict(changed, features=_classes().features).save_to_disk(str(tmp_path / "changed"))
    clear_memory_cache()
    run(load_config(overrides=_run_config(f"disk:{tmp_path / 'changed'}", tmp_path / "r3", cache)))
    assert len(_entries(cache)) == 2


def test_multi_label_and_caption_datasets_train_end_to_end(saved, tmp_path):
    tags = run(load_config(overrides=_run_config(f"disk:{saved / 'tags'}", tmp_path / "r1", tmp_path / "cache",
                                                 federation={"rounds": 1}, partition={"name": "iid"})))
    assert tags["primary_metric"] == "mAP" and np.isfinite(tags["global/mAP"])
    captions = run(load_config(overrides=_run_config(
        f"disk:{saved / 'captions'}", tmp_path / "r2", tmp_path / "cache", federation={"rounds": 1},
        data={"hf": {"caption_column": "sentences"}}, head={"name": "rdb", "bottleneck": 16},
        optim={"name": "adamw", "lr": 0.001, "weight_decay": 0.0})))
    assert captions["primary_metric"] == "mR" and np.isfinite(captions["global/mR"])


def test_an_imagefolder_dataset_runs_from_the_demo_yaml_by_override(saved, tmp_path, capsys):
    status = main(["run", str(REPOSITORY / "experiments" / "demo.yaml"), f"data.source=disk:{saved / 'imagefolder'}",
                   "model.pretrained=null", "federation.rounds=1", "partition.num_clients=2", "logging.progress=false",
                   "logging.backends=csv", f"logging.results_dir={tmp_path / 'results'}", "eval.every=1"])
    assert status == 0, capsys.readouterr().err[-2000:]
    summary = json.loads(next((tmp_path / "results" / "demo").glob("*/summary.json")).read_text())
    assert summary["dataset"] == "disk:imagefolder" and summary["rounds"] == 1


def _hub_cache_entry(cache: Path, repo: str, folder: Path) -> None:
    """An ``imagefolder`` tree prepared into ``cache`` where ``datasets`` keeps a Hub dataset it
    downloaded (``<owner>___<name>/<config>/<version>/<hash>/``), so that ``load_dataset(repo)``
    with ``HF_DATASETS_OFFLINE=1`` reads it from the cache, as it would a real download."""
    plain = datasets.load_dataset_builder("imagefolder", data_dir=str(folder), cache_dir=str(cache / "tmp"))
    owner, name = repo.split("/")
    builder = type(plain)(cache_dir=str(cache / "tmp"), dataset_name=name, config_id="default",
                          data_files=plain.config.data_files, hash=plain.hash)
    builder.download_and_prepare()
    version, digest = Path(builder.cache_dir).parts[-2:]
    shutil.copytree(builder.cache_dir, cache / f"{owner}___{name}" / "default" / version / digest)
    shutil.rmtree(cache / "tmp")


def test_a_hub_dataset_runs_offline_from_the_local_cache(tmp_path):
    cache = tmp_path / "hf-datasets"
    _hub_cache_entry(cache, "fedvlm-test/colours", write_colour_folder(tmp_path / "tree", per_class=8, size=32))
    env = {**os.environ, "PYTHONPATH": str(REPOSITORY), "HF_DATASETS_OFFLINE": "1", "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "fedvlm", "run", str(REPOSITORY / "experiments" / "demo.yaml"),
               "data.source=hf://fedvlm-test/colours", "data.hf.split=train", "model.pretrained=null",
               "federation.rounds=1", "partition.num_clients=2", "logging.progress=false", "logging.backends=csv",
               f"logging.results_dir={tmp_path / 'results'}", f"runtime.cache_dir={tmp_path / 'cache'}"]
    result = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(next((tmp_path / "results" / "demo").glob("*/summary.json")).read_text())
    assert summary["dataset"] == "hf://fedvlm-test/colours"
    missing = subprocess.run(command[:5] + ["data.source=hf://fedvlm-test/absent"] + command[6:], cwd=tmp_path,
                             env=env, capture_output=True, text=True, timeout=600)
    lines = [line for line in missing.stderr.splitlines() if line.startswith("error: ")]
    assert missing.returncode == 2 and len(lines) == 1, missing.stderr[-3000:]
    assert "data.source: cannot load hf://fedvlm-test/absent" in lines[0] and str(cache) in lines[0]


# ------------------------------------------------------------------------------- partition.name: flwr


def _flwr_partition(**section):
    return load_config(overrides={"name": "x", "data": {"dataset": "synthetic_scenes"},
                                  "partition": {"name": "flwr", **section}}).partition


def test_a_flower_partitioner_shares_out_the_labels_as_it_does_alone():
    partitioner = pytest.importorskip("flwr_datasets.partitioner")
    labels = np.repeat(np.arange(4), 15)
    partition = _flwr_partition(num_clients=3, partitioner="DirichletPartitioner",
                                kwargs={"alpha": 0.5, "min_partition_size": 0})
    shares = partition(labels, 7)
    assert np.array_equal(np.sort(np.concatenate(shares)), np.arange(60))  # every row once
    alone = partitioner.DirichletPartitioner(num_partitions=3, partition_by="label", alpha=0.5, min_partition_size=0,
                                             seed=7)
    alone.dataset = Dataset.from_dict({"label": labels, "id": np.arange(60)})  # it reads the label column only
    for k, share in enumerate(shares):
        assert np.array_equal(share, np.sort(alone.load_partition(k)["id"]))
    assert all(np.array_equal(a, b) for a, b in zip(shares, partition(labels, 7)))  # deterministic in the seed
    assert not all(np.array_equal(a, b) for a, b in zip(shares, partition(labels, 8)))
    iid = _flwr_partition(num_clients=4, partitioner="IidPartitioner")(labels, 1)  # takes no partition_by or seed
    assert sorted(len(s) for s in iid) == [15, 15, 15, 15]


@pytest.mark.parametrize("section,expected", [
    ({"partitioner": "DirichletPartitionr"}, "partition.partitioner: unknown flwr_datasets partitioner "
                                             "'DirichletPartitionr'; expected one of: "),
    ({"kwargs": {"alpha": 0.5, "num_partitions": 3}}, "partition.kwargs: num_partitions is set by fedvlm"),
    ({"kwargs": {"alpah": 0.5}}, "partition.kwargs: DirichletPartitioner(num_partitions=10, partition_by='label', "
                                 "seed=1, alpah=0.5) failed: "),
])
def test_a_wrong_flower_partitioner_or_argument_is_one_line(section, expected):
    pytest.importorskip("flwr_datasets")
    with pytest.raises(ConfigError) as error:
        _flwr_partition(**section)(np.repeat(np.arange(3), 20), 1)
    assert str(error.value).startswith(expected) and "\n" not in str(error.value), str(error.value)


def test_a_flower_partition_runs_end_to_end(saved, tmp_path):
    pytest.importorskip("flwr_datasets")
    summary = run(load_config(overrides=_run_config(
        f"disk:{saved / 'classes'}", tmp_path / "r", tmp_path / "cache", federation={"rounds": 1},
        partition={"name": "flwr", "num_clients": 2, "partitioner": "DirichletPartitioner",
                   "kwargs": {"alpha": 1.0, "min_partition_size": 1}})))
    counts = np.loadtxt(Path(summary["run_dir"]) / "partition.csv", delimiter=",", skiprows=1)
    assert summary["num_clients"] == 2 and counts.sum() == 12  # the 50/50 split's 12 training images


def test_without_flower_datasets_the_flwr_partition_is_one_line():
    try:
        import flwr_datasets  # noqa: F401
    except ImportError:
        pass
    else:
        pytest.skip("flwr-datasets is installed")
    with pytest.raises(ConfigError, match=r"^partition.name: flwr needs the Flower Datasets package; "
                                          r"pip install 'fedvlm\[flwr\]'"):
        _flwr_partition()(np.repeat(np.arange(3), 20), 1)
