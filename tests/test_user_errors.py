"""The known user errors of issue 17 (part 6), each through the real CLI entry: exit status 2, one
stderr line naming the key or file and what is expected, no traceback (docs/RELIABILITY.md, section 6).

Config mistakes are tried on a valid experiment over the small colour dataset; file mistakes damage
one file of a copy of a tiny synthetic world (VOC, COCO, RSICD, BigEarthNet layouts)."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from fedvlm.cli import main
from fedvlm.data.synthetic import generate_dataset
from fedvlm.errors import UserError
from fedvlm.files import read_json, read_text, require_writable_folder

GOOD = {
    "name": "user_errors", "model": {"name": "fedvlm-tiny", "pretrained": None},
    "data": {"dataset": "synthetic_scenes"}, "partition": {"name": "dirichlet", "num_clients": 3, "alpha": 0.5},
    "head": {"name": "coop"}, "federation": {"rounds": 1}, "logging": {"progress": False, "wandb": "disabled"},
}
NOT_UTF8 = "name: caf\xe9\n".encode("latin-1")  # a Latin-1 file, as a Windows editor saves it


@pytest.fixture()
def config_file(tmp_path, colour_data_root):
    raw = {**GOOD, "data": {**GOOD["data"], "root": str(colour_data_root)},
           "logging": {**GOOD["logging"], "results_dir": str(tmp_path / "results")}}
    path = tmp_path / "exp.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


def one_error_line(capsys, argv) -> str:
    status = main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert status == 2, captured.err
    assert len(lines) == 1 and lines[0].startswith("error: "), captured.err
    return lines[0]


CONFIG_CASES = [
    # a list or mapping where a name is expected
    (["head.name=[a,b]"], "head.name: expected a name, got ['a', 'b']; expected one of: "),
    (["head=[1]"], "head: expected a mapping with a 'name' key, got [1]"),
    (["partition.name={a: 1}"], "partition.name: expected a name, got {'a': 1}"),
    (["algorithm.name=[fedavg]"], "algorithm.name: expected a name, got ['fedavg']"),
    # seeds numpy and torch would refuse, or read differently
    (["seed=-1"], "seed: input should be greater than or equal to 0 (got -1)"),
    (["seed=4294967296"], "seed: input should be less than or equal to 4294967295"),
    (["seed=18446744073709551616"], "seed: input should be less than or equal to 4294967295"),
    (["seed=true"], "seed: expected a number, not a boolean"),
    (["seeds=[1, -2]"], "seed: input should be greater than or equal to 0 (got -2)"),
    # options that do not act on this (single-label) dataset
    (["data.hidden_labels=0.5"], "data.hidden_labels: applies to multilabel datasets only, and synthetic_scenes is "
                                 "a classification dataset (got 0.5)"),
    (["eval.threshold=0.3"], "eval.threshold: applies to multilabel datasets only"),
    (["eval.top_k=2"], "eval.top_k: applies to multilabel datasets only"),
    (["head.asl.gamma_neg=2"], "head.asl: applies to multilabel datasets only, and synthetic_scenes is a "
                               "classification dataset (got {gamma_neg: 2.0, gamma_pos: 0.0, clip: 0.05})"),
    (["head.name=rdb"], "head.name: rdb returns embeddings, but synthetic_scenes is a classification dataset"),
    # non-finite floats, wherever they are
    (["partition.alpha=.inf"], "partition.alpha: input should be a finite number (got inf)"),
    (["partition.alpha=.nan"], "partition.alpha: input should be a finite number (got nan)"),
    (["optim.lr=.inf"], "optim.lr: input should be a finite number (got inf)"),
    (["optim.weight_decay=.inf"], "optim.weight_decay: input should be a finite number"),
    (["data.split=[.nan, 0.5]"], "data.split.0: input should be a finite number (got nan)"),
    (["head.name=fedotp", "head.eps=-.inf"], "head.eps: input should be a finite number (got -inf)"),
    # optimizer settings AdamW cannot run with
    (["optim.name=adamw", "optim.betas=[1.0, 0.999]"], "optim.betas.0: input should be less than 1 (got 1.0)"),
    (["optim.name=adamw", "optim.betas=[0.9, -0.1]"], "optim.betas.1: input should be greater than or equal to 0"),
    (["optim.weight_decay=-0.1"], "optim.weight_decay: input should be greater than or equal to 0"),
    (["optim.batch_size=yes"], "optim.batch_size: expected a number, not a boolean (got True)"),
    # overrides that contradict each other, values too large to print
    (["data.root=x", "data.root.a=1"], "override 'data.root.a=1': an earlier override set data.root to 'x'"),
    (["optim.momentum=" + "9" * 5000], "optim.momentum: input should be"),
    (['data.dataset="x\\ny"'], r"data.dataset: unknown dataset 'x\ny'"),  # YAML's "\n": a real newline
    # more shots than a class of the training split holds (18 training images over 3 classes)
    (["data.shots=7"], "data.shots: 7 training images per class requested, but class 'blue lake' has only 6 in "
                       "the training split"),
]


@pytest.mark.parametrize("overrides,expected", CONFIG_CASES, ids=[" ".join(c[0])[:40] for c in CONFIG_CASES])
def test_config_mistake_is_one_line(config_file, capsys, overrides, expected):
    assert expected in one_error_line(capsys, ["run", str(config_file), *overrides])


def test_config_file_mistakes_are_one_line(tmp_path, capsys):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(NOT_UTF8)
    assert one_error_line(capsys, ["run", str(bad)]) == (
        f"error: config file {bad} is not UTF-8 text (byte 0xe9 at offset 9); expected an experiment YAML such as "
        "experiments/demo.yaml")
    assert "is a directory; expected an experiment YAML" in one_error_line(capsys, ["run", str(tmp_path)])
    assert "is a directory" in one_error_line(capsys, ["describe", str(tmp_path)])
    assert "is not UTF-8 text" in one_error_line(capsys, ["patch", str(bad)])
    newline = tmp_path / "a\nb.yaml"
    assert "a\\nb.yaml does not exist" in one_error_line(capsys, ["run", str(newline)])
    deep = tmp_path / "deep.yaml"
    deep.write_text("name: " + "[" * 20000 + "]" * 20000 + "\n")
    assert "nests deeper than the YAML parser follows" in one_error_line(capsys, ["run", str(deep)])
    huge = tmp_path / "huge.yaml"
    huge.write_text("name: x\nseed: " + "9" * 5000 + "\n")
    assert "a value cannot be read" in one_error_line(capsys, ["run", str(huge)])
    listed_base = tmp_path / "base_list.yaml"
    listed_base.write_text("base: [a.yaml]\nname: x\n")
    assert "base: expected the path of another experiment YAML, got ['a.yaml']" in \
        one_error_line(capsys, ["run", str(listed_base)])


def test_unwritable_results_folder_is_one_line_naming_the_key(config_file, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    line = one_error_line(capsys, ["run", str(config_file), f"logging.results_dir={blocker}/results"])
    assert line == f"error: logging.results_dir: {blocker}/results cannot be made: {blocker} is a file; " \
                   "expected a writable folder"
    line = one_error_line(capsys, ["run", str(config_file), f"runtime.cache_dir={blocker}"])
    assert line == f"error: runtime.cache_dir: {blocker} is a file; expected a writable folder"
    assert not (tmp_path / "results").exists()  # nothing was started


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux /proc, read-only even to root")
def test_read_only_results_folder_is_one_line(config_file, capsys):
    line = one_error_line(capsys, ["run", str(config_file), "logging.results_dir=/proc/fedvlm-results"])
    assert line.startswith("error: logging.results_dir: /proc/fedvlm-results (its nearest existing folder /proc) "
                           "is not writable")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a mode-555 folder")
def test_permission_denied_results_folder(config_file, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    line = one_error_line(capsys, ["run", str(config_file), f"logging.results_dir={locked}/r"])
    assert "is not writable (permission denied)" in line


# ------------------------------------------------------------------------------- damaged files


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A tiny synthetic world in the VOC, COCO, RSICD and BigEarthNet layouts."""
    root = tmp_path_factory.mktemp("world")
    generate_dataset(root / "synthetic_world", layouts=["voc2007", "coco", "rsicd", "bigearthnet"], num_images=24,
                     size=16, num_styles=0)
    return root


VOC = "synthetic_world/VOCdevkit/VOC2007"
FILE_CASES = [  # dataset, file to damage (glob under the data root), extra overrides, bytes, expected
    ("synthetic_voc", f"{VOC}/ImageSets/Main/trainval.txt", [], NOT_UTF8, "VOC split list {file} is not UTF-8 text"),
    ("synthetic_voc", f"{VOC}/ImageSets/Main/test.txt", [], b"", "VOC split list {file} lists no image"),
    ("synthetic_voc", f"{VOC}/Annotations/*.xml", [], NOT_UTF8, "annotation {file} is not valid XML"),
    ("coco2014", "synthetic_world/coco/annotations/instances_train2014.json", ["data.root={root}/synthetic_world"],
     NOT_UTF8, "COCO annotation file {file} is not UTF-8 text"),
    ("coco2014", "synthetic_world/coco/annotations/instances_val2014.json", ["data.root={root}/synthetic_world"],
     b'{"images": [{"id": 1, "file_name": 7}], "annotations": [], "categories": []}',
     "{file}: images[].file_name holds 7, which is not text"),
    ("synthetic_rsicd", "synthetic_world/RSICD/dataset_rsicd.json", ["head.name=clip_adapter"], NOT_UTF8,
     "caption file {file} is not UTF-8 text"),
    ("synthetic_rsicd", "synthetic_world/RSICD/dataset_rsicd.json", ["head.name=clip_adapter"], b"[" * 100000,
     "caption file {file} nests deeper than the JSON parser follows"),
    ("synthetic_bigearthnet", "synthetic_world/BigEarthNet-v1.0/*/*_labels_metadata.json", [], NOT_UTF8,
     "BigEarthNet labels file {file} is not UTF-8 text"),
    ("synthetic_bigearthnet", "synthetic_world/BigEarthNet-v1.0/*/*_labels_metadata.json", [], b'{"labels": "Forests"}',
     "BigEarthNet labels file {file} has no 'labels' list"),
]


@pytest.mark.parametrize("dataset,pattern,extra,content,expected", FILE_CASES,
                         ids=[f"{c[0]}-{Path(c[1]).name}-{len(c[3])}" for c in FILE_CASES])
def test_damaged_dataset_file_is_one_line_naming_it(world, tmp_path, capsys, dataset, pattern, extra, content,
                                                    expected):
    root = tmp_path / "data"
    shutil.copytree(world, root)
    target = sorted(root.glob(pattern))[0]
    target.write_bytes(content)
    raw = {**GOOD, "data": {"dataset": dataset, "root": str(root)}, "partition": {"name": "iid", "num_clients": 2},
           "logging": {**GOOD["logging"], "results_dir": str(tmp_path / "results")}}
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump(raw))
    line = one_error_line(capsys, ["run", str(config), *(e.format(root=root) for e in extra)])
    assert expected.format(file=target) in line


def test_damaged_condition_file_is_one_line(tmp_path):
    from fedvlm.heads.fedmpt import load_conditions

    conditions = tmp_path / "conditions.txt"
    conditions.write_bytes(b"sunny\n" + NOT_UTF8)
    with pytest.raises(UserError, match=r"head.conditions: condition file .* is not UTF-8 text \(byte 0xe9"):
        load_conditions(str(conditions))
    conditions.write_text("sunny\n# a comment\nfoggy\n")
    assert load_conditions(str(conditions)) == ["sunny", "foggy"]


def test_the_reader_keeps_text_and_drops_only_a_byte_order_mark(tmp_path):
    path = tmp_path / "names.json"
    path.write_bytes(b"\xef\xbb\xbf" + '{"1": "caf\u00e9"}'.encode())
    assert read_json(path, "file", "JSON") == {"1": "caf\u00e9"}
    assert read_text(path, "file", "JSON").startswith("{")
    with pytest.raises(UserError, match=r"contains a NUL character"):
        read_text(str(path) + "\x00", "file", "JSON")
    assert require_writable_folder(tmp_path / "new" / "deeper", "key") == tmp_path / "new" / "deeper"
    assert not (tmp_path / "new").exists()  # the probe creates nothing


def test_message_of_a_user_error_is_one_line_whatever_it_quotes():
    message = str(UserError("file a\nb\r\x1b[31m\u2028c"))
    assert len(message.splitlines()) == 1 and "\x1b" not in message
    assert message == "file a\\nb\\r\\x1b[31m\\u2028c"


def test_real_process_non_utf8_config_exits_2_without_traceback(tmp_path):
    bad = tmp_path / "latin1.yaml"
    bad.write_bytes(NOT_UTF8)
    out = subprocess.run([sys.executable, "-m", "fedvlm", "run", str(bad)], capture_output=True, text=True,
                         env=os.environ, timeout=120)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [f"error: config file {bad} is not UTF-8 text (byte 0xe9 at offset 9); "
                                               "expected an experiment YAML such as experiments/demo.yaml"]
    assert "Traceback" not in out.stdout + out.stderr
