"""What lies under each image patch: the region labels of the synthetic world.

A real CLIP's patch tokens carry the meaning of the region they cover (the patch over an airplane
is closest to the text "airplane"); patch-level methods (FedOTP, FedRSCLIP's CMFAC, OTDPP, FedMPT's
condition-guided OT, DualCoOp's region aggregation) rely on that. The world knows what every pixel
shows (``RenderedScene.instance_map`` and ``material_map``), so every patch of a ``G x G`` grid gets
one *region label*: the thing covering most of its pixels, where a pixel counts for the object type
of the instance drawn on it, or for its material when no object covers it.

The region vocabulary is the 19 object types followed by the 14 materials (``REGION_NAMES``; 33
entries). Its text (``region_texts``) is what the tiny CLIP's pretraining aligns patches with
(``fedvlm.backbone.pretrain_tiny``) and what ``fedvlm probe-world`` scores per-patch zero-shot
accuracy against.
"""

from __future__ import annotations

import numpy as np

from fedvlm.data.synthetic.render import RenderedScene
from fedvlm.data.synthetic.world import MATERIALS, OBJECT_INDEX, OBJECT_TYPES

REGION_NAMES: tuple[str, ...] = tuple(o.name for o in OBJECT_TYPES) + tuple(m.name for m in MATERIALS)
NUM_OBJECT_REGIONS = len(OBJECT_TYPES)
REGION_TEMPLATE = "an aerial photo of {}."


def region_texts(template: str = REGION_TEMPLATE) -> list[str]:
    """One prompt per region label, named the way captions name them ("storage tank", "tree canopy")."""
    nouns = [o.display_name for o in OBJECT_TYPES] + [m.name for m in MATERIALS]
    return [template.format(noun) for noun in nouns]


def region_pixel_labels(scene: RenderedScene) -> np.ndarray:
    """[H, W] int64: each pixel's region label (object type of the instance on it, else its material)."""
    kinds = np.array([-1] + [OBJECT_INDEX[k] for k in scene.instance_kinds], dtype=np.int64)
    object_of_pixel = kinds[scene.instance_map.astype(np.int64)]
    return np.where(object_of_pixel >= 0, object_of_pixel,
                    NUM_OBJECT_REGIONS + scene.material_map.astype(np.int64))


def region_labels(scene: RenderedScene, grid: int) -> np.ndarray:
    """[grid, grid] int64: the region label covering most pixels of each patch (ties: lowest label).

    The image side must be a multiple of ``grid`` (a ViT's patch grid: 64 px with patch 8 -> 8).
    """
    pixels = region_pixel_labels(scene)
    size = pixels.shape[0]
    if size % grid or pixels.shape[1] != size:
        raise ValueError(f"a {pixels.shape} image does not split into a {grid} x {grid} patch grid")
    step = size // grid
    cells = pixels.reshape(grid, step, grid, step).transpose(0, 2, 1, 3).reshape(grid * grid, step * step)
    counts = np.zeros((grid * grid, len(REGION_NAMES)), dtype=np.int64)
    np.add.at(counts, (np.repeat(np.arange(grid * grid), step * step), cells.ravel()), 1)
    return counts.argmax(axis=1).reshape(grid, grid)
