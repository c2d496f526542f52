"""Checkpoint loading: key fix-ups keep the actions, bad checkpoints fail naming the key,
padding never changes the actions, and the tokenizer stays offline."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from reflex_ros.policies.lerobot.checkpoint import load_lerobot_checkpoint
from reflex_ros.policies.lerobot.errors import CheckpointError, HubFileNotFoundError
from reflex_ros.policies.lerobot.families import build_from_checkpoint, model_class
from reflex_ros.policies.lerobot.rollout import sample_actions
from reflex_ros.policies.lerobot.tokenizer import LeRobotTokenizer

DATA = Path(__file__).parent / "data" / "lerobot"
PALI_ID = "google/paligemma-3b-pt-224"
SMOL_ID = "HuggingFaceTB/SmolVLM2-500M-Video-Instruct"


@pytest.fixture(autouse=True)
def _offline_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", str(DATA / "hf_cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)


def _copy(family: str, tmp_path: Path) -> Path:
    dst = tmp_path / family
    shutil.copytree(DATA / family / "checkpoint", dst)
    return dst


def _edit_weights(ckpt: Path, edit) -> None:  # noqa: ANN001
    tensors = load_file(str(ckpt / "model.safetensors"))
    save_file(edit(dict(tensors)), str(ckpt / "model.safetensors"))


def _edit_json(path: Path, edit) -> None:  # noqa: ANN001
    path.write_text(json.dumps(edit(json.loads(path.read_text()))))


def _actions(ckpt: Path, fixture: str = "fixture_00.npz") -> np.ndarray:
    _, processor, model = build_from_checkpoint(str(ckpt))
    family = json.loads((ckpt / "config.json").read_text())["type"]
    ref = np.load(DATA / family / "fixtures" / fixture)
    images = {k[len("obs."):]: ref[k] for k in ref.files if k.startswith("obs.observation.images.")}
    inputs = processor.prepare(images, ref["obs.observation.state"], str(ref["task"]))
    return processor.postprocess(sample_actions(model, inputs, ref["noise"], int(ref["num_steps"])).actions)


def _reference(family: str, fixture: str = "fixture_00.npz") -> np.ndarray:
    return np.load(DATA / family / "fixtures" / fixture)["out.actions"]


# ---------------------------------------------------------------- key fix-ups
def test_missing_model_prefix(tmp_path: Path) -> None:
    ckpt = _copy("pi0", tmp_path)
    _edit_weights(ckpt, lambda t: {k.removeprefix("model."): v for k, v in t.items()})
    assert any("prefix" in n for n in load_lerobot_checkpoint(ckpt).notes)
    np.testing.assert_allclose(_actions(ckpt), _reference("pi0"), atol=1e-4)


def test_pi0_time_mlp_names(tmp_path: Path) -> None:
    ckpt = _copy("pi0", tmp_path)
    _edit_weights(ckpt, lambda t: {k.replace("action_time_mlp_", "time_mlp_"): v for k, v in t.items()})
    np.testing.assert_allclose(_actions(ckpt), _reference("pi0"), atol=1e-4)


def test_pi05_action_time_mlp_names_and_stray_state_proj(tmp_path: Path) -> None:
    ckpt = _copy("pi05", tmp_path)

    def edit(t: dict) -> dict:
        t = {k.replace("model.time_mlp_", "model.action_time_mlp_"): v for k, v in t.items()}
        t["model.state_proj.weight"] = np.zeros((32, 32), np.float32)  # pi0-era leftover, dropped by LeRobot
        return t

    _edit_weights(ckpt, edit)
    np.testing.assert_allclose(_actions(ckpt), _reference("pi05"), atol=1e-4)


@pytest.mark.parametrize(
    ("family", "embed", "head"),
    [("pi0", "model.paligemma_with_expert.paligemma.model.language_model.embed_tokens.weight",
      "model.paligemma_with_expert.paligemma.lm_head.weight"),
     ("smolvla", "model.vlm_with_expert.vlm.model.text_model.embed_tokens.weight",
      "model.vlm_with_expert.vlm.lm_head.weight")],
)
def test_tied_embeddings(family: str, embed: str, head: str, tmp_path: Path) -> None:
    ckpt = _copy(family, tmp_path)

    def edit(t: dict) -> dict:
        t[head] = t.pop(embed)
        return t

    _edit_weights(ckpt, edit)
    np.testing.assert_allclose(_actions(ckpt), _reference(family), atol=1e-4)


# ---------------------------------------------------------------- clear errors
def test_unknown_type(tmp_path: Path) -> None:
    ckpt = _copy("pi0", tmp_path)
    _edit_json(ckpt / "config.json", lambda c: {**c, "type": "pi0fast"})
    with pytest.raises(CheckpointError, match="'type' is 'pi0fast'"):
        load_lerobot_checkpoint(ckpt)


def test_missing_normalization_stat(tmp_path: Path) -> None:
    ckpt = _copy("pi05", tmp_path)
    stats = next(ckpt.glob("policy_preprocessor_step_*_normalizer_processor.safetensors"))
    save_file({k: v for k, v in load_file(str(stats)).items() if k != "observation.state.q99"}, str(stats))
    with pytest.raises(CheckpointError, match=r"observation\.state\.q99"):
        load_lerobot_checkpoint(ckpt)


def test_stats_file_found_by_glob(tmp_path: Path) -> None:
    """The step index in the stats file name differs between checkpoints."""
    ckpt = _copy("smolvla", tmp_path)
    old = next(ckpt.glob("policy_preprocessor_step_*_normalizer_processor.safetensors"))
    old.rename(ckpt / "policy_preprocessor_step_9_normalizer_processor.safetensors")
    _edit_json(ckpt / "policy_preprocessor.json", lambda c: {
        **c, "steps": [{k: v for k, v in s.items() if k != "state_file"} for s in c["steps"]]})
    assert load_lerobot_checkpoint(ckpt).state_normalizer.mode == "MEAN_STD"


@pytest.mark.parametrize("key", ["use_relative_actions", "adapt_to_pi_aloha"])
def test_unsupported_flags(key: str, tmp_path: Path) -> None:
    family = "smolvla" if key == "adapt_to_pi_aloha" else "pi0"
    ckpt = _copy(family, tmp_path)
    _edit_json(ckpt / "config.json", lambda c: {**c, key: True})
    with pytest.raises(CheckpointError, match=key):
        load_lerobot_checkpoint(ckpt)


def test_relative_actions_processor_enabled(tmp_path: Path) -> None:
    ckpt = _copy("pi0", tmp_path)

    def edit(c: dict) -> dict:
        for s in c["steps"]:
            if s["registry_name"] == "relative_actions_processor":
                s["config"]["enabled"] = True
        return c

    _edit_json(ckpt / "policy_preprocessor.json", edit)
    with pytest.raises(CheckpointError, match="relative_actions_processor"):
        load_lerobot_checkpoint(ckpt)


def test_unknown_processor_step(tmp_path: Path) -> None:
    ckpt = _copy("pi0", tmp_path)
    _edit_json(ckpt / "policy_preprocessor.json",
               lambda c: {**c, "steps": [*c["steps"], {"registry_name": "mystery_step", "config": {}}]})
    with pytest.raises(CheckpointError, match="mystery_step"):
        load_lerobot_checkpoint(ckpt)


@pytest.mark.parametrize("family", ["pi0", "pi05", "smolvla"])
def test_missing_weight(family: str, tmp_path: Path) -> None:
    ckpt = _copy(family, tmp_path)
    victim = {"pi0": "model.state_proj.bias", "pi05": "model.time_mlp_out.weight",
              "smolvla": "model.vlm_with_expert.lm_expert.layers.1.mlp.up_proj.weight"}[family]
    _edit_weights(ckpt, lambda t: {k: v for k, v in t.items() if k != victim})
    with pytest.raises(CheckpointError, match=victim.replace(".", r"\.")):
        ck = load_lerobot_checkpoint(ckpt)
        model_class(family)(ck.spec, ck.load_state_dict())


def test_unexpected_weight(tmp_path: Path) -> None:
    ckpt = _copy("smolvla", tmp_path)
    _edit_weights(ckpt, lambda t: {**t, "model.surprise.weight": np.zeros(3, np.float32)})
    ck = load_lerobot_checkpoint(ckpt)
    with pytest.raises(CheckpointError, match=r"model\.surprise\.weight"):
        model_class("smolvla")(ck.spec, ck.load_state_dict())


def test_inconsistent_config(tmp_path: Path) -> None:
    ckpt = _copy("pi0", tmp_path)
    _edit_json(ckpt / "config.json", lambda c: {**c, "max_state_dim": 16})
    with pytest.raises(CheckpointError, match="max_state_dim"):
        load_lerobot_checkpoint(ckpt)


# ---------------------------------------------------------------- padding is invisible
@pytest.mark.parametrize("family", ["pi0", "smolvla"])
def test_padding_does_not_change_actions(family: str) -> None:
    """The same observation with the prompt padded to the max length and cut to its real
    tokens (LeRobot's "longest" padding at batch 1) gives the same actions."""
    _, processor, model = build_from_checkpoint(str(DATA / family / "checkpoint"))
    ref = np.load(DATA / family / "fixtures" / "fixture_01.npz")
    images = {k[len("obs."):]: ref[k] for k in ref.files if k.startswith("obs.observation.images.")}
    padded = processor.prepare(images, ref["obs.observation.state"], str(ref["task"]))
    n = int(padded["lang_masks"].sum())
    assert n < padded["lang_masks"].shape[1]
    cut = {**padded, "lang_tokens": padded["lang_tokens"][:, :n], "lang_masks": padded["lang_masks"][:, :n]}
    a = sample_actions(model, padded, ref["noise"], 3).actions
    b = sample_actions(model, cut, ref["noise"], 3).actions
    np.testing.assert_allclose(a, b, atol=2e-6)


# ---------------------------------------------------------------- tokenizer
def test_missing_tokenizer_names_hub_id_and_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty"))
    with pytest.raises(HubFileNotFoundError) as err:
        LeRobotTokenizer.from_pretrained(PALI_ID)
    assert PALI_ID in str(err.value) and f"hf download {PALI_ID}" in str(err.value)
    assert f"huggingface-cli download {PALI_ID}" in str(err.value)


def test_missing_smolvla_backbone_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty"))
    with pytest.raises(HubFileNotFoundError, match=f"hf download {SMOL_ID}"):
        load_lerobot_checkpoint(DATA / "smolvla" / "checkpoint")


@pytest.mark.parametrize("hub_id", [PALI_ID, SMOL_ID])
def test_tokenizer_from_plain_directory(hub_id: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An export copies the tokenizer files; serving loads them with no hub cache at all."""
    tok = LeRobotTokenizer.from_pretrained(hub_id)
    written = tok.save(tmp_path / "tokenizer")
    assert {p.name for p in written} == {"tokenizer.json", "tokenizer_config.json"}
    monkeypatch.setenv("HF_HOME", str(tmp_path / "no-cache"))
    start = time.perf_counter()
    local = LeRobotTokenizer.from_pretrained(tmp_path / "tokenizer")
    assert time.perf_counter() - start < 2.0
    texts = ["pick up the red cube\n", "très bien ✓ <image> __ x", ""]
    for a, b in zip(tok.encode(texts, 32), local.encode(texts, 32), strict=True):
        np.testing.assert_array_equal(a, b)


FUZZ = [
    "pick up the red cube and place it in the bowl\n",
    "  leading and trailing spaces  ",
    "tabs\tand\nnewlines\r\n and  double  spaces",
    "Fold_the towel in half.\n",
    "unicode: très bien, naïve café, 日本語, emoji 🤖✓",
    "special-looking <bos> <pad> <image> <end_of_utterance> tokens",
    "Task: open the drawer, State: 0 12 255 -1;\nAction: ",
    "",
    "x" * 300,
]


def _legacy_layout(src: Path, dst: Path, kind: str) -> Path:
    """A copy whose tokenizer.json normalizer / pre-tokenizer differ from what
    transformers 5.x rebuilds (as in older hub files); ids must still match transformers."""
    shutil.copytree(src, dst)
    tok = json.loads((dst / "tokenizer.json").read_text())
    if kind == "gemma":
        tok["normalizer"] = {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
        tok["pre_tokenizer"] = None
    else:
        tok["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
        tok["normalizer"] = {"type": "NFKC"}
    (dst / "tokenizer.json").write_text(json.dumps(tok))
    return dst


@pytest.mark.parametrize(("hub_id", "kind"), [(PALI_ID, "gemma"), (SMOL_ID, "gpt2")])
@pytest.mark.parametrize("legacy", [False, True])
def test_tokenizer_matches_transformers(hub_id: str, kind: str, legacy: bool, tmp_path: Path) -> None:
    transformers = pytest.importorskip("transformers")
    directory = LeRobotTokenizer.from_pretrained(hub_id).directory
    if legacy:
        directory = _legacy_layout(directory, tmp_path / "legacy", kind)
    ours = LeRobotTokenizer.from_pretrained(directory)
    theirs = transformers.AutoTokenizer.from_pretrained(str(directory))
    for text in FUZZ:
        for max_length in (8, 48):
            ref = theirs([text], max_length=max_length, truncation=True, padding="max_length", padding_side="right")
            ids, mask = ours.encode([text], max_length)
            assert ids[0].tolist() == ref["input_ids"][0], (text, max_length)
            assert mask[0].tolist() == [bool(m) for m in ref["attention_mask"][0]], (text, max_length)


def test_pi05_cfg_batch_rows() -> None:
    """The RECAP batch runs as one [cond, uncond] batch; its uncond row is the plain run."""
    _, processor, model = build_from_checkpoint(str(DATA / "pi05" / "checkpoint"))
    ref = np.load(DATA / "pi05" / "fixtures" / "fixture_00.npz")
    images = {k[len("obs."):]: ref[k] for k in ref.files if k.startswith("obs.observation.images.")}
    pair = processor.prepare(images, ref["obs.observation.state"], str(ref["task"]), cfg_beta=1.5)
    single = processor.prepare(images, ref["obs.observation.state"], str(ref["task"]))
    both = sample_actions(model, pair, np.repeat(ref["noise"], 2, axis=0), 3).actions
    plain = sample_actions(model, single, ref["noise"], 3).actions
    np.testing.assert_allclose(both[1], plain[0], atol=1e-5)
    assert np.abs(both[0] - both[1]).max() > 1e-4  # the advantage tag changes the prediction
