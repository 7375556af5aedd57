"""Sampling a scene: a background and placed objects, in reference pixels, from a scene class.

``sample_scene(rng)`` picks a scene class (or takes one), paints the class's background recipe,
then, for each object type in the class's distribution, draws whether it is present and how many
instances, and places them with the arrangement the class names (cars parked in rows, ships moored
at piers, trees along the river...). Placement consults a 64 x 64 reference material map and an
occupancy map so that ships sit on water, cars on asphalt and houses do not overlap. Every scene is
laid out with its "land" at the bottom and finally turned by a random symmetry of the square.

The result, a :class:`Scene`, is pure geometry; ``render.py`` turns it into pixels at any size.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from fedvlm.data.synthetic.shapes import (
    DIHEDRAL,
    Shape,
    airplane_outline,
    blob,
    draw_shape,
    jitter,
    rectangle,
    scaled,
    ship_outline,
)
from fedvlm.data.synthetic.world import MATERIAL_INDEX, REFERENCE_SIZE, WORLD, SceneClass, World

R = REFERENCE_SIZE
M = MATERIAL_INDEX

ROOF_COLOURS = ((168, 82, 62), (140, 70, 56), (120, 110, 104), (92, 92, 98), (196, 190, 182), (150, 120, 90),
                (110, 80, 70), (200, 120, 90))
INDUSTRIAL_ROOFS = ((208, 208, 204), (170, 176, 182), (120, 140, 160), (190, 184, 170), (150, 150, 150))
CAR_COLOURS = ((200, 30, 30), (30, 60, 170), (235, 235, 235), (20, 20, 24), (160, 160, 168), (210, 180, 40),
               (40, 120, 60), (120, 120, 128))
HULL_COLOURS = ((235, 235, 235), (200, 60, 50), (60, 80, 130), (90, 90, 96), (220, 200, 90))
COURT_COLOURS = ((62, 122, 96), (54, 92, 150), (178, 96, 64))
CROP_COLOURS = ((122, 160, 68), (98, 140, 58), (170, 170, 84), (196, 176, 96), (150, 124, 84), (84, 120, 52))
TREE_COLOURS = ((38, 82, 42), (50, 96, 44), (32, 70, 40), (64, 100, 52), (44, 88, 60))


@dataclass
class PlacedObject:
    """One object instance: its type name, the shapes it is drawn with, and how it was arranged."""

    kind: str
    shapes: list[Shape]
    arrangement: str

    def area(self) -> float:
        """Area of the body (first shape), square reference pixels."""
        return self.shapes[0].area()


@dataclass
class Scene:
    """A laid-out scene: class name, background shapes, objects in drawing order, texture seed."""

    scene_class: str
    background: list[Shape]
    objects: list[PlacedObject]
    background_recipe: str
    seed: int  # seeds texture noise and sensor noise when rendering


class _Layout:
    """The state of a scene being laid out: shapes so far plus reference material/occupancy maps."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.background: list[Shape] = []
        self.objects: list[PlacedObject] = []
        self._material = Image.new("L", (R, R), 0)
        self._occupied = Image.new("L", (R, R), 0)
        self._draw_material = ImageDraw.Draw(self._material)
        self._draw_occupied = ImageDraw.Draw(self._occupied)
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None
        self.roads: list[tuple[np.ndarray, float]] = []  # (polyline [N, 2], width)
        self.rivers: list[tuple[np.ndarray, float]] = []
        self.shore_y: float | None = None  # land below this line (canonical frame)
        self.apron: tuple[float, float, float, float] | None = None  # x0, y0, x1, y1
        self.parking_rows: list[float] = []
        self.waters: list[tuple[float, float, float]] = []  # ponds: cx, cy, radius
        self.buildings: list[tuple[float, float]] = []
        self.notes: dict = {}

    # -- reference maps ------------------------------------------------------------------------
    def _paint(self, shape: Shape, occupy: bool) -> None:
        targets = [(self._draw_material, shape.material)]
        if occupy:
            targets.append((self._draw_occupied, 1))
        draw_shape(targets, shape, 1.0)
        self._arrays = None

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if self._arrays is None:
            self._arrays = (np.asarray(self._material), np.asarray(self._occupied))
        return self._arrays

    def add_background(self, shape: Shape) -> None:
        self.background.append(shape)
        self._paint(shape, occupy=False)

    def add_object(self, kind: str, shapes: list[Shape], arrangement: str, occupy: bool = True) -> None:
        self.objects.append(PlacedObject(kind, shapes, arrangement))
        self._paint(shapes[0], occupy)

    def fits(self, cx: float, cy: float, radius: float, materials: tuple[int, ...] | None,
             free: bool = True) -> bool:
        """Whether a square of half-size ``radius`` at (cx, cy) lies on ``materials`` and is free."""
        material, occupied = self.arrays()
        x0, x1 = int(np.floor(cx - radius)), int(np.ceil(cx + radius))
        y0, y1 = int(np.floor(cy - radius)), int(np.ceil(cy + radius))
        x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, R), min(y1, R)
        if x1 <= x0 or y1 <= y0:
            return False
        if free and occupied[y0:y1, x0:x1].any():
            return False
        return materials is None or bool(np.isin(material[y0:y1, x0:x1], materials).all())

    def find_spot(self, radius: float, materials: tuple[int, ...] | None, region=(0.0, 0.0, R, R),
                  free: bool = True, tries: int = 40) -> tuple[float, float] | None:
        """A random point in ``region`` where ``fits`` holds, or None after ``tries`` draws."""
        x0, y0, x1, y1 = region
        low_x, high_x = min(x0 + radius, (x0 + x1) / 2), max(x1 - radius, (x0 + x1) / 2)
        low_y, high_y = min(y0 + radius, (y0 + y1) / 2), max(y1 - radius, (y0 + y1) / 2)
        for _ in range(tries):
            cx = self.rng.uniform(low_x, high_x)
            cy = self.rng.uniform(low_y, high_y)
            if self.fits(cx, cy, radius, materials, free):
                return cx, cy
        return None

    def point_near_line(self, line: tuple[np.ndarray, float], offset: float) -> tuple[float, float, float]:
        """A random point ``offset`` pixels to one side of a polyline, and the line's direction there."""
        polyline, _ = line
        segment = self.rng.integers(len(polyline) - 1)
        a, b = polyline[segment], polyline[segment + 1]
        t = self.rng.uniform()
        point = a + t * (b - a)
        direction = np.arctan2(b[1] - a[1], b[0] - a[0])
        normal = np.array([-np.sin(direction), np.cos(direction)])
        point = point + normal * offset
        return float(point[0]), float(point[1]), float(direction)


# ---------------------------------------------------------------------------------------------
# Background recipes: paint the ground, record regions (shore, apron, parking rows) for placement.
# ---------------------------------------------------------------------------------------------

def _fill(layout: _Layout, material: str, rgb, amount: float = 10) -> None:
    full = np.array([[-2, -2], [R + 2, -2], [R + 2, R + 2], [-2, R + 2]], dtype=float)
    layout.add_background(Shape("polygon", full, jitter(layout.rng, rgb, amount), M[material]))


def _patches(layout: _Layout, material: str, base_rgb, count: int, radius: tuple[float, float], factor=(0.85, 1.15)):
    rng = layout.rng
    for _ in range(count):
        colour = scaled(jitter(rng, base_rgb, 8), rng.uniform(*factor))
        outline = blob(rng, rng.uniform(0, R), rng.uniform(0, R), rng.uniform(*radius), 0.3)
        layout.add_background(Shape("polygon", outline, colour, M[material]))


def _shore(layout: _Layout, land: str, land_rgb, wavy: float) -> None:
    """Water on top, land at the bottom below a (wavy) shoreline."""
    rng = layout.rng
    _fill(layout, "water", (38, 66, 104), 14)
    shore_y = rng.uniform(0.45, 0.65) * R
    xs = np.linspace(-2, R + 2, 9)
    ys = shore_y + rng.normal(0, wavy, xs.size)
    outline = np.concatenate([np.stack([xs, ys], 1), [[R + 2, R + 2], [-2, R + 2]]])
    if land == "sand":  # a lighter wet band and white surf at the waterline
        layout.add_background(Shape("polygon", outline - [0, 1.6], (150, 170, 170), M["water"]))
        layout.add_background(Shape("line", np.stack([xs, ys - 1.2], 1), (225, 230, 230), M["water"], width=0.9))
    layout.add_background(Shape("polygon", outline, jitter(rng, land_rgb, 10), M[land]))
    layout.shore_y = float(ys.max())


def _background(layout: _Layout, recipe: str) -> None:
    rng = layout.rng
    if recipe == "grass":
        _fill(layout, "grass", (96, 132, 64), 14)
        _patches(layout, "grass", (96, 132, 64), rng.integers(2, 6), (6, 14))
    elif recipe == "meadow":
        _fill(layout, "grass", (118, 140, 70), 16)
        _patches(layout, "grass", (140, 150, 80), rng.integers(3, 8), (4, 12), (0.85, 1.2))
        _patches(layout, "soil", (150, 128, 90), rng.integers(0, 4), (1, 3))
    elif recipe == "fairway":
        _fill(layout, "grass", (70, 112, 52), 10)
        for _ in range(rng.integers(1, 3)):  # mown fairways: wide light bands with stripes
            y0 = rng.uniform(10, R - 10)
            ys = y0 + np.cumsum(rng.normal(0, 3, 6))
            line = np.stack([np.linspace(-4, R + 4, 6), ys], 1)
            width = rng.uniform(12, 20)
            layout.add_background(Shape("line", line, jitter(rng, (120, 170, 80), 8), M["grass"], width=width))
            layout.add_background(Shape("line", line, jitter(rng, (134, 184, 88), 6), M["grass"], width=width / 3))
        _patches(layout, "grass", (130, 176, 86), rng.integers(1, 3), (4, 7))  # greens
    elif recipe == "forest_floor":
        _fill(layout, "grass", (60, 84, 44), 10)
    elif recipe == "soil":
        _fill(layout, "soil", (140, 108, 78), 16)
    elif recipe == "urban":
        _fill(layout, "concrete", (150, 148, 142), 12)
    elif recipe == "concrete":
        _fill(layout, "concrete", (172, 170, 164), 12)
        _patches(layout, "concrete", (160, 158, 150), rng.integers(1, 4), (8, 16), (0.9, 1.1))
    elif recipe == "asphalt":
        _fill(layout, "asphalt", (72, 72, 78), 10)
        spacing = rng.uniform(8.0, 10.0)
        y = rng.uniform(5, 8)
        rows = []
        while y < R - 4:
            rows.append(y)
            for x in np.arange(-1.0, R + 1, 3.2):  # stall markings
                stall = np.array([[x, y - 2.6], [x, y + 2.6]])
                layout.add_background(Shape("line", stall, (220, 220, 214), M["paint"], width=0.35))
            y += spacing
        layout.parking_rows = rows
    elif recipe == "airport":
        _fill(layout, "grass", (110, 138, 74), 14)
        apron_top = rng.uniform(40, 46)
        apron = np.array([[-2, apron_top], [R + 2, apron_top], [R + 2, R + 2], [-2, R + 2]], dtype=float)
        layout.add_background(Shape("polygon", apron, jitter(rng, (176, 174, 168), 8), M["concrete"]))
        layout.apron = (0.0, apron_top, float(R), float(R))
    elif recipe == "shore_concrete":
        _shore(layout, "concrete", (168, 166, 160), wavy=0.5)
    elif recipe == "shore_sand":
        _shore(layout, "sand", (214, 198, 150), wavy=2.5)
    elif recipe == "dunes":
        _fill(layout, "sand", (212, 186, 136), 16)
        phase, period = rng.uniform(0, 2 * np.pi), rng.uniform(10, 18)
        xs = np.linspace(-4, R + 4, 12)
        for y0 in np.arange(-4, R + 4, period):
            ys = y0 + 3 * np.sin(xs / rng.uniform(6, 12) + phase)
            layout.add_background(Shape("line", np.stack([xs, ys], 1), (182, 156, 112), M["sand"], width=2.0))
            layout.add_background(Shape("line", np.stack([xs, ys - 1.8], 1), (232, 214, 170), M["sand"], width=1.0))
    else:
        raise ValueError(f"unknown background recipe {recipe!r}")


# ---------------------------------------------------------------------------------------------
# Object placers: one per object type; each places up to ``count`` instances with an arrangement.
# ---------------------------------------------------------------------------------------------

LAND = tuple(M[m] for m in ("grass", "soil", "sand", "concrete", "crop"))
GROUND = tuple(M[m] for m in ("grass", "soil", "sand", "concrete"))


def _line_across(rng: np.random.Generator, centre: float | None = None, angle: float | None = None,
                 wobble: float = 0.0, points: int = 2) -> np.ndarray:
    """A polyline crossing the whole frame through a random (or given) centre at ``angle``."""
    angle = rng.uniform(0, np.pi) if angle is None else angle
    cx, cy = (rng.uniform(16, R - 16), rng.uniform(16, R - 16)) if centre is None else (centre, centre)
    direction = np.array([np.cos(angle), np.sin(angle)])
    normal = np.array([-direction[1], direction[0]])
    t = np.linspace(-R, R, points)
    offsets = rng.normal(0, wobble, points) if wobble else np.zeros(points)
    offsets = np.convolve(offsets, np.ones(3) / 3, mode="same") if points > 3 else offsets
    return np.array([cx, cy]) + t[:, None] * direction + offsets[:, None] * normal


def _place_road(layout: _Layout, count: int, arrangement: str) -> None:
    rng = layout.rng
    colour = jitter(rng, (70, 70, 76), 8)
    lines: list[tuple[np.ndarray, float]] = []
    if arrangement == "grid":
        for i in range(count):
            pos = (i // 2 + 1) * R / (count // 2 + 2) + rng.uniform(-4, 4) if count > 2 else rng.uniform(20, 44)
            if i % 2 == 0:
                line = np.array([[-4, pos], [R + 4, pos]], dtype=float)
            else:
                line = np.array([[pos, -4], [pos, R + 4]], dtype=float)
            lines.append((line, rng.uniform(3.0, 4.0)))
    elif arrangement == "carriageways":
        angle = rng.uniform(-0.35, 0.35)
        centre = np.array([R / 2, rng.uniform(24, 40)])
        normal = np.array([-np.sin(angle), np.cos(angle)])
        gap = rng.uniform(5.5, 7.0)
        direction = np.array([np.cos(angle), np.sin(angle)])
        for side in (-1, 1)[:count]:
            mid = centre + side * gap / 2 * normal
            lines.append((np.stack([mid - R * direction, mid + R * direction]), rng.uniform(4.5, 5.5)))
    else:  # across
        for _ in range(count):
            angle = rng.choice([0.0, np.pi / 2]) + rng.normal(0, 0.15) if rng.uniform() < 0.7 else None
            lines.append((_line_across(rng, angle=angle), rng.uniform(2.5, 3.8)))
    for line, width in lines:
        shapes = [Shape("line", line, colour, M["asphalt"], width=width)]
        if width >= 4.0:  # lane markings
            shapes.append(Shape("line", line, (226, 226, 220), M["paint"], width=0.3))
        layout.add_object("road", shapes, arrangement, occupy=False)
        layout.roads.append((line, width))


def _place_runway(layout: _Layout, count: int, arrangement: str) -> None:
    rng = layout.rng
    apron_top = layout.apron[1] if layout.apron else R * 0.7
    y = rng.uniform(16, apron_top - 12)
    angle = rng.normal(0, 0.08)
    width = rng.uniform(7.0, 9.0)
    line = _line_across(rng, angle=angle)
    line = line - line.mean(0) + [R / 2, y]
    colour = jitter(rng, (186, 186, 182), 6)
    shapes = [Shape("line", line, colour, M["concrete"], width=width),
              Shape("line", line, (240, 240, 236), M["paint"], width=0.45)]
    taxi_x = rng.uniform(10, R - 10)
    taxiway = np.array([[taxi_x, y], [taxi_x + rng.uniform(-6, 6), apron_top + 2]])
    shapes.append(Shape("line", taxiway, scaled(colour, 0.92), M["concrete"], width=3.0))
    layout.add_object("runway", shapes, arrangement, occupy=True)
    layout.roads.append((line, width))


def _place_river(layout: _Layout, count: int, arrangement: str) -> None:
    rng = layout.rng
    angle = rng.choice([0.0, np.pi / 2]) + rng.normal(0, 0.3)
    line = _line_across(rng, centre=R / 2 + rng.uniform(-6, 6), angle=angle, wobble=7.0, points=9)
    width = rng.uniform(7.0, 12.0)
    layout.add_background(Shape("line", line, jitter(rng, (150, 136, 100), 10), M["soil"], width=width + 2.5))
    layout.add_object("river", [Shape("line", line, jitter(rng, (44, 74, 100), 10), M["water"], width=width)],
                      arrangement, occupy=True)
    layout.rivers.append((line, width))


def _place_bridge(layout: _Layout, count: int, arrangement: str) -> None:
    rng = layout.rng
    targets = layout.rivers if arrangement == "over_river" else layout.roads
    if not targets:
        return
    line, width = targets[int(rng.integers(len(targets)))]
    polyline = line[len(line) // 2 - 1: len(line) // 2 + 1] if len(line) > 2 else line
    mid = polyline.mean(0)
    direction = np.arctan2(*(polyline[1] - polyline[0])[::-1])
    span = 22.0 if arrangement == "over_road" else width + 6.0  # over both carriageways / over the river
    outline = rectangle(mid[0], mid[1], span, 3.2, direction + np.pi / 2)
    colour = jitter(rng, (190, 188, 182), 6)
    shapes = [Shape("polygon", outline, colour, M["concrete"], shadow=1.2),
              Shape("line", rectangle(mid[0], mid[1], span, 2.6, direction + np.pi / 2)[[0, 1]], (230, 230, 226),
                    M["paint"], width=0.3)]
    layout.add_object("bridge", shapes, arrangement, occupy=True)


def _building_shapes(rng: np.random.Generator, cx, cy, length, width, angle, palette, shadow=1.0) -> list[Shape]:
    colour = palette[int(rng.integers(len(palette)))]
    colour = jitter(rng, colour, 10)
    body = Shape("polygon", rectangle(cx, cy, length, width, angle), colour, M["roof"], shadow=shadow)
    ridge_dir = np.array([np.cos(angle), np.sin(angle)]) * length * 0.42
    ridge = Shape("line", np.array([[cx, cy] - ridge_dir, [cx, cy] + ridge_dir]), scaled(colour, 0.75), M["roof"],
                  width=max(0.5, width * 0.12))
    return [body, ridge]


def _place_building(layout: _Layout, count: int, arrangement: str) -> None:
    rng = layout.rng
    placed = 0
    if arrangement == "blocks":
        step = rng.uniform(7.5, 9.0)
        offset = rng.uniform(0, step)
        slots = [(x, y) for y in np.arange(offset - step, R + step, step) for x in np.arange(offset - step, R + step, step)]
        order = rng.permutation(len(slots))
        for i in order:
            if placed >= count:
                break
            x, y = slots[i]
            size = rng.uniform(4.5, 6.5)
            if not layout.fits(x, y, size / 2 + 0.5, (M["concrete"], M["grass"]), free=True):
                continue
            layout.add_object("building", _building_shapes(rng, x, y, size * rng.uniform(1, 1.3), size, 0.0,
                                                           ROOF_COLOURS), arrangement)
            layout.buildings.append((x, y))
            placed += 1
        return
    for _ in range(count * 3):
        if placed >= count:
            break
        if arrangement == "large":
            length, width = rng.uniform(12, 22), rng.uniform(9, 16)
            palette, angle = INDUSTRIAL_ROOFS, rng.choice([0.0, np.pi / 2])
        elif arrangement in ("apron_edge", "edge"):
            length, width = rng.uniform(10, 18), rng.uniform(5, 8)
            palette, angle = INDUSTRIAL_ROOFS, 0.0
        else:
            length, width = rng.uniform(5, 8), rng.uniform(4, 6)
            palette, angle = ROOF_COLOURS, rng.uniform(0, np.pi)
        radius = max(length, width) / 2 + 0.5
        if arrangement == "apron_edge" and layout.apron:
            region = (0, R - width - 2, R, R)
        elif arrangement == "edge":
            region = (0, R - width - 4, R, R)
        elif arrangement == "on_land" and layout.shore_y is not None:
            region = (0, layout.shore_y + 2, R, R)
        else:
            region = (0, 0, R, R)
        materials = GROUND if arrangement != "apron_edge" else (M["concrete"],)
        spot = layout.find_spot(radius * (0.75 if arrangement in ("edge", "apron_edge") else 1.0), materials, region)
        if spot is None:
            continue
        layout.add_object("building", _building_shapes(rng, *spot, length, width, angle, palette), arrangement)
        layout.buildings.append(spot)
        placed += 1


def _vehicle_shapes(rng: np.random.Generator, kind: str, cx, cy, angle) -> list[Shape]:
    colour = jitter(rng, CAR_COLOURS[int(rng.integers(len(CAR_COLOURS)))], 10)
    if kind == "car":
        return [Shape("polygon", rectangle(cx, cy, 3.6, 1.9, angle), colour, M["metal"]),
                Shape("polygon", rectangle(cx, cy, 1.4, 1.5, angle), scaled(colour, 0.7), M["metal"])]
    body = Shape("polygon", rectangle(cx, cy, 6.5, 2.4, angle), jitter(rng, (220, 220, 222), 14), M["metal"], shadow=0.6)
    forward = np.array([np.cos(angle), np.sin(angle)]) * 2.6
    cab = Shape("polygon", rectangle(cx + forward[0], cy + forward[1], 1.6, 2.3, angle), colour, M["metal"])
    return [body, cab]


def _place_vehicle(kind: str):
    def placer(layout: _Layout, count: int, arrangement: str) -> None:
        rng = layout.rng
        radius = 1.6 if kind == "car" else 2.8
        placed = 0
        if arrangement == "rows" and layout.parking_rows:
            slots = [(x + 1.6, y) for y in layout.parking_rows for x in np.arange(-1.0, R - 2, 3.2)]
            for i in rng.permutation(len(slots)):
                if placed >= count:
                    break
                x, y = slots[i]
                if not layout.fits(x, y, 1.0, (M["asphalt"], M["paint"]), free=True):
                    continue
                angle = np.pi / 2 + rng.normal(0, 0.05)
                layout.add_object(kind, _vehicle_shapes(rng, kind, x, y, angle), "parked in rows")
                placed += 1
            return
        for _ in range(count * 4):
            if placed >= count:
                break
            if arrangement == "along_road" and layout.roads:
                line, width = layout.roads[int(rng.integers(len(layout.roads)))]
                lane = rng.choice([-1, 1]) * width * rng.uniform(0.15, 0.3)
                x, y, direction = layout.point_near_line((line, width), lane)
                if not layout.fits(x, y, 1.0, (M["asphalt"], M["paint"]), free=True):
                    continue
                layout.add_object(kind, _vehicle_shapes(rng, kind, x, y, direction), arrangement)
                placed += 1
                continue
            if arrangement == "scattered_on_apron" and layout.apron:
                region, materials = layout.apron, (M["concrete"],)
            elif arrangement == "on_land" and layout.shore_y is not None:
                region, materials = (0, layout.shore_y + 2, R, R), LAND
            else:
                region, materials = (0, 0, R, R), (M["concrete"], M["asphalt"], M["sand"], M["soil"])
            spot = layout.find_spot(radius, materials, region, tries=8)
            if spot is None:
                continue
            layout.add_object(kind, _vehicle_shapes(rng, kind, *spot, rng.uniform(0, np.pi)), arrangement)
            placed += 1

    return placer


def _place_airplane(layout: _Layout, count: int, arrangement: str) -> None:
    rng = layout.rng
    x0, y0, x1, y1 = layout.apron if layout.apron else (0, R / 2, R, R)
    length = rng.uniform(10, 14)
    xs = np.linspace(x0 + length / 2 + 1, x1 - length / 2 - 1, count) if count > 1 else [rng.uniform(20, R - 20)]
    y = (y0 + y1) / 2 - 1
    for x in xs:
        colour = jitter(rng, (236, 236, 240), 8)
        angle = -np.pi / 2 + rng.normal(0, 0.08)
        cx, cy = x + rng.normal(0, 1.0), y + rng.normal(0, 1.0)
        shapes = [Shape("polygon", airplane_outline(cx, cy, length, angle), colour, M["metal"], shadow=1.2)]
        layout.add_object("airplane", shapes, "parked in a row", occupy=True)
    if count and rng.uniform() < 0.3 and layout.roads:  # one taxiing on the runway
        line, _ = layout.roads[0]
        x, y, direction = layout.point_near_line((line, 0.0), 0.0)
        shapes = [Shape("polygon", airplane_outline(x, y, length, direction), jitter(rng, (236, 236, 240), 8),
                        M["metal"], shadow=1.2)]
        layout.add_object("airplane", shapes, "on the runway", occupy=True)


def _place_pier(layout: _Layout, count: int, arrangement: str) -> None:
    rng = layout.rng
    shore = layout.shore_y if layout.shore_y is not None else R / 2
    xs = np.sort(rng.uniform(6, R - 6, count))
    colour = jitter(rng, (184, 182, 176), 6)
    for x in xs:
        length = rng.uniform(10, min(22, shore - 2))
        top = shore - length
        outline = np.array([[x - 1.3, top], [x + 1.3, top], [x + 1.3, shore + 1.5], [x - 1.3, shore + 1.5]])
        if not layout.fits(x, (top + shore) / 2, 1.3, None, free=True):
            continue
        layout.add_object("pier", [Shape("polygon", outline, colour, M["concrete"])], arrangement)
        layout.notes.setdefault("piers", []).append((float(x), float(top), float(shore)))


def _place_ship(layout: _Layout, count: int, arrangement: str) -> None:
    rng = layout.rng
    water = (M["water"],)
    piers = layout.notes.get("piers", [])
    placed = 0
    for _ in range(count * 6):
        if placed >= count:
            break
        length, beam = rng.uniform(6.0, 13.0), rng.uniform(2.2, 3.6)
        pier = piers[int(rng.integers(len(piers)))] if piers else None
        if pier is not None:
            length = min(length, pier[2] - pier[1] - 1.0)
        if arrangement == "moored" and pier is not None and length >= 5 and rng.uniform() < 0.7:
            x, top, shore = pier
            side = rng.choice([-1, 1])
            cx, cy, angle = x + side * (1.3 + beam / 2 + 0.3), rng.uniform(top + length / 2, shore - length / 2), -np.pi / 2
            name = "moored at the pier"
        elif arrangement == "moored" and layout.shore_y is not None:
            cx, cy, angle = rng.uniform(6, R - 6), layout.shore_y - beam / 2 - 3.0, rng.choice([0.0, np.pi])
            name = "moored along the shore"
        else:
            spot = layout.find_spot(length / 2, water, tries=6)
            if spot is None:
                continue
            (cx, cy), angle, name = spot, rng.uniform(0, 2 * np.pi), "sailing"
        if not layout.fits(cx, cy, beam / 2, water, free=True):
            continue
        colour = jitter(rng, HULL_COLOURS[int(rng.integers(len(HULL_COLOURS)))], 8)
        hull = Shape("polygon", ship_outline(cx, cy, length, beam, angle), colour, M["metal"], shadow=0.6)
        deck = Shape("polygon", rectangle(cx - 0.15 * length * np.cos(angle), cy - 0.15 * length * np.sin(angle),
                                          length * 0.3, beam * 0.6, angle), (240, 240, 240), M["paint"])
        if name == "sailing":  # a wake trailing behind, part of the water
            back = np.array([cx, cy]) - np.array([np.cos(angle), np.sin(angle)]) * length * np.array([0.5, 1.6])[:, None]
            layout.add_background(Shape("line", back, (120, 150, 170), M["water"], width=beam * 0.7))
        layout.add_object("ship", [hull, deck], name)
        placed += 1


def _place_tree(layout: _Layout, count: int, arrangement: str) -> None:
    rng = layout.rng
    grounds = (M["grass"], M["soil"], M["sand"])
    centres: list[tuple[float, float]] = []
    if arrangement == "dense":
        centres = [(rng.uniform(-2, R + 2), rng.uniform(-2, R + 2)) for _ in range(count)]
    elif arrangement == "clusters":
        hubs = [layout.find_spot(5, (M["grass"],), tries=10) for _ in range(rng.integers(2, 5))]
        hubs = [h for h in hubs if h is not None] or [(R / 2, R / 2)]
        for _ in range(count * 2):
            hx, hy = hubs[int(rng.integers(len(hubs)))]
            x, y = hx + rng.normal(0, 4), hy + rng.normal(0, 4)
            if layout.fits(x, y, 1.0, (M["grass"],), free=True):
                centres.append((x, y))
            if len(centres) >= count:
                break
    elif arrangement in ("row", "along_river", "around_water"):
        for _ in range(count * 3):
            if arrangement == "along_river" and layout.rivers:
                line, width = layout.rivers[0]
                x, y, _ = layout.point_near_line((line, width), rng.choice([-1, 1]) * (width / 2 + rng.uniform(2.5, 5)))
            elif arrangement == "around_water" and layout.waters:
                cx, cy, radius = layout.waters[0]
                theta, distance = rng.uniform(0, 2 * np.pi), radius * rng.uniform(1.25, 1.6)
                x, y = cx + distance * np.cos(theta), cy + distance * np.sin(theta)
            else:
                if "row_line" not in layout.notes:
                    layout.notes["row_line"] = _line_across(rng, angle=rng.choice([0.0, np.pi / 2]))
                line = layout.notes["row_line"]
                x, y, _ = layout.point_near_line((line, 0.0), rng.normal(0, 0.4))
            if layout.fits(x, y, 1.2, grounds, free=True):
                centres.append((x, y))
            if len(centres) >= count:
                break
    else:  # scattered / on_land
        region = (0, layout.shore_y + 2, R, R) if arrangement == "on_land" and layout.shore_y is not None else (0, 0, R, R)
        for _ in range(count):
            spot = layout.find_spot(1.8, grounds, region, tries=10)
            if spot is not None:
                centres.append(spot)
    name = {"dense": "densely packed", "clusters": "in clusters", "row": "in a row", "along_river": "along the river",
            "around_water": "around the water", "on_land": "scattered", "scattered": "scattered"}[arrangement]
    for x, y in centres[:count]:
        radius = rng.uniform(2.2, 3.6) if arrangement == "dense" else rng.uniform(1.6, 2.8)
        colour = jitter(rng, TREE_COLOURS[int(rng.integers(len(TREE_COLOURS)))], 10)
        crown = Shape("ellipse", np.array([[x, y], [radius, radius]]), colour, M["tree canopy"], shadow=radius * 0.5)
        light = Shape("ellipse", np.array([[x - radius * 0.25, y - radius * 0.25], [radius * 0.5, radius * 0.5]]),
                      scaled(colour, 1.3), M["tree canopy"])
        layout.add_object("tree", [crown, light], name, occupy=arrangement != "dense")


def _place_storage_tank(layout: _Layout, count: int, arrangement: str) -> None:
    rng = layout.rng
    radius = rng.uniform(2.6, 4.2)
    step = 2 * radius + rng.uniform(1.0, 2.0)
    columns = int(np.ceil(np.sqrt(count)))
    rows = int(np.ceil(count / columns))
    region = (0, layout.shore_y + 2, R, R) if arrangement == "cluster_on_land" and layout.shore_y is not None else (0, 0, R, R)
    for _ in range(10):
        spot = layout.find_spot(max(columns, rows) * step / 2, GROUND + (M["asphalt"],), region, tries=10)
        if spot is not None:
            break
    if spot is None:
        spot = layout.find_spot(radius + 0.5, GROUND, region, tries=30)
        if spot is None:
            return
        columns = rows = 1
        count = 1
    x0 = spot[0] - (columns - 1) * step / 2
    y0 = spot[1] - (rows - 1) * step / 2
    for i in range(count):
        x, y = x0 + (i % columns) * step, y0 + (i // columns) * step
        colour = jitter(rng, (226, 226, 222), 8)
        shapes = [Shape("ellipse", np.array([[x, y], [radius, radius]]), colour, M["metal"], shadow=radius * 0.45),
                  Shape("ellipse", np.array([[x, y], [radius * 0.62, radius * 0.62]]), scaled(colour, 0.86), M["metal"])]
        layout.add_object("storage_tank", shapes, "in a cluster")


def _place_pool(layout: _Layout, count: int, arrangement: str) -> None:
    rng = layout.rng
    placed = 0
    for _ in range(count * 5):
        if placed >= count or not layout.buildings:
            break
        bx, by = layout.buildings[int(rng.integers(len(layout.buildings)))]
        theta = rng.uniform(0, 2 * np.pi)
        x, y = bx + 6 * np.cos(theta), by + 6 * np.sin(theta)
        if not layout.fits(x, y, 1.6, GROUND, free=True):
            continue
        angle = rng.choice([0.0, np.pi / 2])
        shapes = [Shape("polygon", rectangle(x, y, 3.8, 2.4, angle), jitter(rng, (70, 176, 214), 10), M["pool water"]),
                  Shape("line", rectangle(x, y, 3.8, 2.4, angle)[[0, 1, 2, 3, 0]], (236, 236, 230), M["paint"], width=0.3)]
        layout.add_object("pool", shapes, "next to the houses")
        placed += 1


def _place_tennis_court(layout: _Layout, count: int, arrangement: str) -> None:
    rng = layout.rng
    colour = jitter(rng, COURT_COLOURS[int(rng.integers(len(COURT_COLOURS)))], 8)
    width, length = 6.0, 11.0
    spot = None
    for n in range(count, 0, -1):
        spot = layout.find_spot(max(n * (width + 1), length) / 2 + 1, (M["grass"], M["soil"]), tries=15)
        if spot is not None:
            count = n
            break
    if spot is None:
        return
    x0 = spot[0] - (count - 1) * (width + 1) / 2
    for i in range(count):
        x, y = x0 + i * (width + 1), spot[1]
        outline = rectangle(x, y, width, length)
        shapes = [Shape("polygon", outline, colour, M["court"]),
                  Shape("line", outline[[0, 1, 2, 3, 0]], (236, 236, 232), M["paint"], width=0.35),
                  Shape("line", np.array([[x - width / 2, y], [x + width / 2, y]]), (236, 236, 232), M["paint"], width=0.35)]
        layout.add_object("tennis_court", shapes, "side by side")


def _place_baseball_diamond(layout: _Layout, count: int, arrangement: str) -> None:
    rng = layout.rng
    for _ in range(count):
        radius = rng.uniform(8, 11)
        spot = layout.find_spot(radius * 0.6, (M["grass"],), tries=15)
        if spot is None:
            continue
        x, y = spot
        heading = rng.uniform(0, 2 * np.pi)
        theta = heading + np.linspace(-np.pi / 4, np.pi / 4, 8)
        home = np.array([x, y]) - radius * 0.5 * np.array([np.cos(heading), np.sin(heading)])
        fan = np.concatenate([[home], home + radius * np.stack([np.cos(theta), np.sin(theta)], 1)])
        infield = rectangle(*(home + radius * 0.32 * np.array([np.cos(heading), np.sin(heading)])), radius * 0.42,
                            radius * 0.42, heading + np.pi / 4)
        shapes = [Shape("polygon", fan, jitter(rng, (120, 168, 80), 8), M["grass"]),
                  Shape("polygon", infield, jitter(rng, (178, 128, 88), 8), M["soil"]),
                  Shape("line", fan[[1, 0, -1]], (236, 236, 232), M["paint"], width=0.35)]
        layout.add_object("baseball_diamond", shapes, "scattered", occupy=True)


def _place_crop_field(layout: _Layout, count: int, arrangement: str) -> None:
    rng = layout.rng
    if layout.rivers:  # a few parcels on the free land beside a river
        for _ in range(count):
            w, h = rng.uniform(10, 18), rng.uniform(10, 18)
            spot = layout.find_spot(max(w, h) / 2, (M["grass"],), tries=10)
            if spot is None:
                continue
            _crop_parcel(layout, spot[0] - w / 2, spot[1] - h / 2, spot[0] + w / 2, spot[1] + h / 2, arrangement)
        return
    columns = max(1, int(round(np.sqrt(count))))
    cuts_x = np.sort(rng.uniform(8, R - 8, columns - 1))
    xs = np.concatenate([[-1.0], cuts_x, [R + 1.0]])
    parcels = []
    for i in range(columns):
        rows = max(1, int(round(count / columns)) + (1 if i < count % columns else 0))
        ys = np.concatenate([[-1.0], np.sort(rng.uniform(6, R - 6, rows - 1)), [R + 1.0]])
        parcels += [(xs[i], ys[j], xs[i + 1], ys[j + 1]) for j in range(rows)]
    for x0, y0, x1, y1 in parcels:
        _crop_parcel(layout, x0 + 0.6, y0 + 0.6, x1 - 0.6, y1 - 0.6, arrangement)


def _crop_parcel(layout: _Layout, x0, y0, x1, y1, arrangement: str) -> None:
    rng = layout.rng
    colour = jitter(rng, CROP_COLOURS[int(rng.integers(len(CROP_COLOURS)))], 10)
    material = M["soil"] if colour[0] > colour[1] else M["crop"]
    outline = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    shapes = [Shape("polygon", outline, colour, material)]
    stripe = scaled(colour, rng.uniform(0.82, 0.9))
    if rng.uniform() < 0.5:
        for x in np.arange(x0 + 1.0, x1 - 0.5, rng.uniform(1.6, 2.6)):
            shapes.append(Shape("line", np.array([[x, y0 + 0.3], [x, y1 - 0.3]]), stripe, material, width=0.6))
    else:
        for y in np.arange(y0 + 1.0, y1 - 0.5, rng.uniform(1.6, 2.6)):
            shapes.append(Shape("line", np.array([[x0 + 0.3, y], [x1 - 0.3, y]]), stripe, material, width=0.6))
    layout.add_object("crop_field", shapes, "in parcels", occupy=True)


def _place_pond(layout: _Layout, count: int, arrangement: str) -> None:
    rng = layout.rng
    for _ in range(count):
        radius = rng.uniform(14, 22) if arrangement == "large" else rng.uniform(3.5, 6.5)
        if arrangement == "large":
            spot = (R / 2 + rng.uniform(-6, 6), R / 2 + rng.uniform(-6, 6))
        else:
            spot = layout.find_spot(radius, (M["grass"],), tries=15)
            if spot is None:
                continue
        outline = blob(rng, *spot, radius, 0.22 if arrangement == "large" else 0.15)
        if arrangement == "large":
            layout.add_background(Shape("polygon", outline * 1.0 + (outline - spot) * 0.1, jitter(rng, (150, 140, 104), 10),
                                        M["soil"]))
        layout.add_object("pond", [Shape("polygon", outline, jitter(rng, (44, 78, 108), 12), M["water"])],
                          "large" if arrangement == "large" else "small")
        layout.waters.append((spot[0], spot[1], radius))


def _place_solar_panel(layout: _Layout, count: int, arrangement: str) -> None:
    rng = layout.rng
    length = rng.uniform(12, 22)
    step = rng.uniform(4.0, 5.0)
    spot = None
    for n in range(count, 0, -1):
        spot = layout.find_spot(max(length, n * step) / 2 + 0.5, None, tries=12)
        if spot is not None:
            count = n
            break
    if spot is None:
        return
    y0 = spot[1] - (count - 1) * step / 2
    colour = jitter(rng, (36, 46, 92), 6)
    for i in range(count):
        y = y0 + i * step
        outline = rectangle(spot[0], y, length, 2.6)
        shapes = [Shape("polygon", outline, colour, M["solar glass"], shadow=0.5)]
        for x in np.arange(spot[0] - length / 2 + 2.0, spot[0] + length / 2 - 1, 2.0):
            shapes.append(Shape("line", np.array([[x, y - 1.2], [x, y + 1.2]]), (120, 130, 160), M["solar glass"], width=0.25))
        layout.add_object("solar_panel", shapes, "in rows")


def _place_sand_bunker(layout: _Layout, count: int, arrangement: str) -> None:
    rng = layout.rng
    for _ in range(count):
        radius = rng.uniform(1.8, 3.2)
        spot = layout.find_spot(radius, (M["grass"],), tries=10)
        if spot is None:
            continue
        outline = blob(rng, *spot, radius, 0.25, vertices=10)
        layout.add_object("sand_bunker", [Shape("polygon", outline, jitter(rng, (226, 212, 168), 8), M["sand"])],
                          "scattered")


PLACERS = {
    "road": _place_road, "runway": _place_runway, "river": _place_river, "bridge": _place_bridge,
    "crop_field": _place_crop_field, "pond": _place_pond, "pier": _place_pier,
    "building": _place_building, "storage_tank": _place_storage_tank, "tennis_court": _place_tennis_court,
    "baseball_diamond": _place_baseball_diamond, "solar_panel": _place_solar_panel, "pool": _place_pool,
    "sand_bunker": _place_sand_bunker, "airplane": _place_airplane, "ship": _place_ship,
    "truck": _place_vehicle("truck"), "car": _place_vehicle("car"), "tree": _place_tree,
}
# Large ground features first, then structures, then what sits on or beside them.
PLACEMENT_ORDER = tuple(PLACERS)


def sample_scene(rng: np.random.Generator, scene_class: str | None = None, world: World = WORLD) -> Scene:
    """Lay out one scene of ``scene_class`` (a random class when None) with randomness from ``rng``.

    The returned scene is geometry only (reference pixels); objects that end up hidden behind
    others are kept here and dropped from the labels by the renderer.
    """
    spec: SceneClass = world.scene(scene_class) if scene_class else world.scene_classes[int(rng.integers(len(world.scene_classes)))]
    layout = _Layout(rng)
    _background(layout, spec.background)
    for kind in PLACEMENT_ORDER:
        object_spec = spec.objects.get(kind)
        if object_spec is None or rng.uniform() >= object_spec.probability:
            continue
        low, high = object_spec.count
        PLACERS[kind](layout, int(rng.integers(low, high + 1)), object_spec.arrangement)
    symmetry = DIHEDRAL[int(rng.integers(len(DIHEDRAL)))]
    centre = R / 2
    background = [s.transformed(symmetry, centre) for s in layout.background]
    objects = [PlacedObject(o.kind, [s.transformed(symmetry, centre) for s in o.shapes], o.arrangement)
               for o in layout.objects]
    return Scene(spec.name, background, objects, spec.background, int(rng.integers(2**62)))
