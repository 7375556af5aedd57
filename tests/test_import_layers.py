"""The layer rule (docs/ARCHITECTURE.md, "Layers"): imports point down the floors, never up, and no
fedvlm module reaches itself through its imports.

Every ``import`` of every fedvlm module is read with ``ast``: at module level, inside functions and
under ``TYPE_CHECKING`` alike (a function-level import is still an arrow between two modules).
``from fedvlm.heads import HEADS`` points at the module the package's ``__init__`` took ``HEADS``
from (``fedvlm.heads.registry``), and ``from fedvlm.report import plots`` at the submodule: a
package that re-exports its submodules is not itself a room of the graph, or every submodule that
imports a sibling through it would make a false circle.

:data:`FLOORS` is the one statement of the rule; the table in docs/ARCHITECTURE.md is checked
against it (:func:`test_the_architecture_doc_shows_this_table`).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fedvlm"

# Bottom to top. A module sits on the floor of the longest entry naming it or a package above it
# ("fedvlm" itself names only the package's __init__). It may import its own floor and below.
FLOORS: list[tuple[str, tuple[str, ...]]] = [
    ("ground", ("fedvlm", "fedvlm._torchvision_compat", "fedvlm.install_hook", "fedvlm.errors", "fedvlm.registry",
                "fedvlm.files", "fedvlm.sections", "fedvlm.batch", "fedvlm.paths", "fedvlm.ot", "fedvlm.losses",
                "fedvlm.metrics", "fedvlm.tasks")),
    ("data, backbone", ("fedvlm.data", "fedvlm.backbone")),
    ("models and maths", ("fedvlm.heads", "fedvlm.algorithms", "fedvlm.server", "fedvlm.retrieval",
                          "fedvlm.patching")),
    ("composition root", ("fedvlm.config",)),
    ("client, inputs", ("fedvlm.client", "fedvlm.inputs")),
    ("federation, evaluation, tracking", ("fedvlm.federation", "fedvlm.evaluation", "fedvlm.tracking")),
    ("drivers", ("fedvlm.simulation", "fedvlm.datamodule", "fedvlm.patching.pipeline", "fedvlm.patch", "fedvlm.probe", "fedvlm.describe",
                 "fedvlm.demo", "fedvlm.report")),
    ("command line", ("fedvlm.cli", "fedvlm.__main__")),
]

# Rooms of one floor that must not import each other (they are side by side, not stacked).
APART: list[tuple[str, str]] = [("fedvlm.data", "fedvlm.backbone"), ("fedvlm.backbone", "fedvlm.data")]

# Named exceptions to the rules above, each with its reason (docs/ARCHITECTURE.md says the same).
EXCEPTIONS: dict[tuple[str, str], str] = {
    ("fedvlm.backbone.pretrain_tiny", "fedvlm.data.synthetic"):
        "the offline tiny CLIP is pretrained on the synthetic world; data.synthetic imports only ground",
}

# Models and maths read neither data loading, batch sources, the experiment config, the loops, nor
# Lightning: a head declares what it needs (Head.inputs) and receives only its own config section.
MODELS = ("fedvlm.heads", "fedvlm.algorithms", "fedvlm.retrieval", "fedvlm.patching.classifier",
          "fedvlm.patching.interpolation", "fedvlm.patching.losses")
MODELS_NEVER_IMPORT = ("fedvlm.data", "fedvlm.inputs", "fedvlm.config", "fedvlm.client", "fedvlm.simulation",
                       "lightning", "lightning_fabric", "pytorch_lightning")
GROUND_AND_FLOOR_1_NEVER_IMPORT = ("lightning", "lightning_fabric", "pytorch_lightning")

# Old import paths kept for one release, re-exporting a moved module: outside the floors (they point
# at the new home, wherever it is), and nothing inside fedvlm may import them.
REEXPORTS = {"fedvlm.client.batches": "fedvlm.inputs.features", "fedvlm.retrieval.batches": "fedvlm.inputs.captions",
             "fedvlm.patching.batches": "fedvlm.inputs.bands"}


# ------------------------------------------------------------------------------- the graph


def module_files(package: Path = PACKAGE) -> dict[str, Path]:
    modules = {}
    for path in sorted(package.rglob("*.py")):
        parts = path.relative_to(package.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    return modules


def _absolute(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    """``{module: every name it imports}``: fedvlm modules (re-exports resolved) and top-level
    third-party packages."""
    trees = {name: ast.parse(path.read_text(), str(path)) for name, path in modules.items()}
    # what each package __init__ re-exports, and from where
    origin: dict[tuple[str, str], str] = {}
    for name, path in modules.items():
        if path.name != "__init__.py":
            continue
        for node in trees[name].body:
            if isinstance(node, ast.ImportFrom):
                source = _absolute(node, name, True)
                for alias in node.names:
                    origin[(name, alias.asname or alias.name)] = source

    def resolve(package: str, attribute: str, depth: int = 0) -> str:
        if f"{package}.{attribute}" in modules:
            return f"{package}.{attribute}"
        source = origin.get((package, attribute))
        if source is None or depth > 10:
            return package
        return resolve(source, attribute, depth + 1) if modules.get(source, Path()).name == "__init__.py" else source

    graph: dict[str, set[str]] = {}
    for name, tree in trees.items():
        is_package = modules[name].name == "__init__.py"
        targets: set[str] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    targets.add(alias.name if alias.name.split(".")[0] == "fedvlm" else alias.name.split(".")[0])
            elif isinstance(node, ast.ImportFrom):
                source = _absolute(node, name, is_package)
                if source.split(".")[0] != "fedvlm":
                    targets.add(source.split(".")[0])
                elif source in modules and modules[source].name == "__init__.py":
                    targets.update(resolve(source, alias.name) for alias in node.names if alias.name != "*")
                    if any(alias.name == "*" for alias in node.names):
                        targets.add(source)
                else:
                    targets.add(source)
        graph[name] = {t for t in targets if t != name}
    return graph


def _named(module: str, prefix: str) -> bool:
    return module == prefix or (prefix != "fedvlm" and module.startswith(prefix + "."))


def floor_of(module: str) -> int | None:
    best, floor = -1, None
    for index, (_, prefixes) in enumerate(FLOORS):
        for prefix in prefixes:
            if _named(module, prefix) and len(prefix) > best:
                best, floor = len(prefix), index
    return floor


def _excepted(source: str, target: str) -> bool:
    return any(_named(source, s) and _named(target, t) for s, t in EXCEPTIONS)


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Every arrow that breaks the rule, as 'source -> target: why'."""
    found = []
    for source, targets in sorted(graph.items()):
        if source in REEXPORTS:
            continue
        for target in sorted(targets):
            if target in REEXPORTS:
                found.append(f"{source} -> {target}: an old path kept for outside callers; import {REEXPORTS[target]}")
                continue
            if _excepted(source, target):
                continue
            mine, theirs = floor_of(source), floor_of(target)
            if any(_named(source, m) for m in MODELS) and any(_named(target, t) for t in MODELS_NEVER_IMPORT):
                found.append(f"{source} -> {target}: models and maths never import {target.split('.')[0]}"
                             f"{'.' + target.split('.')[1] if '.' in target else ''}")
            elif target.split(".")[0] != "fedvlm":
                if mine is not None and mine <= 1 and target in GROUND_AND_FLOOR_1_NEVER_IMPORT:
                    found.append(f"{source} -> {target}: ground, data and backbone never import {target}")
            elif theirs is not None and mine is not None and theirs > mine:
                found.append(f"{source} -> {target}: points up, from {FLOORS[mine][0]} to {FLOORS[theirs][0]}")
            elif any(_named(source, a) and _named(target, b) for a, b in APART):
                found.append(f"{source} -> {target}: {FLOORS[mine][0]} rooms stand apart")
    return found


def cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle of fedvlm modules, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for target in sorted(graph.get(node, ())):
            if target not in graph:
                continue
            if state.get(target) == 1:
                return stack[stack.index(target):] + [target]
            if state.get(target) is None and (found := visit(target)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if state.get(node) is None and (found := visit(node)):
            return found
    return None


# ------------------------------------------------------------------------------- the tests


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return imports(module_files())


def test_every_module_has_a_floor(graph):
    homeless = [m for m in graph if floor_of(m) is None and m not in REEXPORTS]
    assert not homeless, f"add these modules to FLOORS in tests/test_import_layers.py and docs/ARCHITECTURE.md: {homeless}"


def test_no_import_circles(graph):
    found = cycle(graph)
    assert found is None, "import circle: " + " -> ".join(found)


def test_imports_point_down(graph):
    found = violations(graph)
    assert not found, "layer rule broken:\n  " + "\n  ".join(found)


def test_the_checker_catches_an_upward_import_a_circle_and_a_model_reading_data():
    """The rule itself, on a made-up graph: each kind of break is found and named."""
    made_up = {"fedvlm.heads.coop": {"fedvlm.simulation", "fedvlm.data.datasets", "lightning"},
               "fedvlm.backbone.cache": {"fedvlm.data.datasets"},
               "fedvlm.backbone.pretrain_tiny": {"fedvlm.data.synthetic.world"},
               "fedvlm.errors": {"fedvlm.config"}, "fedvlm.config": {"fedvlm.errors"},
               "fedvlm.simulation": {"fedvlm.client.batches"}}
    found = violations(made_up)
    assert "fedvlm.errors -> fedvlm.config: points up, from ground to composition root" in found
    assert any(f.startswith("fedvlm.heads.coop -> fedvlm.simulation: models and maths never import") for f in found)
    assert any(f.startswith("fedvlm.heads.coop -> fedvlm.data.datasets: models and maths") for f in found)
    assert any(f.startswith("fedvlm.heads.coop -> lightning:") for f in found)
    assert "fedvlm.backbone.cache -> fedvlm.data.datasets: data, backbone rooms stand apart" in found
    assert not any(f.startswith("fedvlm.backbone.pretrain_tiny") for f in found)  # the named exception
    assert any(f.startswith("fedvlm.simulation -> fedvlm.client.batches: an old path") for f in found)
    assert cycle(made_up) == ["fedvlm.config", "fedvlm.errors", "fedvlm.config"]


def test_re_exports_resolve_to_the_defining_module(tmp_path):
    package = tmp_path / "fedvlm"
    (package / "heads").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "heads" / "__init__.py").write_text("from fedvlm.heads.registry import HEADS\n"
                                                   "from fedvlm.heads import coop\n")
    (package / "heads" / "registry.py").write_text("HEADS = {}\n")
    (package / "heads" / "coop.py").write_text("from fedvlm.heads import HEADS\n")
    (package / "config.py").write_text("def load():\n    from fedvlm.heads import HEADS, coop\n")
    found = imports(module_files(package))
    assert found["fedvlm.heads.coop"] == {"fedvlm.heads.registry"}  # not the package: no false circle
    assert found["fedvlm.config"] == {"fedvlm.heads.registry", "fedvlm.heads.coop"}  # function level counts
    assert cycle(found) is None


def test_the_architecture_doc_shows_this_table():
    text = (ROOT / "docs" / "ARCHITECTURE.md").read_text()
    block = re.search(r"<!-- layers:begin -->(.*?)<!-- layers:end -->", text, re.S)
    assert block, "docs/ARCHITECTURE.md: the layers table (<!-- layers:begin --> ... <!-- layers:end -->) is missing"
    rows = [line for line in block.group(1).strip().splitlines()[2:] if line.startswith("|")]
    shown = [(cells[1], tuple(re.findall(r"`([^`]+)`", cells[2])))
             for cells in ([c.strip() for c in row.split("|")[1:-1]] for row in rows)]
    expected = [(name, prefixes) for name, prefixes in reversed(FLOORS)]  # the doc reads top floor first
    assert shown == expected
