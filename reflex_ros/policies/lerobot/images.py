"""Camera images as LeRobot feeds them to SigLIP, in numpy (no torch on the serving path).

LeRobot's path: ``uint8 HWC -> float32 / 255`` (``prepare_observation_for_inference``), an
aspect-preserving bilinear resize with padding when the size differs from the model's
input, then ``x * 2 - 1`` into [-1, 1]. The two families pad differently:

- pi0 / pi0.5 (openpi's ``resize_with_pad_torch``): clamp to [0, 1] after resizing, pad
  *centred* with 0 (black);
- SmolVLA (``resize_with_pad``): no clamp, pad on the *left and top* with 0.

The resize reproduces ``F.interpolate(mode="bilinear", align_corners=False)`` on CPU:
float32 source coordinates ``(dst + 0.5) * in/out - 0.5`` clamped at 0 (one fused rounding,
as torch's kernel), the lower index capped at ``in - 1``, and the same two weights per axis;
it applies them separably, which rounds within a couple of float32 units of torch's
four-tap sum.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np


@lru_cache(maxsize=64)
def _axis_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(index0, index1, lambda0, lambda1) for one axis, computed in float32 like torch."""
    if in_size == out_size:
        idx = np.arange(out_size, dtype=np.int64)
        return idx, idx, np.ones(out_size, np.float32), np.zeros(out_size, np.float32)
    scale = np.float32(in_size) / np.float32(out_size)
    # torch's kernel computes ``scale * (dst + 0.5) - 0.5`` as one fused multiply-add (one
    # rounding); the float64 product of two float32s is exact, so this is that FMA
    dst = np.arange(out_size, dtype=np.float64)
    src = (np.float64(scale) * (dst + 0.5) - 0.5).astype(np.float32)
    src = np.maximum(src, np.float32(0.0))
    i0 = np.minimum(np.floor(src).astype(np.int64), in_size - 1)
    lam1 = np.clip(src - i0.astype(np.float32), np.float32(0.0), np.float32(1.0)).astype(np.float32)
    i1 = i0 + (i0 < in_size - 1).astype(np.int64)
    lam0 = (np.float32(1.0) - lam1).astype(np.float32)
    return i0, i1, lam0, lam1


def bilinear_resize(img: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize float32 ``(H, W, C)`` to ``(height, width, C)`` as torch's bilinear
    ``align_corners=False`` does (no antialiasing): torch's exact source coordinates and
    weights, applied separably (rows, then columns). Separable is 2-3x faster than the four
    gathered taps at the output size and differs from torch's summation order by at most a
    couple of float32 units (1.8e-7 measured on [0, 1] images), far inside the parity
    tolerance: a 640x480 camera is resized once per inference on the serving host's CPU."""
    h0, h1, hl0, hl1 = _axis_taps(img.shape[0], int(height))
    w0, w1, wl0, wl1 = _axis_taps(img.shape[1], int(width))
    rows = img[h0] * hl0[:, None, None] + img[h1] * hl1[:, None, None]
    out = rows[:, w0] * wl0[None, :, None] + rows[:, w1] * wl1[None, :, None]
    return out.astype(np.float32, copy=False)


def fit_size(in_h: int, in_w: int, height: int, width: int) -> tuple[int, int]:
    """The resized size that keeps the aspect ratio inside ``height x width``; the same
    Python float arithmetic as LeRobot, so the integer truncation matches."""
    ratio = max(in_w / width, in_h / height)
    return int(in_h / ratio), int(in_w / ratio)


#: every uint8 value divided by 255 in float32, as LeRobot computes it: a table lookup gives the
#: same bits as the division, in one pass
UNIT_TABLE = (np.arange(256, dtype=np.float32) / np.float32(255.0)).astype(np.float32)
#: ``(x / 255) * 2 - 1`` with LeRobot's float32 roundings, for an image used at its own size
SIGNED_TABLE = (UNIT_TABLE * np.float32(2.0) - np.float32(1.0)).astype(np.float32)


def uint8_to_unit(rgb: np.ndarray) -> np.ndarray:
    """``uint8 (H, W, 3)`` -> float32 in [0, 1] (LeRobot divides by 255 in float32)."""
    return UNIT_TABLE[np.asarray(rgb, dtype=np.uint8)]


def _same_size_chw(rgb: np.ndarray) -> np.ndarray:
    """A camera already at the model's size: no resize and no pad, so [-1, 1] CHW straight
    from the lookup table (indexing with the transposed view writes CHW contiguously)."""
    return SIGNED_TABLE[np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)]


def resize_with_pad_centered(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """pi0/pi0.5: float32 ``(3, height, width)`` in [-1, 1] from ``uint8 (H, W, 3)``.

    Resized only when the size differs; then clamped to [0, 1] and padded with black, split
    evenly (the odd pixel at the bottom/right)."""
    if rgb.shape[:2] == (int(height), int(width)):
        return _same_size_chw(rgb)
    img = uint8_to_unit(rgb)
    in_h, in_w = img.shape[:2]
    if (in_h, in_w) != (int(height), int(width)):
        rh, rw = fit_size(in_h, in_w, height, width)
        img = np.clip(bilinear_resize(img, rh, rw), np.float32(0.0), np.float32(1.0))
        pad_h0, rem_h = divmod(height - rh, 2)
        pad_w0, rem_w = divmod(width - rw, 2)
        img = np.pad(img, ((pad_h0, pad_h0 + rem_h), (pad_w0, pad_w0 + rem_w), (0, 0)), constant_values=0.0)
    return np.ascontiguousarray((img * np.float32(2.0) - np.float32(1.0)).transpose(2, 0, 1))


def resize_with_pad_top_left(rgb: np.ndarray, height: int, width: int) -> np.ndarray:
    """SmolVLA: float32 ``(3, height, width)`` in [-1, 1] from ``uint8 (H, W, 3)``.

    Resized only when the size differs; no clamp; padding (0 before scaling, so -1 after)
    goes on the left and the top."""
    if rgb.shape[:2] == (int(height), int(width)):
        return _same_size_chw(rgb)
    img = uint8_to_unit(rgb)
    in_h, in_w = img.shape[:2]
    if (in_h, in_w) != (int(height), int(width)):
        rh, rw = fit_size(in_h, in_w, height, width)
        img = bilinear_resize(img, rh, rw)
        img = np.pad(img, ((max(0, height - rh), 0), (max(0, width - rw), 0), (0, 0)), constant_values=0.0)
    return np.ascontiguousarray((img * np.float32(2.0) - np.float32(1.0)).transpose(2, 0, 1))


#: the families' resize-with-pad variants by name: (the numpy function, whether the resized
#: image is clamped to [0, 1]); ``images_torch.DeviceImages`` reads the same table
RESIZE_WITH_PAD = {
    "centered": (resize_with_pad_centered, True),  # pi0 / pi0.5
    "top_left": (resize_with_pad_top_left, False),  # SmolVLA
}
