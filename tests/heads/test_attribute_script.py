"""scripts/generate_attributes.py: one LLM question per class, with a stand-in LLM; the fedmvp head
reads the file it writes; no endpoint, an unreachable one and a missing dataset are one line."""

import importlib.util
import json
from pathlib import Path

import pytest

from fedvlm.heads.fedmvp import load_attributes

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "generate_attributes.py"
spec = importlib.util.spec_from_file_location("generate_attributes", SCRIPT)
generate_attributes = importlib.util.module_from_spec(spec)
spec.loader.exec_module(generate_attributes)


def test_one_question_per_class_and_the_head_reads_the_file(tmp_path):
    prompts = []

    def ask(prompt):
        prompts.append(prompt)
        name = prompt.split("distinguishing a ")[1].split(" in a photo")[0]
        return f"Here they are:\n- {name.split()[0]} shape.\n* Metal\n1. metal\n2) a long tail\nnot a list item"

    attributes = generate_attributes.attribute_chain(["storage tank", "car"], ask, num_attributes=3)
    assert len(prompts) == 2 and "at most 3 short noun phrases" in prompts[0]
    assert attributes == {"storage tank": ["storage shape", "metal", "a long tail"], "car": ["car shape", "metal",
                                                                                             "a long tail"]}
    file = tmp_path / "attributes.json"
    generate_attributes.write_attributes(file, attributes, "stand-in")
    assert "_about" in json.loads(file.read_text())
    sentences, classes = load_attributes(str(file), ["car", "storage tank"], "a photo of a {}.")
    assert sentences[0] == "a photo of a car, which has car shape" and classes == [0, 0, 0, 1, 1, 1]
    assert sentences[2] == "a photo of a car, which is a long tail"


def test_a_reply_without_a_list_is_an_error():
    with pytest.raises(RuntimeError, match="no attribute for class 'car'"):
        generate_attributes.attribute_chain(["car"], lambda prompt: "I cannot help with that.")


def test_no_endpoint_is_one_line_and_sends_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FEDVLM_LLM_ENDPOINT", raising=False)
    monkeypatch.delenv("FEDVLM_LLM_MODEL", raising=False)
    assert generate_attributes.main(["--classes", "a,b", "--out", str(tmp_path / "x.json")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "FEDVLM_LLM_ENDPOINT" in error
    assert not (tmp_path / "x.json").exists()


def test_unreachable_endpoint_and_missing_dataset_are_one_line(tmp_path, capsys):
    out = tmp_path / "x.json"
    code = generate_attributes.main(["--classes", "a,b", "--out", str(out), "--endpoint",
                                     "http://127.0.0.1:9/v1/chat/completions", "--model", "m"])
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1
    assert error.startswith("error: LLM endpoint http://127.0.0.1:9/") and not out.exists()
    code = generate_attributes.main(["--dataset", "voc2007", "--data-root", str(tmp_path), "--out", str(out),
                                     "--endpoint", "http://127.0.0.1:9/", "--model", "m"])
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1 and "voc2007" in error and not out.exists()
