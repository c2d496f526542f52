"""The LeRobot numpy processors: torch-free, static shapes, CFG prompts, normalization, images."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from reflex_ros.engine.types import ObservationError, UsageError
from reflex_ros.policies.lerobot.checkpoint import load_lerobot_checkpoint
from reflex_ros.policies.lerobot.families import processor_class
from reflex_ros.policies.lerobot.images import (
    bilinear_resize,
    resize_with_pad_centered,
    resize_with_pad_top_left,
)
from reflex_ros.policies.lerobot.normalization import FeatureNormalizer
from reflex_ros.policies.lerobot.processor import ADVANTAGE_TAG
from reflex_ros.policies.lerobot.spec import FamilySpec

DATA = Path(__file__).parent / "data" / "lerobot"
REPO = Path(__file__).parent.parent


@pytest.fixture(autouse=True)
def _offline_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", str(DATA / "hf_cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)


def _processor(family: str):  # noqa: ANN202
    ckpt = load_lerobot_checkpoint(DATA / family / "checkpoint")
    return processor_class(ckpt.model_type)(ckpt.spec, ckpt.stats)


def _observation(family: str, index: int = 0) -> tuple[dict, np.ndarray, str]:
    ref = np.load(DATA / family / "fixtures" / f"fixture_{index:02d}.npz")
    images = {k[len("obs."):]: ref[k] for k in ref.files if k.startswith("obs.observation.images.")}
    return images, ref["obs.observation.state"], str(ref["task"])


def test_processor_path_never_imports_torch() -> None:
    """Load checkpoint + tokenizer, prepare and postprocess every family with torch absent
    from sys.modules (the ONNX serving path runs without torch)."""
    script = f"""
import sys, numpy as np
from reflex_ros.policies.lerobot.checkpoint import load_lerobot_checkpoint
from reflex_ros.policies.lerobot.families import processor_class
for family in ("pi0", "pi05", "smolvla"):
    ckpt = load_lerobot_checkpoint({str(DATA)!r} + "/" + family + "/checkpoint")
    proc = processor_class(ckpt.model_type)(ckpt.spec, ckpt.stats)
    ref = np.load({str(DATA)!r} + "/" + family + "/fixtures/fixture_00.npz")
    images = {{k[4:]: ref[k] for k in ref.files if k.startswith("obs.observation.images.")}}
    out = proc.prepare(images, ref["obs.observation.state"], str(ref["task"]))
    proc.postprocess(np.zeros((ckpt.spec.chunk_size, ckpt.spec.max_action_dim), np.float32))
    if family == "pi05":
        proc.prepare(images, ref["obs.observation.state"], str(ref["task"]), cfg_beta=1.5)
bad = [m for m in ("torch", "transformers") if m in sys.modules]
assert not bad, bad
print("ok")
"""
    env = {**os.environ, "HF_HOME": str(DATA / "hf_cache"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.parametrize("family", ["pi0", "pi05", "smolvla"])
def test_static_shapes(family: str) -> None:
    proc = _processor(family)
    images, state, task = _observation(family, 1)
    out = proc.prepare(images, state, task)
    specs = {name: (dtype, shape) for name, dtype, shape in proc.input_specs()}
    assert list(out) == list(proc.output_names) == list(specs)
    for name, arr in out.items():
        dtype, shape = specs[name]
        assert arr.dtype == np.dtype(dtype), name
        assert arr.shape == (1, *shape[1:]), name
    assert out["lang_tokens"].shape[1] == proc.spec.tokenizer_max_length  # even where LeRobot pads to longest


def test_missing_camera_goes_last_and_masked() -> None:
    proc = _processor("pi05")
    images, state, task = _observation("pi05", 0)
    first, middle, last = proc.spec.camera_keys
    del images[middle]
    imgs, masks, _ = proc.model_images(images)
    assert masks.tolist() == [True, True, False]
    np.testing.assert_array_equal(imgs[1], proc.resize_image(images[last]))
    assert (imgs[2] == -1).all()
    with pytest.raises(ObservationError, match="every camera is missing"):
        proc.model_images({})
    with pytest.raises(ObservationError, match="unknown camera"):
        proc.model_images({**images, "observation.images.nope": images[first]})


def test_smolvla_missing_camera_beyond_empty_cameras_has_no_slot() -> None:
    proc = _processor("smolvla")
    images, _, _ = _observation("smolvla", 2)  # camera2 absent, empty_cameras = 0
    _, masks, slots = proc.model_images(images)
    assert masks.tolist() == [True, False] and slots.tolist() == [True, False]


def test_pi05_cfg_batch_keeps_the_advantage_tag() -> None:
    proc = _processor("pi05")
    images, state, _ = _observation("pi05", 0)
    long_task = "move the cube " * 80
    out = proc.prepare(images, state, long_task, cfg_beta=1.5)
    assert out["lang_tokens"].shape == (2, proc.spec.tokenizer_max_length)
    assert out["images"].shape[0] == 2 and np.array_equal(out["images"][0], out["images"][1])
    cond, uncond = proc.prompts(long_task, proc.normalized_state(state), cfg=True)
    assert "Advantage: positive" in cond and "Advantage" not in uncond
    assert cond.endswith(";\nAction: ")  # the state and the action cue survive as well
    assert proc.tokenizer.count_tokens(cond) <= proc.spec.tokenizer_max_length
    assert uncond == proc.prompts(long_task, proc.normalized_state(state))[0]
    short = proc.prompts("fold the towel", proc.normalized_state(state), cfg=True)[0]
    assert short.startswith("Task: fold the towel" + ADVANTAGE_TAG.replace("\n", " "))


def test_cfg_only_where_supported() -> None:
    proc = _processor("pi0")
    images, state, task = _observation("pi0", 0)
    with pytest.raises(UsageError, match="CFG"):
        proc.prepare(images, state, task, cfg_beta=1.5)


def test_bad_inputs_are_named() -> None:
    proc = _processor("pi0")
    images, state, task = _observation("pi0", 0)
    with pytest.raises(ObservationError, match="state must have shape"):
        proc.prepare(images, state[:-1], task)
    with pytest.raises(ObservationError, match="non-finite"):
        proc.prepare(images, np.full_like(state, np.nan), task)
    key = proc.spec.camera_keys[0]
    with pytest.raises(ObservationError, match="uint8"):
        proc.prepare({key: images[key].astype(np.float32)}, state, task)
    with pytest.raises(ObservationError, match="sampler"):
        proc.postprocess(np.zeros((3, 3), np.float32))


@pytest.mark.parametrize("family", ["pi0", "pi05", "smolvla"])
def test_spec_json_round_trip(family: str) -> None:
    proc = _processor(family)
    data = json.loads(json.dumps(proc.spec.to_dict()))
    spec = FamilySpec.from_dict(data)
    assert spec == proc.spec
    stats = {proc.spec.state_key: proc.state_normalizer.stats, proc.spec.action_key: proc.action_normalizer.stats}
    again = processor_class(family)(spec, stats, proc.tokenizer)
    images, state, task = _observation(family, 3)
    a, b = proc.prepare(images, state, task), again.prepare(images, state, task)
    for name in a:
        np.testing.assert_array_equal(a[name], b[name])
    with pytest.raises(ValueError, match="unknown FamilySpec keys"):
        FamilySpec.from_dict({**data, "from_the_future": 1})


def test_normalization_modes_and_eps() -> None:
    x = np.array([0.5, 2.0, -1.0], np.float32)
    stats = {
        "mean": np.array([0.1, 0.2, 0.3], np.float32), "std": np.array([0.5, 0.0, 2.0], np.float32),
        "min": np.array([0.0, 2.0, -3.0], np.float32), "max": np.array([1.0, 2.0, 3.0], np.float32),
        "q01": np.array([0.0, 1.0, -2.0], np.float32), "q99": np.array([2.0, 1.0, 2.0], np.float32),
        "q10": np.array([0.1, 0.1, -1.0], np.float32), "q90": np.array([0.9, 0.9, 1.0], np.float32),
    }
    eps = np.float32(1e-8)
    ms = FeatureNormalizer("s", "MEAN_STD", stats, 1e-8)
    np.testing.assert_array_equal(ms.normalize(x), (x - stats["mean"]) / (stats["std"] + eps))
    np.testing.assert_array_equal(ms.unnormalize(x), x * stats["std"] + stats["mean"])  # no eps on the way back
    mm = FeatureNormalizer("s", "MIN_MAX", stats, 1e-8)
    assert mm.normalize(x)[1] == np.float32(-1.0)  # zero range -> eps denominator, min maps to -1
    for mode in ("MIN_MAX", "QUANTILES", "QUANTILE10"):
        norm = FeatureNormalizer("s", mode, stats, 1e-8)
        ok = np.array([True, False, True])  # the zero-range dimension does not round-trip (by design)
        np.testing.assert_allclose(norm.unnormalize(norm.normalize(x))[ok], x[ok], rtol=1e-6, atol=1e-6)
    ident = FeatureNormalizer("s", "IDENTITY", {}, 1e-8)
    np.testing.assert_array_equal(ident.normalize(x), x)


def test_image_resize_matches_torch_interpolate() -> None:
    torch = pytest.importorskip("torch")
    f = torch.nn.functional
    rng = np.random.default_rng(0)
    for h, w, oh, ow in [(72, 96, 48, 64), (480, 640, 168, 224), (33, 47, 17, 60), (5, 300, 3, 200)]:
        img = rng.integers(0, 256, (h, w, 3)).astype(np.float32) / np.float32(255)
        ref = f.interpolate(torch.from_numpy(img)[None].permute(0, 3, 1, 2), size=(oh, ow), mode="bilinear",
                            align_corners=False)[0].permute(1, 2, 0).numpy()
        np.testing.assert_allclose(bilinear_resize(img, oh, ow), ref, atol=5e-7)
    rgb = rng.integers(0, 256, (30, 60, 3), dtype=np.uint8)
    centred, top_left = resize_with_pad_centered(rgb, 32, 32), resize_with_pad_top_left(rgb, 32, 32)
    assert centred.shape == top_left.shape == (3, 32, 32)
    assert (centred[:, :8] == -1).all() and (centred[:, 24:] == -1).all()  # 16 rows, split 8/8
    assert (top_left[:, :16] == -1).all() and not (top_left[:, 16:] == -1).all()
