"""Stage-by-stage parity with LeRobot 0.6.1 on fixtures it recorded itself.

Every directory under ``test/data/lerobot`` with a ``checkpoint/`` and ``fixtures/*.npz`` is
a case (the three public tiny checkpoints, plus the extra ones
``tools/make_lerobot_fixtures.py`` generates). For each fixture we run our processor, model
and Euler loop and compare every recorded intermediate, in pipeline order, so a failure
names the first stage that broke. Tolerance: ``1e-5 * max(1, max|ref|)``; tokens, masks and
the prompt string must be equal.

Our shapes are static (all camera slots, prompts padded to the max length) where LeRobot's
may not be (SmolVLA drops a missing camera and pads prompts to the longest): those stages
compare the real tokens, in order, and require everything else to be masked.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from reflex_ros.policies.lerobot.attention import make_att_2d_masks
from reflex_ros.policies.lerobot.families import build_from_checkpoint
from reflex_ros.policies.lerobot.rollout import as_tensors, sample_actions

DATA = Path(__file__).parent / "data" / "lerobot"
TOL = 1e-5


def discover_cases() -> list[str]:
    cases = []
    for config in sorted(DATA.rglob("checkpoint/config.json")):
        case = config.parent.parent
        if any((case / "fixtures").glob("*.npz")):
            cases.append(str(case.relative_to(DATA)))
    return cases


CASES = discover_cases()
FIXTURES = [(case, f.name) for case in CASES for f in sorted((DATA / case / "fixtures").glob("*.npz"))]
STAGES = (
    "task_after_preprocessor",
    "lang_tokens",
    "state_normalized",
    "model_state_padded",
    "model_images",
    "prefix_masks",
    "prefix_embs",
    "denoise_t",
    "denoise_x_t",
    "denoise_v_t",
    "sample_actions",
    "predict_action_chunk",
    "actions",
)


def hf_cache_for(case: str) -> Path:
    """A case's own fake hub cache if it has one, else the shared one."""
    own = DATA / case / "hf_cache"
    return own if own.is_dir() else DATA / "hf_cache"


@contextlib.contextmanager
def hf_env(case: str) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in ("HF_HOME", "HF_HUB_OFFLINE", "HF_HUB_CACHE")}
    os.environ.update({"HF_HOME": str(hf_cache_for(case)), "HF_HUB_OFFLINE": "1"})
    os.environ.pop("HF_HUB_CACHE", None)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@functools.cache
def built(case: str):  # noqa: ANN201
    with hf_env(case):
        return build_from_checkpoint(str(DATA / case / "checkpoint"))


@functools.cache
def outputs(case: str, name: str) -> tuple[dict, dict]:
    """(ours, reference) for one fixture, every stage computed once."""
    ckpt, processor, model = built(case)
    ref = dict(np.load(DATA / case / "fixtures" / name, allow_pickle=False))
    images = {k[len("obs."):]: v for k, v in ref.items() if k.startswith("obs.observation.images.")}
    state, task = ref["obs.observation.state"], str(ref["task"])
    inputs = processor.prepare(images, state, task)
    normalized = processor.normalized_state(state)
    ours: dict = {
        "task_after_preprocessor": processor.prompts(task, normalized)[0],
        "inputs": inputs,
        "state_normalized": normalized[None],
    }
    tensors = as_tensors(inputs)
    with torch.no_grad():
        embs, pad, ar = model.embed_prefix(**{n: tensors[n] for n in model.prefix_input_names})
    ours.update(prefix_embs=embs.numpy(), prefix_pad=pad.numpy(), prefix_ar=ar.numpy())
    roll = sample_actions(model, inputs, ref["noise"], int(ref["num_steps"]))
    ours.update(
        denoise_t=np.asarray(roll.t, np.float32)[:, None],
        denoise_x_t=np.stack(roll.x_t),
        denoise_v_t=np.stack(roll.v_t),
        sample_actions=roll.actions,
        predict_action_chunk=roll.actions[:, :, : ckpt.spec.action_dim],
        actions=processor.postprocess(roll.actions),
    )
    return ours, ref


def assert_close(stage: str, ours: np.ndarray, ref: np.ndarray) -> None:
    ours, ref = np.asarray(ours, np.float32), np.asarray(ref, np.float32)
    assert ours.shape == ref.shape, f"stage {stage}: shape {ours.shape} != reference {ref.shape}"
    err = float(np.abs(ours - ref).max()) if ref.size else 0.0
    tol = TOL * max(1.0, float(np.abs(ref).max()) if ref.size else 1.0)
    assert err <= tol, f"stage {stage}: max_abs {err:.3g} > {tol:.3g}"


def check_stage(stage: str, ours: dict, ref: dict) -> None:  # noqa: C901
    inputs = ours["inputs"]
    if stage == "task_after_preprocessor":
        assert ours[stage] == str(ref["out.task_after_preprocessor"]), f"stage {stage}: prompt differs"
    elif stage == "lang_tokens":
        ids, mask = inputs["lang_tokens"], inputs["lang_masks"]
        r_ids, r_mask = ref["out.lang_tokens"], ref["out.lang_attention_mask"]
        n = r_ids.shape[1]
        assert np.array_equal(ids[:, :n], r_ids), f"stage {stage}: token ids differ"
        assert np.array_equal(mask[:, :n], r_mask), f"stage {stage}: attention mask differs"
        assert not mask[:, n:].any(), f"stage {stage}: padding beyond LeRobot's length is not masked"
    elif stage == "state_normalized":
        assert_close(stage, ours[stage], ref["out.state_normalized"])
    elif stage == "model_state_padded":
        if "out.model_state_padded" not in ref:
            pytest.skip("pi0.5 has no state input (the state is in the prompt)")
        assert_close(stage, inputs["state"], ref["out.model_state_padded"])
    elif stage == "model_images":
        r_img, r_mask = ref["out.model_images"][:, 0], ref["out.model_image_masks"][:, 0]
        n = r_img.shape[0]
        assert_close(stage, inputs["images"][0, :n], r_img)
        assert np.array_equal(inputs["image_masks"][0, :n], r_mask), f"stage {stage}: image masks differ"
        assert not inputs["image_masks"][0, n:].any(), f"stage {stage}: extra image slots are not masked"
    elif stage == "prefix_masks":
        pad, ar = ours["prefix_pad"][0], ours["prefix_ar"][0]
        r_pad, r_ar = ref["out.prefix_pad_masks"][0], ref["out.prefix_att_masks"][0]
        assert pad.sum() == r_pad.sum(), f"stage {stage}: {pad.sum()} real prefix tokens, LeRobot {r_pad.sum()}"
        m = make_att_2d_masks(torch.as_tensor(pad[None]), torch.as_tensor(ar[None]))[0].numpy()
        r_m = make_att_2d_masks(torch.as_tensor(r_pad[None]), torch.as_tensor(r_ar[None]))[0].numpy()
        assert np.array_equal(m[pad][:, pad], r_m[r_pad][:, r_pad]), f"stage {stage}: attention pattern differs"
    elif stage == "prefix_embs":
        embs, pad = ours["prefix_embs"][0], ours["prefix_pad"][0]
        r_embs, r_pad = ref["out.prefix_embs"][0], ref["out.prefix_pad_masks"][0]
        assert_close(stage, embs[pad], r_embs[r_pad])
        if embs.shape == r_embs.shape:
            assert_close(stage + " (incl. padding)", embs, r_embs)
    elif stage in ("denoise_t", "denoise_x_t", "denoise_v_t"):
        r = ref["out." + stage]
        assert len(ours[stage]) == len(r), f"stage {stage}: {len(ours[stage])} steps, LeRobot {len(r)}"
        for i in range(len(r)):
            assert_close(f"{stage}[step {i}]", ours[stage][i], r[i])
    else:
        assert_close(stage, ours[stage], ref["out." + stage])


@pytest.mark.parametrize("stage", STAGES)
@pytest.mark.parametrize(("case", "fixture"), FIXTURES, ids=[f"{c}/{f}" for c, f in FIXTURES])
def test_stage(case: str, fixture: str, stage: str) -> None:
    ours, ref = outputs(case, fixture)
    check_stage(stage, ours, ref)


def test_all_public_families_present() -> None:
    """The three public checkpoints are part of the data (a fresh clone tests them)."""
    assert {"pi0", "pi05", "smolvla"} <= set(CASES)
