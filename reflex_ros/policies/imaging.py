"""Camera image resizing in numpy (torch-free: processors run on the ONNX serving path).

The reference family stretches every camera to its square input with this bilinear resize
(half-pixel centres, as OpenCV and PIL use, so a resize does not shift the image). Cameras
arrive at their own resolution; the processor resizes once per inference, for the frames the
observation actually uses.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=32)
def bilinear_table(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Source indices (lo, hi) and the weight of hi for resizing one axis src -> dst.

    Half-pixel centres; cached, because a camera stream keeps one size.
    """
    pos = (np.arange(dst, dtype=np.float64) + 0.5) * (src / dst) - 0.5
    pos = np.clip(pos, 0.0, src - 1)
    lo = np.floor(pos).astype(np.intp)
    hi = np.minimum(lo + 1, src - 1)
    w = (pos - lo).astype(np.float32)
    return lo, hi, w


def resize_rgb(rgb: np.ndarray, height: int, width: int | None = None) -> np.ndarray:
    """Bilinear resize of an ``(H, W, 3)`` uint8 image to ``(height, width, 3)`` uint8
    (``width`` defaults to ``height``: a square model input)."""
    width = height if width is None else width
    src_h, src_w = rgb.shape[:2]
    if src_h == height and src_w == width:
        return np.ascontiguousarray(rgb)
    ylo, yhi, wy = bilinear_table(src_h, height)
    xlo, xhi, wx = bilinear_table(src_w, width)
    img = rgb.astype(np.float32)
    rows = img[ylo] * (1.0 - wy)[:, None, None] + img[yhi] * wy[:, None, None]
    out = rows[:, xlo] * (1.0 - wx)[None, :, None] + rows[:, xhi] * wx[None, :, None]
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)
