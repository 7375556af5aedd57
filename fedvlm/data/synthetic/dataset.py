"""``generate_dataset``: write one synthetic sample set in every requested real on-disk layout.

Every layout holds the same images (sample ids 0..N-1), so labels of one task can be checked
against another and the RGB and multispectral versions of a scene can be paired. ``samples.csv``
at the top is the cross-layout index: for each sample id its class, style, seed, objects,
land-cover labels and its file in each layout.
"""

from __future__ import annotations

import csv
import json
import shutil
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from fedvlm.data.formats.captions import CaptionWriter
from fedvlm.data.formats.cifar import CIFARWriter
from fedvlm.data.formats.coco import COCOWriter
from fedvlm.data.formats.coop import CoOpSplitWriter
from fedvlm.data.formats.domains import DOMAINNET_DOMAINS, OFFICE_CALTECH_DOMAINS, DomainFolderWriter
from fedvlm.data.formats.imagenet import ImageNetWriter
from fedvlm.data.formats.imagefolder import ImageFolderWriter
from fedvlm.data.formats.multispectral import BigEarthNetWriter, EuroSATWriter
from fedvlm.data.formats.voc import VOCWriter
from fedvlm.data.synthetic.generate import generate
from fedvlm.data.synthetic.styles import sample_styles
from fedvlm.data.synthetic.world import WORLD
from fedvlm.sections import SEED_MAX
from fedvlm.errors import ConfigError, UserError
from fedvlm.files import require_writable_folder

COOP_LAYOUTS = ("oxford_pets", "food101", "stanford_cars", "sun397", "ucf101", "imagenet")
DOMAIN_LAYOUTS = ("domainnet", "office_caltech10", "synthetic_domains")
LAYOUTS = ("imagefolder", "voc2007", "coco", "rsicd", "rsitmd", "eurosat", "bigearthnet", *COOP_LAYOUTS,
           "cifar10", "cifar100", *DOMAIN_LAYOUTS)
LAYOUT_GROUPS = {"captions": ("rsicd", "rsitmd"), "multispectral": ("eurosat", "bigearthnet"), "coop": COOP_LAYOUTS,
                 "cifar": ("cifar10", "cifar100"), "domains": DOMAIN_LAYOUTS,
                 "benchmarks": (*COOP_LAYOUTS, "cifar10", "cifar100", *DOMAIN_LAYOUTS)}
DEFAULT_LAYOUTS = ("imagefolder", "voc2007", "coco", "captions", "multispectral")
# What each layout occupies under out_dir (removed first when overwrite=True).
OUTPUTS = {"imagefolder": ("synthetic_scenes",), "voc2007": ("VOCdevkit",), "coco": ("coco",), "rsicd": ("RSICD",),
           "rsitmd": ("RSITMD",), "eurosat": ("EuroSAT_MS", "EuroSAT_RGB"), "bigearthnet": ("BigEarthNet-v1.0",),
           "oxford_pets": ("oxford_pets",), "food101": ("food-101",), "stanford_cars": ("stanford_cars",),
           "sun397": ("sun397",), "ucf101": ("ucf101",),
           "imagenet": ("imagenet", *ImageNetWriter.VARIANTS), "cifar10": ("cifar-10-batches-py",),
           "cifar100": ("cifar-100-python",), "domainnet": ("domainnet",), "office_caltech10": ("office_caltech_10",),
           "synthetic_domains": ("synthetic_domains",)}
# The split each benchmark layout files a sample under (CoOp's train/val/test; the releases' train/test).
BENCHMARK_SPLITS = {**{name: {"train": 0.5, "val": 0.2, "test": 0.3} for name in COOP_LAYOUTS[:-1]},
                    "imagenet": {"train": 0.7, "test": 0.3}, "cifar10": {"train": 5 / 6, "test": 1 / 6},
                    "cifar100": {"train": 5 / 6, "test": 1 / 6}, "domainnet": {"train": 0.7, "test": 0.3},
                    "office_caltech10": {"train": 1.0}, "synthetic_domains": {"train": 1.0}}


def _folder(name: str) -> str:
    return name.replace(" ", "_")


def _title(name: str) -> str:
    return "_".join(word.capitalize() for word in name.split())


def benchmark_writers(out: Path, chosen: list[str], num_styles: int) -> dict:
    """Writers of the prompt-learning benchmarks' layouts, each naming its files as the real
    release does (Pets' flat ``Breed_<n>.jpg``, SUN397's ``<letter>/<class>/``, the cars' two
    image folders, UCF101's ``v_<Class>_g<NN>_c01.jpg`` middle frames). Client styles are the
    multi-domain layouts' domains."""
    names = WORLD.scene_names
    places = {
        "oxford_pets": ("oxford_pets/images", "oxford_pets/split_zhou_OxfordPets.json",
                        lambda c, i, s: f"{_title(c)}_{i}.jpg"),
        "food101": ("food-101/images", "food-101/split_zhou_Food101.json", lambda c, i, s: f"{_folder(c)}/{i}.jpg"),
        "stanford_cars": ("stanford_cars", "stanford_cars/split_zhou_StanfordCars.json",
                          lambda c, i, s: f"cars_{'test' if s == 'test' else 'train'}/{i:05d}.jpg"),
        "sun397": ("sun397/SUN397", "sun397/split_zhou_SUN397.json",
                   lambda c, i, s: f"{c[0]}/{_folder(c)}/sun_{i:06d}.jpg"),
        "ucf101": ("ucf101/UCF-101-midframes", "ucf101/split_zhou_UCF101.json",
                   lambda c, i, s: f"{_title(c)}/v_{_title(c).replace('_', '')}_g{i % 25 + 1:02d}"
                                   f"_c{i // 25 % 7 + 1:02d}.jpg"),
    }
    writers = {name: CoOpSplitWriter(out / image_dir, out / split_file, place, names)
               for name, (image_dir, split_file, place) in places.items() if name in chosen}
    styles = [f"style_{k}" for k in range(max(num_styles, 1))]
    made = {
        "imagenet": lambda: ImageNetWriter(out, names),
        "cifar10": lambda: CIFARWriter(out / "cifar-10-batches-py", "cifar10", names),
        "cifar100": lambda: CIFARWriter(out / "cifar-100-python", "cifar100", names),
        "domainnet": lambda: DomainFolderWriter(out / "domainnet", list(DOMAINNET_DOMAINS[:len(styles)]), names,
                                                lists=True, suffix=".jpg"),
        "office_caltech10": lambda: DomainFolderWriter(out / "office_caltech_10", list(OFFICE_CALTECH_DOMAINS), names,
                                                       suffix=".jpg"),
        "synthetic_domains": lambda: DomainFolderWriter(out / "synthetic_domains", styles, names),
    }
    writers.update({name: make() for name, make in made.items() if name in chosen})
    if "oxford_pets" in chosen:  # the release's annotation folder (CoOp reads the split file instead)
        (out / "oxford_pets" / "annotations").mkdir(parents=True, exist_ok=True)
    return writers


def expand_layouts(layouts) -> list[str]:
    """Layout names with the groups "captions" and "multispectral" expanded; unknown names -> ConfigError."""
    if isinstance(layouts, str):
        layouts = [layouts]
    expanded: list[str] = []
    for name in layouts:
        for layout in LAYOUT_GROUPS.get(name, (name,)):
            if layout not in LAYOUTS:
                accepted = ", ".join(LAYOUTS + tuple(LAYOUT_GROUPS))
                raise ConfigError(f"layouts: unknown layout {name!r}; expected some of: {accepted}")
            if layout not in expanded:
                expanded.append(layout)
    return expanded


def _splits(num_images: int, seed: int, fractions: dict[str, float]) -> list[str]:
    """A split name per sample id: a seeded permutation cut at the cumulative fractions."""
    order = np.random.default_rng([seed, 0x5B117]).permutation(num_images)
    names = list(fractions)
    bounds = np.round(np.cumsum([fractions[n] for n in names]) * num_images).astype(int)
    split = [""] * num_images
    start = 0
    for name, stop in zip(names, bounds):
        for i in order[start:stop]:
            split[i] = name
        start = stop
    return split


def _class_splits(num_images: int, num_classes: int, seed: int, fractions: dict[str, float]) -> list[str]:
    """A split name per sample id, cut per class (sample i has class ``i % num_classes``): every
    class with at least as many images as splits is in every split, as in the real releases
    (ImageNet's val holds every class; a class missing from one split would renumber it)."""
    rng = np.random.default_rng([seed, 0x5B118])
    names = list(fractions)
    split = [""] * num_images
    for c in range(num_classes):
        members = rng.permutation(np.arange(c, num_images, num_classes))
        sizes = np.floor(np.asarray([fractions[n] for n in names]) * len(members)).astype(int)
        sizes[0] += len(members) - sizes.sum()
        for part in range(1, len(names)):  # a part left empty takes one image from the largest
            if sizes[part] == 0 and sizes.max() > 1:
                sizes[sizes.argmax()] -= 1
                sizes[part] += 1
        for name, chunk in zip(names, np.split(members, np.cumsum(sizes)[:-1])):
            for i in chunk:
                split[i] = name
    return split


def generate_dataset(out_dir: str | Path, layouts=DEFAULT_LAYOUTS, num_images: int = 1000, seed: int = 0,
                     num_styles: int = 4, size: int = 64, style_strength: float = 1.0,
                     scene_mention: float = 0.6, overwrite: bool = False) -> dict:
    """Generate ``num_images`` scenes with ``seed`` and write them in ``layouts`` under ``out_dir``.

    Layouts: imagefolder, voc2007, coco, rsicd, rsitmd, eurosat, bigearthnet, the prompt-learning
    benchmarks (oxford_pets, food101, stanford_cars, sun397, ucf101, imagenet with its four shifted
    sets, cifar10, cifar100, domainnet, office_caltech10, synthetic_domains), or the groups
    "captions" (rsicd + rsitmd), "multispectral" (eurosat + bigearthnet), "coop", "cifar",
    "domains" and "benchmarks" (all the prompt-learning ones). ``num_styles`` client
    styles (0: none) are drawn from ``seed``; each image gets one at random (its ``style_id`` is in
    the metadata). Returns the summary also written to ``out_dir/summary.json``: counts, paths of
    each layout, the styles, and the throughput measured.
    """
    if num_images < 1:
        raise ConfigError(f"num_images must be at least 1, got {num_images}")
    if not 16 <= size <= 1024:
        raise ConfigError(f"size must be between 16 and 1024 pixels, got {size}")
    if not 0 <= seed <= SEED_MAX:
        raise ConfigError(f"seed must be between 0 and {SEED_MAX}, got {seed}")
    if num_styles < 0:
        raise ConfigError(f"num_styles must be 0 (no styles) or more, got {num_styles}")
    chosen = expand_layouts(layouts)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise UserError(f"output path {out} exists and is not a folder")
    require_writable_folder(out, "output folder")
    existing = [out / name for layout in chosen for name in OUTPUTS[layout] if (out / name).exists()]
    if existing and not overwrite:
        raise UserError(f"{existing[0]} already exists; pass overwrite=True (--overwrite) or choose another out_dir")
    for path in existing:
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    out.mkdir(parents=True, exist_ok=True)

    styles = sample_styles(num_styles, seed, style_strength)
    object_names = WORLD.object_names
    display = {o.name: o.display_name for o in WORLD.object_types}
    writers = {
        "imagefolder": ImageFolderWriter(out / "synthetic_scenes") if "imagefolder" in chosen else None,
        "voc2007": VOCWriter(out, object_names) if "voc2007" in chosen else None,
        "coco": COCOWriter(out / "coco", [(display[o.name], o.supercategory) for o in WORLD.object_types])
        if "coco" in chosen else None,
        "rsicd": CaptionWriter(out / "RSICD", "rsicd") if "rsicd" in chosen else None,
        "rsitmd": CaptionWriter(out / "RSITMD", "rsitmd") if "rsitmd" in chosen else None,
        "eurosat": EuroSATWriter(out) if "eurosat" in chosen else None,
        "bigearthnet": BigEarthNetWriter(out) if "bigearthnet" in chosen else None,
        **benchmark_writers(out, chosen, num_styles),
    }
    benchmark_split = {name: _class_splits(num_images, len(WORLD.scene_names), seed + 3 + i, fractions)
                       for i, (name, fractions) in enumerate(BENCHMARK_SPLITS.items())}
    voc_split = _splits(num_images, seed, {"train": 0.25, "val": 0.25, "test": 0.5})
    coco_split = _splits(num_images, seed + 1, {"train2014": 2 / 3, "val2014": 1 / 3})
    caption_split = _splits(num_images, seed + 2, {"train": 0.8, "val": 0.1, "test": 0.1})

    rows = []
    started = time.perf_counter()
    render_seconds = 0.0
    stream = generate(num_images, seed, styles, size, scene_mention=scene_mention)
    for sample_id in range(num_images):
        tick = time.perf_counter()
        scene = next(stream)
        render_seconds += time.perf_counter() - tick
        row = {"sample_id": sample_id, "scene_class": scene.scene_class, "label": scene.label,
               "style_id": scene.style_id, "seed": scene.seed, "objects": ";".join(scene.object_types),
               "land_cover": ";".join(scene.land_cover())}
        for layout, writer in writers.items():
            if writer is None:
                continue
            if layout == "voc2007":
                row[layout] = writer.add(sample_id, scene, voc_split[sample_id])
            elif layout == "coco":
                row[layout] = writer.add(sample_id, scene, coco_split[sample_id], display)
            elif layout in ("rsicd", "rsitmd"):
                row[layout] = writer.add(sample_id, scene, caption_split[sample_id])
            elif layout in BENCHMARK_SPLITS:
                row[layout] = writer.add(sample_id, scene, benchmark_split[layout][sample_id])
            else:
                row[layout] = writer.add(sample_id, scene)
        rows.append(row)
    for writer in writers.values():
        if writer is not None:
            writer.close()
    seconds = time.perf_counter() - started

    with open(out / "samples.csv", "w", newline="") as handle:
        columns = ["sample_id", "scene_class", "label", "style_id", "seed", "objects", "land_cover", *chosen]
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    summary = {
        "num_images": num_images, "seed": seed, "size": size, "num_styles": num_styles,
        "style_strength": style_strength, "scene_mention": scene_mention,
        "layouts": {layout: [str(out / name) for name in OUTPUTS[layout]] for layout in chosen},
        "scene_classes": WORLD.scene_names, "object_types": object_names,
        "class_counts": {name: sum(r["scene_class"] == name for r in rows) for name in WORLD.scene_names},
        "styles": [asdict(s) for s in styles],
        "seconds": round(seconds, 2),
        "images_per_minute_rendered": round(60 * num_images / max(render_seconds, 1e-9)),
        "images_per_minute_written": round(60 * num_images / max(seconds, 1e-9)),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
