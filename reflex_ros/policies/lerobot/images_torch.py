"""Camera frames -> the model's images on the GPU, inside the CUDA graph (torch engine only).

The numpy path (``images.py``) turns each uint8 frame into float32 ``[3, h, w]`` on the
serving host's CPU and uploads 4 bytes per channel value: for SmolVLA's two 512 px cameras
that is 6 MB and a few ms of single-threaded numpy per chunk, most of the host time of a
graph replay. Here the frame travels as uint8 (a quarter of the bytes) and the same steps
run as a handful of kernels at the start of the prefix graph:

- ``uint8 -> float32 / 255`` through the same float32 lookup table as the numpy path (a
  table, not a division: torch's CUDA kernel divides by a scalar as a multiply by its
  reciprocal, which rounds differently), so a frame at the model's size gives the very same
  bits as the host path;
- a frame of another size: LeRobot's own ops, ``F.interpolate(bilinear,
  align_corners=False)`` (what LeRobot runs when the policy is on the GPU), pi0's clamp to
  [0, 1], and the family's padding (centred for pi0 / pi0.5, left-and-top for SmolVLA);
- ``x * 2 - 1``.

Shapes are static per frame size, so the graph is captured per camera geometry
(``GraphKey.frames``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F  # noqa: N812

from reflex_ros.policies.lerobot.images import RESIZE_WITH_PAD, SIGNED_TABLE, UNIT_TABLE, fit_size


class DeviceImages:
    """``uint8 [H, W, 3]`` on the device -> float32 ``[3, height, width]`` in [-1, 1], as the
    family's numpy ``resize_image`` computes it. Build it outside graph capture (it uploads
    its two tables once); calls are capturable."""

    def __init__(self, height: int, width: int, pad: str, device: torch.device | str) -> None:
        if pad not in RESIZE_WITH_PAD:
            raise ValueError(f"pad {pad!r}; expected one of {sorted(RESIZE_WITH_PAD)}")
        self.height, self.width, self.pad = int(height), int(width), pad
        self.clamp = RESIZE_WITH_PAD[pad][1]
        self.unit = torch.from_numpy(UNIT_TABLE.copy()).to(device)
        self.signed = torch.from_numpy(SIGNED_TABLE.copy()).to(device)

    def __call__(self, frame: torch.Tensor) -> torch.Tensor:
        if frame.dtype != torch.uint8 or frame.ndim != 3 or frame.shape[2] != 3:
            raise ValueError(f"expected a uint8 (H, W, 3) frame, got {frame.dtype} {tuple(frame.shape)}")
        h, w = self.height, self.width
        in_h, in_w = int(frame.shape[0]), int(frame.shape[1])
        idx = frame.permute(2, 0, 1).to(torch.int64)
        if (in_h, in_w) == (h, w):
            return self.signed[idx]
        rh, rw = fit_size(in_h, in_w, h, w)
        img = F.interpolate(self.unit[idx][None], size=(rh, rw), mode="bilinear", align_corners=False)[0]
        if self.clamp:
            img = img.clamp(0.0, 1.0)
        if self.pad == "centered":
            top, rem_h = divmod(h - rh, 2)
            left, rem_w = divmod(w - rw, 2)
            img = F.pad(img, (left, left + rem_w, top, top + rem_h), value=0.0)
        else:
            img = F.pad(img, (max(0, w - rw), 0, max(0, h - rh), 0), value=0.0)
        return img * 2.0 - 1.0
