"""A tiny CLIP pretrained contrastively on the synthetic world: the offline stand-in for real CLIP.

No real CLIP weights can be downloaded here, and a randomly initialised CLIP makes every accuracy
meaningless. ``pretrain_tiny`` generates a *pretraining split* of the synthetic world (its own seed
and its own client styles, disjoint from the downstream seeds), and trains the ``fedvlm-tiny``
open_clip model on its image-caption pairs with the symmetric InfoNCE loss of CLIP (open_clip's
``ClipLoss``), AdamW and a warm-up + cosine schedule. The result is saved as an fp16 safetensors
state dict that loads through open_clip's normal pretrained-file path::

    register_model_configs()
    model, _, preprocess = open_clip.create_model_and_transforms(TINY_MODEL_NAME, pretrained=str(path))

``tiny_checkpoint_path()`` returns the checkpoint shipped in ``fedvlm/backbone/checkpoints`` (or
builds one into the cache when it is absent). Its JSON sidecar records the command, seed, training
time and the zero-shot accuracy measured with ``ZERO_SHOT_TEMPLATE`` on a downstream split.

Determinism: the same seed and arguments on the same machine and thread count give identical
weights (seeded initialisation, seeded data order, deterministic algorithms); floating-point
summation order can differ across CPUs or thread counts.

Run it as ``python -m fedvlm.backbone.pretrain_tiny --out PATH`` (see ``--help``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from fedvlm.paths import cache_root

TINY_MODEL_NAME = "fedvlm-tiny"
TINY_IMAGE_SIZE = 64
ZERO_SHOT_TEMPLATE = "an aerial photo of a {}."
MODEL_CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
CHECKPOINT_DIR = Path(__file__).resolve().parent / "checkpoints"
SHIPPED_CHECKPOINT = CHECKPOINT_DIR / "fedvlm-tiny-synthetic.safetensors"  # recipe v2, tag ``synthetic``
# the first shipped checkpoint (recipe v1, tag ``synthetic-v1``), kept for comparison (docs/WORLD.md)
SHIPPED_V1_CHECKPOINT = CHECKPOINT_DIR / "fedvlm-tiny-synthetic-v1.safetensors"
SHIPPED_CHECKPOINTS = {"v2": SHIPPED_CHECKPOINT, "v1": SHIPPED_V1_CHECKPOINT}

# Pretraining draws its images from this seed; downstream datasets should use seeds below 1,000,000.
PRETRAIN_SEED = 1_000_003
# The downstream split the sidecar's zero-shot accuracy is measured on (the tests use the same).
EVAL_SEED = 7
EVAL_IMAGES = 320
EVAL_STYLES = 4

# Recipe v1 (the checkpoint shipped first, kept as ``pretrained: synthetic-v1``): InfoNCE on the
# pooled embedding alone. Its patch tokens are not aligned with text (docs/WORLD.md).
V1_DEFAULTS = dict(
    seed=PRETRAIN_SEED, num_images=6144, epochs=5, batch_size=128, lr=1e-3, weight_decay=0.1,
    warmup_fraction=0.05, num_styles=8, style_strength=0.7, scene_mention=0.35, size=TINY_IMAGE_SIZE,
    recipe="v1", mean_patch_weight=0.0, region_weight=0.0, region_logit_scale=0.0,
)
# Recipe v2 (``pretrained: synthetic``): the pooled InfoNCE plus two dense terms, see ``pretrain_tiny``.
# Tuning record (docs/SYNTHETIC_WORLD.md): 240-step trials with mean_patch_weight 1 / 0.25 / 0, region
# weight 0.25 and a fixed region logit scale of 100; 0.25 / 1 / learned kept pooled zero-shot highest
# with mean-patch zero-shot within 3% of it. Then 16,384 images x 6 epochs (768 steps) to convergence.
DEFAULTS = dict(V1_DEFAULTS, num_images=16384, epochs=6, recipe="v2", mean_patch_weight=0.25, region_weight=1.0)
RECIPES = ("v1", "v2")


def register_model_configs() -> None:
    """Make open_clip know the fedvlm model configs (``fedvlm-tiny``...); call once per process."""
    import fedvlm  # noqa: F401  (torchvision compatibility before open_clip)
    import open_clip

    if TINY_MODEL_NAME not in open_clip.list_models():
        open_clip.add_model_config(MODEL_CONFIG_DIR)


def cache_dir() -> Path:
    return cache_root()


def tiny_checkpoint_path(build_if_missing: bool = True, recipe: str = "v2") -> Path:
    """The tiny CLIP checkpoint of ``recipe``: the shipped file, else one in the cache (built on first use)."""
    shipped = SHIPPED_CHECKPOINTS[recipe]
    if shipped.is_file():
        return shipped
    cached = cache_dir() / shipped.name
    if not cached.is_file():
        if not build_if_missing:
            raise FileNotFoundError(f"no tiny CLIP checkpoint at {shipped} or {cached}")
        pretrain_tiny(cached, **(V1_DEFAULTS if recipe == "v1" else DEFAULTS))
    return cached


def encode_text_trimmed(model, tokens, token_embedding=None):
    """``model.encode_text(tokens, normalize=True)`` computed on the first L positions only.

    tokens [B, 77] -> [B, D]. The text transformer is causal and read at the end-of-text token
    (the largest id), so positions after the last EOT cannot change the result; trimming to them
    makes short captions several times cheaper. ``token_embedding`` replaces the model's lookup.
    """
    import torch
    import torch.nn.functional as F

    length = int(tokens.argmax(dim=-1).max()) + 1
    tokens = tokens[:, :length]
    x = token_embedding(tokens) if token_embedding is not None else model.token_embedding(tokens)
    x = x + model.positional_embedding[:length]
    x = model.transformer(x, attn_mask=model.attn_mask[:length, :length])
    x = model.ln_final(x)
    x = x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ model.text_projection
    return F.normalize(x, dim=-1)


def images_to_tensor(images: np.ndarray):
    """uint8 [N, H, W, 3] -> float [N, 3, H, W] normalised like open_clip's CLIP preprocessing."""
    import open_clip
    import torch

    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def zero_shot_accuracy(model, tokenizer, images: np.ndarray, labels: np.ndarray, class_names: list[str],
                       template: str = ZERO_SHOT_TEMPLATE, batch_size: int = 256) -> float:
    """Top-1 accuracy of classifying ``images`` [N, H, W, 3] by cosine to "template.format(class)"."""
    import torch

    model.eval()
    with torch.no_grad():
        text = model.encode_text(tokenizer([template.format(c) for c in class_names]), normalize=True)
        predictions = []
        for start in range(0, len(images), batch_size):
            features = model.encode_image(images_to_tensor(images[start:start + batch_size]), normalize=True)
            predictions.append((features @ text.T).argmax(dim=-1))
    return float((torch.cat(predictions).numpy() == labels).mean())


def downstream_eval_split(num_images: int = EVAL_IMAGES, seed: int = EVAL_SEED, size: int = TINY_IMAGE_SIZE):
    """The downstream split zero-shot accuracy is reported on: (images, labels, class names)."""
    from fedvlm.data.synthetic import WORLD, generate_arrays, sample_styles

    images, labels, _, _ = generate_arrays(num_images, seed, sample_styles(EVAL_STYLES, seed), size)
    return images, labels, WORLD.scene_names


def orient(x, flip):
    """Flip (last axis) and/or transpose (last two axes) each sample: x [B, ..., H, W], flip [B, 2] bool.

    Applied with the same ``flip`` to the images [B, 3, H, W] and to their region grids [B, G, G],
    so a patch keeps the label of what lies under it whatever the orientation.
    """
    import torch

    shape = (-1,) + (1,) * (x.ndim - 1)
    x = torch.where(flip[:, 0].view(shape), x.flip(-1), x)
    return torch.where(flip[:, 1].view(shape), x.transpose(-1, -2), x)


def _lr_at(step: int, total: int, warmup: int, peak: float) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return 0.5 * peak * (1 + math.cos(math.pi * progress))


def region_alignment_loss(patch_features, region_text_features, region_targets, logit_scale):
    """Patch-to-word alignment with the world's own region maps (recipe v2's dense term).

    patch_features [B, M, D] (projected patch tokens), region_text_features [R, D] (the text tower's
    embedding of each region prompt), region_targets [B, M] (region label under each patch) ->
    scalar: cross-entropy of every patch's cosine similarities to the R region texts, at the
    model's logit scale. This is the dense, label-supervised form of CLIP's loss used by
    dense-prediction CLIPs trained with region-text pairs (RegionCLIP, Zhong et al. 2022, Eq. 2:
    region features contrasted against the concept embeddings of the region's name); the world's
    instance and material maps supply the regions' names exactly.
    """
    import torch.nn.functional as F

    patches = F.normalize(patch_features, dim=-1)
    logits = logit_scale * patches @ F.normalize(region_text_features, dim=-1).T  # [B, M, R]
    return F.cross_entropy(logits.flatten(0, 1), region_targets.flatten().long())


def pretrain_tiny(out_path: str | Path | None = None, seed: int = PRETRAIN_SEED, num_images: int = DEFAULTS["num_images"],
                  epochs: int = DEFAULTS["epochs"], batch_size: int = DEFAULTS["batch_size"], lr: float = DEFAULTS["lr"],
                  weight_decay: float = DEFAULTS["weight_decay"], warmup_fraction: float = DEFAULTS["warmup_fraction"],
                  num_styles: int = DEFAULTS["num_styles"], style_strength: float = DEFAULTS["style_strength"],
                  scene_mention: float = DEFAULTS["scene_mention"], size: int = DEFAULTS["size"],
                  recipe: str = DEFAULTS["recipe"], mean_patch_weight: float = DEFAULTS["mean_patch_weight"],
                  region_weight: float = DEFAULTS["region_weight"],
                  region_logit_scale: float = DEFAULTS["region_logit_scale"],
                  model_name: str = TINY_MODEL_NAME, workers: int = 2, threads: int | None = None,
                  max_steps: int | None = None,
                  eval_images: int = EVAL_IMAGES, log=print, return_model: bool = False) -> dict:
    """Pretrain the tiny CLIP on ``num_images`` synthetic image-caption pairs; save it to ``out_path``.

    Recipe ``v1``: open_clip's symmetric InfoNCE on the pooled image embedding and the caption.
    Recipe ``v2`` adds two terms so that the *projected patch tokens* behave like a real CLIP's
    (aligned with text, and different from one another where the image differs):

    * ``mean_patch_weight`` x the same InfoNCE with the mean of the projected patch tokens as the
      image embedding (the image-level reading of the patches that FedOTP-style heads and
      DualCoOp's region aggregation rely on);
    * ``region_weight`` x ``region_alignment_loss`` (at ``region_logit_scale``, 0 = the model's
      learned logit scale): every patch classified against the text
      embeddings of the 33 region names (object types and materials,
      ``fedvlm.data.synthetic.regions``) with the label of what lies under it. This keeps each
      patch about its own region, where a per-patch InfoNCE against the whole caption would make
      every patch a copy of the image embedding (measured in issue 12: patch spread 0.042 vs 0.115).

    Each epoch visits every image once in a seeded order with one of its five captions. Returns
    the record also written beside the checkpoint as ``<out_path>.json`` (arguments, timings, sha256,
    zero-shot accuracy on the downstream split when ``eval_images`` > 0). ``max_steps`` stops early
    (tests); ``return_model`` adds the trained model under "model". ``threads`` sets torch's thread
    count for the run (None keeps it); results are bit-identical only for the same thread count.
    """
    import open_clip
    import torch
    import torch.nn.functional as F

    from fedvlm.data.synthetic import generate_arrays, generate_region_arrays, sample_styles
    from fedvlm.data.synthetic.regions import region_texts

    if recipe not in RECIPES:
        raise ValueError(f"recipe: {recipe!r} is not one of {', '.join(RECIPES)}")
    dense = recipe == "v2"
    arguments = dict(seed=seed, num_images=num_images, epochs=epochs, batch_size=batch_size, lr=lr,
                     weight_decay=weight_decay, warmup_fraction=warmup_fraction, num_styles=num_styles,
                     style_strength=style_strength, scene_mention=scene_mention, size=size, model_name=model_name)
    arguments.update(recipe=recipe, mean_patch_weight=mean_patch_weight, region_weight=region_weight,
                     region_logit_scale=region_logit_scale)
    register_model_configs()
    previous_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    deterministic = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    started = time.perf_counter()

    styles = sample_styles(num_styles, seed, style_strength)
    grid = size // _patch_size(model_name)
    if dense:
        images, _, captions, _, regions = generate_region_arrays(num_images, grid, seed, styles, size,
                                                                 scene_mention=scene_mention, workers=workers)
        regions = torch.from_numpy(regions.astype(np.int64))  # [N, G, G]
    else:
        images, _, captions, _ = generate_arrays(num_images, seed, styles, size, scene_mention=scene_mention,
                                                 workers=workers)
    generation_seconds = time.perf_counter() - started
    log(f"pretrain-tiny: generated {num_images} images in {generation_seconds:.1f} s")

    tokenizer = open_clip.get_tokenizer(model_name)
    tokens = tokenizer([c for per_image in captions for c in per_image]).view(num_images, -1, tokenizer.context_length)
    model = open_clip.create_model(model_name)
    model.train()
    model.visual.output_tokens = dense

    # Train only the embedding rows of tokens that occur (the captions' vocabulary and the
    # zero-shot template): the other ~49k rows would get zero gradients anyway, and skipping them
    # removes most of the optimizer's work. They are written back into the table at the end.
    template_tokens = tokenizer([ZERO_SHOT_TEMPLATE.format("x")])
    region_tokens = tokenizer(region_texts()) if dense else torch.zeros(0, dtype=torch.long)
    used = torch.unique(torch.cat([tokens.flatten(), template_tokens.flatten(), region_tokens.flatten(),
                                   torch.tensor([0])]))
    remap = torch.zeros(model.vocab_size, dtype=torch.long)
    remap[used] = torch.arange(len(used))
    rows = torch.nn.Parameter(model.token_embedding.weight.detach()[used].clone())
    model.token_embedding.weight.requires_grad_(False)

    def embed(token_ids):
        return F.embedding(remap[token_ids], rows)

    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.ndim >= 2 and "ln" not in n]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and not (p.ndim >= 2 and "ln" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay + [rows], "weight_decay": weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.98), eps=1e-6)
    loss_fn = open_clip.ClipLoss()

    steps_per_epoch = num_images // batch_size
    total_steps = steps_per_epoch * epochs if max_steps is None else min(max_steps, steps_per_epoch * epochs)
    warmup = max(1, int(warmup_fraction * total_steps))
    order_rng = np.random.default_rng([seed, 0xDA7A])
    pixels = images_to_tensor(images)
    step, losses = 0, []
    train_started = time.perf_counter()
    for epoch in range(epochs):
        order = order_rng.permutation(num_images)
        which_caption = order_rng.integers(tokens.shape[1], size=num_images)
        flips = torch.from_numpy(order_rng.integers(2, size=(num_images, 2)).astype(bool))
        for batch in range(steps_per_epoch):
            if step >= total_steps:
                break
            index = torch.from_numpy(order[batch * batch_size:(batch + 1) * batch_size])
            x = pixels[index]
            flip = flips[index]  # random flips and transposes: the world has no preferred orientation
            x = orient(x, flip)
            text = tokens[index, torch.from_numpy(which_caption[index.numpy()])]
            for group in optimizer.param_groups:
                group["lr"] = _lr_at(step, total_steps, warmup, lr)
            text_features = encode_text_trimmed(model, text, embed)
            if dense:
                pooled, patch_tokens = model.visual(x)
                patch_features = patch_tokens @ model.visual.proj  # [B, M, D], as FrozenCLIP reads them
                # the same flips and transposes on the region grid (patches are row-major over it)
                target = orient(regions[index], flip)
                scale = model.logit_scale.exp()
                loss = loss_fn(F.normalize(pooled, dim=-1), text_features, scale)
                loss = loss + mean_patch_weight * loss_fn(F.normalize(patch_features.mean(1), dim=-1),
                                                          text_features, scale)
                region_features = encode_text_trimmed(model, region_tokens, embed)
                loss = loss + region_weight * region_alignment_loss(
                    patch_features, region_features, target.flatten(1), region_logit_scale or scale)
            else:
                image_features = model.encode_image(x, normalize=True)
                loss = loss_fn(image_features, text_features, model.logit_scale.exp())
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            losses.append(float(loss.detach()))
            step += 1
            if step % 50 == 0 or step == total_steps:
                log(f"pretrain-tiny: epoch {epoch + 1}/{epochs} step {step}/{total_steps} "
                    f"loss {np.mean(losses[-50:]):.3f} ({time.perf_counter() - train_started:.0f} s)")
    with torch.no_grad():
        model.token_embedding.weight[used] = rows
    model.token_embedding.weight.requires_grad_(True)
    model.visual.output_tokens = False
    training_seconds = time.perf_counter() - train_started
    torch.use_deterministic_algorithms(deterministic)
    used_threads = torch.get_num_threads()
    torch.set_num_threads(previous_threads)

    record: dict = {
        "model_name": model_name,
        "command": "python -m fedvlm.backbone.pretrain_tiny " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in arguments.items() if k != "model_name"),
        "arguments": arguments,
        "recipe": recipe,
        "steps": step,
        "loss_curve": [round(float(np.mean(losses[i:i + 50])), 4) for i in range(0, len(losses), 50)],
        "final_loss": float(np.mean(losses[-20:])) if losses else None,
        "generation_seconds": round(generation_seconds, 1),
        "training_seconds": round(training_seconds, 1),
        "total_seconds": round(time.perf_counter() - started, 1),
        "torch": torch.__version__, "open_clip": open_clip.__version__,
        "threads": used_threads, "machine": platform.machine(), "python": sys.version.split()[0],
        "load_average_at_end": [round(v, 2) for v in os.getloadavg()],  # > threads: a shared, slowed machine
        "zero_shot_template": ZERO_SHOT_TEMPLATE,
    }
    if out_path is not None:
        out_path = Path(out_path)
        save_checkpoint(model, out_path)
        record["sha256"] = hashlib.sha256(out_path.read_bytes()).hexdigest()
        record["file_bytes"] = out_path.stat().st_size
    if eval_images > 0:
        evaluated = model
        if out_path is not None:  # report the accuracy of the file as shipped (fp16 weights)
            evaluated = open_clip.create_model_and_transforms(model_name, pretrained=str(out_path))[0]
        eval_images_, eval_labels, class_names = downstream_eval_split(eval_images)
        accuracy = zero_shot_accuracy(evaluated, tokenizer, eval_images_, eval_labels, class_names)
        record["zero_shot"] = {"accuracy": round(accuracy, 4), "chance": round(1 / len(class_names), 4),
                               "eval_seed": EVAL_SEED, "eval_images": eval_images, "eval_styles": EVAL_STYLES,
                               "template": ZERO_SHOT_TEMPLATE}
        log(f"pretrain-tiny: zero-shot accuracy {accuracy:.3f} on {eval_images} downstream images "
            f"(chance {1 / len(class_names):.3f})")
    if out_path is not None:
        Path(f"{out_path}.json").write_text(json.dumps(record, indent=2) + "\n")
    if return_model:
        record["model"] = model
    return record


def _patch_size(model_name: str) -> int:
    import open_clip

    patch = open_clip.get_model_config(model_name)["vision_cfg"]["patch_size"]
    return patch if isinstance(patch, int) else patch[0]


def save_checkpoint(model, path: str | Path) -> None:
    """Save the state dict as fp16 safetensors (what ``open_clip`` loads with ``pretrained=path``)."""
    import torch
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().to(torch.float16).contiguous() if v.is_floating_point() else v.detach().contiguous()
             for k, v in model.state_dict().items()}
    # one metadata key: safetensors writes several in hash-map order, which would change the file bytes
    save_file(state, str(path), metadata={"format": "pt"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m fedvlm.backbone.pretrain_tiny", description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=SHIPPED_CHECKPOINT, help="checkpoint path (.safetensors)")
    for key, value in DEFAULTS.items():
        if key == "recipe":
            parser.add_argument("--recipe", choices=RECIPES, default=value,
                                help="v2 (default): pooled + mean-patch + region alignment; v1: pooled only")
        else:
            parser.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=value)
    parser.add_argument("--workers", type=int, default=2, help="processes rendering the pretraining images")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--eval-images", type=int, default=EVAL_IMAGES)
    args = vars(parser.parse_args(argv))
    out = args.pop("out")
    record = pretrain_tiny(out, **args)
    print(json.dumps({k: v for k, v in record.items() if k != "arguments"}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
