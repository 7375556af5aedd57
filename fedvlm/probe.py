"""``fedvlm probe-world``: what a backbone's features know about the synthetic world (docs/WORLD.md).

Every method fedvlm compares on the synthetic world relies on properties of a real CLIP: pooled
image-text alignment (zero-shot, prompt learning), projected patch tokens that are aligned with
text *and* differ from one another (FedOTP, FedRSCLIP's CMFAC, OTDPP, FedMPT, DualCoOp's region
aggregation), room above zero-shot for a learnt head, and multi-label scores above a random
ranking. :func:`probe_world` measures each of them for any number of backbones on one downstream
sample of the world and returns a table; :func:`world_markdown` writes it as docs/WORLD.md.

The maths are small pure functions (tested against loops and scikit-learn in tests/test_probe.py);
``measure_*`` functions apply them to encoded features; :func:`probe_world` generates the data
once (cached on disk, keyed by every argument and the generator's source) and probes each backbone.

Data (all downstream seeds, below the pretraining seed range):

* the *scene split*: ``images`` scenes of seed ``seed`` with the 4 client styles of that seed (as
  ``fedvlm.backbone.pretrain_tiny.downstream_eval_split``), each with the region label under every
  patch of the backbone's grid (``fedvlm.data.synthetic.regions``);
* the *layouts*: ``LAYOUT_FACTOR x images`` scenes of seed ``seed + 1`` written by
  ``generate_dataset`` as VOC2007, COCO and RSICD and read back with the real readers (test
  splits: VOC ``test``, COCO ``val2014``, RSICD ``test``).

Images go through the backbone's own preprocessing (``fedvlm.backbone.cache.extract``).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from fedvlm.backbone.pretrain_tiny import EVAL_STYLES, ZERO_SHOT_TEMPLATE
from fedvlm.data.formats.common import CaptionSet, MultiLabelSet
from fedvlm.errors import UserError

PROBE_SEED = 12  # the scene split's seed (the layouts use seed + 1); experiments use 0, the sidecar 7
PROBE_IMAGES = 400  # scene-split images; the layouts get LAYOUT_FACTOR times as many
LAYOUT_FACTOR = 5  # -> VOC test 50 %, COCO val2014 33 %, RSICD test 10 % of 5 x images
PROBE_STYLES = EVAL_STYLES  # client styles, as the downstream eval split of pretrain_tiny
TEMPLATE = ZERO_SHOT_TEMPLATE  # "an aerial photo of a {}.", the template the tiny CLIPs' sidecars report
# DualCoOp's positive / negative contexts, hand-written for zero-shot: the handcrafted
# "a photo of a [class]" / "a photo without a [class]" captions of PositiveCoOp (Fig. 1).
POSITIVE_CONTEXT = "an aerial photo of a"
NEGATIVE_CONTEXT = "an aerial photo without a"
LINEAR_PROBE_CS = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)  # inverse L2 strengths swept (CLIP Sec. 3.2 / App. A.3)
RANDOM_DRAWS = 20  # seeded random score tables averaged for the random-ranking mAP
REFERENCE = "synthetic-v1"  # the backbone whose patch spread the others must not fall below


# ------------------------------------------------------------------------ pure functions

def cosine(features: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
    """Cosine similarity: ``features [..., D]``, ``texts [C, D]`` -> ``[..., C]``."""
    return F.normalize(features, dim=-1) @ F.normalize(texts, dim=-1).T


def best_patch_scores(patches: torch.Tensor, texts: torch.Tensor) -> torch.Tensor:
    """Each class's best patch: ``max_m cos(patch_m, text_c)``; patches ``[N, M, D]``, texts ``[C, D]``
    -> ``[N, C]``."""
    return cosine(patches, texts).amax(dim=1)


def scene_zero_shot(pooled: torch.Tensor, patches: torch.Tensor, labels: torch.Tensor, texts: torch.Tensor) -> dict:
    """Zero-shot accuracy read three ways: from the pooled embedding, from the mean of the projected
    patch tokens, and from the best patch (``best_patch_scores``). pooled ``[N, D]``, patches
    ``[N, M, D]``, labels ``[N]``, class texts ``[C, D]`` -> {"scene_zero_shot_<way>": accuracy}."""
    scores = {"pooled": cosine(pooled, texts), "mean_patch": cosine(patches.mean(dim=1), texts),
              "best_patch": best_patch_scores(patches, texts)}
    return {f"scene_zero_shot_{way}": (s.argmax(-1) == labels).double().mean().item() for way, s in scores.items()}


def patch_accuracy(predicted: torch.Tensor, truth: torch.Tensor) -> float:
    """Fraction of patches whose predicted region label is the true one: both ``[N, M]`` int."""
    return (predicted == truth).double().mean().item()


def majority_rate(truth: torch.Tensor) -> float:
    """Accuracy of always predicting the most frequent true label: ``truth [N, M]`` int."""
    return (torch.bincount(truth.flatten()).max() / truth.numel()).item()


def mean_iou(predicted: torch.Tensor, truth: torch.Tensor, num_classes: int) -> float:
    """Mean over region classes of IoU = |pred = c and true = c| / |pred = c or true = c|, pooled over
    all patches of all images; classes that occur in neither are left out (their IoU is 0 / 0).
    predicted, truth: ``[N, M]`` int in [0, num_classes)."""
    pairs = torch.bincount(truth.flatten() * num_classes + predicted.flatten(), minlength=num_classes ** 2)
    confusion = pairs.view(num_classes, num_classes).double()  # [true, predicted]
    intersection = confusion.diagonal()
    union = confusion.sum(0) + confusion.sum(1) - intersection
    return (intersection[union > 0] / union[union > 0]).mean().item()


def patch_spread(patches: torch.Tensor) -> float:
    """Mean pairwise cosine distance ``1 - cos(p_m, p_m')`` over the M(M-1) ordered pairs m != m' of
    an image's patch tokens, averaged over images: ``patches [N, M, D]`` (M >= 2) -> scalar.
    0: every patch a copy of one vector; 1: orthogonal on average."""
    count = patches.shape[1]
    if count < 2:
        raise ValueError("patch_spread needs at least two patches per image")
    unit = F.normalize(patches.double(), dim=-1)
    gram_sum = unit.sum(dim=1).pow(2).sum(-1)  # sum over all (m, m') of cos, the diagonal included
    mean_cos = (gram_sum - count) / (count * (count - 1))
    return (1 - mean_cos).mean().item()


def patch_spread_by_region(patches: torch.Tensor, regions: torch.Tensor) -> tuple[float, float]:
    """The spread split by what lies under the patches: mean ``1 - cos(p_m, p_m')`` over the ordered
    pairs m != m' of an image whose region labels are equal, and over those whose labels differ, each
    pooled over all images' pairs: ``patches [N, M, D]``, ``regions [N, M]`` -> (same, different).

    A backbone whose patches mean what lies under them keeps the second well above the first; noise
    that is not about the region raises both (why ``patch_spread`` alone can reward unaligned tokens).
    """
    unit = F.normalize(patches.double(), dim=-1)
    distance = 1 - unit @ unit.transpose(1, 2)  # [N, M, M]
    same = regions[:, :, None] == regions[:, None, :]
    off_diagonal = ~torch.eye(patches.shape[1], dtype=torch.bool, device=patches.device)
    pairs_same, pairs_different = same & off_diagonal, ~same
    mean = lambda mask: distance[mask].mean().item() if mask.any() else float("nan")  # noqa: E731
    return mean(pairs_same), mean(pairs_different)


def mean_patch_pooled_cosine(patches: torch.Tensor, pooled: torch.Tensor) -> float:
    """``cos(mean_m patch_m, pooled)`` averaged over images: ``[N, M, D]``, ``[N, D]`` -> scalar."""
    return F.cosine_similarity(patches.mean(dim=1).double(), pooled.double(), dim=-1).mean().item()


def patch_pooled_cosine(patches: torch.Tensor, pooled: torch.Tensor) -> float:
    """``cos(patch_m, pooled)`` averaged over patches and images: ``[N, M, D]``, ``[N, D]`` -> scalar."""
    return F.cosine_similarity(patches.double(), pooled.double().unsqueeze(1), dim=-1).mean().item()


def fit_logistic_regression(features: torch.Tensor, labels: torch.Tensor, num_classes: int,
                            inverse_regularization: float = 1.0, max_iterations: int = 1000
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression, scikit-learn's ``LogisticRegression(C=...)`` objective:

        minimise  sum_i CE(W x_i + b, y_i) + ||W||^2 / (2 C)      (b unpenalised)

    by full-batch L-BFGS (strong-Wolfe line search) in float64 from zero: deterministic, and runs
    without scikit-learn (a dev dependency only). The loss is divided by N, which leaves the
    minimiser unchanged. features ``[N, D]``, labels ``[N]`` in [0, K) -> (W ``[K, D]``, b ``[K]``).
    """
    x, y = features.double(), labels.long()
    weight = torch.zeros(num_classes, x.shape[1], dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    penalty = 0.5 / (inverse_regularization * x.shape[0])
    optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=max_iterations, history_size=50,
                                  tolerance_grad=1e-10, tolerance_change=1e-14, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(x @ weight.T + bias, y) + penalty * weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        optimizer.step(closure)
    return weight.detach(), bias.detach()


def validation_quarter(labels: torch.Tensor) -> torch.Tensor:
    """``[N]`` bool: every 4th sample *of each class* (in order), so the validation cut holds every
    class that has 4 samples and the rest keeps three quarters of each. ``labels [N]``."""
    rank = torch.zeros_like(labels)
    for label in labels.unique():
        members = (labels == label).nonzero().flatten()
        rank[members] = torch.arange(len(members))
    return rank % 4 == 3


def linear_probe(train_features: torch.Tensor, train_labels: torch.Tensor, test_features: torch.Tensor,
                 test_labels: torch.Tensor, num_classes: int, cs: Sequence[float] = LINEAR_PROBE_CS) -> dict:
    """Test accuracy of a logistic regression on L2-normalised features (CLIP's linear probe, Radford
    et al. 2021, Sec. 3.2; App. A.3 sweeps C on a validation split). C is chosen on a validation cut
    of the training set (``validation_quarter``; ties: the smallest C), then the model is refitted
    on the whole training set. features ``[N, D]``, labels ``[N]`` -> {"accuracy", "C"}."""
    train_x, test_x = F.normalize(train_features, dim=-1), F.normalize(test_features, dim=-1)
    held_out = validation_quarter(train_labels)
    best_c, best_accuracy = cs[0], -1.0
    for c in cs:
        weight, bias = fit_logistic_regression(train_x[~held_out], train_labels[~held_out], num_classes, c)
        accuracy = (((train_x[held_out].double() @ weight.T + bias).argmax(-1)) == train_labels[held_out]).double()
        if accuracy.mean().item() > best_accuracy:
            best_c, best_accuracy = c, accuracy.mean().item()
    weight, bias = fit_logistic_regression(train_x, train_labels, num_classes, best_c)
    predictions = (test_x.double() @ weight.T + bias).argmax(-1)
    return {"accuracy": (predictions == test_labels).double().mean().item(), "C": best_c}


def random_ranking_map(targets: torch.Tensor, draws: int = RANDOM_DRAWS, seed: int = 0) -> float:
    """mAP of uniformly random scores, averaged over ``draws`` seeded tables: ``targets [N, C]``."""
    from fedvlm.metrics import mean_average_precision

    generator = torch.Generator().manual_seed(seed)
    return float(np.mean([mean_average_precision(torch.rand(targets.shape, generator=generator), targets)
                          for _ in range(draws)]))


def positive_rate(targets: torch.Tensor) -> float:
    """Mean over classes with a positive of the fraction of positive images: the expected AP of a
    random ranking as N grows. ``targets [N, C]`` in {1, 0, -1}."""
    known = targets >= 0
    rate = ((targets == 1).sum(0).double() / known.sum(0).clamp(min=1))
    return rate[(targets == 1).any(0)].mean().item()


# ------------------------------------------------------------------------------ the data

@dataclass
class SceneSplit:
    """The single-label and patch-level sample: N scenes, their labels and the regions under patches."""

    paths: list[Path]  # N PNG files
    labels: torch.Tensor  # [N] scene class ids (WORLD.scene_names)
    regions: torch.Tensor  # [N, G * G] region label under each patch, row-major (REGION_NAMES)

    @property
    def probe_train(self) -> torch.Tensor:
        """[N] bool: the linear probe's training half. Sample i has class i % C (``generate``), so
        alternate blocks of C samples are a class-balanced half without any randomness."""
        return (torch.arange(len(self.paths)) // int(self.labels.max() + 1)) % 2 == 0


def probe_cache_dir(configured: str | Path | None = None) -> Path:
    from fedvlm.backbone.cache import default_cache_dir

    return default_cache_dir(str(configured) if configured else None) / "probe-world"


def _generator_digest() -> str:
    """Changes whenever the code that draws, renders or writes the world changes, so a cached
    sample can never stand for another."""
    digest = hashlib.sha256()
    package = Path(__file__).parent / "data"
    for path in sorted([*package.glob("synthetic/*.py"), *package.glob("formats/*.py")]):
        digest.update(path.name.encode() + path.read_bytes())
    return digest.hexdigest()[:12]


def _cached_folder(base: Path, name: str, arguments: dict, build: Callable[[Path], None]) -> Path:
    """``base/<name>-<key>``, built by ``build(folder)`` into a temporary folder and renamed when
    complete (a killed build leaves nothing that could be read as a sample)."""
    key = hashlib.sha256(json.dumps({**arguments, "generator": _generator_digest()}, sort_keys=True).encode())
    folder = base / f"{name}-{key.hexdigest()[:16]}"
    if (folder / "complete.json").is_file():
        return folder
    staging = base / f".{folder.name}.{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    build(staging)
    (staging / "complete.json").write_text(json.dumps(arguments, sort_keys=True) + "\n")
    try:
        staging.rename(folder)
    except OSError:  # another process finished the same folder first
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def scene_split(images: int, seed: int, grid: int, cache_dir: str | Path | None = None) -> SceneSplit:
    """``images`` scenes of ``seed`` (4 client styles of that seed), rendered at the smallest multiple
    of ``grid`` that is at least 64 px so that every patch covers whole pixels (64 for the tiny
    CLIP's 8 x 8 grid), with their region labels on the ``grid x grid`` patch grid."""
    from PIL import Image

    from fedvlm.data.synthetic import generate_region_arrays, sample_styles

    size = grid * -(-64 // grid)

    def build(folder: Path) -> None:
        rgb, labels, _, _, regions = generate_region_arrays(images, grid, seed, sample_styles(PROBE_STYLES, seed),
                                                            size)
        for index, pixels in enumerate(rgb):
            Image.fromarray(pixels).save(folder / f"{index:06d}.png")
        np.save(folder / "labels.npy", labels)
        np.save(folder / "regions.npy", regions.reshape(images, grid * grid).astype(np.int64))

    arguments = dict(images=images, seed=seed, grid=grid, size=size, styles=PROBE_STYLES)
    folder = _cached_folder(probe_cache_dir(cache_dir), "scenes", arguments, build)
    return SceneSplit([folder / f"{i:06d}.png" for i in range(images)],
                      torch.from_numpy(np.load(folder / "labels.npy", allow_pickle=False)),
                      torch.from_numpy(np.load(folder / "regions.npy", allow_pickle=False)))


def layout_root(images: int, seed: int, cache_dir: str | Path | None = None) -> Path:
    """A data root holding ``images`` scenes of ``seed`` as VOC2007, COCO and RSICD (64 px, 4 styles)."""
    from fedvlm.data.synthetic import generate_dataset

    def build(folder: Path) -> None:
        generate_dataset(folder, layouts=["voc2007", "coco", "rsicd"], num_images=images, seed=seed,
                         num_styles=PROBE_STYLES)

    arguments = dict(images=images, seed=seed, styles=PROBE_STYLES, layouts="voc2007,coco,rsicd")
    return _cached_folder(probe_cache_dir(cache_dir), "layouts", arguments, build)


# ---------------------------------------------------------------------------- measures

def encode(backbone, paths: list[Path]):
    """Pooled ``[N, D]`` and projected patch tokens ``[N, M, D]`` with the backbone's preprocessing."""
    from fedvlm.backbone.cache import extract

    table = extract(backbone, list(paths), patches=True)
    return table.pooled, table.patches


def measure_scenes(backbone, split: SceneSplit) -> dict:
    """Scene zero-shot (pooled, mean patch, best patch), the linear probe, the patch-level region
    figures and the spread of the patch tokens, on the scene split."""
    from fedvlm.data.synthetic import WORLD
    from fedvlm.data.synthetic.regions import NUM_OBJECT_REGIONS, REGION_NAMES, region_texts

    pooled, patches = encode(backbone, split.paths)
    if patches.shape[1] != split.regions.shape[1]:
        raise UserError(f"model: {patches.shape[1]} patch tokens, but the region grid has {split.regions.shape[1]} "
                        "patches; probe-world needs a square ViT patch grid")
    names = WORLD.scene_names
    classes = backbone.encode_text([TEMPLATE.format(name) for name in names])
    labels, train = split.labels, split.probe_train
    figures = scene_zero_shot(pooled, patches, labels, classes)
    figures["scene_chance"] = 1 / len(names)
    fitted = linear_probe(pooled[train], labels[train], pooled[~train], labels[~train], len(names))
    figures["linear_probe"] = fitted["accuracy"]
    figures["linear_probe_C"] = fitted["C"]
    figures["zero_shot_on_probe_test"] = scene_zero_shot(pooled[~train], patches[~train], labels[~train],
                                                         classes)["scene_zero_shot_pooled"]

    predicted = cosine(patches, backbone.encode_text(region_texts())).argmax(-1)  # [N, M]
    truth = split.regions
    objects = truth < NUM_OBJECT_REGIONS
    figures.update(
        patch_accuracy=patch_accuracy(predicted, truth),
        patch_object_accuracy=patch_accuracy(predicted[objects], truth[objects]) if objects.any() else float("nan"),
        patch_chance=1 / len(REGION_NAMES),
        patch_majority_rate=majority_rate(truth),
        patch_miou=mean_iou(predicted, truth, len(REGION_NAMES)),
        patch_spread=patch_spread(patches),
        **dict(zip(("patch_spread_same_region", "patch_spread_different_region"),
                   patch_spread_by_region(patches, truth))),
        cos_mean_patch_pooled=mean_patch_pooled_cosine(patches, pooled),
        cos_patch_pooled=patch_pooled_cosine(patches, pooled),
    )
    return figures


def dual_prompt_logits(backbone, class_names: list[str], pooled: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
    """Zero-shot DualCoOp: fedvlm's ``dualcoop`` head with its positive and negative contexts set to the
    words ``POSITIVE_CONTEXT`` / ``NEGATIVE_CONTEXT`` (prompts "an aerial photo of a {class}." and
    "an aerial photo without a {class}.") and nothing trained. Its forward is the head's own: every
    region (the pooled embedding and each patch) scored against both prompts at 20 cos, softmax
    weights over regions from the positive scores, and logit = output_scale x (positive - negative
    aggregate), output_scale = logit_scale / 20 (DualCoOp's 5 on OpenAI CLIP), whose sigmoid is the
    positive probability of the softmax over the pair (DualCoOp). The logit is returned: it ranks
    images exactly as the probability does, without float32 saturation ties.
    pooled ``[N, D]``, patches ``[N, M, D]`` -> ``[N, C]``."""
    from fedvlm.batch import Batch
    from fedvlm.heads.dualcoop import DualCoOpConfig, DualCoOpHead

    n_ctx = int(backbone.eot_positions(backbone.tokenize([POSITIVE_CONTEXT]))[0]) - 1
    config = DualCoOpConfig(name="dualcoop", n_ctx=n_ctx, ctx_init=POSITIVE_CONTEXT, negative_ctx_init=NEGATIVE_CONTEXT)
    head = DualCoOpHead(config, backbone, class_names, TEMPLATE)
    slot = torch.zeros(len(pooled), dtype=torch.long)
    with torch.no_grad(), backbone.reuse_text():  # the class prompts are encoded once, not per batch
        return torch.cat([head(Batch(labels=slot[s:s + 256], slot=slot[s:s + 256], image=pooled[s:s + 256],
                                     patches=patches[s:s + 256])) for s in range(0, len(pooled), 256)])


def measure_multilabel(backbone, prefix: str, class_names: list[str], paths: list[Path],
                       targets: torch.Tensor) -> dict:
    """Zero-shot mAP by cosine ranking and by DualCoOp's positive/negative pair, and the random
    ranking's mAP (measured and the positive rate), on one multi-label test split."""
    from fedvlm.metrics import mean_average_precision

    pooled, patches = encode(backbone, paths)
    cosine_scores = cosine(pooled, backbone.encode_text([TEMPLATE.format(c) for c in class_names]))
    return {f"{prefix}_map_cosine": mean_average_precision(cosine_scores, targets),
            f"{prefix}_map_pair": mean_average_precision(dual_prompt_logits(backbone, class_names, pooled, patches),
                                                         targets),
            f"{prefix}_map_random": random_ranking_map(targets),
            f"{prefix}_positive_rate": positive_rate(targets)}


@dataclass
class LayoutSets:
    """The test splits of the multi-label and caption layouts, as the real readers return them."""

    voc: MultiLabelSet  # VOC2007 "test"
    coco: MultiLabelSet  # COCO "val2014"
    rsicd: CaptionSet  # RSICD "test"

    @property
    def sizes(self) -> dict:
        return {"VOC test images": len(self.voc.paths), "COCO val2014 images": len(self.coco.paths),
                "RSICD test images / captions": f"{len(self.rsicd.image_paths)} / {len(self.rsicd.captions)}"}


def read_layouts(root: Path) -> LayoutSets:
    from fedvlm.data.formats.captions import read_caption_dataset
    from fedvlm.data.formats.coco import read_coco
    from fedvlm.data.formats.voc import read_voc2007

    return LayoutSets(read_voc2007(root, "test"), read_coco(root / "coco", "val2014"),
                      read_caption_dataset(root / "RSICD", "test"))


def measure_layouts(backbone, sets: LayoutSets) -> dict:
    """Multi-label figures on the VOC and COCO test splits and zero-shot retrieval on RSICD's."""
    from fedvlm.data.datasets import DATASETS
    from fedvlm.metrics import retrieval_recall

    spec = DATASETS.get("synthetic_voc")  # VOC files name objects by identifier; prompts use the display name
    figures = measure_multilabel(backbone, "voc", [spec.classname(n) for n in sets.voc.class_names], sets.voc.paths,
                                 torch.from_numpy(sets.voc.labels))
    figures.update(measure_multilabel(backbone, "coco", sets.coco.class_names, sets.coco.paths,
                                      torch.from_numpy(sets.coco.labels)))
    pooled, _ = encode(backbone, sets.rsicd.image_paths)
    similarity = cosine(pooled, backbone.encode_text(sets.rsicd.captions))
    recall = retrieval_recall(similarity, torch.from_numpy(sets.rsicd.caption_image))
    figures.update({f"retrieval_{k}": v for k, v in recall.items()})
    return figures


# --------------------------------------------------------------------- figures and targets

# key -> (what it is, shown as a percentage); the rows of the table, in order
FIGURES: dict[str, tuple[str, bool]] = {
    "scene_zero_shot_pooled": ("scene zero-shot accuracy, pooled embedding: argmax_c cos(pooled, text_c), text_c = "
                               "'an aerial photo of a {scene}.' over the 16 WORLD.scene_names", True),
    "scene_zero_shot_mean_patch": ("scene zero-shot accuracy, the mean of the projected patch tokens in place of "
                                   "the pooled embedding", True),
    "scene_zero_shot_best_patch": ("scene zero-shot accuracy, best patch: argmax_c max_m cos(patch_m, text_c)",
                                   True),
    "scene_chance": ("chance level of the scene figures (1/16)", True),
    "linear_probe": ("linear probe: multinomial logistic regression on L2-normalised pooled embeddings, trained on "
                     "half the scene split (class-balanced), C picked on a validation quarter of it, accuracy on the "
                     "other half: the ceiling prompt learning can approach", True),
    "linear_probe_C": ("the inverse L2 strength the validation picked", False),
    "zero_shot_on_probe_test": ("pooled zero-shot accuracy on the linear probe's test half (what the probe "
                                "target compares with)", True),
    "patch_accuracy": ("per-patch zero-shot accuracy: argmax_r cos(patch, region text_r) over the 33 region texts "
                       "(19 object types, 14 materials; regions.region_texts) vs the region label under the patch "
                       "(what covers most of its pixels: an object's type, else the material)", True),
    "patch_object_accuracy": ("per-patch accuracy over the patches whose label is an object type", True),
    "patch_chance": ("uniform chance of the patch figures (1/33)", True),
    "patch_majority_rate": ("accuracy of always predicting the most frequent region label", True),
    "patch_miou": ("mean IoU of predicted vs true region label over all patches, averaged over the region classes "
                   "present in truth or prediction", True),
    "voc_map_cosine": ("VOC layout (test split) zero-shot mAP, cosine ranking: cos(pooled, 'an aerial photo of a "
                       "{class}.') per class", True),
    "voc_map_pair": ("VOC zero-shot mAP scored as DualCoOp does: fedvlm's dualcoop head with the contexts 'an aerial "
                     "photo of a' / 'an aerial photo without a' (positive / negative prompt per class), regions = "
                     "pooled embedding + every patch, softmax(20 cos) weights over regions, positive probability of "
                     "the pair's softmax as the score. The synthetic captions never negate, so a tiny CLIP "
                     "cannot have learnt 'without' (on a real CLIP, PositiveCoOp's Fig. 1 finds negative prompts "
                     "poorly understood too)", True),
    "voc_map_random": (f"VOC mAP of uniformly random scores (mean of {RANDOM_DRAWS} seeded draws)", True),
    "voc_positive_rate": ("VOC mean positive rate per class (the expected AP of a random ranking as N grows)", True),
    "coco_map_cosine": ("COCO layout (val2014 split) zero-shot mAP, cosine ranking", True),
    "coco_map_pair": ("COCO zero-shot mAP, DualCoOp's positive / negative pair (as for VOC)", True),
    "coco_map_random": ("COCO mAP of random scores", True),
    "coco_positive_rate": ("COCO mean positive rate per class", True),
    "retrieval_i2t_R@1": ("RSICD layout (test split) zero-shot image->text recall at 1: cos(pooled image, "
                          "caption); an image is found when any of its 5 captions ranks in the top K", True),
    "retrieval_i2t_R@5": ("image->text R@5", True),
    "retrieval_i2t_R@10": ("image->text R@10", True),
    "retrieval_t2i_R@1": ("text->image R@1: a caption is found when its image ranks in the top K", True),
    "retrieval_t2i_R@5": ("text->image R@5", True),
    "retrieval_t2i_R@10": ("text->image R@10", True),
    "retrieval_mR": ("mean of the six recalls", True),
    "patch_spread": ("patch spread: 1 - cos(p_m, p_m') averaged over the pairs of an image's projected patch tokens, "
                     "then over images (0: every patch the same vector)", False),
    "patch_spread_same_region": ("patch spread over the pairs of an image's patches that lie on the same region "
                                 "label (two grass patches)", False),
    "patch_spread_different_region": ("patch spread over the pairs that lie on different region labels (grass and "
                                      "a road): patches that mean what is under them keep this well above the "
                                      "same-region spread", False),
    "cos_mean_patch_pooled": ("cos(mean of the projected patch tokens, pooled embedding), averaged over images", False),
    "cos_patch_pooled": ("cos(projected patch token, pooled embedding), averaged over patches and images", False),
}


def targets(figures: dict, reference: dict | None) -> list[dict]:
    """Issue 12's targets for one backbone: ``[{"target", "value", "threshold", "passed"}]``. The spread
    target compares with the ``reference`` backbone's figures (None, or the reference itself: not
    judged, ``passed`` None)."""
    judged = reference is not None and reference is not figures
    rows = [("mean-patch zero-shot >= 80% of pooled zero-shot", figures["scene_zero_shot_mean_patch"],
             0.8 * figures["scene_zero_shot_pooled"]),
            (f"patch spread >= {REFERENCE}'s", figures["patch_spread"], reference["patch_spread"] if judged else None),
            ("per-patch accuracy >= 3x chance (3/33)", figures["patch_accuracy"], 3 * figures["patch_chance"]),
            ("linear probe >= zero-shot + 10 points (probe test half)", figures["linear_probe"],
             figures["zero_shot_on_probe_test"] + 0.10)]
    for layout in ("voc", "coco"):
        for scoring, name in (("cosine", "cosine ranking"), ("pair", "positive/negative pair")):
            rows.append((f"{layout.upper()} zero-shot mAP ({name}) >= random + 10 points",
                         figures[f"{layout}_map_{scoring}"], figures[f"{layout}_map_random"] + 0.10))
    return [{"target": target, "value": value, "threshold": threshold,
             "passed": None if threshold is None else bool(value >= threshold)} for target, value, threshold in rows]


# --------------------------------------------------------------------------- probe_world

def _is_random(pretrained: str | None) -> bool:
    return pretrained is None or pretrained.lower() in ("random", "none", "null")


def _label(pretrained: str | None) -> str:
    return "random" if _is_random(pretrained) else pretrained


def load_backbone(model: str, pretrained: str | None):
    """``FrozenCLIP`` of ``model`` with ``pretrained`` weights ("random"/"none"/None: random weights
    drawn from torch seed 0, so a random backbone is the same in every run)."""
    from fedvlm.backbone.clip import FrozenCLIP

    if _is_random(pretrained):
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return FrozenCLIP.load(model, None)
    return FrozenCLIP.load(model, pretrained)


def patch_grid(backbone) -> int:
    """The side G of the backbone's square patch grid (M = G x G patch tokens)."""
    grid = getattr(backbone.model.visual, "grid_size", None)
    if not backbone.has_patch_tokens or grid is None or grid[0] != grid[1]:
        raise UserError(f"model: {backbone.name} has no square ViT patch grid; probe-world reads patch tokens")
    return int(grid[0])


def probe_world(backbones: Sequence[str | None], model: str = "fedvlm-tiny", images: int = PROBE_IMAGES,
                seed: int = PROBE_SEED, cache_dir: str | Path | None = None, log=print) -> dict:
    """Probe each backbone (``model`` with each of the ``backbones`` weights: open_clip tag, fedvlm tag,
    checkpoint path, or "random") on one sample of the world -> the table::

        {"backbones": [label, ...], "figures": {label: {FIGURES key: value}},
         "targets": {label: targets(...)}, "settings": {...}, "seconds": {...}}
    """
    if images < 32:
        raise UserError(f"--images: {images} is too few; the scene split needs at least 32 (two per scene class)")
    if not 0 <= seed < 999_999:
        raise UserError(f"--seed: {seed} is outside the downstream seeds 0 .. 999998 (pretraining draws from "
                        "1,000,003; the layouts use seed + 1)")
    labels = [_label(p) for p in backbones]
    if len(set(labels)) != len(labels):
        raise UserError(f"--pretrained: {', '.join(labels)} names a backbone twice")
    started = time.perf_counter()
    loaded = {label: load_backbone(model, pretrained) for label, pretrained in zip(labels, backbones)}
    log(f"probe-world: loaded {', '.join(labels)} ({model})")
    generation_started = time.perf_counter()
    splits = {grid: scene_split(images, seed, grid, cache_dir) for grid in {patch_grid(b) for b in loaded.values()}}
    sets = read_layouts(layout_root(LAYOUT_FACTOR * images, seed + 1, cache_dir))
    seconds = {"generation (cached after the first run)": time.perf_counter() - generation_started}
    log(f"probe-world: data ready in {seconds['generation (cached after the first run)']:.1f} s")
    figures = {}
    for label, backbone in loaded.items():
        tick = time.perf_counter()
        figures[label] = {**measure_scenes(backbone, splits[patch_grid(backbone)]), **measure_layouts(backbone, sets)}
        figures[label] = {key: figures[label][key] for key in FIGURES}
        seconds[label] = time.perf_counter() - tick
        log(f"probe-world: {label} probed in {seconds[label]:.1f} s")
    reference = figures.get(REFERENCE)
    train = next(iter(splits.values())).probe_train
    sizes = {"scene split images": images, "linear probe train / test": f"{int(train.sum())} / {int((~train).sum())}",
             **sets.sizes}
    return {
        "backbones": labels,
        "figures": figures,
        "targets": {label: targets(figures[label], reference) for label in labels},
        "settings": {"model": model, "pretrained": [_label(p) for p in backbones], "images": images,
                     "scene_seed": seed, "layout_seed": seed + 1, "layout_images": LAYOUT_FACTOR * images,
                     "styles": PROBE_STYLES, "template": TEMPLATE, "sizes": sizes,
                     "grids": {label: patch_grid(b) for label, b in loaded.items()},
                     "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
                     "load_average": [round(v, 2) for v in os.getloadavg()],
                     "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())},
        "seconds": {**{k: round(v, 1) for k, v in seconds.items()}, "total": round(time.perf_counter() - started, 1)},
    }


# ----------------------------------------------------------------------------- WORLD.md

def _cell(key: str, value: float) -> str:
    if value != value:  # NaN
        return "-"
    if key == "linear_probe_C":
        return f"{value:g}"
    return f"{100 * value:.1f}" if FIGURES[key][1] else f"{value:.3f}"


def world_markdown(table: dict, command: str) -> str:
    """docs/WORLD.md: the targets, the figures (one column per backbone), what each means, how it was made."""
    labels, figures = table["backbones"], table["figures"]
    header = "| | " + " | ".join(f"`{label}`" for label in labels) + " |\n|---|" + "---|" * len(labels)
    lines = ["# The synthetic world as each backbone sees it", "",
             "Written by `fedvlm probe-world` (`fedvlm/probe.py`); `make world-report` reruns it. It measures the "
             "properties of a real CLIP that fedvlm's methods rely on (issue 12): pooled and patch-level alignment "
             "with text, patch tokens that differ within an image, room above zero-shot for a learnt head, and "
             "multi-label and retrieval scores above chance. Percentages, except the spread and cosine rows (raw "
             "values) and C. A `random` column (random weights) is the floor of every figure; its ratio targets "
             "compare chance with chance and mean nothing.", "",
             "How the shipped backbones were trained, what these figures mean for the methods, and why the "
             "spread and positive/negative-pair targets are not met: docs/SYNTHETIC_WORLD.md (\"The tiny CLIP\", "
             "\"v2 against the targets\").", "",
             "## Targets (issue 12)", "",
             "Each cell: measured value, the threshold it must reach, PASS / FAIL (`-`: not judged: the spread "
             f"target needs `{REFERENCE}` among the probed backbones).", "", header]
    for index, row in enumerate(table["targets"][labels[0]]):
        cells = []
        for label in labels:
            target = table["targets"][label][index]
            spread = "spread" in target["target"]
            shown = (lambda v: f"{v:.3f}") if spread else (lambda v: f"{100 * v:.1f}")
            if target["passed"] is None:
                cells.append(f"{shown(target['value'])} (the reference)" if label == REFERENCE else "-")
                continue
            cells.append(f"{shown(target['value'])} vs {shown(target['threshold'])}: "
                         f"{'PASS' if target['passed'] else 'FAIL'}")
        lines.append(f"| {row['target']} | " + " | ".join(cells) + " |")
    lines += ["", "## Figures", "", header]
    for key in FIGURES:
        lines.append(f"| {key} | " + " | ".join(_cell(key, figures[label][key]) for label in labels) + " |")
    lines += ["", "## What each figure means", ""]
    lines += [f"- **{key}**: {meaning}." for key, (meaning, _) in FIGURES.items()]
    settings = table["settings"]
    lines += ["", "## How it was made", "", "```bash", command, "```", "",
              f"- model `{settings['model']}`, weights {', '.join(f'`{p}`' for p in settings['pretrained'])}; "
              f"patch grids {settings['grids']}; the backbone's own preprocessing.",
              f"- scene split: {settings['images']} scenes of seed {settings['scene_seed']} with the "
              f"{settings['styles']} client styles of that seed (as the eval split of "
              "`fedvlm.backbone.pretrain_tiny.downstream_eval_split`), rendered at the smallest multiple of the patch "
              "grid that is at least 64 px; region labels from `fedvlm.data.synthetic.regions`.",
              f"- layouts: {settings['layout_images']} scenes of seed {settings['layout_seed']} "
              f"({settings['styles']} styles) written by `generate_dataset` as VOC2007, COCO and RSICD and read back "
              "with `fedvlm/data/formats` (`voc.py`, `coco.py`, `captions.py`).",
              "- sizes: " + "; ".join(f"{k} {v}" for k, v in settings["sizes"].items()) + ".",
              f"- zero-shot template `{settings['template']}`; DualCoOp contexts `{POSITIVE_CONTEXT}` / "
              f"`{NEGATIVE_CONTEXT}`; linear-probe C swept over {', '.join(f'{c:g}' for c in LINEAR_PROBE_CS)}.",
              f"- run {settings['date']} on {settings['machine']}, {settings['torch_threads']} torch threads, load "
              f"average {settings['load_average']}; seconds: "
              + ", ".join(f"{k} {v}" for k, v in table["seconds"].items()) + ".", ""]
    return "\n".join(lines)
