"""Rendering a laid-out scene into pixels and labels.

``render(scene, style, size)`` paints the scene's shapes into a colour image, a per-pixel material
map and a per-pixel instance map in one pass (PIL's C rasteriser), adds material-dependent texture
and cast shadows, renders the Sentinel-2-like bands from the material map, applies the client
style to the colour image, and derives every label from what is actually visible: object instances
with fewer than ``MIN_VISIBLE_PIXELS`` visible pixels are dropped, boxes are tight around the
visible pixels, and the captions are written from the visible objects only.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw
from scipy import ndimage

from fedvlm.data.synthetic.captions import ObjectGroup, make_captions
from fedvlm.data.synthetic.layout import Scene
from fedvlm.data.synthetic.shapes import draw_shape
from fedvlm.data.synthetic.styles import ClientStyle
from fedvlm.data.synthetic.world import (
    LAND_COVER_LABELS,
    MATERIAL_SPECTRA,
    MATERIAL_TEXTURE,
    MATERIALS,
    REFERENCE_SIZE,
    WORLD,
    World,
)

MIN_VISIBLE_PIXELS = 3  # at 64 px; scaled with the image area
SHADOW_DARKENING = 0.55
_MATERIAL_RGB = np.array([m.rgb for m in MATERIALS], dtype=np.float32)
_MATERIAL_LUMA = _MATERIAL_RGB @ np.array([0.299, 0.587, 0.114], dtype=np.float32)


@dataclass(frozen=True)
class ObjectInstance:
    """One visible object. ``bbox`` is (xmin, ymin, xmax, ymax) in pixels, max exclusive."""

    kind: str
    instance_id: int  # its value in RenderedScene.instance_map
    bbox: tuple[int, int, int, int]
    visible_pixels: int
    drawn_pixels: float  # area of the unoccluded body, for the occlusion ("difficult") flag
    arrangement: str

    @property
    def occluded_fraction(self) -> float:
        return float(max(0.0, 1.0 - self.visible_pixels / max(self.drawn_pixels, 1.0)))

    @property
    def difficult(self) -> bool:
        """More than 60% hidden: VOC's "difficult" flag."""
        return self.occluded_fraction > 0.6

    def truncated(self, size: int) -> bool:
        """Touches the image border (VOC's "truncated" flag)."""
        x0, y0, x1, y1 = self.bbox
        return x0 == 0 or y0 == 0 or x1 == size or y1 == size


@dataclass
class RenderedScene:
    """A rendered sample and all its labels.

    rgb [H, W, 3] uint8 (styled); bands [H, W, 13] float32 reflectance (Sentinel-2 band order,
    unstyled); material_map and instance_map [H, W] (instance i + 1 is ``objects_drawn[i]``, 0 is
    background); objects: the visible instances.
    """

    rgb: np.ndarray
    bands: np.ndarray
    material_map: np.ndarray
    instance_map: np.ndarray
    scene_class: str
    label: int
    objects: list[ObjectInstance]
    instance_kinds: list[str]  # kind of every drawn instance, visible or not (index = id - 1)
    captions: list[str]
    style_id: int
    seed: int

    @property
    def object_types(self) -> list[str]:
        """Names of the object types visible in the scene, in catalogue order (multi-label target)."""
        present = {o.kind for o in self.objects}
        return [name for name in WORLD.object_names if name in present]

    def land_cover(self, min_fraction: float = 0.05) -> list[str]:
        """BigEarthNet-style land-cover labels covering at least ``min_fraction`` of the pixels."""
        counts = np.bincount(self.material_map.ravel(), minlength=len(MATERIALS)) / self.material_map.size
        fractions: dict[str, float] = {}
        for material, fraction in zip(MATERIALS, counts):
            fractions[material.land_cover] = fractions.get(material.land_cover, 0.0) + float(fraction)
        return [name for name in LAND_COVER_LABELS if fractions.get(name, 0.0) >= min_fraction]


def _texture(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Fine [S, S] and coarse [S, S] zero-mean unit noise fields."""
    fine = rng.standard_normal((size, size), dtype=np.float32)
    cells = max(2, size // 8)
    coarse_small = rng.standard_normal((cells, cells), dtype=np.float32)
    coarse = np.asarray(Image.fromarray(coarse_small, mode="F").resize((size, size), Image.BICUBIC))
    return fine, coarse


def render(scene: Scene, style: ClientStyle | None = None, size: int = 64, scene_mention: float = 0.6,
           world: World = WORLD) -> RenderedScene:
    """Render ``scene`` at ``size`` x ``size`` pixels under ``style`` (identity when None)."""
    style = style or ClientStyle.identity()
    scale = size / REFERENCE_SIZE
    rng = np.random.default_rng([scene.seed, size])
    colour = Image.new("RGB", (size, size))
    material = Image.new("L", (size, size))
    instance = Image.new("L", (size, size))
    shade = Image.new("L", (size, size))
    draw_colour, draw_material = ImageDraw.Draw(colour), ImageDraw.Draw(material)
    draw_instance, draw_shade = ImageDraw.Draw(instance), ImageDraw.Draw(shade)

    for shape in scene.background:
        draw_shape([(draw_colour, shape.rgb), (draw_material, shape.material)], shape, scale)
    objects = scene.objects[:255]  # instance ids are 8-bit
    for instance_id, placed in enumerate(objects, start=1):
        for shape in placed.shapes:
            if shape.shadow > 0:
                draw_shape([(draw_shade, 1)], shape, scale, offset=shape.shadow * scale * 0.8)
            draw_shape([(draw_colour, shape.rgb), (draw_material, shape.material), (draw_instance, instance_id),
                        (draw_shade, 0)], shape, scale)

    material_map = np.asarray(material)
    instance_map = np.asarray(instance)
    shaded = np.asarray(shade).astype(bool)
    fine, coarse = _texture(rng, size)
    amplitude = MATERIAL_TEXTURE[material_map]  # [S, S, 2]
    brightness = 1.0 + amplitude[..., 0] * fine + amplitude[..., 1] * coarse
    brightness *= np.where(shaded, SHADOW_DARKENING, 1.0).astype(np.float32)
    brightness *= np.float32(np.exp(rng.normal(0, 0.06)))  # scene illumination
    painted = np.asarray(colour, dtype=np.float32)
    rgb = np.clip(painted * brightness[..., None] + 0.5, 0, 255).astype(np.uint8)

    # Bands: the material's spectrum, scaled like the painted colour is relative to the material's
    # own colour (a red car is darker than a white one in every band), with the same texture.
    luma = painted @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    relative = np.clip(luma / _MATERIAL_LUMA[material_map], 0.3, 3.0)
    bands = MATERIAL_SPECTRA[material_map] * (relative * brightness)[..., None]
    bands += rng.normal(0, 0.004, bands.shape).astype(np.float32)
    bands = np.clip(bands, 0.0, 1.0).astype(np.float32)

    rgb = style.apply(rgb, noise_seed=scene.seed)

    visible = np.bincount(instance_map.ravel(), minlength=len(objects) + 1)
    slices = ndimage.find_objects(instance_map, max_label=len(objects))
    min_pixels = max(1, round(MIN_VISIBLE_PIXELS * scale * scale))
    instances: list[ObjectInstance] = []
    for instance_id, (placed, box) in enumerate(zip(objects, slices), start=1):
        if box is None or visible[instance_id] < min_pixels:
            continue
        ys, xs = box
        instances.append(ObjectInstance(placed.kind, instance_id, (xs.start, ys.start, xs.stop, ys.stop), int(visible[instance_id]),
                                        placed.area() * scale * scale, placed.arrangement))

    groups = _groups(instances, size)
    captions = make_captions(rng, scene.scene_class, scene.background_recipe, groups, scene_mention=scene_mention,
                             world=world)
    return RenderedScene(rgb=rgb, bands=bands, material_map=material_map, instance_map=instance_map,
                         scene_class=scene.scene_class, label=world.scene_names.index(scene.scene_class),
                         objects=instances, instance_kinds=[o.kind for o in objects], captions=captions,
                         style_id=style.style_id, seed=scene.seed)


def _groups(instances: list[ObjectInstance], size: int) -> list[ObjectGroup]:
    by_kind: dict[str, list[ObjectInstance]] = {}
    for inst in instances:
        by_kind.setdefault(inst.kind, []).append(inst)
    groups = []
    for kind, members in by_kind.items():
        centres = np.array([[(o.bbox[0] + o.bbox[2]) / 2, (o.bbox[1] + o.bbox[3]) / 2] for o in members]) / size
        arrangement = Counter(o.arrangement for o in members).most_common(1)[0][0]
        groups.append(ObjectGroup(kind, len(members), arrangement, tuple(centres.mean(0)),
                                  sum(o.visible_pixels for o in members)))
    return sorted(groups, key=lambda g: -g.pixels)
