"""The ground floor of the configuration: the section types every layer may import.

:class:`Section` carries the rules that hold for every section (unknown keys are errors, no float
is infinite or NaN, no number is a boolean); :class:`ComponentConfig` is the base of the heads',
algorithms' and partitions' own configs; the fixed sections (model, data, federation, optim,
eval, runtime, logging) follow. Nothing here imports a registry or a component, so heads, data
and algorithms import their base types from here, while :mod:`fedvlm.config` (the composition
root, which knows every registry) builds the whole :class:`~fedvlm.config.ExperimentConfig`.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fedvlm.errors import ConfigError, shown


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


# data.source: a Hugging Face dataset, from the Hub (hf://owner/name, or hf://name for an
# owner-less id) or from a save_to_disk folder (disk:/path, relative to the working directory);
# fedvlm.data.hub reads both.
HUB_SOURCE = re.compile(r"hf://[A-Za-z0-9][A-Za-z0-9_.-]*(/[A-Za-z0-9][A-Za-z0-9_.-]*)?")
SOURCE_FORMS = "hf://owner/name or disk:/path/to/a/save_to_disk/folder"


class HubConfig(Section):
    """How a ``data.source`` dataset is read (docs/DATASETS.md, "Hugging Face datasets"). A null
    column is found from the features: the only ``Image`` column; the only ``ClassLabel``
    (classification) or ``Sequence(ClassLabel)`` (multi-label) column; a caption column only
    when it is named, or when there is no label column and exactly one string column."""

    # null: the train and test splits (validation when there is no test) as the official split,
    # or the only split there is; a name: that split alone, cut by data.split
    split: str | None = None
    config_name: str | None = None  # the Hub dataset's configuration (load_dataset's second argument)
    image_column: str | None = None
    label_column: str | None = None
    caption_column: str | None = None  # a string or list-of-strings column: the retrieval task


class DataConfig(Section):
    # Exactly one of the two: a registered dataset in its on-disk layout (fedvlm.data.datasets),
    # or a Hugging Face dataset (SOURCE_FORMS), read with the settings of ``hf``.
    dataset: str | None = None
    source: str | None = None
    hf: HubConfig = HubConfig()
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

    @field_validator("source")
    @classmethod
    def _check_source(cls, value):
        if value is None or HUB_SOURCE.fullmatch(value) or (value.startswith("disk:") and value[len("disk:"):]):
            return value
        raise ValueError(f"expected {SOURCE_FORMS}")

    @model_validator(mode="after")
    def _one_kind_of_data(self):
        if (self.dataset is None) == (self.source is None):
            given = "both" if self.dataset is not None else "neither"
            raise ConfigError(f"data: give exactly one of data.dataset (a registered dataset) or data.source "
                              f"({SOURCE_FORMS}), got {given}")
        if self.source is None and self.hf != HubConfig():
            raise ConfigError("data.hf: applies to data.source only, and data.dataset is given; remove data.hf or "
                              "set data.source")
        return self

    @property
    def name(self) -> str:
        """The data's name in logs, tags and summaries: ``data.dataset``, ``data.source`` for the
        Hub, ``disk:<folder name>`` for a folder (a W&B tag holds at most 64 characters)."""
        if self.dataset is not None:
            return self.dataset
        if self.source.startswith("hf://"):
            return self.source
        folder = self.source[len("disk:"):].rstrip("/\\")
        return "disk:" + re.split(r"[/\\]", folder)[-1]

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


def _probabilities(value: float | list[float], valid, expected: str) -> float | list[float]:
    values = value if isinstance(value, list) else [value]
    if not values or not all(valid(p) for p in values):
        raise ValueError(f"expected a probability {expected}")
    return value


class StragglerConfig(Section):
    """``federation.stragglers``: each reporting client straggles with probability ``fraction``;
    a straggler completes ``max(1, floor(u * steps))`` of its ``steps`` local steps, u uniform in
    [``min_work``, 1) (FedProx's systems heterogeneity, Li et al. 2020; FedNova's heterogeneous
    tau_i, Wang et al. 2020): at least one step, fewer than a full round."""

    fraction: float = Field(0.5, ge=0, le=1)
    min_work: float = Field(0.1, gt=0, le=1)


class DiurnalAvailability(Section):
    """``federation.availability: {period: P, low: a, high: b}``: client k is present in round r
    with probability ``a + (b - a) (1 + cos(2 pi (r / P + k / K))) / 2``, a day of P rounds whose
    peak moves across the K clients (time zones), between ``low`` and ``high``."""

    period: int = Field(24, gt=0)
    low: float = Field(0.2, gt=0, le=1)
    high: float = Field(1.0, gt=0, le=1)

    @model_validator(mode="after")
    def _ordered(self):
        if self.low > self.high:
            raise ValueError(f"expected low <= high, got low {self.low} and high {self.high}")
        return self

    def presence(self, round_index: int, num_clients: int) -> list[float]:
        """``[K]`` each client's probability of being present in round ``round_index``."""
        phase = [2 * math.pi * (round_index / self.period + k / num_clients) for k in range(num_clients)]
        return [self.low + (self.high - self.low) * (1 + math.cos(angle)) / 2 for angle in phase]


class FederationConfig(Section):
    """Rounds, sampling and local work. The availability keys (``dropout``, ``stragglers``,
    ``sampling`` with ``availability``; docs/AVAILABILITY.md) are off by default, and a run
    without them is bitwise the run it was before they existed."""

    rounds: int = Field(10, ge=0)
    participation: float = Field(1.0, gt=0, le=1)  # fraction of clients sampled each round
    local_epochs: int = Field(1, gt=0)
    local_steps: int | None = Field(None, gt=0)  # when set, a fixed number of steps replaces epochs
    # Probability that a sampled client fails to report (one rate, or one per client): it is
    # sampled, never trains, and its update never reaches the aggregate.
    dropout: float | list[float] = 0.0
    stragglers: StragglerConfig | None = None  # null: every client completes its local steps
    # 'uniform': sample among all clients; 'available': among the clients present this round, each
    # present with its probability in `availability` (one for all, one per client, or a daily cycle)
    sampling: Literal["uniform", "available"] = "uniform"
    availability: DiurnalAvailability | float | list[float] | None = None

    @field_validator("dropout")
    @classmethod
    def _dropout_rates(cls, value):
        # below 1: a client that never reports would never train
        return _probabilities(value, lambda p: 0 <= p < 1, "in [0, 1), or a list of them with one per client")

    @field_validator("availability", mode="before")
    @classmethod
    def _daily_cycle(cls, value):
        if not isinstance(value, dict):
            return value
        try:
            return DiurnalAvailability.model_validate(value)
        except ValidationError as error:
            first = error.errors()[0]
            where = "".join(f".{part}" for part in first["loc"])
            raise ConfigError(f"federation.availability{where}: {first['msg'].removeprefix('Value error, ')} "
                              f"(got {shown(value)}); a daily cycle is {{period: rounds, low: p, high: p}}") from None

    @field_validator("availability")
    @classmethod
    def _presence(cls, value):
        # above 0: a client that is never there would never be sampled
        if value is None or isinstance(value, DiurnalAvailability):
            return value
        return _probabilities(value, lambda p: 0 < p <= 1, "in (0, 1], a list of them with one per client, or "
                                                           "{period, low, high}")

    @model_validator(mode="after")
    def _availability_with_sampling(self):
        if self.sampling == "available" and self.availability is None:
            raise ConfigError("federation.sampling: available samples among the clients present each round; "
                              "set federation.availability (a probability, or one per client), e.g. 0.8")
        if self.sampling == "uniform" and self.availability is not None:
            raise ConfigError("federation.availability acts only with federation.sampling: available; "
                              "set it, or remove federation.availability")
        return self

    @property
    def models_availability(self) -> bool:
        """Whether any availability option is on (its keys then appear in the metrics lines)."""
        return self.sampling == "available" or self.stragglers is not None or self.dropout != 0.0

    def check_clients(self, num_clients: int) -> None:
        """Refuse, in one line, per-client probabilities that are not one per client."""
        for key in ("dropout", "availability"):
            value = getattr(self, key)
            if isinstance(value, list) and len(value) != num_clients:
                raise ConfigError(f"federation.{key}: {len(value)} probabilities, but the partition made "
                                  f"{num_clients} clients; expected one per client, or a single probability")


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
    # whose personalized metrics: 'all' clients, the round's 'sampled' ones, or N drawn afresh each
    # evaluated round from its own stream of (seed, round); the ids are logged as eval/clients
    clients: Literal["all", "sampled"] | Annotated[int, Field(gt=0)] = "all"
    threshold: float = Field(0.5, gt=0, lt=1)  # multi-label: sigmoid(score) >= threshold is predicted
    top_k: int | None = Field(None, gt=0)  # multi-label: predict the k best classes instead


class RuntimeConfig(Section):
    accelerator: Literal["auto", "cpu", "cuda", "gpu", "mps"] = "auto"
    devices: int = Field(1, gt=0)
    num_nodes: int = Field(1, gt=0)
    # 'ddp_notebook': the fork launcher, for several GPUs from a Jupyter kernel (CUDA must not be
    # touched in the kernel before the run starts); 'ddp_spawn' the spawn launcher; 'ddp' subprocesses
    strategy: Literal["auto", "ddp", "ddp_spawn", "ddp_notebook"] = "auto"
    # 'batched' trains the clients of a rank together in one forward pass; 'sequential' one by one.
    execution: Literal["sequential", "batched"] = "batched"
    clients_per_pass: int = Field(64, gt=0)  # upper bound on clients stacked into one pass
    feature_cache: Literal["memory", "disk"] = "memory"
    # Where the cached feature table is indexed for batches: "device" copies it to the accelerator
    # once (a batch is then a gather there, no host-to-device copy of features per step); "host"
    # keeps it in host memory; "auto" takes the device when the table fits in half of the
    # device's free memory (fedvlm.inputs.features.table_device). On a CPU all three are the same.
    feature_table: Literal["auto", "host", "device"] = "auto"
    cache_dir: str | None = None  # default: $FEDVLM_CACHE, else ~/.cache/fedvlm
    extract_batch_size: int = Field(64, gt=0)
    num_workers: int = Field(0, ge=0)  # image-decoding workers for feature extraction
    ddp_timeout_s: int = Field(1800, gt=0)
    # torch.compile the frozen text transformer (FrozenCLIP.compile; GPU only: on CPU a documented no-op,
    # compile time there outweighs the gain for the short runs CPUs are used for).
    compile: bool = False
    # Optimal transport heads: warn (once per run) when a round's plans violate their marginals by
    # more than this relative error (logged every round as train/ot_marginal_error; fedvlm.ot).
    ot_marginal_tolerance: float = Field(0.05, gt=0)
    # A client whose loss or parameters are not finite after a round: 'stop' the run (one line naming
    # the round and the clients; the last finite checkpoint is kept), or 'skip_client': leave its
    # update out of the aggregate and log it (metrics line key 'nonfinite_clients').
    on_nonfinite: Literal["stop", "skip_client"] = "stop"
    # Where each client's private parameters, optimizer and algorithm state live between the
    # rounds it trains in: 'memory' (every rank holds its clients' state; the checkpoint holds all
    # of it) or 'disk' (one safetensors file per client and round under <run>/client_state/,
    # written and read by the client's owner rank; the checkpoint names each client's current
    # file). fedvlm/tracking/client_store.py, docs/RELIABILITY.md section 4.
    client_state: Literal["memory", "disk"] = "memory"


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
