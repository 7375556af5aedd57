"""Ask an LLM for FedMVP's attribute text: a few visual attributes per class (FedMVP's attribute files,
``attributes/<dataset>.json`` in the authors' code, are LLM-written lists of the same kind).

For each class the LLM is asked one question (the "visual features for distinguishing" prompt
of classification by description) and its answer's list items become the class's attributes.
The result is written as an attribute file that the fedmvp head reads with ``head.attributes:
<path>`` (or, copied to ``fedvlm/heads/conditions/<name>_attributes.json``, by name). The endpoint
is any OpenAI-compatible chat completions URL; nothing is sent anywhere unless one is configured::

    FEDVLM_LLM_ENDPOINT=http://localhost:8000/v1/chat/completions FEDVLM_LLM_MODEL=my-model \\
        python scripts/generate_attributes.py --dataset voc2007 --out my_voc_attributes.json

(``FEDVLM_LLM_API_KEY`` is sent as a bearer token when set.) Class names come from the dataset on
disk (``--data-root``), or from ``--classes "cat,dog,..."``. The endpoint client and the one-line
errors are scripts/generate_conditions.py's.
"""

from __future__ import annotations

import datetime
import json
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling script, run from anywhere
from generate_conditions import Ask, ask_llm, llm_parser  # noqa: E402


QUESTION = ("Q: What are useful visual features for distinguishing a {name} in a photo? Answer with at most {n} "
            "short noun phrases, one per line, each starting with '- ', and nothing else.\nA: There are several "
            "useful visual features to tell there is a {name} in a photo:")


def parse_attributes(reply: str, n: int) -> list[str]:
    """The first ``n`` distinct attributes of a reply: its list items ("- ", "* ", "1.") with
    trailing punctuation removed, lower case; lines that are not list items are skipped."""
    seen: list[str] = []
    for line in reply.splitlines():
        match = re.match(r"^\s*(?:[-*\u2022]|\d+[.)])\s+(.*)$", line)
        if not match:
            continue
        text = match.group(1).strip().strip(".;:").strip().lower()
        if text and text not in seen:
            seen.append(text)
    return seen[:n]


def attribute_chain(classnames: list[str], ask: Ask, num_attributes: int = 4) -> dict[str, list[str]]:
    """One question per class; every class must get at least one attribute."""
    attributes = {}
    for name in classnames:
        reply = ask(QUESTION.format(name=name, n=num_attributes))
        found = parse_attributes(reply, num_attributes)
        if not found:
            raise RuntimeError(f"the LLM listed no attribute for class {name!r}: {reply!r}")
        attributes[name] = found
    return attributes


def write_attributes(path: Path, attributes: dict[str, list[str]], source: str) -> None:
    about = (f"FedMVP attribute text derived by scripts/generate_attributes.py ({source}, "
             f"{datetime.date.today().isoformat()}). Keys starting with '_' are comments.")
    path.write_text(json.dumps({"_about": about, **attributes}, indent=2) + "\n")


def main(argv: list[str] | None = None) -> int:
    parser = llm_parser(__doc__.split("\n")[0])
    parser.add_argument("--num-attributes", type=int, default=4)
    args = parser.parse_args(argv)
    attributes = ask_llm(args, lambda classnames, ask: attribute_chain(classnames, ask, args.num_attributes),
                         "a list of attributes")
    if attributes is None:
        return 2
    write_attributes(args.out, attributes, f"model {args.model}")
    print(json.dumps(attributes, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
