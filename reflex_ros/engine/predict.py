"""`reflex-ros predict`: one observation file in, one action chunk file out.

The user's offline debugging tool, and the way parity against LeRobot talks to the product:
the same engine, processor and post-processing the node serves with, fed from an npz that
uses LeRobot's raw observation keys. An export runs on either engine; a checkpoint (not yet
exported) runs on the torch engine in fp32 straight from its files.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from reflex_ros.engine.bundle import CONFIG_FILE
from reflex_ros.engine.types import Engine, Observation, ObservationError, ReflexError

OBS_PREFIX = "obs."
STATE_KEY = "observation.state"


def open_engine(source: str | Path, engine: str | None = None) -> Engine:
    """An engine for an export directory (either runtime) or a checkpoint (torch, fp32, CPU)."""
    path = Path(source).expanduser()
    if path.is_dir() and (path / CONFIG_FILE).is_file():
        from reflex_ros.engine.loader import load_engine

        return load_engine(path, engine=engine or "onnx", provider="cpu" if engine == "torch" else None)
    if engine == "onnx":
        raise ReflexError(f"{source} is not an export: the ONNX engine serves exports; run "
                          f"`reflex-ros export {source} --output DIR` first, or use --engine torch")
    from reflex_ros.engine.torch_runtime import TorchEngine
    from reflex_ros.policies import get_family
    from reflex_ros.policies.checkpoints import resolve_checkpoint

    model_type, ckpt = resolve_checkpoint(str(source))
    src = get_family(model_type).export_source(str(ckpt))
    nfe = int(src.extra_config.get("num_inference_steps", 10))
    return TorchEngine(src.model, src.processor, device="cpu", dtype="fp32", default_nfe=nfe,
                       model_type=model_type, extra={"source": src.label})


def observation_from_npz(data: Any, info: Any) -> tuple[Observation, np.ndarray | None, int | None]:
    """(observation, noise or None, num_steps or None) from LeRobot-keyed arrays."""
    keys = set(data.keys()) if hasattr(data, "keys") else set(data.files)
    cameras = set(info.camera_names)
    images: dict[str, np.ndarray] = {}
    state = None
    for key in sorted(k for k in keys if k.startswith(OBS_PREFIX)):
        name = key[len(OBS_PREFIX):]
        if name in cameras:
            images[name] = np.asarray(data[key])
        elif name == STATE_KEY:
            state = np.asarray(data[key])
        else:
            raise ObservationError(f"input {key!r} is neither a camera of this model ({sorted(cameras)}) nor "
                                   f"{OBS_PREFIX}{STATE_KEY}")
    if state is None:
        raise ObservationError(f"input {OBS_PREFIX}{STATE_KEY} (float32 (D,)) is missing")
    if "task" not in keys:
        raise ObservationError("input 'task' (the instruction, a string) is missing")
    task = data["task"]
    task = str(task.item() if isinstance(task, np.ndarray) else task)
    noise = np.asarray(data["noise"], dtype=np.float32) if "noise" in keys else None
    steps = int(np.asarray(data["num_steps"]).item()) if "num_steps" in keys else None
    if state.dtype.kind == "f":  # checked before the cast: 1e300 would become inf and be reported as inf
        from reflex_ros.engine.observation import checked_state

        state = checked_state(state, max_dim=state.size)
    return Observation(images=images, state=state, instruction=task), noise, steps


def predict_file(source: str | Path, inputs: Path, output: Path, *, engine: str | None = None,
                 cfg_beta: float | None = None) -> str:
    """Run one chunk and write ``actions``; returns a one-line summary."""
    try:
        data = np.load(inputs, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ReflexError(f"cannot read {inputs} as an npz ({exc})") from None
    eng = open_engine(source, engine)
    try:
        obs, noise, steps = observation_from_npz(data, eng.info)
        started = time.perf_counter()
        result = eng.infer(obs, nfe=steps, cfg_beta=cfg_beta, noise=noise)
        took = (time.perf_counter() - started) * 1e3
    finally:
        eng.close()
    output.parent.mkdir(parents=True, exist_ok=True)
    np.savez(output, actions=result.actions.astype(np.float32))
    info = eng.info
    return (f"wrote {output}: actions {result.actions.shape} float32 ({info.model_type}, engine={info.engine}, "
            f"nfe={result.nfe}, {took:.1f} ms)")
