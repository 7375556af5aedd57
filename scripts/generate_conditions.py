"""Derive a FedMPT condition set with an LLM, following the paper's chain (Sec. 4.1, Fig. 3).

1. Describe label combinations: the LLM writes one sentence for each combination (pair) of the
   dataset's categories ("A bicycle leans against the wing of a small aeroplane on an
   airfield..."). Datasets with many classes have thousands of pairs; ``--max-combinations``
   draws that many (seeded) and asks for them in chunks.
2. Summarise: given those descriptions, the LLM names N distinct, general conditions under which
   the label correlations hold ("spatial layout, object pose, background, ...").

The result is written as a condition file (one condition per line, '#' header) that the fedmpt
head reads with ``head.conditions: <name or path>``. The endpoint is any OpenAI-compatible chat
completions URL; nothing is sent anywhere unless one is configured::

    FEDVLM_LLM_ENDPOINT=http://localhost:8000/v1/chat/completions FEDVLM_LLM_MODEL=my-model \\
        python scripts/generate_conditions.py --dataset voc2007 --out my_voc_conditions.txt

(``FEDVLM_LLM_API_KEY`` is sent as a bearer token when set.) Class names come from the dataset on
disk (``--data-root``), or from ``--classes "cat,dog,..."``.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import random
import re
import sys
import urllib.request
from pathlib import Path
from typing import Callable

from fedvlm.errors import UserError

Ask = Callable[[str], str]

DESCRIBE = ("Please give a detailed description for each of the following combinations of categories, in one "
            "sentence each, one line per combination, starting with the combination. Combinations: {pairs}")
SUMMARISE = ("Given these descriptions, please summarize {n} distinct and general conditions under which true class "
             "correlations can be reliably represented. Answer with exactly {n} lines, one short noun phrase per "
             "line (for example: spatial layout), and nothing else.\n\nDescriptions:\n{descriptions}")


def combinations(classnames: list[str], limit: int | None, seed: int = 0) -> list[tuple[str, str]]:
    """Every pair of categories, or ``limit`` of them drawn with ``seed`` (in a stable order)."""
    pairs = list(itertools.combinations(classnames, 2))
    if limit is not None and len(pairs) > limit:
        pairs = sorted(random.Random(seed).sample(pairs, limit), key=pairs.index)
    return pairs


def parse_conditions(reply: str, n: int) -> list[str]:
    """The first ``n`` distinct conditions of a reply: one per line or comma-separated, with list
    markers ("1.", "-", "*") and trailing punctuation removed, lower case."""
    items = [part for line in reply.splitlines() for part in (line.split(",") if line.count(",") >= 2 else [line])]
    seen: list[str] = []
    for item in items:
        text = re.sub(r"^\s*(?:[-*\u2022]|\d+[.)])\s*", "", item).strip().strip(".;:").strip().lower()
        text = re.sub(r"\s*/\s*", " or ", text)
        if text and text not in seen and len(text.split()) <= 6:
            seen.append(text)
    return seen[:n]


def condition_chain(classnames: list[str], ask: Ask, num_conditions: int = 5, max_combinations: int | None = 60,
                    chunk: int = 20, seed: int = 0) -> tuple[list[str], list[str]]:
    """Run the two stages; returns (the descriptions, the conditions)."""
    pairs = combinations(classnames, max_combinations, seed)
    descriptions: list[str] = []
    for start in range(0, len(pairs), chunk):
        listed = "; ".join(f"{a}-{b}" for a, b in pairs[start : start + chunk])
        descriptions += [line.strip() for line in ask(DESCRIBE.format(pairs=listed)).splitlines() if line.strip()]
    reply = ask(SUMMARISE.format(n=num_conditions, descriptions="\n".join(descriptions)))
    conditions = parse_conditions(reply, num_conditions)
    if len(conditions) < num_conditions:
        raise RuntimeError(f"the LLM named {len(conditions)} usable conditions, expected {num_conditions}: {reply!r}")
    return descriptions, conditions


def chat_endpoint(url: str, model: str, api_key: str | None = None, timeout: float = 120.0) -> Ask:
    """An ``ask`` for an OpenAI-compatible ``/chat/completions`` URL (standard library only)."""

    def ask(prompt: str) -> str:
        body = json.dumps({"model": model, "messages": [{"role": "user", "content": prompt}], "temperature": 0})
        headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
        request = urllib.request.Request(url, data=body.encode(), headers=headers, method="POST")
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())["choices"][0]["message"]["content"]

    return ask


def write_conditions(path: Path, conditions: list[str], source: str) -> None:
    header = (f"# FedMPT condition set derived by scripts/generate_conditions.py ({source}, "
              f"{datetime.date.today().isoformat()}): describe label combinations, then summarise.\n")
    path.write_text(header + "".join(f"{c}\n" for c in conditions))


def _classnames(args) -> list[str]:
    if args.classes:
        return [c.strip() for c in args.classes.split(",") if c.strip()]
    import fedvlm  # noqa: F401
    from fedvlm.data.datasets import load_dataset

    return load_dataset(args.dataset, args.data_root).classnames


def llm_parser(description: str) -> argparse.ArgumentParser:
    """The arguments every LLM-written class file takes: the classes (a dataset or a list), the
    output file and the endpoint (defaults from FEDVLM_LLM_ENDPOINT / FEDVLM_LLM_MODEL)."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--dataset", help="a registered dataset whose class names to use (read from --data-root)")
    parser.add_argument("--data-root", default=None)
    parser.add_argument("--classes", help="comma-separated class names instead of --dataset")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--endpoint", default=os.environ.get("FEDVLM_LLM_ENDPOINT"))
    parser.add_argument("--model", default=os.environ.get("FEDVLM_LLM_MODEL"))
    return parser


def ask_llm(args, chain: Callable[[list[str], Ask], object], answer: str):
    """``chain(classnames, ask)`` against the configured endpoint, or None after one ``error:`` line
    on stderr (no endpoint, no classes, a fedvlm data error, an unreachable endpoint, a reply in
    another format; ``answer`` names what the reply should hold)."""
    if not args.endpoint or not args.model:
        print("error: no LLM endpoint configured; set FEDVLM_LLM_ENDPOINT (an OpenAI-compatible chat completions "
              "URL) and FEDVLM_LLM_MODEL, or pass --endpoint and --model", file=sys.stderr)
        return None
    if not (args.dataset or args.classes):
        print("error: give --dataset NAME or --classes 'a,b,c'", file=sys.stderr)
        return None
    ask = chat_endpoint(args.endpoint, args.model, os.environ.get("FEDVLM_LLM_API_KEY"))
    try:
        return chain(_classnames(args), ask)
    except UserError as error:  # fedvlm's own one-line errors (a missing or malformed dataset)
        print(f"error: {error}", file=sys.stderr)
    except OSError as error:  # unreachable endpoint, HTTP error status, timeout
        print(f"error: LLM endpoint {args.endpoint}: {error}; expected a reachable OpenAI-compatible chat "
              "completions URL", file=sys.stderr)
    except (KeyError, IndexError, ValueError, RuntimeError) as error:  # a reply in another format
        print(f"error: LLM endpoint {args.endpoint}: unusable reply ({error}); expected a chat completions "
              f"JSON answer with {answer}", file=sys.stderr)
    return None


def main(argv: list[str] | None = None) -> int:
    parser = llm_parser(__doc__.split("\n")[0])
    parser.add_argument("--num-conditions", type=int, default=5)
    parser.add_argument("--max-combinations", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    found = ask_llm(args, lambda classnames, ask: condition_chain(classnames, ask, args.num_conditions,
                                                                  args.max_combinations, seed=args.seed),
                    "the requested lines")
    if found is None:
        return 2
    _, conditions = found
    write_conditions(args.out, conditions, f"model {args.model}")
    print("\n".join(conditions))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
