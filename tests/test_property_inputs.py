"""Property: whatever a user feeds the config loader or a dataset reader (random YAML values at
random known keys, random override strings, random or damaged bytes as a config file or as an
annotation, caption or label file), it either succeeds or raises a UserError whose message is one
line; through the CLI entry ``fedvlm.cli.main`` that is exit status 2 and one stderr line.

Deterministic (``derandomize=True``, no example database) and offline; example counts are kept
small so the file runs in well under a minute (docs/RELIABILITY.md, section 6).
"""

import contextlib
import io
import json
import os
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fedvlm.cli import main
from fedvlm.config import ExperimentConfig, Section, load_configs
from fedvlm.data.datasets import DATASETS
from fedvlm.errors import UserError

PROPERTY = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
FEW = settings(PROPERTY, max_examples=25)

GOOD = {
    "name": "property", "model": {"name": "fedvlm-tiny", "pretrained": None},
    "data": {"dataset": "synthetic_scenes", "root": "/nonexistent/fedvlm-property-data"},
    "partition": {"name": "dirichlet", "num_clients": 3, "alpha": 0.5}, "head": {"name": "coop"},
    "federation": {"rounds": 1}, "logging": {"progress": False, "wandb": "disabled"},
}


def _section_keys(model: type[Section], prefix: str) -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, Section):
            keys += _section_keys(annotation, f"{prefix}{name}.")
        else:
            keys.append(prefix + name)
    return keys


def _known_keys() -> list[str]:
    from fedvlm.data.partition import PARTITIONS
    from fedvlm.heads import HEADS
    from fedvlm.server import ALGORITHMS

    keys = _section_keys(ExperimentConfig, "")
    keys += _section_keys(PARTITIONS.get("dirichlet"), "partition.")
    keys += _section_keys(HEADS.get("fedotp").Config, "head.") + _section_keys(HEADS.get("fedmpt").Config, "head.")
    keys += _section_keys(ALGORITHMS.get("fedprox"), "algorithm.")
    return sorted(set(keys)) + ["seeds", "sweep", "base"]


KNOWN_KEYS = _known_keys()
# Keys that name folders: a CLI run given them could write somewhere real, so the CLI property
# leaves them alone (the loader property still draws them).
PATH_KEYS = ("logging", "runtime.cache_dir", "data.root", "resume", "model.pretrained", "head.conditions", "sweep")

scalars = (st.none() | st.booleans() | st.integers() | st.integers(-3, 3)
           | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=12)
           | st.sampled_from(["coop", "fedavg", "dirichlet", "synthetic_voc", "adamw", ".inf", "1e999", "-1"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(st.text(max_size=6) | st.sampled_from(["name", "alpha", "lr"]), inner,
                                        max_size=3), max_leaves=8)
keys = st.sampled_from(KNOWN_KEYS) | st.text(alphabet="abcdehlmnoprst._", min_size=1, max_size=14)


def _flow_yaml(value) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10**6)
    return text.removesuffix("\n").removesuffix("\n...").strip()


overrides = st.lists(
    st.one_of(st.builds(lambda k, v: f"{k}={_flow_yaml(v)}", keys, values),
              st.builds(lambda k, v: f"{k}={v}", keys, st.text(max_size=16)),
              st.text(max_size=24)),
    max_size=4)


def succeeds_or_one_line(call) -> tuple[bool, str]:
    """(holds, what happened): ``call`` succeeded, or raised a UserError of exactly one line."""
    try:
        call()
    except UserError as error:
        message = str(error)
        return bool(message) and len(message.splitlines()) == 1, repr(message)
    return True, "succeeded"


def cli_exits_2_with_one_line(argv) -> tuple[bool, str]:
    """(holds, what happened): ``fedvlm`` exited 2 with one ``error:`` line on stderr."""
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        status = main(argv)
    lines = err.getvalue().strip().splitlines()
    holds = status == 2 and len(lines) == 1 and lines[0].startswith("error: ")
    return holds, f"{argv!r}: exit {status}, stderr {err.getvalue()!r}"


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("property")


@pytest.fixture(scope="module")
def good_file(folder) -> Path:
    path = folder / "good.yaml"
    path.write_text(yaml.safe_dump({**GOOD, "logging": {**GOOD["logging"], "results_dir": str(folder / "results")}}))
    return path


@st.composite
def damaged(draw, valid: bytes) -> bytes:
    """``valid`` with a few bytes replaced, cut or inserted (reaches deeper than random bytes)."""
    data = bytearray(valid)
    for _ in range(draw(st.integers(1, 4))):
        position = draw(st.integers(0, len(data)))
        kind = draw(st.sampled_from(["replace", "cut", "insert"]))
        if kind == "replace" and position < len(data):
            data[position] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[position:position + draw(st.integers(1, 16))]
        else:
            data[position:position] = draw(st.binary(min_size=1, max_size=6))
    return bytes(data)


def file_bytes(valid: bytes):
    return st.binary(max_size=300) | damaged(valid)


# --------------------------------------------------------------------------------- the loader


@PROPERTY
@given(overrides)
def test_random_overrides_load_or_fail_in_one_line(good_file, items):
    holds, happened = succeeds_or_one_line(lambda: load_configs(good_file, items))
    assert holds, happened


def _deep_update(base: dict, update: dict) -> dict:
    """A plain recursive update (the file is written as a user would; the loader does the merging)."""
    merged = dict(base)
    for key, value in update.items():
        both = isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _deep_update(merged[key], value) if both else value
    return merged


@PROPERTY
@given(st.dictionaries(st.sampled_from(KNOWN_KEYS), values, min_size=1, max_size=4))
def test_random_values_at_known_keys_in_a_file_load_or_fail_in_one_line(folder, assignments):
    update: dict = {}
    for dotted, value in assignments.items():
        node = update
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    path = folder / "random_values.yaml"
    path.write_text(yaml.safe_dump(_deep_update(GOOD, update)))
    holds, happened = succeeds_or_one_line(lambda: load_configs(path))
    assert holds, happened


@PROPERTY
@given(file_bytes(yaml.safe_dump(GOOD).encode()))
def test_random_bytes_as_config_file_load_or_fail_in_one_line(folder, content):
    path = folder / "random_bytes.yaml"
    path.write_bytes(content)
    holds, happened = succeeds_or_one_line(lambda: load_configs(path))
    assert holds, happened


@FEW
@given(file_bytes(yaml.safe_dump(GOOD).encode()))
def test_cli_on_random_config_bytes_exits_2_with_one_line(folder, content):
    path = folder / "cli_bytes.yaml"
    path.write_bytes(content)
    holds, happened = cli_exits_2_with_one_line(["run", str(path)])
    assert holds, happened


@FEW
@given(overrides.map(lambda items: [i for i in items if not i.lstrip().startswith(PATH_KEYS)]))
def test_cli_on_random_overrides_exits_2_with_one_line(good_file, folder, items):
    # The data root does not exist, so no override list can start a run: every outcome is an error.
    previous = os.getcwd()
    os.chdir(folder)  # a relative path in a random value lands here
    try:
        holds, happened = cli_exits_2_with_one_line(["run", str(good_file), *items])
        assert holds, happened
    finally:
        os.chdir(previous)


# -------------------------------------------------------------------------------- the readers

VOC_XML = (b"<annotation><filename>000001.jpg</filename><object><name>car</name><difficult>0</difficult>"
           b"</object></annotation>")


@pytest.fixture(scope="module")
def voc_root(folder) -> Path:
    main_folder = folder / "voc" / "VOC2007" / "ImageSets" / "Main"
    main_folder.mkdir(parents=True)
    (main_folder / "trainval.txt").write_text("000001\n")
    (main_folder / "car_trainval.txt").write_text("000001  1\n")
    (folder / "voc" / "VOC2007" / "Annotations").mkdir()
    return folder / "voc" / "VOC2007"


@PROPERTY
@given(file_bytes(VOC_XML))
def test_random_voc_annotation_reads_or_fails_in_one_line(voc_root, content):
    from fedvlm.data.formats.voc import read_voc2007

    (voc_root / "Annotations" / "000001.xml").write_bytes(content)
    holds, happened = succeeds_or_one_line(lambda: read_voc2007(voc_root, "trainval"))
    assert holds, happened


@PROPERTY
@given(file_bytes(b"000001\n"))
def test_random_voc_split_list_reads_or_fails_in_one_line(voc_root, content):
    from fedvlm.data.formats.voc import read_voc2007

    (voc_root / "Annotations" / "000001.xml").write_bytes(VOC_XML)
    (voc_root / "ImageSets" / "Main" / "trainval.txt").write_bytes(content)
    holds, happened = succeeds_or_one_line(lambda: read_voc2007(voc_root, "trainval"))
    assert holds, happened


json_scalars = st.none() | st.booleans() | st.integers(-2, 3) | st.floats(allow_nan=False) | st.text(max_size=6)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=6)
coco_like = st.fixed_dictionaries({
    "images": st.lists(st.fixed_dictionaries({"id": json_values, "file_name": json_values}), max_size=3) | json_values,
    "annotations": st.lists(st.fixed_dictionaries({"image_id": json_values, "category_id": json_values}),
                            max_size=3) | json_values,
    "categories": st.lists(st.fixed_dictionaries({"id": json_values, "name": json_values}), max_size=3) | json_values,
})
COCO_VALID = json.dumps({"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"id": 1, "image_id": 1,
                         "category_id": 3}], "categories": [{"id": 3, "name": "car"}]}).encode()


@PROPERTY
@given(file_bytes(COCO_VALID) | coco_like.map(lambda v: json.dumps(v).encode()) | json_values.map(
    lambda v: json.dumps(v).encode()))
def test_random_coco_json_reads_or_fails_in_one_line(folder, content):
    from fedvlm.data.formats.coco import read_coco

    (folder / "coco" / "annotations").mkdir(parents=True, exist_ok=True)
    (folder / "coco" / "annotations" / "instances_train2014.json").write_bytes(content)
    holds, happened = succeeds_or_one_line(lambda: read_coco(folder / "coco", "train2014"))
    assert holds, happened


caption_like = st.fixed_dictionaries({"images": st.lists(st.fixed_dictionaries({
    "filename": json_values | st.just("beach_1.jpg"), "split": json_values | st.sampled_from(["train", "test"]),
    "sentences": st.lists(st.fixed_dictionaries({"raw": json_values}), max_size=2) | json_values}), max_size=3)
    | json_values})
CAPTIONS_VALID = json.dumps({"images": [{"filename": "beach_1.jpg", "split": "train",
                                         "sentences": [{"raw": "a beach."}]}]}).encode()


@PROPERTY
@given(file_bytes(CAPTIONS_VALID) | caption_like.map(lambda v: json.dumps(v).encode()))
def test_random_caption_json_reads_or_fails_in_one_line(folder, content):
    from fedvlm.data.captioned import read_caption_images

    root = folder / "rsicd"
    (root / "RSICD_images").mkdir(parents=True, exist_ok=True)
    (root / "RSICD_images" / "beach_1.jpg").write_bytes(b"")
    (root / "dataset_rsicd.json").write_bytes(content)
    holds, happened = succeeds_or_one_line(lambda: read_caption_images(root, DATASETS.get("synthetic_rsicd")))
    assert holds, happened


@PROPERTY
@given(file_bytes(b"0\n1\n"), file_bytes(b"car\nsky\n"))
def test_random_nuswide_label_files_read_or_fail_in_one_line(folder, labels, concepts):
    from fedvlm.data.formats.nuswide import read_nuswide

    root = folder / "nuswide"
    (root / "ImageList").mkdir(parents=True, exist_ok=True)
    (root / "TrainTestLabels").mkdir(exist_ok=True)
    (root / "Flickr" / "a").mkdir(parents=True, exist_ok=True)
    (root / "Flickr" / "a" / "1.jpg").write_bytes(b"")
    (root / "Flickr" / "a" / "2.jpg").write_bytes(b"")
    (root / "ImageList" / "TrainImagelist.txt").write_text("a\\1.jpg\na\\2.jpg\n")
    (root / "Concepts81.txt").write_bytes(concepts)
    for concept in ("car", "sky"):
        (root / "TrainTestLabels" / f"Labels_{concept}_Train.txt").write_bytes(labels)
    holds, happened = succeeds_or_one_line(lambda: read_nuswide(root, "train"))
    assert holds, happened


@PROPERTY
@given(file_bytes(b"image,car,sky\nx_1.jpg,1,0\n"), file_bytes(b"name,Apron,Beach\nimg1,0,1\n"))
def test_random_label_csv_files_read_or_fail_in_one_line(folder, mlrsnet_csv, multiscene_csv):
    from fedvlm.data.formats.mlrsnet import read_mlrsnet
    from fedvlm.data.formats.multiscene import read_multiscene

    mlrsnet = folder / "mlrsnet"
    (mlrsnet / "labels").mkdir(parents=True, exist_ok=True)
    (mlrsnet / "labels" / "x.csv").write_bytes(mlrsnet_csv)
    holds, happened = succeeds_or_one_line(lambda: read_mlrsnet(mlrsnet))
    assert holds, happened
    multiscene = folder / "multiscene"
    multiscene.mkdir(exist_ok=True)
    (multiscene / "Tra.csv").write_bytes(multiscene_csv)
    holds, happened = succeeds_or_one_line(lambda: read_multiscene(multiscene, "train"))
    assert holds, happened


@PROPERTY
@given(file_bytes(b'{"labels": ["Forests"]}') | json_values.map(lambda v: json.dumps({"labels": v}).encode()))
def test_random_bigearthnet_labels_read_or_fail_in_one_line(folder, content):
    from fedvlm.data.formats.multispectral import read_bigearthnet

    patch = folder / "BigEarthNet-v1.0" / "P_1"
    patch.mkdir(parents=True, exist_ok=True)
    (patch / "P_1_labels_metadata.json").write_bytes(content)
    holds, happened = succeeds_or_one_line(lambda: read_bigearthnet(folder / "BigEarthNet-v1.0"))
    assert holds, happened
