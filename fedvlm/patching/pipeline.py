"""``fedvlm patch CONFIG.yaml``: patch CLIP with PAINT, then align a multispectral student to it,
both federated ("Mind the Modality Gap", Algorithm 1; docs/PATCHING.md).

The two training stages are ordinary federated runs of the round loop; this module only wires
them together and does what is not a round:

1. **Fine-tune** (``patch:`` sections, head ``paint``): clients fine-tune CLIP's image encoder on
   the patching task through the frozen prompt-ensembled text head; the server averages it.
2. **Interpolate** (the server, after the last round): ``W = (1 - alpha) W_zs + alpha W_ft`` for
   every alpha of ``alphas``; at each, zero-shot evaluation (prompt ensembles) of the patching
   task and of the ``supported`` task on their validation and test rows. alpha is chosen on
   validation (PAINT: the best mean of the two tasks), the trade-off curve is written
   (``paint_curve.json``, ``paint_curve.png``), and the patched CLIP is saved
   (``patched_clip.pt``, an open_clip checkpoint).
3. **Align** (``align:`` sections, head ``ms_student``; one run per teacher of ``align_teachers``
   and per value of an ``align.sweep``): clients distil a multispectral student into the patched
   (or the zero-shot) CLIP image space; the run's cached image features *are* the teacher's
   embeddings because its ``model.pretrained`` is the teacher checkpoint. Zero-shot accuracy/mAP
   of the student comes from the run itself; afterwards the RGB teacher and the MS student embed
   the test scenes and R@k is measured both ways (RGB->MS, MS->RGB) with
   :func:`fedvlm.metrics.retrieval_recall`, one match per scene.

Everything lands in ``<results_dir>/<name>/<run id>/``: ``config.yaml``, the curve, the patched
checkpoint, ``results.json`` and ``results.md``; each training stage keeps its own run folder
below it. Top-level ``seed``, ``model``, ``runtime`` and ``logging`` apply to both stages.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field, ValidationError

from fedvlm.config import (ExperimentConfig, LoggingConfig, ModelConfig, RunName, RuntimeConfig, Section, _one_line,
                           build_config, expand_runs, merge, parse_overrides, read_yaml)
from fedvlm.errors import ConfigError
from fedvlm.tracking.run_folder import RunFolder, new_run_id

DEFAULT_ALPHAS = [round(0.1 * i, 1) for i in range(11)]


class SupportedTask(Section):
    """A task CLIP already does well (the paper's ImageNet): zero-shot only, never trained on."""

    dataset: str
    root: str | None = None
    split: list[float] | None = None  # [train, val, test]; null: the dataset's official or default split
    templates: list[str] | None = None


class PatchingConfig(Section):
    name: RunName
    seed: int = 1
    model: ModelConfig = ModelConfig()
    runtime: RuntimeConfig = RuntimeConfig()
    logging: LoggingConfig = LoggingConfig()
    patch: dict[str, Any]  # sections of the fine-tuning run (data, partition, head, federation, optim, ...)
    supported: SupportedTask
    alphas: list[float] = Field(default_factory=lambda: list(DEFAULT_ALPHAS))
    align: dict[str, Any] | None = None  # sections of the distillation run(s); may hold a `sweep:`
    align_teachers: list[Literal["patched", "zero_shot"]] = ["patched"]
    retrieval_ks: list[int] = [1, 5, 10, 20]
    eval_batch_size: int = Field(100, gt=0)

    def stage(self, sections: dict, suffix: str, pretrained: str | None = None) -> dict:
        """The raw config of one training stage: the shared top-level keys plus its own sections."""
        shared = {"seed": self.seed, "model": self.model.model_dump(), "runtime": self.runtime.model_dump(),
                  "logging": self.logging.model_dump()}
        if pretrained is not None:
            shared["model"]["pretrained"] = pretrained
        return merge({"name": f"{self.name}_{suffix}", **shared}, copy.deepcopy(sections))

    def patch_config(self) -> ExperimentConfig:
        return build_config(self.stage(self.patch, "patch"))

    def align_configs(self, teacher: str, pretrained: str | None) -> list[ExperimentConfig]:
        return [build_config(raw) for raw in expand_runs(self.stage(self.align or {}, f"align_{teacher}", pretrained))]


def load_patching_config(path: str | Path | None, overrides: list[str] | dict | None = None) -> PatchingConfig:
    raw = read_yaml(path) if path is not None else {}
    if overrides:
        raw = merge(raw, parse_overrides(overrides) if isinstance(overrides, list) else overrides)
    try:
        config = PatchingConfig.model_validate(raw)
    except ValidationError as error:
        raise ConfigError(_one_line(error, PatchingConfig)) from None
    patch = config.patch_config()  # every stage is validated before anything runs
    if config.align is not None:
        config.align_configs("patched", "checkpoint.pt")
    if any(not 0 <= a <= 1 for a in config.alphas) or not config.alphas:
        raise ConfigError(f"alphas: expected mixing coefficients in [0, 1], got {config.alphas}")
    for key, split in (("patch.data.split", patch.data.split), ("supported.split", config.supported.split)):
        if split is not None and len(split) != 3:
            raise ConfigError(f"{key}: alpha is chosen on validation data; expected [train, val, test], got {split}")
    return config


# ------------------------------------------------------------------------------- data rows


def split_rows(dataset, spec, split: list[float] | None, seed: int) -> dict[str, np.ndarray | None]:
    """train / val / test rows as the round loop cuts them (fedvlm.simulation._splits; the val
    part, which the loop does not use, is where alpha is chosen)."""
    from fedvlm.data.partition import random_split, split as stratified

    if split is None and dataset.official_splits:
        official = dataset.official_splits
        return {"train": official["train"], "val": official.get("val"), "test": official["test"]}
    fractions = split or spec.default_split
    labels = dataset.labels
    parts = stratified(labels, fractions, seed) if labels.ndim == 1 else random_split(len(labels), fractions, seed)
    return {"train": parts[0], "val": parts[1] if len(parts) == 3 else None, "test": parts[-1]}


class EvaluationSet:
    """Images of one split of one task, preprocessed once, with the task's zero-shot head."""

    def __init__(self, backbone, dataset, spec, rows: np.ndarray, templates: list[str] | None, batch_size: int):
        from fedvlm.patching.classifier import class_embeddings
        from fedvlm.tasks import TASKS

        self.rows = np.asarray(rows)
        self.labels = torch.as_tensor(dataset.labels[self.rows])
        self.task = TASKS.get(spec.task)()
        self.classes = class_embeddings(backbone, list(dataset.classnames), templates or [spec.template])
        self.pixels = _pixels([dataset.paths[i] for i in self.rows], backbone.preprocess)
        self.batch_size = batch_size

    @torch.no_grad()
    def embeddings(self, visual, device) -> torch.Tensor:
        return torch.cat([visual(self.pixels[i : i + self.batch_size].to(device)).float().cpu()
                          for i in range(0, len(self.pixels), self.batch_size)])

    def metrics(self, backbone, embeddings: torch.Tensor) -> dict[str, float]:
        from fedvlm.patching.classifier import zero_shot_logits

        return self.task.metrics(zero_shot_logits(backbone, embeddings, self.classes.to(embeddings.device)),
                                 self.labels)


def _pixels(paths, preprocess) -> torch.Tensor:
    from PIL import Image

    from fedvlm.errors import DataError

    images = []
    for path in paths:
        try:
            with Image.open(path) as image:
                images.append(preprocess(image.convert("RGB")))
        except OSError as error:
            raise DataError(f"cannot read image {path}: {type(error).__name__}") from None
    return torch.stack(images)


# ---------------------------------------------------------------------------- the pipeline


def run_patching(config: PatchingConfig) -> dict:
    folder = RunFolder.create(config.logging.results_dir, config.name, new_run_id(config.seed))
    try:
        return _run_patching(config, folder)
    except BaseException:
        folder.discard_if_empty()  # a stage failed before it recorded a round: no half-made folder
        raise
    finally:
        folder.unlock()


def _run_patching(config: PatchingConfig, folder: RunFolder) -> dict:
    from fedvlm.backbone.clip import FrozenCLIP
    from fedvlm.data.datasets import DATASETS, load_dataset
    from fedvlm.patching.interpolation import choose_alpha, interpolate
    from fedvlm.simulation import run

    folder.write_config(config.model_dump(mode="json"))
    stages = str(folder.path)

    # 1. federated fine-tuning of the image encoder
    patch = config.patch_config()
    patch.logging.results_dir = stages
    patch_summary = run(patch)
    fine_tuned = _fine_tuned_visual(Path(patch_summary["run_dir"]))

    # 2. interpolation, evaluated on both tasks
    device = torch.device("cuda" if config.runtime.accelerator in ("auto", "cuda", "gpu") and torch.cuda.is_available()
                          else "cpu")
    backbone = FrozenCLIP.load(config.model.name, config.model.pretrained, config.model.precision, device=device)
    zero_shot = {k: v.detach().clone() for k, v in backbone.model.visual.state_dict().items()}
    sets = {}
    for task, data_config, templates in (
            ("patch", patch.data, getattr(patch.head, "templates", None)),
            ("supported", config.supported, config.supported.templates)):
        dataset, spec = load_dataset(data_config.dataset, data_config.root), DATASETS.get(data_config.dataset)
        rows = split_rows(dataset, spec, data_config.split, patch.seed)
        if rows["val"] is None:
            raise ConfigError(f"{'patch.data' if task == 'patch' else 'supported'}.split: alpha is chosen on "
                              f"validation data; give three fractions [train, val, test]")
        for part in ("val", "test"):
            sets[f"{task}/{part}"] = EvaluationSet(backbone, dataset, spec, rows[part], templates,
                                                   config.eval_batch_size)
    curve = []
    for alpha in config.alphas:
        backbone.model.visual.load_state_dict(interpolate(zero_shot, fine_tuned, alpha))
        point = {"alpha": alpha}
        for key, evaluation in sets.items():
            embeddings = evaluation.embeddings(backbone.model.visual, device)
            metrics = evaluation.metrics(backbone, embeddings)
            point.update({f"{key}/{metric}": value for metric, value in metrics.items()})
        curve.append(point)
        print(f"alpha {alpha:.2f}: " + ", ".join(f"{k} {v:.4f}" for k, v in point.items()
                                                   if k.endswith(("accuracy", "mAP"))), flush=True)
    primary = {task: sets[f"{task}/val"].task.primary for task in ("patch", "supported")}
    best = choose_alpha(config.alphas, [p[f"patch/val/{primary['patch']}"] for p in curve],
                        [p[f"supported/val/{primary['supported']}"] for p in curve])
    patched_state = interpolate(zero_shot, fine_tuned, best)
    backbone.model.visual.load_state_dict(patched_state)
    checkpoint = folder.path / "patched_clip.pt"
    torch.save({k: v.cpu() for k, v in backbone.model.state_dict().items()}, checkpoint)
    (folder.path / "paint_curve.json").write_text(json.dumps({"alpha": best, "curve": curve}, indent=2))
    plot_curve(curve, best, primary, folder.path / "paint_curve.png", config.name)
    at = next(p for p in curve if p["alpha"] == best)
    results: dict = {"name": config.name, "run_dir": str(folder.path), "patch_run": patch_summary["run_dir"],
                     "alpha": best, "paint": curve, "patched": at, "zero_shot": curve_at(curve, 0.0),
                     "fine_tuned": curve_at(curve, 1.0), "alignment": []}

    # 3. alignment of the multispectral student, to each teacher
    if config.align is not None:
        teachers = {"patched": str(checkpoint), "zero_shot": config.model.pretrained}
        for teacher in config.align_teachers:
            for align in config.align_configs(teacher, teachers[teacher]):
                align.logging.results_dir = stages
                summary = run(align)
                crossmodal = crossmodal_evaluation(align, Path(summary["run_dir"]), config.retrieval_ks)
                results["alignment"].append({
                    "teacher": teacher, "run": summary["run_dir"], "loss": align.head.loss,
                    "sweep": align.sweep_values, "student": {k.split("/", 1)[1]: v for k, v in summary.items()
                                                             if k.startswith("global/")}, **crossmodal})
    (folder.path / "results.json").write_text(json.dumps(results, indent=2, default=float))
    (folder.path / "results.md").write_text(format_results(results))
    _log_to_wandb(config, folder, results)
    return results


def _log_to_wandb(config: PatchingConfig, folder, results: dict) -> None:
    """The trade-off curve (a table and the plot) and the alignment rows, as one W&B run grouped
    with the stages' runs (the stages log their rounds themselves)."""
    from fedvlm.tracking.wandb_logger import FedvlmWandbLogger

    logging = config.logging
    if logging.wandb == "disabled":
        return
    logger = FedvlmWandbLogger(logging.wandb, folder.path, logging.project, logging.entity, group=config.name,
                               name=f"{folder.run_id}-paint", run_id=f"{folder.run_id}-paint",
                               tags=["patching", *logging.tags], config=config.model_dump(mode="json"))
    columns = list(results["paint"][0])
    logger.log_table("paint/curve", columns=columns, data=[[point[c] for c in columns] for point in results["paint"]])
    logger.log_image("paint/curve_plot", [str(folder.path / "paint_curve.png")])
    summary = {"experiment": config.name, "run_id": folder.run_id, "method": "paint", "seed": config.seed,
               "alpha": results["alpha"], **{f"global/patched/{k}": v for k, v in results["patched"].items()}}
    for row in results["alignment"]:
        prefix = f"global/align_{row['teacher']}_{row['loss']}"
        summary.update({f"{prefix}/student_{k}": v for k, v in row["student"].items()})
        summary.update({f"{prefix}/{k}": v for k, v in row["retrieval"].items()})
    logger.finish(summary)


def curve_at(curve: list[dict], alpha: float) -> dict | None:
    return next((p for p in curve if math.isclose(p["alpha"], alpha)), None)


def _fine_tuned_visual(run_dir: Path) -> dict[str, torch.Tensor]:
    """The averaged image encoder of the fine-tuning run (the paint head's ``encoder.<name>``
    parameters, names with ``__`` for dots) as a ``visual`` state dict."""
    checkpoint = RunFolder(run_dir).load_checkpoint()
    prefix = "encoder."
    return {name[len(prefix):].replace("__", "."): value for name, value in checkpoint["global_shared"].items()
            if name.startswith(prefix)}


@torch.no_grad()
def crossmodal_evaluation(config: ExperimentConfig, run_dir: Path, ks: list[int]) -> dict:
    """The aligned student (the run's server model) and its RGB teacher on the run's test split:
    the teacher's zero-shot metrics, and R@k between the two modalities (one match per scene)."""
    from fedvlm.metrics import retrieval_recall
    from fedvlm.patching.classifier import zero_shot_logits
    from fedvlm.simulation import build_federation, make_fabric

    single = config.model_copy(deep=True)
    single.runtime.devices, single.runtime.num_nodes, single.runtime.strategy = 1, 1, "auto"
    fabric = make_fabric(single)
    fabric.launch()
    federation = build_federation(single, fabric)
    checkpoint = RunFolder(run_dir).load_checkpoint()
    head = federation.head
    head.write_slot(0, {**federation.initial, **checkpoint["global_shared"]})
    head.eval()
    rows = federation.test_rows
    teacher, student = [], []
    for start in range(0, len(rows), config.eval.batch_size):
        part = rows[start : start + config.eval.batch_size]
        batch = federation.data.batch(part, np.zeros(len(part), dtype=np.int64), train=False)
        teacher.append(batch.image.float().cpu())
        student.append(head.embed(batch).float().cpu())
    teacher, student = torch.cat(teacher), torch.cat(student)
    labels = torch.as_tensor(federation.labels[rows])
    rgb = federation.task.metrics(zero_shot_logits(federation.backbone, teacher, head.class_features.cpu()), labels)
    similarity = torch.nn.functional.normalize(teacher, dim=-1) @ torch.nn.functional.normalize(student, dim=-1).T
    recall = retrieval_recall(similarity, torch.arange(len(rows)), ks=ks)
    renamed = {key.replace("i2t_", "rgb_to_ms_").replace("t2i_", "ms_to_rgb_"): value for key, value in recall.items()}
    return {"teacher_rgb": rgb, "retrieval": renamed}


def plot_curve(curve: list[dict], best: float, primary: dict, path: Path, title: str) -> None:
    from fedvlm.tracking.plots import _pyplot

    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(5.5, 4))
    alphas = [p["alpha"] for p in curve]
    for task, style in (("patch", "-o"), ("supported", "-s")):
        for part, alpha_ in (("test", 1.0), ("val", 0.4)):
            key = f"{task}/{part}/{primary[task]}"
            axes.plot(alphas, [100 * p[key] for p in curve], style, alpha=alpha_,
                      label=f"{task} {part} ({primary[task]})")
    axes.axvline(best, color="grey", linestyle="--", label=f"chosen alpha = {best}")
    axes.set_xlabel("alpha (0: zero-shot CLIP, 1: fine-tuned)")
    axes.set_ylabel("%")
    axes.set_title(f"PAINT trade-off: {title}", fontsize=9)
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def format_results(results: dict) -> str:
    def pct(value):
        return f"{100 * value:.2f}" if value is not None else "n/a"

    curve = results["paint"]
    keys = [k for k in curve[0] if k != "alpha" and k.endswith(("accuracy", "mAP"))]
    lines = [f"# {results['name']}", "", f"Chosen alpha (validation): {results['alpha']}", "",
             "| alpha | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    lines += [f"| {p['alpha']:.2f} | " + " | ".join(pct(p[k]) for k in keys) + " |" for p in curve]
    if results["alignment"]:
        lines += ["", "| teacher | loss | sweep | student zero-shot | teacher RGB zero-shot | RGB->MS R@1/5/10/20 | "
                      "MS->RGB R@1/5/10/20 |", "|---|---|---|---|---|---|---|"]
        for row in results["alignment"]:
            student = {k: v for k, v in row["student"].items() if k in ("accuracy", "mAP")}
            teacher = {k: v for k, v in row["teacher_rgb"].items() if k in ("accuracy", "mAP")}
            r = row["retrieval"]
            rgb_ms = "/".join(pct(v) for k, v in r.items() if k.startswith("rgb_to_ms"))
            ms_rgb = "/".join(pct(v) for k, v in r.items() if k.startswith("ms_to_rgb"))
            lines.append(f"| {row['teacher']} | {row['loss']} | {row['sweep'] or ''} | "
                         f"{', '.join(f'{k} {pct(v)}' for k, v in student.items())} | "
                         f"{', '.join(f'{k} {pct(v)}' for k, v in teacher.items())} | {rgb_ms} | {ms_rgb} |")
    return "\n".join(lines) + "\n"
