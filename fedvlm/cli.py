"""Command line: ``fedvlm run | sweep | describe | demo | generate | pretrain-tiny | report | sync | dashboard | patch``.

Mistakes in what the user asked for (:class:`~fedvlm.errors.UserError`) print one line,
``error: <key or file>: <what is wrong and what is expected>``, and exit with status 2, no
traceback.
"""

from __future__ import annotations

import argparse
import json
import sys

from fedvlm.errors import ConfigError, UserError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedvlm", description="Federated learning of vision-language models.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run an experiment: fedvlm run CONFIG.yaml [key=value ...]")
    run.add_argument("config", help="experiment YAML, e.g. experiments/demo.yaml")
    run.add_argument("overrides", nargs="*", help="dotted overrides such as federation.rounds=5 partition.alpha=0.1")

    sweep = commands.add_parser("sweep", help="run one slice of a sweep's runs (a SLURM array task, docs/CLUSTER.md): "
                                              "fedvlm sweep CONFIG.yaml --slice i/n [key=value ...]")
    sweep.add_argument("config", help="experiment YAML with sweep: and/or seeds:")
    sweep.add_argument("overrides", nargs="*", help="dotted overrides applied to every run")
    sweep.add_argument("--slice", required=True, metavar="i/n",
                       help="run the runs whose index (in load order) is i modulo n; i counts from 0, e.g. "
                            "--slice $SLURM_ARRAY_TASK_ID/4 with --array=0-3")
    sweep.add_argument("--dry-run", action="store_true", help="list the slice's runs; run nothing")

    describe = commands.add_parser("describe", help="parameter and communication counts, without training")
    describe.add_argument("config")
    describe.add_argument("overrides", nargs="*")
    describe.add_argument("--json", action="store_true", help="print the counts as JSON")

    demo = commands.add_parser("demo", help="the offline demo: synthetic world, tiny CLIP, zero-shot vs federated CoOp")
    demo.add_argument("overrides", nargs="*", help="overrides applied to experiments/demo.yaml")

    generate = commands.add_parser("generate", help="write the synthetic remote-sensing world in real dataset layouts")
    generate.add_argument("out", help="data root to write into, e.g. data/")
    generate.add_argument("--layouts", default="imagefolder,voc2007,coco,captions,multispectral",
                          help="comma-separated: imagefolder, voc2007, coco, rsicd, rsitmd, eurosat, bigearthnet, "
                               "oxford_pets, food101, stanford_cars, sun397, ucf101, imagenet (+ -V2/-Sketch/-A/-R), "
                               "cifar10, cifar100, domainnet, office_caltech10, synthetic_domains; groups: captions "
                               "(rsicd+rsitmd), multispectral (eurosat+bigearthnet), coop, cifar, domains, benchmarks")
    generate.add_argument("--num-images", type=int, default=1000)
    generate.add_argument("--seed", type=int, default=0, help="world seed (downstream seeds below 1,000,000)")
    generate.add_argument("--num-styles", type=int, default=4, help="client styles (sensor, haze, blur, noise); 0 = none")
    generate.add_argument("--size", type=int, default=64, help="image side in pixels")
    generate.add_argument("--overwrite", action="store_true", help="replace layouts that already exist")

    commands.add_parser("pretrain-tiny", add_help=False,
                        help="pretrain the tiny CLIP on the synthetic world (fedvlm pretrain-tiny --help)")

    report = commands.add_parser("report", help="comparison tables (methods x settings, mean ± std over seeds) and "
                                                "plots of finished runs: fedvlm report results/")
    report.add_argument("results", nargs="+", help="results directories or run folders, e.g. results/")
    report.add_argument("--out", help="output folder (default: <first results directory>/report)")
    report.add_argument("--wandb", action="append", metavar="ENTITY/PROJECT",
                        help="also read the finished runs of this W&B project (needs network and a login)")
    report.add_argument("--no-plots", action="store_true", help="write the tables only (faster)")

    sync = commands.add_parser("sync", help="upload the offline W&B runs under results directories (wandb sync)")
    sync.add_argument("results", nargs="+", help="results directories or run folders, e.g. results/")
    sync.add_argument("--project", help="W&B project to upload to (default: the one each run logged)")
    sync.add_argument("--entity", help="W&B entity (default: your default entity)")
    sync.add_argument("--include-synced", action="store_true", help="upload runs that were uploaded before again")
    sync.add_argument("--dry-run", action="store_true", help="list the runs that would be uploaded; upload nothing")

    dashboard = commands.add_parser("dashboard", help="the W&B workspace comparing baselines: curves by round, "
                                                      "final metrics, grouped by method (docs/WANDB.md)")
    dashboard.add_argument("project", metavar="ENTITY/PROJECT", help="the W&B project the runs were uploaded to")
    dashboard.add_argument("--group", help="only the runs of this experiment (its name: in the YAML)")
    dashboard.add_argument("--tags", nargs="+", default=[], help="only runs carrying every one of these tags")
    dashboard.add_argument("--save", action="store_true",
                           help="save the workspace to W&B (needs network and a login); without it, print its panels")

    patch = commands.add_parser("patch", help="PAINT patching, then multispectral alignment, both federated: "
                                              "fedvlm patch CONFIG.yaml [key=value ...] (docs/PATCHING.md)")
    patch.add_argument("config", help="patching YAML, e.g. experiments/patching/synthetic_patching.yaml")
    patch.add_argument("overrides", nargs="*", help="dotted overrides such as alphas=[0,0.5,1] patch.federation.rounds=2")

    probe = commands.add_parser("probe-world", help="what backbones' features know about the synthetic world: "
                                                    "zero-shot, linear probe, patch-level, multi-label, retrieval "
                                                    "(docs/WORLD.md)")
    probe.add_argument("--pretrained", nargs="+", default=["synthetic-v1", "synthetic"], metavar="WEIGHTS",
                       help="weights to probe, one column each: open_clip or fedvlm tags (synthetic, synthetic-v1), "
                            "checkpoint paths, or random (default: synthetic-v1 synthetic)")
    probe.add_argument("--model", default="fedvlm-tiny", help="open_clip model name (default: fedvlm-tiny)")
    probe.add_argument("--images", type=int, default=None,
                       help="scene-split images; the VOC/COCO/RSICD layouts get 5x (default: 400)")
    probe.add_argument("--seed", type=int, default=None, help="downstream seed below 1,000,000 (default: 12)")
    probe.add_argument("--out", help="write the markdown report here, e.g. docs/WORLD.md")
    probe.add_argument("--json", help="write the table as JSON here")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["pretrain-tiny"]:  # its own options: python -m fedvlm.backbone.pretrain_tiny --help
        from fedvlm.backbone.pretrain_tiny import main as pretrain_main

        return _guarded(lambda: pretrain_main(argv[1:]))
    args = _parser().parse_args(argv)
    return _guarded(lambda: _dispatch(args))


def _guarded(command) -> int:
    try:
        return command()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the last checkpoint is intact; continue with resume=true", file=sys.stderr)
        return 130


def _dispatch(args) -> int:
    commands = {"run": _run, "sweep": _sweep, "describe": _describe, "demo": _demo, "generate": _generate, "report": _report,
                "sync": _sync, "dashboard": _dashboard, "patch": _patch, "probe-world": _probe_world}
    return commands[args.command](args)


def _probe_world(args) -> int:
    from pathlib import Path

    from fedvlm.probe import PROBE_IMAGES, PROBE_SEED, probe_world, world_markdown

    images = PROBE_IMAGES if args.images is None else args.images
    seed = PROBE_SEED if args.seed is None else args.seed
    table = probe_world(args.pretrained, model=args.model, images=images, seed=seed,
                        log=lambda line: print(line, file=sys.stderr, flush=True))
    command = (f"fedvlm probe-world --pretrained {' '.join(args.pretrained)} --model {args.model} "
               f"--images {images} --seed {seed}" + (f" --out {args.out}" if args.out else ""))
    text = world_markdown(table, command)
    print(text)
    for path, content in ((args.out, text), (args.json, json.dumps(table, indent=2) + "\n")):
        if path:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(content)
            print(f"wrote {path}", file=sys.stderr)
    return 0


def _patch(args) -> int:
    from pathlib import Path

    from fedvlm.config import require_writable_outputs
    from fedvlm.patching.pipeline import load_patching_config, run_patching

    config = load_patching_config(args.config, args.overrides)
    require_writable_outputs(config)
    results = run_patching(config)
    print((Path(results["run_dir"]) / "results.md").read_text())
    print(f"run folder: {results['run_dir']}")
    return 0


def _demo(args) -> int:
    from fedvlm.config import load_config, require_writable_outputs
    from fedvlm.demo import DEMO_CONFIG, run_demo

    require_writable_outputs(load_config(DEMO_CONFIG, args.overrides))
    run_demo(args.overrides)
    return 0


def _generate(args) -> int:
    from fedvlm.data.synthetic import generate_dataset

    summary = generate_dataset(args.out, layouts=args.layouts.split(","), num_images=args.num_images,
                               seed=args.seed, num_styles=args.num_styles, size=args.size, overwrite=args.overwrite)
    print(f"wrote {args.num_images} scenes to {args.out}: {', '.join(summary.get('layouts', []))}")
    return 0


def _run(args) -> int:
    from fedvlm.config import load_configs, require_writable_outputs
    from fedvlm.simulation import run

    configs = load_configs(args.config, args.overrides)  # every run is validated before the first starts
    for config in configs:
        require_writable_outputs(config)
    for number, config in enumerate(configs, start=1):
        if len(configs) > 1:
            print(f"[{number}/{len(configs)}] {_run_label(config)}", flush=True)
        summary = run(config)
        if summary.get("run_dir") and not summary.get("already_finished"):  # else run() said so in one line
            print(_result_lines(summary), flush=True)
    return 0


def _run_label(config) -> str:
    swept = " ".join(f"{k}={v}" for k, v in {**config.sweep_values, "seed": config.seed}.items())
    return f"{config.name} {swept}"


def parse_slice(text: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n) with 0 <= i < n; one line naming what was expected otherwise."""
    parts = text.split("/")
    if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
        index, count = int(parts[0]), int(parts[1])
        if 0 <= index < count:
            return index, count
    raise ConfigError(f"--slice: expected i/n with 0 <= i < n (i counts from 0, e.g. 0/4), got {text!r}")


def sweep_slice(configs: list, index: int, count: int) -> list[tuple[int, object]]:
    """The runs of slice ``index`` of ``count``: run j (load order, :func:`fedvlm.config.expand_runs`)
    belongs to slice ``j % count``. Round robin rather than contiguous blocks: runs are expanded
    setting by setting, so each slice gets a mix of settings and similar work; any ``count``
    slices cover the sweep exactly once. Returns (run number from 1, config) pairs."""
    return [(number + 1, config) for number, config in enumerate(configs) if number % count == index]


def _sweep(args) -> int:
    from fedvlm.config import load_configs, require_writable_outputs
    from fedvlm.simulation import run

    index, count = parse_slice(args.slice)  # before anything is loaded
    configs = load_configs(args.config, args.overrides)  # the whole sweep is validated by every slice
    mine = sweep_slice(configs, index, count)
    for _, config in mine:
        require_writable_outputs(config)
    print(f"sweep slice {index}/{count}: {len(mine)} of {len(configs)} runs", flush=True)
    for number, config in mine:
        print(f"[{number}/{len(configs)}] {_run_label(config)}", flush=True)
        if args.dry_run:
            continue
        summary = run(config)
        if summary.get("run_dir") and not summary.get("already_finished"):
            print(_result_lines(summary), flush=True)
    return 0


def _result_lines(summary: dict) -> str:
    lines = [f"run folder: {summary['run_dir']}"]
    primary = summary.get("primary_metric", "accuracy")
    for key in (f"global/{primary}", f"personalized/mean_{primary}", f"personalized/min_{primary}"):
        if summary.get(key) is not None:
            lines.append(f"{key}: {100 * summary[key]:.2f}%")
    if summary.get("wandb_dir"):
        lines.append(f"wandb (offline run; upload with `wandb sync`): {summary['wandb_dir']}")
    return "\n".join(lines)


def _describe(args) -> int:
    from fedvlm.config import load_configs
    from fedvlm.describe import describe, format_description

    config = load_configs(args.config, args.overrides)[0]  # counts do not depend on swept values
    counts = describe(config)
    print(json.dumps(counts, indent=2) if args.json else format_description(counts))
    return 0


def _report(args) -> int:
    from fedvlm.report import build_report

    report = build_report(args.results, args.out, wandb_paths=args.wandb, plots_too=not args.no_plots)
    tables = sum(1 for f in report.files if f.name == "table.md")
    images = sum(1 for f in report.files if f.suffix == ".png")
    print(f"report: {len(report.comparisons)} comparisons, {tables} tables, {images} plots in {report.out}")
    print(f"open {report.index}")
    if report.unfinished:
        print(f"left out {len(report.unfinished)} unfinished runs (no summary.json)")
    return 0


def _sync(args) -> int:
    from fedvlm.report.wandb_runs import sync_offline_runs

    runs = sync_offline_runs(args.results, project=args.project, entity=args.entity,
                             include_synced=args.include_synced, dry_run=args.dry_run)
    if not runs:
        print("sync: no offline W&B runs to upload (already uploaded ones are skipped; --include-synced to redo)")
    for run in runs:
        print(f"{'would upload' if args.dry_run else 'uploaded'} {run}")
    return 0


def _dashboard(args) -> int:
    from fedvlm.report import dashboard

    workspace = dashboard.build_workspace(args.project, group=args.group, tags=args.tags)
    if args.save:
        print(f"dashboard saved: {dashboard.save(workspace)}")
    else:
        print("\n".join(dashboard.describe(workspace)))
        print("(not saved: add --save to create it in W&B)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
