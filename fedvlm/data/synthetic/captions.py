"""Template captions built from a rendered scene's labels (visible objects, counts, layout).

Every caption is generated from what is visible: an object noun appears only if that object type
is in the scene's labels, a count word ("two", "several", "many") always matches the number of
visible instances (see ``COUNT_WORDS``), and a scene name, when mentioned, is the scene's class.
``scene_mention`` is the probability that a caption names the scene class: a knob that sets how
directly image-caption pretraining teaches the scene names that zero-shot prompts use.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from fedvlm.data.synthetic.world import WORLD, World

# count word -> inclusive range of instance counts it may describe
COUNT_WORDS: dict[str, tuple[int, int]] = {
    "a": (1, 1), "an": (1, 1), "one": (1, 1), "two": (2, 2), "three": (3, 3), "four": (4, 4),
    "a few": (3, 5), "several": (4, 7), "some": (2, 7), "many": (8, 10**6), "lots of": (8, 10**6),
}

ARRANGEMENT_PHRASES: dict[str, tuple[str, ...]] = {
    "parked in rows": ("parked in rows", "lined up in rows"),
    "parked in a row": ("parked in a row", "lined up on the apron"),
    "on the runway": ("on the runway",),
    "along_road": ("along the road", "on the road"),
    "scattered_on_apron": ("on the apron",),
    "moored at the pier": ("moored at the pier", "docked at the pier"),
    "moored along the shore": ("moored along the shore", "docked by the quay"),
    "sailing": ("sailing on the water", "on the water"),
    "densely packed": ("densely packed", "growing close together"),
    "in clusters": ("in clusters", "in small groups"),
    "in a row": ("in a row", "lined up"),
    "along the river": ("along the river", "on the river banks"),
    "around the water": ("around the water", "near the shore"),
    "scattered": ("scattered around", "spread out"),
    "in a cluster": ("in a cluster", "close together"),
    "next to the houses": ("next to the houses",),
    "side by side": ("side by side",),
    "in parcels": ("in neat parcels", "in a patchwork"),
    "in rows": ("in rows", "in parallel rows"),
    "blocks": ("arranged in blocks", "packed in blocks"),
    "grid": ("forming a grid", "crossing each other"),
    "carriageways": ("running in parallel",),
    "across": ("crossing the scene", "running across"),
    "over_river": ("over the river", "across the river"),
    "over_road": ("over the road",),
    "from_shore": ("reaching into the water", "sticking out into the water"),
    "large": ("",),
    "small": ("",),
    "on_land": ("on the shore", "near the water"),
    "cluster_on_land": ("on the quay",),
    "apron_edge": ("along the apron",),
    "edge": ("at the edge",),
}

BACKGROUND_PHRASES: dict[str, tuple[str, ...]] = {
    "grass": ("green grass", "a grassy area"), "meadow": ("tall wild grass", "open grassland"),
    "fairway": ("green lawns", "mown grass"), "forest_floor": ("dark green vegetation",),
    "soil": ("bare brown soil", "ploughed soil"), "urban": ("a built-up area", "grey pavement"),
    "concrete": ("grey concrete", "paved ground"), "asphalt": ("dark asphalt", "a paved lot"),
    "airport": ("grass and a concrete apron",), "shore_concrete": ("the sea and a concrete quay",),
    "shore_sand": ("the sea and yellow sand", "sand and blue water"), "dunes": ("yellow sand dunes", "bare sand"),
}


@dataclass(frozen=True)
class ObjectGroup:
    """The visible instances of one object type, summarised for captions."""

    kind: str
    count: int
    arrangement: str  # most common arrangement among the visible instances
    centre: tuple[float, float]  # mean centre of the instances, in [0, 1] image coordinates
    pixels: int  # visible pixels, for ordering by salience


def count_phrase(rng: np.random.Generator, noun: tuple[str, str], count: int) -> str:
    """'a car', 'two cars', 'several cars', 'many cars'... consistent with ``COUNT_WORDS``."""
    singular, plural = noun
    if count == 1:
        article = "an" if singular[0] in "aeiou" else "a"
        return f"{rng.choice([article, article, 'one'])} {singular}"
    words = [w for w, (low, high) in COUNT_WORDS.items() if low <= count <= high and w not in ("a", "an", "one")]
    exact = [w for w in words if COUNT_WORDS[w][0] == COUNT_WORDS[w][1]]
    word = exact[0] if exact and rng.uniform() < 0.6 else str(rng.choice(words))
    return f"{word} {plural}"


def location_phrase(centre: tuple[float, float]) -> str:
    x, y = centre
    vertical = "top" if y < 0.36 else "bottom" if y > 0.64 else ""
    horizontal = "left" if x < 0.36 else "right" if x > 0.64 else ""
    if vertical and horizontal:
        return f"in the {'upper' if vertical == 'top' else 'lower'} {horizontal} part"
    if vertical:
        return f"at the {vertical}"
    if horizontal:
        return f"on the {horizontal} side"
    return "in the middle"


def _object_phrase(rng: np.random.Generator, group: ObjectGroup, world: World, with_arrangement: bool) -> str:
    nouns = world.object_type(group.kind).nouns
    noun = nouns[int(rng.integers(len(nouns)))] if rng.uniform() < 0.3 else nouns[0]
    phrase = count_phrase(rng, noun, group.count)
    if with_arrangement:
        options = ARRANGEMENT_PHRASES.get(group.arrangement, ("",))
        arrangement = str(rng.choice(options))
        if arrangement:
            phrase = f"{phrase} {arrangement}"
    return phrase


def _join(parts: list[str]) -> str:
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def make_captions(rng: np.random.Generator, scene_class: str, background: str, groups: list[ObjectGroup],
                  count: int = 5, scene_mention: float = 0.6, world: World = WORLD) -> list[str]:
    """``count`` captions for a scene; ``groups`` are its visible object types, most salient first."""
    captions = []
    article = "an" if scene_class[0] in "aeiou" else "a"
    scene = f"{article} {scene_class}"
    ground = str(rng.choice(BACKGROUND_PHRASES[background]))
    for i in range(count):
        top = groups[: int(rng.integers(1, 4))] if groups else []
        mention = rng.uniform() < scene_mention
        if not top:
            if mention:
                text = str(rng.choice([f"{scene} covered with {ground}", f"an aerial image of {scene}",
                                       f"{scene} with nothing but {ground}"]))
            else:
                text = str(rng.choice([f"a large area of {ground}", f"an aerial photo of {ground}",
                                       f"nothing but {ground} in this image"]))
            captions.append(text + ".")
            continue
        first = top[0]
        lead = _object_phrase(rng, first, world, with_arrangement=True)
        rest = [_object_phrase(rng, g, world, with_arrangement=False) for g in top[1:]]
        where = location_phrase(first.centre)
        template = int(rng.integers(5))
        if mention:
            text = [
                f"an aerial image of {scene} with {_join([lead] + rest)}",
                f"{lead} in {scene}" + (f" with {_join(rest)}" if rest else ""),
                f"{scene} seen from above, with {lead} {where}",
                f"a satellite photo of {scene}: {_join([lead] + rest)}",
                f"this {scene_class} has {_join([lead] + rest)} on {ground}",
            ][template]
        else:
            text = [
                f"{lead}" + (f" next to {_join(rest)}" if rest else f" on {ground}"),
                f"{lead} {where} of the image",
                f"there are {_join([lead] + rest)} in this remote sensing image",
                f"an aerial photo showing {_join([lead] + rest)}",
                f"we can see {_join([lead] + rest)} on {ground}",
            ][template]
        captions.append(" ".join(text.split()) + ".")
    return captions
