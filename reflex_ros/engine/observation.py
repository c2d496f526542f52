"""Checks every family's processor applies to an Observation, written once (numpy only).

The engines never hand a malformed array to onnxruntime or torch, where the error would
surface as a stack trace from deep inside; these raise ObservationError naming the thing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from reflex_ros.engine.types import Observation, ObservationError


def camera_images(obs: Observation, camera_names: Sequence[str], *, allow_missing: bool = False
                  ) -> dict[str, np.ndarray | None]:
    """camera name -> uint8 ``(H, W, 3)`` image (any size), or None for a missing camera.

    ``obs.images`` is a list in the export's camera order, or a mapping by camera name. A
    mapping may leave a camera out only when the family handles missing cameras
    (``allow_missing``); an unknown name is an error, never silently ignored.
    """
    if not isinstance(obs, Observation):
        raise ObservationError(f"expected an Observation, got {type(obs).__name__}")
    images = obs.images
    names = list(camera_names)
    if isinstance(images, Mapping):
        unknown = sorted(set(images) - set(names))
        if unknown:
            raise ObservationError(f"observation.images has unknown camera(s) {unknown}; the model's cameras are {names}")
        missing = [n for n in names if n not in images or images[n] is None]
        if missing and not allow_missing:
            raise ObservationError(f"observation.images lacks camera(s) {missing}; the model needs all of {names}")
        picked: dict[str, np.ndarray | None] = {n: images.get(n) for n in names}
    elif isinstance(images, (list, tuple)):
        if len(images) != len(names):
            raise ObservationError(
                f"observation.images has {len(images)} image(s); the model expects {len(names)} "
                f"(one per camera, in the export's camera order: {names})"
            )
        picked = dict(zip(names, images, strict=True))
    else:
        raise ObservationError(
            f"observation.images must be a list of {len(names)} camera image(s) or a mapping by camera name, "
            f"got {type(images).__name__}"
        )
    for name, img in picked.items():
        if img is None:
            continue
        if not isinstance(img, np.ndarray):
            raise ObservationError(f"observation.images[{name!r}] must be a numpy array, got {type(img).__name__}")
        if img.dtype != np.uint8:
            raise ObservationError(f"observation.images[{name!r}] has dtype {img.dtype}; expected uint8 RGB (H, W, 3)")
        if img.ndim != 3 or img.shape[2] != 3 or img.shape[0] < 1 or img.shape[1] < 1:
            raise ObservationError(f"observation.images[{name!r}] has shape {img.shape}; expected uint8 RGB (H, W, 3)")
    return picked


def checked_state(state: object, max_dim: int, names: Sequence[str] | None = None) -> np.ndarray:
    """The state as float32 ``(D,)``, ``D <= max_dim``, every value finite in float32.

    A finite value that overflows float32 (1e300) is refused by value, not reported as inf.
    ``names`` (the joint names, when known) make the message name the joint."""
    if not isinstance(state, np.ndarray):
        raise ObservationError(f"observation.state must be a numpy float32 array, got {type(state).__name__}")
    if state.dtype.kind != "f":
        raise ObservationError(f"observation.state has dtype {state.dtype}; expected float32")
    if state.ndim != 1:
        raise ObservationError(f"observation.state has shape {state.shape}; expected (state_dim,) 1-D")
    if state.shape[0] > max_dim:
        raise ObservationError(
            f"observation.state has {state.shape[0]} values; the model takes at most max_state_dim={max_dim}"
        )
    with np.errstate(over="ignore", invalid="ignore"):
        as32 = state.astype(np.float32)
    bad = np.flatnonzero(~np.isfinite(as32))
    if bad.size:
        i = int(bad[0])
        label = f"{names[i]!r} (observation.state[{i}])" if names is not None and i < len(names) else f"observation.state[{i}]"
        raw = float(state[i])
        why = "is not finite" if not np.isfinite(raw) else "does not fit in float32"
        raise ObservationError(f"{label} is {raw:g}, which {why}; all state values must be finite float32")
    return as32
