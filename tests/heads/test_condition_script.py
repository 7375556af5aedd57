"""scripts/generate_conditions.py: the paper's two-stage LLM chain, with a stand-in LLM."""

import importlib.util
from pathlib import Path

from fedvlm.heads.fedmpt import load_conditions

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "generate_conditions.py"
spec = importlib.util.spec_from_file_location("generate_conditions", SCRIPT)
generate_conditions = importlib.util.module_from_spec(spec)
spec.loader.exec_module(generate_conditions)


def test_chain_describes_combinations_then_summarises(tmp_path):
    prompts = []

    def ask(prompt):
        prompts.append(prompt)
        if prompt.startswith("Please give"):
            return "\n".join(f"{pair}: they share a scene." for pair in prompt.split("Combinations: ")[1].split("; "))
        return "1. Spatial layout\n2. Object pose\n- Background.\n* lighting/weather\n5) object scale\n6. extra"

    classes = ["aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car"]
    descriptions, conditions = generate_conditions.condition_chain(classes, ask, num_conditions=5,
                                                                   max_combinations=None, chunk=8)
    assert len(prompts) == 4  # 21 pairs in chunks of 8, then the summary
    assert len(descriptions) == 21 and descriptions[0] == "aeroplane-bicycle: they share a scene."
    assert "aeroplane-bicycle: they share a scene." in prompts[-1] and "summarize 5 distinct" in prompts[-1]
    assert conditions == ["spatial layout", "object pose", "background", "lighting or weather", "object scale"]
    file = tmp_path / "voc.txt"
    generate_conditions.write_conditions(file, conditions, "stand-in")
    assert load_conditions(str(file)) == conditions  # the head reads what the script writes
    limited = generate_conditions.combinations(classes, 5, seed=1)
    assert len(limited) == 5 and limited == generate_conditions.combinations(classes, 5, seed=1)


def test_no_endpoint_is_one_line_and_sends_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("FEDVLM_LLM_ENDPOINT", raising=False)
    monkeypatch.delenv("FEDVLM_LLM_MODEL", raising=False)
    assert generate_conditions.main(["--classes", "a,b", "--out", str(tmp_path / "x.txt")]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "FEDVLM_LLM_ENDPOINT" in error
    assert not (tmp_path / "x.txt").exists()


def test_unreachable_endpoint_is_one_line_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "x.txt"
    code = generate_conditions.main(["--classes", "a,b", "--out", str(out), "--endpoint",
                                     "http://127.0.0.1:9/v1/chat/completions", "--model", "m"])
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1
    assert error.startswith("error: LLM endpoint http://127.0.0.1:9/") and not out.exists()


def test_missing_dataset_is_one_line(tmp_path, capsys):
    code = generate_conditions.main(["--dataset", "voc2007", "--data-root", str(tmp_path), "--out",
                                     str(tmp_path / "x.txt"), "--endpoint", "http://127.0.0.1:9/", "--model", "m"])
    error = capsys.readouterr().err.strip()
    assert code == 2 and len(error.splitlines()) == 1 and "voc2007" in error and "VOCdevkit" in error
