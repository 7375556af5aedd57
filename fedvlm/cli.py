"""Command line: ``fedvlm run | describe | demo | generate | pretrain-tiny``.

Mistakes in what the user asked for (:class:`~fedvlm.errors.UserError`) print one line,
``error: <key or file>: <what is wrong and what is expected>``, and exit with status 2, no
traceback.
"""

from __future__ import annotations

import argparse
import json
import sys

from fedvlm.errors import UserError


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedvlm", description="Federated learning of vision-language models.")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run an experiment: fedvlm run CONFIG.yaml [key=value ...]")
    run.add_argument("config", help="experiment YAML, e.g. experiments/demo.yaml")
    run.add_argument("overrides", nargs="*", help="dotted overrides such as federation.rounds=5 partition.alpha=0.1")

    describe = commands.add_parser("describe", help="parameter and communication counts, without training")
    describe.add_argument("config")
    describe.add_argument("overrides", nargs="*")
    describe.add_argument("--json", action="store_true", help="print the counts as JSON")

    demo = commands.add_parser("demo", help="the offline demo: synthetic world, tiny CLIP, zero-shot vs federated CoOp")
    demo.add_argument("overrides", nargs="*", help="overrides applied to experiments/demo.yaml")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "describe":
            return _describe(args)
        if args.command == "demo":
            from fedvlm.demo import run_demo

            run_demo(args.overrides)
            return 0
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: the last checkpoint is intact; continue with resume=true", file=sys.stderr)
        return 130
    return 1


def _run(args) -> int:
    from fedvlm.config import load_configs
    from fedvlm.simulation import run

    configs = load_configs(args.config, args.overrides)  # every run is validated before the first starts
    for number, config in enumerate(configs, start=1):
        if len(configs) > 1:
            swept = " ".join(f"{k}={v}" for k, v in {**config.sweep_values, "seed": config.seed}.items())
            print(f"[{number}/{len(configs)}] {config.name} {swept}", flush=True)
        summary = run(config)
        if summary.get("run_dir"):
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


if __name__ == "__main__":
    sys.exit(main())
