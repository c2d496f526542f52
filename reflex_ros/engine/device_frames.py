"""Camera frames onto the GPU as uint8, resized there, just before a graph replay.

On the host-image path the processor turns every frame into float32 ``[3, h, w]`` with numpy
and the engine uploads 4 bytes per value: for SmolVLA's two 512 px cameras that is 6 MB and
a few ms of single-threaded CPU per chunk, the largest host cost of a replay. With
``TorchEngine(device_images=...)`` the processor hands each camera's uint8 frame untouched
(``prepare(..., device_images=True)``) and :class:`DeviceFrames` uploads it (a quarter of the
bytes, through a pinned buffer) and runs the family's image step in torch
(``processor.device_image_step``) into the plan's static ``images`` buffer.

Why eagerly before the replay rather than inside the captured graph: a graph bakes in every
shape, so resizing inside it would capture one graph per camera geometry (a 640x480 camera
the warm-up never saw would pay a capture on the first real chunk). Run eagerly it is a
handful of kernel launches (tens of us of CPU) for any frame size; the graph keeps reading
the same float buffer as on the host path, on the same stream, so the order is kept without
a sync.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np
import torch

from reflex_ros.engine.types import frame_name


class DeviceFrames:
    """Per camera slot: a pinned host buffer and a device buffer of the slot's current frame
    shape (reallocated only when a camera changes resolution, so memory stays bounded), and
    the family's ``prep(uint8 [H, W, 3]) -> float32 [3, h, w]``. Buffers are per slot: two
    cameras of one shape never share one."""

    def __init__(self, prep: Callable[[torch.Tensor], torch.Tensor], device: torch.device, num_slots: int) -> None:
        self.prep = prep
        self.device = torch.device(device)
        self.num_slots = int(num_slots)
        self._pin = self.device.type == "cuda"
        self._slots: dict[int, tuple[tuple[int, ...], torch.Tensor, torch.Tensor]] = {}
        self.allocations = 0  # how many (host, device) buffer pairs were made (tests read it)

    def _buffers(self, slot: int, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        held = self._slots.get(slot)
        if held is None or held[0] != shape:
            host = torch.empty(shape, dtype=torch.uint8, pin_memory=self._pin)
            held = (shape, host, torch.empty(shape, dtype=torch.uint8, device=self.device))
            self._slots[slot] = held
            self.allocations += 1
        return held[1], held[2]

    def clear(self) -> None:
        """Drop every slot's buffers (the engine's release); the next load allocates afresh."""
        self._slots.clear()

    def load(self, arrays: Mapping[str, np.ndarray], images: torch.Tensor) -> None:
        """Write every slot of ``images`` ``[B, n, 3, h, w]`` (each batch row alike) from the
        ``frame_<slot>`` arrays: a present slot from its frame, an absent one as the -1
        image the host path gives it. Asynchronous on the current stream (the caller's
        final sync covers the pinned buffers' reuse)."""
        for slot in range(self.num_slots):
            frame = arrays.get(frame_name(slot))
            if frame is None:
                images[:, slot].fill_(-1.0)
                continue
            host, dev = self._buffers(slot, tuple(int(d) for d in frame.shape))
            host.numpy()[...] = frame
            dev.copy_(host, non_blocking=self._pin)
            images[:, slot].copy_(self.prep(dev))
