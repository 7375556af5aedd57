"""Client styles: per-client sensor and acquisition conditions, for feature-shift heterogeneity.

A :class:`ClientStyle` is a small frozen dataclass drawn from a seed: a 3 x 3 colour response,
gamma and brightness (the sensor), haze (the atmosphere), blur and a down-up resampling factor
(the optics and ground resolution), and additive noise. ``apply`` is a pure function of the image
and a noise seed, so the same style applied to the same image gives the same bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFilter

from fedvlm.data.synthetic.world import REFERENCE_SIZE


@dataclass(frozen=True)
class ClientStyle:
    style_id: int = 0
    color_matrix: tuple[tuple[float, float, float], ...] = ((1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 1.0))
    gamma: float = 1.0
    brightness: float = 1.0
    haze: float = 0.0  # fraction blended towards haze_color
    haze_color: tuple[float, float, float] = (0.78, 0.8, 0.84)
    blur_sigma: float = 0.0  # Gaussian blur in reference pixels (64-pixel frame)
    resolution: float = 1.0  # < 1: downsample by this factor and back up (coarser ground sampling)
    noise_sigma: float = 0.0  # additive Gaussian noise, in 0-255 units

    @classmethod
    def identity(cls) -> "ClientStyle":
        return cls()

    @classmethod
    def sample(cls, seed: int, strength: float = 1.0, style_id: int | None = None) -> "ClientStyle":
        """A random style; ``strength`` 0 gives the identity, 1 a typical client, 2 a harsh one."""
        rng = np.random.default_rng([seed, 0x5171E])
        matrix = np.eye(3) + strength * rng.normal(0, 0.06, (3, 3))
        matrix *= 1 + strength * rng.normal(0, 0.08, (3, 1))  # per-channel gain
        haze = float(np.clip(strength * rng.uniform(-0.05, 0.3), 0.0, 0.6))
        haze_color = tuple(float(v) for v in np.clip(0.8 + rng.normal(0, 0.04, 3), 0.6, 0.95))
        blur = float(max(0.0, strength * rng.uniform(-0.4, 0.9)))
        resolution = float(1.0 / (1 + int(rng.integers(0, 3)))) if rng.uniform() < min(1.0, 0.35 * strength) else 1.0
        return cls(
            style_id=seed if style_id is None else style_id,
            color_matrix=tuple(tuple(float(v) for v in row) for row in matrix),
            gamma=float(np.exp(strength * rng.normal(0, 0.12))),
            brightness=float(np.exp(strength * rng.normal(0, 0.1))),
            haze=haze,
            haze_color=haze_color,
            blur_sigma=blur,
            resolution=resolution,
            noise_sigma=float(strength * rng.uniform(0.0, 6.0)),
        )

    def apply(self, rgb: np.ndarray, noise_seed: int) -> np.ndarray:
        """Image [H, W, 3] uint8 -> styled [H, W, 3] uint8; deterministic in (style, rgb, noise_seed)."""
        height, width = rgb.shape[:2]
        x = rgb.astype(np.float32) / 255.0
        if self.color_matrix != ClientStyle.color_matrix or self.gamma != 1.0 or self.brightness != 1.0:
            x = np.clip(x @ np.asarray(self.color_matrix, dtype=np.float32).T, 0.0, 1.0)
            x = np.power(x, self.gamma) * self.brightness
        if self.haze > 0:
            x = (1 - self.haze) * x + self.haze * np.asarray(self.haze_color, dtype=np.float32)
        out = np.clip(x * 255.0 + 0.5, 0, 255).astype(np.uint8)
        if self.resolution < 1.0 or self.blur_sigma > 0.05:
            image = Image.fromarray(out)
            if self.resolution < 1.0:
                small = (max(1, round(width * self.resolution)), max(1, round(height * self.resolution)))
                image = image.resize(small, Image.BILINEAR).resize((width, height), Image.BILINEAR)
            if self.blur_sigma > 0.05:
                image = image.filter(ImageFilter.GaussianBlur(self.blur_sigma * width / REFERENCE_SIZE))
            out = np.asarray(image)
        if self.noise_sigma > 0:
            noise = np.random.default_rng([noise_seed, 0xA015E]).normal(0, self.noise_sigma, out.shape)
            out = np.clip(out + noise, 0, 255).astype(np.uint8)
        return out


def sample_styles(count: int, seed: int, strength: float = 1.0) -> list[ClientStyle]:
    """``count`` styles with ids 0..count-1, drawn from ``seed``; count 0 gives [identity]."""
    if count <= 0:
        return [ClientStyle.identity()]
    return [ClientStyle.sample(int(np.random.default_rng([seed, k]).integers(2**62)), strength, style_id=k)
            for k in range(count)]
