"""Scanner effects on a native grid: bias field, Rician noise, intensity scaling.

Applied after sampling, per image, so that every session and modality differs (issue #3
item 2). The bias field is a product of smooth 1D profiles along the voxel axes (cheap, and
smooth in world space because voxel axes are world axes); the noise is Rician, as in magnitude
images: |x + sigma * (n1 + i n2)|.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ScannerEffects:
    """Per-image acquisition parameters."""

    gain: float  # a.u. -> stored integer units
    noise: float  # Rician sigma as a fraction of the white-matter level (~0.7 a.u.)
    bias_amplitude: float  # peak log-amplitude of each axis profile

    @classmethod
    def random(cls, rng: np.random.Generator, noise: tuple[float, float] = (0.015, 0.035),
               bias: tuple[float, float] = (0.04, 0.12)) -> "ScannerEffects":
        return cls(gain=float(rng.uniform(600.0, 1400.0)), noise=float(rng.uniform(*noise)),
                   bias_amplitude=float(rng.uniform(*bias)))


def bias_field(shape: tuple[int, ...], zooms, amplitude: float,
               rng: np.random.Generator) -> np.ndarray:
    """A smooth multiplicative field, exp(sum of one cosine per axis), as float32."""
    field = np.ones((1, 1, 1), np.float32)
    for axis, (n, zoom) in enumerate(zip(shape, zooms)):
        u = np.arange(n) * zoom
        wavelength = rng.uniform(1.5, 3.0) * max(n * zoom, 1.0)
        profile = np.exp(amplitude * rng.uniform(0.5, 1.0)
                         * np.cos(2 * np.pi * u / wavelength + rng.uniform(0, 2 * np.pi)))
        view = [1, 1, 1]
        view[axis] = n
        field = field * profile.reshape(view).astype(np.float32)
    return field


def acquire(image: np.ndarray, zooms, effects: ScannerEffects,
            rng: np.random.Generator) -> np.ndarray:
    """Bias, Rician noise and gain applied to a sampled image (a.u.) -> float32 scanner units."""
    out = image * bias_field(image.shape, zooms, effects.bias_amplitude, rng)
    sigma = np.float32(effects.noise * 0.7)
    real = out + sigma * rng.standard_normal(out.shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(out.shape, dtype=np.float32)
    np.hypot(real, imag, out=out)
    out *= np.float32(effects.gain)
    return out


def to_int16(image: np.ndarray) -> np.ndarray:
    """Round and clip to the stored integer type of the raw images."""
    return np.clip(np.rint(image), 0, 32767).astype(np.int16)
