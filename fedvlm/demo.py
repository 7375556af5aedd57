"""``make demo`` / ``fedvlm demo``: the offline default experiment, end to end.

1. Generate the synthetic remote-sensing world's downstream split (``synthetic_scenes`` under the
   data root) unless it is there already.
2. Zero-shot accuracy of the tiny CLIP pretrained on the world's pretraining split (shipped in
   the package, ``model.pretrained: synthetic``).
3. CoOp prompts trained with FedAvg over several clients holding a Dirichlet label split.
4. A table of both (server model on the test split; per-client mean and minimum on each
   client's own test split) and where the run folders, W&B offline runs and plots are.
"""

from __future__ import annotations

from pathlib import Path

from fedvlm.config import load_config
from fedvlm.data.datasets import data_root

DEMO_CONFIG = Path(__file__).resolve().parents[1] / "experiments" / "demo.yaml"
DEMO_IMAGES = 1600  # downstream split: half trains the clients, half tests
DEMO_SEED = 11  # downstream world seed (the tiny CLIP was pretrained on another seed and styles)


def ensure_demo_data(root: Path) -> Path:
    folder = root / "synthetic_scenes"
    if not folder.exists():
        from fedvlm.data.synthetic import generate_dataset

        print(f"generating the synthetic world ({DEMO_IMAGES} scenes) into {folder} ...", flush=True)
        generate_dataset(root, layouts=("imagefolder",), num_images=DEMO_IMAGES, seed=DEMO_SEED, num_styles=4)
    return folder


def run_demo(overrides: list[str] | None = None) -> dict:
    from fedvlm.simulation import run

    overrides = list(overrides or [])
    federated = load_config(DEMO_CONFIG, overrides)
    ensure_demo_data(data_root(federated.data.root))
    zero_shot = load_config(DEMO_CONFIG, ["name=demo_zeroshot", "head.name=zeroshot", "federation.rounds=0",
                                          *overrides])
    print("zero-shot CLIP ...", flush=True)
    zero = run(zero_shot)
    print(f"CoOp + FedAvg, {federated.partition.num_clients} clients ...", flush=True)
    trained = run(federated)
    print()
    print(format_table(federated, zero, trained))
    return {"zeroshot": zero, "federated": trained}


def _percent(value) -> str:
    return f"{100 * value:6.2f}%" if value is not None else "    n/a"


def format_table(config, zero: dict, trained: dict) -> str:
    partition = config.partition
    label = f"CoOp + FedAvg ({partition.num_clients} clients, Dirichlet {getattr(partition, 'alpha', '')})"
    rows = [("zero-shot CLIP", zero), (label, trained)]
    width = max(len(name) for name, _ in rows)
    lines = [f"{'method':<{width}}  server acc  client mean  client min",
             f"{'-' * width}  ----------  -----------  ----------"]
    for name, summary in rows:
        lines.append(f"{name:<{width}}     {_percent(summary.get('global/accuracy'))}      "
                     f"{_percent(summary.get('personalized/mean_accuracy'))}     "
                     f"{_percent(summary.get('personalized/min_accuracy'))}")
    gain = trained["global/accuracy"] - zero["global/accuracy"]
    lines += ["", f"federated CoOp - zero-shot: {100 * gain:+.2f} points (server model, test split)", "",
              f"run folders:  {zero['run_dir']}", f"              {trained['run_dir']}",
              f"plots:        {Path(trained['run_dir']) / 'partition.png'}"]
    if trained.get("wandb_dir"):
        lines.append(f"W&B offline:  {Path(trained['wandb_dir']).parent}  (upload: wandb sync <that folder>)")
    return "\n".join(lines)
