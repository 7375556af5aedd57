"""Geometric primitives of a scene and the code that draws them.

A :class:`Shape` is a polygon, an ellipse or a thick polyline in reference pixels (a 64 x 64
frame), with the colour it is painted and the material it is made of. ``draw_shape`` paints one
shape into any number of PIL images at a given scale: the renderer paints colour, material and
instance maps in one pass, and the layout sampler paints a reference material map to find free
ground. The constructors below (``rectangle``, ``airplane_outline``...) return point arrays.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import ImageDraw


@dataclass
class Shape:
    """One drawable primitive.

    ``kind`` is "polygon" (``points`` [N, 2] vertices), "ellipse" (``points`` [2, 2]: centre and
    radii) or "line" (``points`` [N, 2] vertices of a polyline ``width`` reference pixels thick).
    ``shadow`` > 0 casts a shadow that many reference pixels towards the lower right.
    """

    kind: str
    points: np.ndarray
    rgb: tuple[int, int, int]
    material: int
    width: float = 0.0
    shadow: float = 0.0

    def area(self) -> float:
        """Area in square reference pixels (lines: length x width)."""
        if self.kind == "ellipse":
            return float(np.pi * self.points[1, 0] * self.points[1, 1])
        if self.kind == "line":
            return float(np.linalg.norm(np.diff(self.points, axis=0), axis=1).sum() * self.width)
        x, y = self.points[:, 0], self.points[:, 1]
        return float(0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))

    def transformed(self, matrix: np.ndarray, centre: float) -> "Shape":
        """The shape under a 2 x 2 orthogonal ``matrix`` about (centre, centre)."""
        if self.kind == "ellipse":
            c = (self.points[0] - centre) @ matrix.T + centre
            radii = np.abs(np.abs(matrix) @ self.points[1])
            points = np.stack([c, radii])
        else:
            points = (self.points - centre) @ matrix.T + centre
        return Shape(self.kind, points, self.rgb, self.material, self.width, self.shadow)


def draw_shape(targets: list[tuple[ImageDraw.ImageDraw, object]], shape: Shape, scale: float, offset: float = 0.0) -> None:
    """Paint ``shape`` into each (draw, fill) target, with coordinates multiplied by ``scale``.

    Pixel (i, j) covers [j, j + 1) x [i, i + 1) in image coordinates; PIL rasterises with pixel
    centres at integers, hence the half-pixel shift.
    """
    if shape.kind == "ellipse":
        (cx, cy), (rx, ry) = shape.points * scale
        cx, cy = cx + offset - 0.5, cy + offset - 0.5
        box = [cx - rx, cy - ry, cx + rx, cy + ry]
        if box[2] - box[0] < 1.0 or box[3] - box[1] < 1.0:
            # PIL draws nothing for sub-pixel ellipses; a point keeps tiny objects visible
            for draw, fill in targets:
                draw.point([(round(cx), round(cy))], fill=fill)
            return
        for draw, fill in targets:
            draw.ellipse(box, fill=fill)
        return
    points = [(float(x), float(y)) for x, y in shape.points * scale + (offset - 0.5)]
    if shape.kind == "polygon":
        for draw, fill in targets:
            draw.polygon(points, fill=fill)
    else:
        width = max(1, int(round(shape.width * scale)))
        for draw, fill in targets:
            draw.line(points, fill=fill, width=width, joint="curve")


def rotation(angle: float) -> np.ndarray:
    """2 x 2 rotation matrix for ``angle`` radians (image coordinates, y down)."""
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


def place(outline: np.ndarray, cx: float, cy: float, angle: float) -> np.ndarray:
    """Rotate an outline given about the origin by ``angle`` and move it to (cx, cy)."""
    return outline @ rotation(angle).T + np.array([cx, cy])


def rectangle(cx: float, cy: float, length: float, width: float, angle: float = 0.0) -> np.ndarray:
    """[4, 2] corners of a ``length`` (along ``angle``) x ``width`` rectangle centred at (cx, cy)."""
    half_l, half_w = length / 2, width / 2
    outline = np.array([[-half_l, -half_w], [half_l, -half_w], [half_l, half_w], [-half_l, half_w]])
    return place(outline, cx, cy, angle)


def _mirrored(half: list[tuple[float, float]]) -> np.ndarray:
    """Close an outline given for y >= 0 (nose to tail) by mirroring it across the x axis."""
    pts = np.array(half, dtype=float)
    lower = pts[::-1] * np.array([1.0, -1.0])
    return np.concatenate([pts, lower[1:-1] if pts[-1, 1] == 0 else lower])


_AIRPLANE = _mirrored([(0.5, 0.0), (0.42, 0.05), (0.1, 0.05), (-0.12, 0.48), (-0.2, 0.48), (-0.08, 0.05),
                       (-0.36, 0.05), (-0.46, 0.2), (-0.52, 0.2), (-0.5, 0.0)])


def airplane_outline(cx: float, cy: float, length: float, angle: float) -> np.ndarray:
    """Fuselage, swept wings and tailplane, nose along ``angle``."""
    return place(_AIRPLANE * length, cx, cy, angle)


def ship_outline(cx: float, cy: float, length: float, beam: float, angle: float) -> np.ndarray:
    """A hull with a pointed bow along ``angle``."""
    half = np.array([[0.5 * length, 0.0], [0.28 * length, 0.5 * beam], [-0.5 * length, 0.5 * beam],
                     [-0.5 * length, -0.5 * beam], [0.28 * length, -0.5 * beam]])
    return place(half, cx, cy, angle)


def blob(rng: np.random.Generator, cx: float, cy: float, radius: float, irregularity: float = 0.25,
         vertices: int = 14) -> np.ndarray:
    """An irregular closed outline (ponds, lakes, bunkers): a circle with smoothed radial noise."""
    theta = np.linspace(0, 2 * np.pi, vertices, endpoint=False)
    noise = rng.normal(0, irregularity, vertices)
    noise = (noise + np.roll(noise, 1) + np.roll(noise, -1)) / 3
    r = radius * (1 + noise)
    return np.stack([cx + r * np.cos(theta), cy + r * np.sin(theta)], axis=1)


def jitter(rng: np.random.Generator, rgb: tuple[int, int, int], amount: float = 12) -> tuple[int, int, int]:
    """A colour near ``rgb`` (each channel moved by up to about ``amount``)."""
    shifted = np.clip(np.asarray(rgb) + rng.normal(0, amount / 2, 3), 0, 255)
    return tuple(int(v) for v in shifted)


def scaled(rgb: tuple[int, int, int], factor: float) -> tuple[int, int, int]:
    return tuple(int(min(255, max(0, v * factor))) for v in rgb)


# The eight symmetries of the square: scenes are laid out with land "at the bottom" and then
# turned by one of these, so orientation carries no class information.
DIHEDRAL = [np.array(m, dtype=float) for m in (
    [[1, 0], [0, 1]], [[0, -1], [1, 0]], [[-1, 0], [0, -1]], [[0, 1], [-1, 0]],
    [[-1, 0], [0, 1]], [[1, 0], [0, -1]], [[0, 1], [1, 0]], [[0, -1], [-1, 0]],
)]
