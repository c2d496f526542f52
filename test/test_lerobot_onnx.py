"""The LeRobot family models export to ONNX (legacy exporter, opset 17) and run in onnxruntime.

``prefix`` and one ``velocity`` step of each tiny family are traced with
``torch.onnx.export(..., dynamo=False, opset_version=17)`` at static shapes and compared
with torch on real fixture inputs (including a missing camera), within
``1e-5 * max(1, |out|)``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from reflex_ros.policies.lerobot.families import build_from_checkpoint

ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnx")

DATA = Path(__file__).parent / "data" / "lerobot"


class PrefixGraph(torch.nn.Module):
    """``prefix`` with positional inputs in ``prefix_input_names`` order."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        kv, mask = self.model.prefix(**dict(zip(self.model.prefix_input_names, inputs, strict=True)))
        return (*kv, mask)


class VelocityGraph(torch.nn.Module):
    """``velocity(x_t, t, *kv, prefix_mask, *expert_inputs)``."""

    def __init__(self, model: torch.nn.Module, n_kv: int) -> None:
        super().__init__()
        self.model, self.n_kv = model, n_kv

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, *rest: torch.Tensor) -> torch.Tensor:
        kv, mask, extra = list(rest[: self.n_kv]), rest[self.n_kv], rest[self.n_kv + 1:]
        return self.model.velocity(x_t, t, kv, mask, **dict(zip(self.model.expert_input_names, extra, strict=True)))


def _close(name: str, ours: np.ndarray, ref: np.ndarray) -> None:
    if ref.dtype == bool:
        assert np.array_equal(ours, ref), name
        return
    err = float(np.abs(ours.astype(np.float64) - ref).max())
    assert err <= 1e-5 * max(1.0, float(np.abs(ref).max())), f"{name}: max_abs {err:.3g}"


@pytest.mark.parametrize(
    ("family", "fixture"),
    [("pi0", "fixture_00.npz"), ("pi05", "fixture_02.npz"), ("smolvla", "fixture_02.npz"),
     ("generated/smolvla_halfexpert_special", "fixture_01.npz")],
)
def test_prefix_and_velocity_export(family: str, fixture: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    own = DATA / family / "hf_cache"
    monkeypatch.setenv("HF_HOME", str(own if own.is_dir() else DATA / "hf_cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    torch.manual_seed(0)
    _, processor, model = build_from_checkpoint(str(DATA / family / "checkpoint"))
    ref = np.load(DATA / family / "fixtures" / fixture)
    images = {k[len("obs."):]: ref[k] for k in ref.files if k.startswith("obs.observation.images.")}
    inputs = processor.prepare(images, ref["obs.observation.state"], str(ref["task"]))
    prefix_inputs = [torch.as_tensor(inputs[n]) for n in model.prefix_input_names]

    prefix = PrefixGraph(model)
    with torch.no_grad():
        torch_prefix = [t.numpy() for t in prefix(*prefix_inputs)]
    n_kv = len(torch_prefix) - 1
    assert [tuple(a.shape) for a in torch_prefix[:-1]] == model.kv_shapes(1)
    prefix_path = tmp_path / "prefix.onnx"
    torch.onnx.export(
        prefix, tuple(prefix_inputs), str(prefix_path), dynamo=False, opset_version=17,
        input_names=list(model.prefix_input_names),
        output_names=[f"kv_{i}" for i in range(n_kv)] + ["prefix_mask"],
    )
    sess = ort.InferenceSession(str(prefix_path), providers=["CPUExecutionProvider"])
    onnx_prefix = sess.run(None, {n: inputs[n] for n in model.prefix_input_names})
    for i, (a, b) in enumerate(zip(onnx_prefix, torch_prefix, strict=True)):
        _close(f"{family} prefix output {i}", a, b)

    x_t = ref["noise"].astype(np.float32)
    t = np.full((1,), 0.7, np.float32)
    extra = [inputs[n] for n in model.expert_input_names]
    vel_inputs = [x_t, t, *torch_prefix]
    vel_inputs += extra
    velocity = VelocityGraph(model, n_kv)
    with torch.no_grad():
        torch_v = velocity(*[torch.as_tensor(a) for a in vel_inputs]).numpy()
    names = ["x_t", "t", *[f"kv_{i}" for i in range(n_kv)], "prefix_mask", *model.expert_input_names]
    vel_path = tmp_path / "velocity.onnx"
    torch.onnx.export(
        velocity, tuple(torch.as_tensor(a) for a in vel_inputs), str(vel_path), dynamo=False, opset_version=17,
        input_names=names, output_names=["v_t"],
    )
    sess = ort.InferenceSession(str(vel_path), providers=["CPUExecutionProvider"])
    feeds = dict(zip(names, vel_inputs, strict=True))
    used = {i.name for i in sess.get_inputs()}
    (onnx_v,) = sess.run(None, {k: v for k, v in feeds.items() if k in used})
    _close(f"{family} velocity", onnx_v, torch_v)
    assert os.path.getsize(vel_path) > 0
