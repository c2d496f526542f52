"""Bilinear resize of RGB uint8 images (numpy only).

Temporary home: the engine takes images of any size and each model family resizes its own
way (issue 9, engine half). Until then the observation assembler calls :func:`resize_rgb`
in exactly one place (``ObservationAssembler._fit``); drop both together.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=32)
def _bilinear_table(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (lo, hi) and the weight of hi for resizing one axis src -> dst.

    Half-pixel centres, as OpenCV / PIL use, so a resize does not shift the image.
    Cached: a camera stream keeps one size, so the table is built once.
    """
    pos = (np.arange(dst, dtype=np.float64) + 0.5) * (src / dst) - 0.5
    pos = np.clip(pos, 0.0, src - 1)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, src - 1)
    w = (pos - lo).astype(np.float32)
    return lo, hi, w


def resize_rgb(rgb: np.ndarray, size: int) -> np.ndarray:
    """``(H, W, 3)`` uint8 -> ``(size, size, 3)`` (aspect ratio not preserved: the model's
    input is square, and stretching keeps every pixel of the field of view)."""
    height, width = rgb.shape[:2]
    if height == size and width == size:
        return np.ascontiguousarray(rgb)
    ylo, yhi, wy = _bilinear_table(height, size)
    xlo, xhi, wx = _bilinear_table(width, size)
    img = rgb.astype(np.float32)
    rows = img[ylo] * (1.0 - wy)[:, None, None] + img[yhi] * wy[:, None, None]
    out = rows[:, xlo] * (1.0 - wx)[None, :, None] + rows[:, xhi] * wx[None, :, None]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
