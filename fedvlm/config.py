"""Typed experiment configuration.

An experiment YAML reads like a paper's settings table::

    name: fedavg_pl_ucm
    seed: 1
    model:     {name: ViT-B-16, pretrained: openai}
    data:      {dataset: ucmerced, split: [0.5, 0.5]}
    partition: {name: even_per_class, num_clients: 10}
    head:      {name: coop, n_ctx: 4, class_token_position: middle}
    algorithm: {name: fedavg}
    federation: {rounds: 50, local_epochs: 1}
    optim:     {name: sgd, lr: 0.001, batch_size: 32}

``head``, ``algorithm`` and ``partition`` name a registered component; the remaining keys of the
section are validated against that component's own ``Config`` model, so a typo in any key is
caught at load time. Defaults follow the papers' settings. Every validation failure becomes one
:class:`~fedvlm.errors.ConfigError` line naming the key, the value and what is accepted. Three
rules hold for every section, present and future, because they live in the types: a float is
finite (``.inf`` and ``.nan`` are refused wherever a float is read, :class:`Section`), a seed is an
integer in [0, 2**32 - 1] (:data:`Seed`), and a key that only acts on another kind of dataset
(``data.hidden_labels`` on a single-label one) is refused rather than ignored
(:data:`TASK_SPECIFIC_KEYS`).

A file may start from another with ``base: other.yaml`` (merged key by key, this file winning),
and the command line overrides any key with ``dotted.key=value`` (value parsed as YAML).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, field_validator, model_validator

from fedvlm.errors import ConfigError, shown
from fedvlm.files import read_text, require_writable_folder
# The section types live on the ground floor (fedvlm.sections); re-exported here, where the whole
# experiment is composed, so `from fedvlm.config import OptimConfig` keeps working.
from fedvlm.sections import (SEED_MAX, Beta, ComponentConfig, DataConfig, EvalConfig, FederationConfig,  # noqa: F401
                             LoggingConfig, ModelConfig, OptimConfig, RunName, RuntimeConfig, Section, Seed)


class ExperimentConfig(Section):
    name: RunName
    seed: Seed = 1
    model: ModelConfig = ModelConfig()
    data: DataConfig
    partition: SerializeAsAny[ComponentConfig] = Field(default_factory=lambda: {"name": "even_per_class"})
    head: SerializeAsAny[ComponentConfig] = Field(default_factory=lambda: {"name": "coop"})
    algorithm: SerializeAsAny[ComponentConfig] = Field(default_factory=lambda: {"name": "fedavg"})
    federation: FederationConfig = FederationConfig()
    optim: OptimConfig = OptimConfig()
    eval: EvalConfig = EvalConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    logging: LoggingConfig = LoggingConfig()
    # true: continue the newest unfinished run of this experiment; a path: continue that run folder.
    resume: bool | str = False
    # Filled in by sweep expansion: the swept keys' values of this run (for reports and W&B).
    sweep_values: dict[str, Any] = {}

    model_config = ConfigDict(extra="forbid", validate_assignment=False, protected_namespaces=(), validate_default=True)

    @model_validator(mode="before")
    @classmethod
    def _centralized_alias(cls, raw):
        return centralized_alias(raw)

    @model_validator(mode="after")
    def _schedule_acts(self):
        self.optim.check_schedule(self.federation.rounds)
        return self

    @field_validator("partition", mode="before")
    @classmethod
    def _partition(cls, value):
        from fedvlm.data.partition import PARTITIONS

        return _component("partition", PARTITIONS, value)

    @field_validator("head", mode="before")
    @classmethod
    def _head(cls, value):
        from fedvlm.heads import HEADS

        return _component("head", HEADS, value, attribute="Config")

    @field_validator("algorithm", mode="before")
    @classmethod
    def _algorithm(cls, value):
        from fedvlm.algorithms import ALGORITHMS

        return _component("algorithm", ALGORITHMS, value)

    @field_validator("data")
    @classmethod
    def _dataset(cls, value):
        from fedvlm.data.datasets import DATASETS

        if value.dataset is not None:  # a data.source is read (and its task found) by check_task_keys
            DATASETS.get(value.dataset, key="data.dataset")
        return value

    @model_validator(mode="after")
    def _keys_apply_to_the_dataset(self):
        check_task_keys(self)
        return self

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


# "Centralized" is one concept, the partition: one client holding every training image, trained
# with FedAvg (the mean over one client is that client). ``algorithm: centralized``, the older
# spelling, is kept as a deprecated alias that becomes exactly that, so its experiments give the
# same numbers (tests/test_config.py); the partition section it would have ignored is replaced.
CENTRALIZED_ALIAS = "centralized"


def centralized_alias(raw: Any) -> Any:
    """``algorithm: {name: centralized}`` -> ``algorithm: {name: fedavg}``, ``partition: {name: centralized}``."""
    algorithm = raw.get("algorithm") if isinstance(raw, dict) else None
    if isinstance(algorithm, dict) and algorithm.get("name") == CENTRALIZED_ALIAS:
        return {**raw, "algorithm": {**algorithm, "name": "fedavg"}, "partition": {"name": "centralized"}}
    return raw


# Keys that act on some tasks only (fedvlm.tasks): on a dataset of another task a value other than
# the default would be ignored in silence (hidden labels need multi-hot rows, few-shot sampling
# needs one class per image), so it is refused instead.
TASK_SPECIFIC_KEYS: dict[str, tuple[str, ...]] = {
    "data.hidden_labels": ("multilabel",),
    "data.shots": ("classification", "retrieval"),
    "eval.threshold": ("multilabel",),
    "eval.top_k": ("multilabel",),
    "head.multilabel_loss": ("multilabel",),
    "head.asl": ("multilabel",),
}


def check_task_keys(config: "ExperimentConfig") -> None:
    """Refuse a key that does not act on the dataset's task, and a head whose evaluation output
    the task cannot score (a retrieval head on a classification dataset), in one line each."""
    from fedvlm.data.datasets import data_spec
    from fedvlm.data.partition import PARTITIONS
    from fedvlm.heads import HEADS
    from fedvlm.tasks import TASKS

    dataset = config.data.name
    task = data_spec(config.data).task  # a data.source's task is read from its features
    for key, tasks in TASK_SPECIFIC_KEYS.items():
        section_name, field = key.split(".")
        section = getattr(config, section_name)
        if task in tasks or field not in type(section).model_fields:
            continue
        value = getattr(section, field)
        default = type(section).model_fields[field].get_default(call_default_factory=True)
        if value != default:
            kinds = " or ".join(tasks)
            raise ConfigError(f"{key}: applies to {kinds} datasets only, and {dataset} is a {task} dataset "
                              f"(got {_yaml_scalar(value) if isinstance(value, BaseModel) else shown(value)}); remove it or set {key}={_yaml_scalar(default)}")
    partition = type(config.partition)
    if task == "multilabel" and not partition.multi_hot:
        accepted = ", ".join(name for name in PARTITIONS.names() if PARTITIONS.get(name).multi_hot)
        raise ConfigError(f"partition.name: {config.partition.name} shares out one class id per image, and {dataset} "
                          f"is a multilabel dataset (several labels per image); choose one of: {accepted}")
    head = HEADS.get(config.head.name, key="head.name")
    expects = TASKS.get(task).expects
    if head.output_kind != expects:
        raise ConfigError(f"head.name: {config.head.name} returns {head.output_kind}, but {dataset} is a {task} "
                          f"dataset that scores {expects}; choose a {task} head")


def _yaml_scalar(value: Any) -> str:
    if isinstance(value, BaseModel):  # a sub-section (head.asl): as a YAML flow mapping
        return "{" + ", ".join(f"{k}: {_yaml_scalar(v)}" for k, v in value.model_dump().items()) + "}"
    return "null" if value is None else str(value)


def require_writable_outputs(config: "ExperimentConfig | Section") -> None:
    """The folders a run writes can be written: ``logging.results_dir``, and the feature cache
    when it is on disk or named (checked by the CLI before a run starts, so that a read-only
    folder is one line, not a traceback after the features were encoded)."""
    require_writable_folder(config.logging.results_dir, "logging.results_dir")
    runtime = config.runtime
    if runtime.cache_dir is not None or runtime.feature_cache == "disk":
        from fedvlm.backbone.cache import default_cache_dir

        require_writable_folder(default_cache_dir(runtime.cache_dir), "runtime.cache_dir")


def _component(section: str, registry, value: Any, attribute: str | None = None):
    """Validate a component section against the config model of the component it names."""
    if isinstance(value, ComponentConfig):
        return value
    if not isinstance(value, dict) or "name" not in value:
        raise ConfigError(f"{section}: expected a mapping with a 'name' key, got {shown(value)}")
    entry = registry.get(value["name"], key=f"{section}.name")
    model = getattr(entry, attribute) if attribute else entry
    try:
        return model.model_validate(value)
    except ValidationError as error:
        raise ConfigError(_one_line(error, model, prefix=section + ".")) from None


def _accepted_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The keys the model accepts at the section ``loc`` points into."""
    for part in loc[:-1]:
        field = model.model_fields.get(str(part))
        annotation = getattr(field, "annotation", None)
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _one_line(error: ValidationError, model: type[BaseModel], prefix: str = "") -> str:
    """The first pydantic error as 'key: what is wrong (got value)'."""
    first = error.errors()[0]
    key = prefix + ".".join(str(part) for part in first["loc"])
    if first["type"] == "extra_forbidden":
        accepted = ", ".join(_accepted_keys(model, first["loc"]))
        return f"{key}: unknown key; expected one of: {accepted}"
    if first["type"] == "missing":
        return f"{key}: required key is missing"
    message = first["msg"]
    if message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    return f"{key}: {message[0].lower() + message[1:]} (got {shown(first.get('input'))})"


def parse_overrides(overrides: list[str]) -> dict:
    """``['a.b=1', 'c=x']`` -> ``{'a': {'b': 1}, 'c': 'x'}`` (values parsed as YAML)."""
    result: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value, e.g. federation.rounds=5")
        key, raw = item.split("=", 1)
        if not key or any(not part for part in key.split(".")):
            raise ConfigError(f"override {item!r}: expected a dotted key such as optim.lr")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except (yaml.YAMLError, ValueError, RecursionError):  # not YAML (or an int past Python's digit limit)
            value = raw
        node = result
        parts = key.split(".")
        for depth, part in enumerate(parts[:-1]):
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: an earlier override set {'.'.join(parts[:depth + 1])} "
                                  f"to {shown(node)}, which has no keys; give one of the two")
        node[parts[-1]] = value
    return result


def merge(base: dict, update: dict) -> dict:
    """Recursive dict merge; ``update`` wins.

    When a component section (head, algorithm, partition) changes its ``name``, only the keys the
    new component also accepts carry over (``partition.name=even_per_class`` keeps
    ``num_clients`` and drops Dirichlet's ``alpha``), less those it fixes (``fixed_keys``:
    ``partition.name=centralized`` drops ``num_clients``).
    """
    merged = copy.deepcopy(base)
    for key, value in update.items():
        current = merged.get(key)
        if key == "data" and isinstance(value, dict) and isinstance(current, dict):
            current = _other_kind_of_data_dropped(current, value)
        if isinstance(value, dict) and isinstance(current, dict):
            renamed = "name" in value and current.get("name") not in (None, value["name"])
            if renamed and key in _COMPONENT_SECTIONS:
                accepted = _component_fields(key, value["name"])
                current = {k: v for k, v in current.items() if k in accepted}
            merged[key] = merge(current, value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


_COMPONENT_SECTIONS = ("head", "algorithm", "partition")


def _other_kind_of_data_dropped(current: dict, update: dict) -> dict:
    """``data.source`` replaces ``data.dataset`` and the reverse, as a component's new name
    replaces its old keys: ``fedvlm run experiments/demo.yaml data.source=disk:/saved`` runs the
    demo on that dataset. Within one mapping, giving both stays an error (DataConfig)."""
    if update.get("source") is not None:
        return {k: v for k, v in current.items() if k != "dataset"}
    if update.get("dataset") is not None:
        return {k: v for k, v in current.items() if k not in ("source", "hf")}
    return current


def _component_fields(section: str, name: str) -> set[str]:
    if section == "head":
        from fedvlm.heads import HEADS

        model = getattr(HEADS.get(name, key="head.name"), "Config")
    elif section == "algorithm":
        from fedvlm.algorithms import ALGORITHMS

        model = ALGORITHMS.get("fedavg" if name == CENTRALIZED_ALIAS else name, key="algorithm.name")
    else:
        from fedvlm.data.partition import PARTITIONS

        model = PARTITIONS.get(name, key="partition.name")
    return set(model.model_fields) - set(getattr(model, "fixed_keys", ()))


def read_yaml(path: str | Path, _seen: tuple = ()) -> dict:
    """Read an experiment file, following ``base:`` references (relative to the file)."""
    path = Path(path)
    text = read_text(path, "config file", "an experiment YAML such as experiments/demo.yaml", ConfigError)
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        problem = f" ({error.problem})" if getattr(error, "problem", None) else ""
        raise ConfigError(f"config file {path}: invalid YAML{where}{problem}") from None
    except RecursionError:
        raise ConfigError(f"config file {path}: nests deeper than the YAML parser follows") from None
    except ValueError as error:  # e.g. an integer past Python's 4300-digit limit
        raise ConfigError(f"config file {path}: a value cannot be read ({error})") from None
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ConfigError(f"config file {path}: expected a mapping of sections, got {type(raw).__name__}")
    base = raw.pop("base", None)
    if base is not None:
        if not isinstance(base, str) or "\x00" in base:
            raise ConfigError(f"config file {path}: base: expected the path of another experiment YAML, "
                              f"got {shown(base)}")
        base_path = (path.parent / base).resolve()
        if base_path in _seen:
            raise ConfigError(f"config file {path}: 'base: {base}' refers back to itself")
        raw = merge(read_yaml(base_path, _seen + (base_path,)), raw)
    return raw


def expand_runs(raw: dict) -> list[dict]:
    """One raw config per run. ``seeds: [1, 2, 3]`` repeats the experiment per seed (the papers
    report means over 3 runs) and ``sweep: {partition.num_clients: [2, 5, 10]}`` runs every value
    of every listed key (the cartesian product); each run records its values in ``sweep_values``."""
    raw = copy.deepcopy(raw)
    sweep = raw.pop("sweep", None) or {}
    seeds = raw.pop("seeds", None)
    if not isinstance(sweep, dict) or not all(isinstance(k, str) and k and isinstance(v, list) and v
                                              for k, v in sweep.items()):
        raise ConfigError(f"sweep: expected a mapping of dotted keys to non-empty lists, got {shown(sweep)}")
    if seeds is not None:
        if not isinstance(seeds, list) or not seeds or not all(isinstance(x, int) and not isinstance(x, bool)
                                                               for x in seeds):
            raise ConfigError(f"seeds: expected a non-empty list of integers, got {shown(seeds)}")
        sweep = {**sweep, "seed": seeds}
    runs = [raw]
    for key, values in sweep.items():
        runs = [_set(run, key, value) for run in runs for value in values]
    if sweep:
        for run in runs:
            run["sweep_values"] = {key: _get(run, key) for key in sweep if key != "seed"}
    return runs


def _get(raw: dict, dotted: str):
    node = raw
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def _set(raw: dict, dotted: str, value) -> dict:
    """A copy of ``raw`` with ``dotted`` set to ``value`` (merged the way overrides are)."""
    update: dict = {}
    node = update
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value
    return merge(raw, update)


def build_config(raw: dict) -> ExperimentConfig:
    try:
        return ExperimentConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_one_line(error, ExperimentConfig)) from None


def load_configs(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> list[ExperimentConfig]:
    """Load and validate an experiment, YAML file (optional) + ``key=value`` overrides, as the
    list of its runs (several when it sweeps keys or seeds; see :func:`expand_runs`)."""
    raw = read_yaml(path) if path is not None else {}
    if overrides:
        update = parse_overrides(overrides) if isinstance(overrides, list) else overrides
        raw = merge(raw, update)
    return [build_config(run) for run in expand_runs(raw)]


def load_config(path: str | Path | None = None, overrides: list[str] | dict | None = None) -> ExperimentConfig:
    """Like :func:`load_configs` for an experiment that is one run."""
    runs = load_configs(path, overrides)
    if len(runs) != 1:
        raise ConfigError(f"sweep: this experiment is {len(runs)} runs; load it with load_configs")
    return runs[0]
