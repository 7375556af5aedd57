"""Generating samples of the synthetic world: a deterministic stream of rendered scenes."""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from fedvlm.data.synthetic.layout import sample_scene
from fedvlm.data.synthetic.regions import region_labels
from fedvlm.data.synthetic.render import RenderedScene, render
from fedvlm.data.synthetic.styles import ClientStyle
from fedvlm.data.synthetic.world import WORLD, World


def generate(num_images: int, seed: int = 0, styles: ClientStyle | Sequence[ClientStyle] | None = None,
             size: int = 64, start: int = 0, scene_mention: float = 0.6,
             world: World = WORLD) -> Iterator[RenderedScene]:
    """Yield ``num_images`` rendered scenes, samples ``start`` .. ``start + num_images - 1`` of ``seed``.

    Sample i has scene class ``i % num_classes`` (balanced classes) and its own random stream
    ``default_rng([seed, i])``, so any slice can be regenerated alone and the same (seed, i, size,
    styles) always gives identical bytes. With several styles, each sample draws one at random
    (``RenderedScene.style_id`` says which).
    """
    if isinstance(styles, ClientStyle) or styles is None:
        styles = [styles or ClientStyle.identity()]
    styles = list(styles)
    names = world.scene_names
    for index in range(start, start + num_images):
        rng = np.random.default_rng([seed, index])
        style = styles[int(rng.integers(len(styles)))] if len(styles) > 1 else styles[0]
        scene = sample_scene(rng, names[index % len(names)], world)
        yield render(scene, style, size, scene_mention=scene_mention, world=world)


def _render_chunk(args: tuple) -> tuple:
    num_images, seed, styles, size, start, scene_mention, region_grid = args
    rgbs, labels, captions, style_ids, regions = [], [], [], [], []
    for scene in generate(num_images, seed, styles, size, start, scene_mention):
        rgbs.append(scene.rgb)
        labels.append(scene.label)
        captions.append(scene.captions)
        style_ids.append(scene.style_id)
        if region_grid:
            regions.append(region_labels(scene, region_grid).astype(np.int8))
    arrays = (np.stack(rgbs), np.asarray(labels, dtype=np.int64), captions, np.asarray(style_ids, dtype=np.int64))
    return arrays + (np.stack(regions),) if region_grid else arrays


def generate_arrays(num_images: int, seed: int = 0, styles: ClientStyle | Sequence[ClientStyle] | None = None,
                    size: int = 64, start: int = 0, scene_mention: float = 0.6,
                    workers: int = 1) -> tuple[np.ndarray, np.ndarray, list[list[str]], np.ndarray]:
    """The images, scene labels, captions and style ids of ``generate(...)`` as arrays.

    Returns (rgb [N, H, W, 3] uint8, labels [N] int64, captions N x 5 strings, style_ids [N]).
    ``workers`` > 1 renders chunks in that many spawned processes; the result is identical to
    ``workers=1``. Spawned workers re-import the main module, so a script calling this with workers
    must do so under ``if __name__ == "__main__":``.
    """
    return _render_arrays(num_images, seed, styles, size, start, scene_mention, workers, region_grid=0)


def generate_region_arrays(num_images: int, grid: int, seed: int = 0,
                           styles: ClientStyle | Sequence[ClientStyle] | None = None, size: int = 64,
                           start: int = 0, scene_mention: float = 0.6, workers: int = 1) -> tuple:
    """``generate_arrays(...)`` plus each image's patch region labels: a fifth array [N, grid, grid]
    int8 indexing ``regions.REGION_NAMES`` (see ``regions.region_labels``)."""
    return _render_arrays(num_images, seed, styles, size, start, scene_mention, workers, region_grid=grid)


def _render_arrays(num_images, seed, styles, size, start, scene_mention, workers, region_grid) -> tuple:
    if workers <= 1 or num_images < 64:
        return _render_chunk((num_images, seed, styles, size, start, scene_mention, region_grid))
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    chunk = -(-num_images // (workers * 4))
    jobs = [(min(chunk, num_images - offset), seed, styles, size, start + offset, scene_mention, region_grid)
            for offset in range(0, num_images, chunk)]
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        parts = list(pool.map(_render_chunk, jobs))
    arrays = (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
              [c for p in parts for c in p[2]], np.concatenate([p[3] for p in parts]))
    return arrays + (np.concatenate([p[4] for p in parts]),) if region_grid else arrays
