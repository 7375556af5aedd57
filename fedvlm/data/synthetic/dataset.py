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
from fedvlm.data.formats.coco import COCOWriter
from fedvlm.data.formats.imagefolder import ImageFolderWriter
from fedvlm.data.formats.multispectral import BigEarthNetWriter, EuroSATWriter
from fedvlm.data.formats.voc import VOCWriter
from fedvlm.data.synthetic.generate import generate
from fedvlm.data.synthetic.styles import sample_styles
from fedvlm.data.synthetic.world import WORLD
from fedvlm.sections import SEED_MAX
from fedvlm.errors import ConfigError, UserError
from fedvlm.files import require_writable_folder

LAYOUTS = ("imagefolder", "voc2007", "coco", "rsicd", "rsitmd", "eurosat", "bigearthnet")
LAYOUT_GROUPS = {"captions": ("rsicd", "rsitmd"), "multispectral": ("eurosat", "bigearthnet")}
DEFAULT_LAYOUTS = ("imagefolder", "voc2007", "coco", "captions", "multispectral")
# What each layout occupies under out_dir (removed first when overwrite=True).
OUTPUTS = {"imagefolder": ("synthetic_scenes",), "voc2007": ("VOCdevkit",), "coco": ("coco",), "rsicd": ("RSICD",),
           "rsitmd": ("RSITMD",), "eurosat": ("EuroSAT_MS", "EuroSAT_RGB"), "bigearthnet": ("BigEarthNet-v1.0",)}


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


def generate_dataset(out_dir: str | Path, layouts=DEFAULT_LAYOUTS, num_images: int = 1000, seed: int = 0,
                     num_styles: int = 4, size: int = 64, style_strength: float = 1.0,
                     scene_mention: float = 0.6, overwrite: bool = False) -> dict:
    """Generate ``num_images`` scenes with ``seed`` and write them in ``layouts`` under ``out_dir``.

    Layouts: imagefolder, voc2007, coco, rsicd, rsitmd, eurosat, bigearthnet, or the groups
    "captions" (rsicd + rsitmd) and "multispectral" (eurosat + bigearthnet). ``num_styles`` client
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
    }
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
