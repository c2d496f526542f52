"""Camera frames resized on the device (engine/device_frames.py, images_torch.py) on the CPU.

The torch engine's graph path can take each camera's uint8 frame as is and run the family's
image step in torch before the replay. It must give the numpy path's images: bit for bit
for a frame at the model's size (the same float32 tables), and within float32 rounding of a
resize (torch's own bilinear kernel vs our separable numpy one), for both padding rules;
and a whole chunk through the engine's runner must equal the host-image engine's.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_fast_path_lerobot import _engine, _fill, assert_rel, runner_case
from test_lerobot_parity import built, hf_env  # noqa: F401  (the fixture checkpoints' HF cache)

from reflex_ros.engine.capture_cache import graph_key
from reflex_ros.engine.device_frames import DeviceFrames
from reflex_ros.engine.schedule import make_noise
from reflex_ros.engine.torch_runtime import TorchEngine
from reflex_ros.engine.types import FRAME_PREFIX, Observation, ObservationError, frame_name
from reflex_ros.policies.lerobot.images import RESIZE_WITH_PAD
from reflex_ros.policies.lerobot.images_torch import DeviceImages

SIZES = [(32, 32), (40, 48), (48, 40), (17, 93), (480, 640), (20, 30)]


@pytest.mark.parametrize("pad", sorted(RESIZE_WITH_PAD))
@pytest.mark.parametrize("hw", SIZES, ids=[f"{h}x{w}" for h, w in SIZES])
def test_device_image_step_matches_numpy(pad: str, hw: tuple[int, int]) -> None:
    rng = np.random.default_rng(hw[0] * 1000 + hw[1])
    frame = rng.integers(0, 256, (*hw, 3), dtype=np.uint8)
    frame[0, 0] = 0
    frame[-1, -1] = 255
    numpy_fn = RESIZE_WITH_PAD[pad][0]
    prep = DeviceImages(32, 32, pad, "cpu")
    want = numpy_fn(frame, 32, 32)
    got = prep(torch.from_numpy(frame)).numpy()
    assert got.shape == want.shape == (3, 32, 32) and got.dtype == np.float32
    if hw == (32, 32):
        assert np.array_equal(got, want)  # the same lookup table: identical bits
    else:
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-6)
        # the padding is where the family puts it: -1 rows/columns on the right side(s)
        pad_rows = np.flatnonzero(np.all(want == -1.0, axis=(0, 2)))
        assert np.array_equal(pad_rows, np.flatnonzero(np.all(got == -1.0, axis=(0, 2))))


def test_device_image_step_refuses_bad_frames() -> None:
    prep = DeviceImages(32, 32, "centered", "cpu")
    with pytest.raises(ValueError, match="uint8"):
        prep(torch.zeros((32, 32, 3), dtype=torch.float32))
    with pytest.raises(ValueError, match="pad 'middle'"):
        DeviceImages(32, 32, "middle", "cpu")


@pytest.mark.parametrize("case", ["pi0", "smolvla", "generated/pi0_minmax_3cam"])
def test_prepare_device_images_hands_raw_frames(case: str) -> None:
    _, processor, _ = built(case)
    rng = np.random.default_rng(1)
    keys = processor.camera_names
    images = {k: rng.integers(0, 256, (24 + i, 36, 3), dtype=np.uint8) for i, k in enumerate(keys[:2])}
    state = rng.standard_normal(processor.state_dim).astype(np.float32)
    host = processor.prepare(images, state, "pick")
    raw = processor.prepare(images, state, "pick", device_images=True)
    assert "images" not in raw and "images" in host
    frames = sorted(n for n in raw if n.startswith(FRAME_PREFIX))
    assert frames == [frame_name(i) for i in range(len(images))]
    for slot, key in enumerate(k for k in keys if k in images):
        assert np.array_equal(raw[frame_name(slot)], images[key])
    for name in host:
        if name != "images":
            assert np.array_equal(raw[name], host[name]), name
    with pytest.raises(ObservationError, match="expected uint8"):
        processor.prepare({keys[0]: np.zeros((8, 8, 3), np.float32)}, state, "pick", device_images=True)
    # a frame whose fitted size has a 0-pixel side is refused on both paths (not a crash on the GPU)
    for device_images in (False, True):
        with pytest.raises(ObservationError, match="side of 0 pixels"):
            processor.prepare({keys[0]: np.zeros((1, 1000, 3), np.uint8)}, state, "pick", device_images=device_images)


@pytest.mark.parametrize("case", ["pi0", "smolvla", "generated/pi0_minmax_3cam"])
def test_device_frames_fill_the_host_images(case: str) -> None:
    """DeviceFrames.load writes what the host path computes, absent cameras as -1, for every
    batch row; buffers are per slot and reused."""
    _, processor, _ = built(case)
    rng = np.random.default_rng(2)
    keys = processor.camera_names
    images = {k: rng.integers(0, 256, (30, 44, 3), dtype=np.uint8) for k in keys[:2]}
    state = rng.standard_normal(processor.state_dim).astype(np.float32)
    want = processor.prepare(images, state, "pick")["images"]
    raw = processor.prepare(images, state, "pick", device_images=True)
    loader = DeviceFrames(processor.device_image_step("cpu"), torch.device("cpu"), len(keys))
    out = torch.full((2, *want.shape[1:]), 7.0)
    loader.load(raw, out)
    for row in out.numpy():
        np.testing.assert_allclose(row, want[0], rtol=0, atol=2e-6)
    assert loader.allocations == 2  # one buffer pair per present slot, same shape
    loader.load(raw, out)
    assert loader.allocations == 2  # reused
    images[keys[0]] = rng.integers(0, 256, (16, 20, 3), dtype=np.uint8)  # a camera changes resolution
    loader.load(processor.prepare(images, state, "pick", device_images=True), out)
    assert loader.allocations == 3 and len(loader._slots) == 2  # replaced, not accumulated
    loader.clear()
    assert not loader._slots
    np.testing.assert_allclose(out[0].numpy(), processor.prepare(images, state, "pick")["images"][0], rtol=0,
                               atol=2e-6)


@pytest.mark.parametrize(("case", "beta"), [("pi0", None), ("pi05", 1.5), ("smolvla", None)])
def test_runner_on_device_frames_matches_host_engine(case: str, beta: float | None) -> None:
    """A chunk from the graph runner fed by DeviceFrames == the host-image engine's chunk
    (the staging _run_graph does on a GPU, here on the CPU with the fast path's torch ops)."""
    engine, obs, noise, want = runner_case(case, beta)
    proc = engine.processor
    arrays = proc.prepare(obs, beta, device_images=True)
    arrays["noise"] = noise
    runner = engine.build_runner(graph_key(4, proc.chunk_size, beta))
    _fill(runner, {k: v for k, v in arrays.items() if not k.startswith(FRAME_PREFIX)}, beta)
    DeviceFrames(proc.device_image_step("cpu"), torch.device("cpu"), len(proc.camera_names)).load(
        arrays, runner.inputs["images"])
    with torch.inference_mode():
        out = runner.run_denoise(runner.run_prefix())
    got = proc.postprocess(out.numpy().reshape(proc.chunk_size, proc.action_width))
    assert_rel(got, want, what="device frames vs host images")


def test_engine_device_images_switch() -> None:
    """Host images unless the graph path can take frames; asking for it without says why."""
    engine = _engine("pi0")
    assert engine.device_images is False and "images" not in engine.info.extra
    with pytest.raises(ValueError, match="device_images=True needs cuda_graph=True"):
        TorchEngine(engine.model, engine.processor, device_images=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the graph path)")
@pytest.mark.parametrize("case", ["pi0", "smolvla"])
def test_cuda_graph_device_images_give_the_host_chunk(case: str) -> None:
    """On the GPU: the graph replay fed device-resized frames gives the host-image chunk,
    bit for bit at the model's size, within float32 rounding for a resized 640x480 frame."""
    ckpt, processor, model = built(case)
    from reflex_ros.policies import get_family
    from reflex_ros.policies.lerobot.family import ObservationProcessor

    fam = get_family(ckpt.model_type)
    engine = TorchEngine(model, ObservationProcessor(processor), device="cuda", cuda_graph=True,
                         fast_path=fam.fast_path, model_type=ckpt.model_type)
    assert engine.device_images and engine.info.extra["images"] == "device"
    rng = np.random.default_rng(4)
    noise = make_noise(6, processor.chunk_size, processor.action_width)[0]
    s = processor.image_size
    for hw in ((s, s), (480, 640)):
        obs = Observation(images={n: rng.integers(0, 256, (*hw, 3), dtype=np.uint8) for n in processor.camera_names[:2]},
                          state=rng.standard_normal(processor.state_dim).astype(np.float32), instruction="pick")
        dev = engine.infer(obs, nfe=4, noise=noise).actions
        engine.use_device_images(False)
        host = engine.infer(obs, nfe=4, noise=noise).actions
        engine.use_device_images(True)
        if hw == (s, s):
            assert np.array_equal(dev, host)
        else:
            assert_rel(dev, host, rel=1e-4, what="640x480 device vs host resize")
    engine.close()
