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
import re
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import yaml
from pydantic import (AfterValidator, BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, field_validator,
                      model_validator)

from fedvlm.errors import ConfigError, shown
from fedvlm.files import read_text, require_writable_folder


def _check_run_name(value: str) -> str:
    """A run's name is the folder ``<logging.results_dir>/<name>/`` its runs go in, so it must be one
    safe path component: no separator, no ``..``, not absolute, nothing a shell or W&B mangles.
    Checked here, once, for every command that makes run folders (run, patch)."""
    if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", value):
        raise ValueError("expected a folder name of letters, digits, '_', '.' and '-' (not starting with '.' or "
                         "'-', at most 128 characters), e.g. fedavg_pl_ucm")
    return value


RunName = Annotated[str, AfterValidator(_check_run_name)]


class Section(BaseModel):
    """A config section: unknown keys are errors, assignments are validated, no float is infinite
    or NaN, and no number is a boolean. Both rules reach every field of every subclass (heads',
    algorithms' and partitions' configs too): ``allow_inf_nan=False`` covers floats inside lists
    and tuples, and :meth:`_no_boolean_numbers` runs before every field's own validation."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=(), allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_boolean_numbers(cls, value, info):
        # pydantic reads true/false as 1/0 for an int or float field; YAML writes yes/no/on/off as
        # booleans, so `batch_size: yes` would silently train with batches of one.
        annotation = cls.model_fields[info.field_name].annotation
        if isinstance(value, bool) and not _accepts(annotation, (bool, Any)):
            raise ValueError("expected a number, not a boolean" if _accepts(annotation, (int, float))
                             else "a boolean is not accepted here")
        return value


def _accepts(annotation, types: tuple) -> bool:
    """Whether ``annotation`` (``int | None``, ``bool | str``, ...) admits one of ``types``."""
    return annotation in types or any(_accepts(arg, types) for arg in get_args(annotation))


# numpy's SeedSequence refuses negative seeds and torch.manual_seed ones past 2**64 - 1; [0, 2**32 - 1]
# is the range both (and Lightning's seed_everything) accept, so a seed means the same everywhere.
SEED_MAX = 2**32 - 1
Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]
# AdamW's moment decay rates: beta in [0, 1), the range torch.optim.AdamW accepts.
Beta = Annotated[float, Field(ge=0, lt=1)]


class ComponentConfig(Section):
    """Base of the per-component configs (heads, algorithms, partitions): ``name`` picks the class."""

    name: str


class ModelConfig(Section):
    name: str = "ViT-B-16"
    # An open_clip tag ('openai', 'laion2b_s34b_b88k', ...), a local checkpoint path, or null for
    # random weights (counting parameters, tests).
    pretrained: str | None = "openai"
    # Autocast dtype of the frozen encoders; 'fp32' everywhere, 'bf16'/'fp16' only on GPU.
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"


class DataConfig(Section):
    dataset: str
    root: str | None = None  # default: $FEDVLM_DATA, else ./data
    # Stratified per-class fractions: [train, test] or [train, val, test]; null = the dataset's default.
    split: list[float] | None = None
    shots: int | None = Field(None, gt=0)  # few-shot training set: this many images per class
    template: str | None = None  # zero-shot/prompt template with one '{}'; null = the dataset's
    # Training augmentation with the feature cache: this many augmented views of every image are
    # encoded once, and each training sample uses one of them (0: no augmentation).
    augment_views: int = Field(0, ge=0)
    # Part annotation (FedMPT Mask%): this fraction of the training labels is hidden (unknown, not
    # negative). Multi-label datasets only.
    hidden_labels: float = Field(0.0, ge=0, lt=1)

    @field_validator("split")
    @classmethod
    def _check_split(cls, value):
        if value is None:
            return value
        if len(value) not in (2, 3) or any(f <= 0 for f in value) or abs(sum(value) - 1) > 1e-6:
            raise ValueError("expected 2 or 3 positive fractions summing to 1, e.g. [0.5, 0.5] or [0.7, 0.15, 0.15]")
        return value

    @field_validator("template")
    @classmethod
    def _check_template(cls, value):
        if value is not None and value.count("{}") != 1:
            raise ValueError("expected a template with exactly one '{}' for the class name")
        return value


class FederationConfig(Section):
    rounds: int = Field(10, ge=0)
    participation: float = Field(1.0, gt=0, le=1)  # fraction of clients sampled each round
    local_epochs: int = Field(1, gt=0)
    local_steps: int | None = Field(None, gt=0)  # when set, a fixed number of steps replaces epochs


class OptimConfig(Section):
    name: Literal["sgd", "adamw"] = "sgd"
    lr: float = Field(0.001, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(5e-4, ge=0)
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    batch_size: int = Field(32, gt=0)
    # The learning-rate schedule (fedvlm.client.optim.learning_rate): its shape, what it runs
    # over, and a linear warm-up. "rounds": one rate per round (cosine over federation.rounds, or
    # "step"); "round_steps": over each round's local steps, restarting every round;
    # "run_steps": over every local step of the run (rounds x the client's steps per round), as
    # a centralised paper's per-step schedule over its epochs.
    scheduler: Literal["constant", "cosine", "step"] = "constant"
    schedule_over: Literal["rounds", "round_steps", "run_steps"] = "rounds"
    warmup_steps: int = Field(0, ge=0)  # linear warm-up over the first local steps (per-step schedules)
    # scheduler "step": lr x step_gamma every step_rounds rounds (RDB: x0.7 every 20 epochs)
    step_rounds: int = Field(20, gt=0)
    step_gamma: float = Field(0.7, gt=0, le=1)
    # Keep each client's optimizer state (momentum, Adam moments) across rounds; false rebuilds it
    # every round, as most reference implementations do.
    keep_state: bool = False

    def check_schedule(self, rounds: int) -> None:
        """Refuse, in one line, a schedule that cannot act on a run of ``rounds`` rounds."""
        if self.scheduler == "step" and self.schedule_over != "rounds":
            raise ConfigError(f"optim.schedule_over: {self.schedule_over}, but scheduler step decays every "
                              "optim.step_rounds rounds; set optim.schedule_over: rounds or optim.scheduler: cosine")
        if self.warmup_steps and self.schedule_over == "rounds":
            raise ConfigError(f"optim.warmup_steps: {self.warmup_steps} local steps of warm-up, but the schedule "
                              "is one rate per round; set optim.schedule_over: round_steps or run_steps")
        if self.schedule_over != "rounds" or rounds < 1:
            return
        if self.scheduler == "cosine" and rounds == 1:
            raise ConfigError("optim.scheduler: cosine over rounds cannot act with federation.rounds=1 (the one "
                              "round trains at optim.lr); set optim.schedule_over: run_steps for a per-step cosine")
        if self.scheduler == "step" and self.step_rounds >= rounds:
            raise ConfigError(f"optim.step_rounds: {self.step_rounds}, but the run has federation.rounds={rounds}: "
                              f"the step schedule would never decay; expected fewer than {rounds}")


class EvalConfig(Section):
    every: int = Field(1, gt=0)  # evaluate every N rounds (and always after the last)
    batch_size: int = Field(100, gt=0)
    global_test: bool = True  # the server model on the whole test split
    personalized: bool = True  # every client on its own test split
    threshold: float = Field(0.5, gt=0, lt=1)  # multi-label: sigmoid(score) >= threshold is predicted
    top_k: int | None = Field(None, gt=0)  # multi-label: predict the k best classes instead


class RuntimeConfig(Section):
    accelerator: Literal["auto", "cpu", "cuda", "gpu", "mps"] = "auto"
    devices: int = Field(1, gt=0)
    num_nodes: int = Field(1, gt=0)
    strategy: Literal["auto", "ddp", "ddp_spawn"] = "auto"
    # 'batched' trains the clients of a rank together in one forward pass; 'sequential' one by one.
    execution: Literal["sequential", "batched"] = "batched"
    clients_per_pass: int = Field(64, gt=0)  # upper bound on clients stacked into one pass
    feature_cache: Literal["memory", "disk"] = "memory"
    cache_dir: str | None = None  # default: $FEDVLM_CACHE, else ~/.cache/fedvlm
    extract_batch_size: int = Field(64, gt=0)
    num_workers: int = Field(0, ge=0)  # image-decoding workers for feature extraction
    ddp_timeout_s: int = Field(1800, gt=0)
    # torch.compile the frozen text transformer (GPU only: on CPU this is a documented no-op,
    # compile time there outweighs the gain for the short runs CPUs are used for).
    compile: bool = False
    # Optimal transport heads: warn (once per run) when a round's plans violate their marginals by
    # more than this relative error (logged every round as train/ot_marginal_error; fedvlm.ot).
    ot_marginal_tolerance: float = Field(0.05, gt=0)
    # A client whose loss or parameters are not finite after a round: 'stop' the run (one line naming
    # the round and the clients; the last finite checkpoint is kept), or 'skip_client': leave its
    # update out of the aggregate and log it (metrics line key 'nonfinite_clients').
    on_nonfinite: Literal["stop", "skip_client"] = "stop"


class LoggingConfig(Section):
    results_dir: str = "results"
    wandb: Literal["offline", "online", "disabled"] = "offline"
    # Lightning loggers fed each round (rank 0): wandb (mode above), csv (<run>/csv/metrics.csv),
    # tensorboard (<run>/tensorboard/, the [tensorboard] extra). fedvlm/tracking/loggers.py.
    backends: list[Literal["wandb", "csv", "tensorboard"]] = ["wandb"]
    project: str = "fedvlm"
    entity: str | None = None
    tags: list[str] = []
    checkpoint_every: int = Field(1, ge=0)  # rounds between checkpoints; 0 = only the final one
    progress: bool = True

    @field_validator("backends", mode="before")
    @classmethod
    def _backend_list(cls, value):
        return [value] if isinstance(value, str) else value  # backends=csv on the command line

    @field_validator("backends")
    @classmethod
    def _each_once(cls, value):
        return list(dict.fromkeys(value))


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

        DATASETS.get(value.dataset, key="data.dataset")
        return value

    @model_validator(mode="after")
    def _keys_apply_to_the_dataset(self):
        check_task_keys(self)
        return self

    def to_dict(self) -> dict:
        return self.model_dump(mode="json")


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
    from fedvlm.data.datasets import DATASETS
    from fedvlm.heads import HEADS
    from fedvlm.tasks import TASKS

    dataset = config.data.dataset
    task = DATASETS.get(dataset, key="data.dataset").task
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
    ``num_clients`` and drops Dirichlet's ``alpha``).
    """
    merged = copy.deepcopy(base)
    for key, value in update.items():
        current = merged.get(key)
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


def _component_fields(section: str, name: str) -> set[str]:
    if section == "head":
        from fedvlm.heads import HEADS

        model = getattr(HEADS.get(name, key="head.name"), "Config")
    elif section == "algorithm":
        from fedvlm.algorithms import ALGORITHMS

        model = ALGORITHMS.get(name, key="algorithm.name")
    else:
        from fedvlm.data.partition import PARTITIONS

        model = PARTITIONS.get(name, key="partition.name")
    return set(model.model_fields)


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
