"""A user's LeRobot checkpoint through the product: export (parity-gated), predict, both engines.

Acceptance for "serve the user's own policy": for every fixture LeRobot 0.6.1 recorded (the
public tiny smolvla / pi0 / pi0.5 checkpoints and the generated cases with other seeds,
camera counts, dims, chunk sizes and normalizations), ``reflex-ros predict`` on the export,
with the ONNX engine and with the torch engine, and on the checkpoint itself, gives LeRobot's
``actions`` within 1e-5 x max(1, max|actions|). Everything goes through the real CLI.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from reflex_ros.cli import main as cli_main

DATA = Path(__file__).parent / "data" / "lerobot"
TOL = 1e-5
PUBLIC = ("pi0", "pi05", "smolvla")


def _cases() -> list[str]:
    out = []
    for config in sorted(DATA.rglob("checkpoint/config.json")):
        case = config.parent.parent
        if any((case / "fixtures").glob("*.npz")):
            out.append(str(case.relative_to(DATA)))
    return out


CASES = _cases()
FIXTURES = [(case, f.name) for case in CASES for f in sorted((DATA / case / "fixtures").glob("*.npz"))]


def _hf_home(case: str) -> Path:
    own = DATA / case / "hf_cache"
    return own if own.is_dir() else DATA / "hf_cache"


@pytest.fixture()
def hf(monkeypatch: pytest.MonkeyPatch):
    """Point the process at a case's offline HF cache (what a user's ~/.cache holds)."""
    def use(case: str) -> None:
        monkeypatch.setenv("HF_HOME", str(_hf_home(case)))
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    return use


_EXPORTS: dict[str, Path] = {}


@pytest.fixture(scope="module")
def export_of(tmp_path_factory: pytest.TempPathFactory):
    """case -> its export directory, written once per module through the CLI."""
    def get(case: str) -> Path:
        if case not in _EXPORTS:
            out = tmp_path_factory.mktemp(case.replace("/", "_")) / "export"
            env = {"HF_HOME": str(_hf_home(case)), "HF_HUB_OFFLINE": "1"}
            saved = {k: os.environ.get(k) for k in env}
            os.environ.update(env)
            try:
                # public cases: both layouts; generated ones: decomposed (what predict serves)
                mode = "both" if case in PUBLIC else "decomposed"
                rc = cli_main(["export", str(DATA / case / "checkpoint"), "--output", str(out), "--mode", mode,
                               "--strict", "--fixtures", "2"])
            finally:
                for k, v in saved.items():
                    os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)
            assert rc == 0, f"export of {case} failed"
            _EXPORTS[case] = out
        return _EXPORTS[case]
    return get


def _check(actions_file: Path, fixture: Path) -> float:
    ref = np.load(fixture)["out.actions"][0]
    got = np.load(actions_file)["actions"]
    assert got.shape == ref.shape and got.dtype == np.float32
    err = float(np.abs(got - ref).max())
    assert err <= TOL * max(1.0, float(np.abs(ref).max())), f"max_abs {err:.3g} vs LeRobot's actions"
    return err


@pytest.mark.parametrize(("case", "fixture"), FIXTURES)
@pytest.mark.parametrize("engine", ["onnx", "torch"])
def test_predict_on_the_export_matches_lerobot(case: str, fixture: str, engine: str, export_of,
                                              monkeypatch, tmp_path: Path, capsys) -> None:
    exported = export_of(case)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_hf"))  # serving an export needs no HF cache
    out = tmp_path / "actions.npz"
    rc = cli_main(["predict", str(exported), "--inputs", str(DATA / case / "fixtures" / fixture),
                   "--output", str(out), "--engine", engine])
    assert rc == 0, capsys.readouterr().err
    _check(out, DATA / case / "fixtures" / fixture)


@pytest.mark.parametrize(("case", "fixture"), [f for f in FIXTURES if f[0] in PUBLIC])
def test_predict_on_the_checkpoint_matches_lerobot(case: str, fixture: str, hf, tmp_path: Path) -> None:
    hf(case)
    out = tmp_path / "actions.npz"
    assert cli_main(["predict", str(DATA / case / "checkpoint"), "--inputs", str(DATA / case / "fixtures" / fixture),
                     "--output", str(out)]) == 0
    _check(out, DATA / case / "fixtures" / fixture)


@pytest.mark.parametrize("case", PUBLIC)
def test_export_is_self_contained_and_typed(case: str, export_of) -> None:
    exported = export_of(case)
    config = json.loads((exported / "reflex_config.json").read_text())
    manifest = json.loads((DATA / case / "manifest.json").read_text())
    assert config["model_type"] == manifest["policy_type"]
    assert config["camera_names"][: len(manifest["cameras"])] == manifest["cameras"]
    assert config["action_dim"] == manifest["action_dim"] and config["state_dim"] == manifest["state_dim"]
    assert config["action_width"] == 32 and config["parity"]["passed"] is True
    assert config["parity"]["max_abs_diff_across_all"] <= 1e-5
    assert config["export_command"].startswith(f"reflex-ros export {DATA / case / 'checkpoint'}")
    policy = json.loads((exported / "policy_config.json").read_text())
    assert policy["spec"]["model_type"] == case and "observation.state" in policy["stats"]
    tok = exported / "tokenizer"
    assert (tok / "tokenizer.json").is_file() and len(policy["tokenizer_sha256"]) == 16
    # expert inputs: pi0's state token lives in the suffix, the others need none
    assert config["expert_inputs"] == (["state"] if case == "pi0" else [])


def test_missing_tokenizer_is_exit_2_naming_it_and_leaves_nothing(tmp_path: Path, monkeypatch, capsys) -> None:
    """The checkpoint is there but its tokenizer repo is not in the user's cache."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty_cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "exports" / "pi0"
    rc = cli_main(["export", str(DATA / "pi0" / "checkpoint"), "--output", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert "google/paligemma-3b-pt-224" in err and "hf download google/paligemma-3b-pt-224" in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not out.exists()
    leftovers = list((tmp_path / "exports").iterdir()) if (tmp_path / "exports").exists() else []
    assert leftovers == []


def test_hub_id_resolves_in_the_local_cache_only(tmp_path: Path, monkeypatch, capsys) -> None:
    """`export me/tiny_pi05` finds the snapshot in the offline cache; an unknown id is exit 2
    with the download command, and nothing is fetched."""
    cache = tmp_path / "hf"
    shutil.copytree(DATA / "hf_cache", cache)
    repo = cache / "hub" / "models--me--tiny_pi05"
    shutil.copytree(DATA / "pi05" / "checkpoint", repo / "snapshots" / "0123abc")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text("0123abc")
    monkeypatch.setenv("HF_HOME", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "export"
    assert cli_main(["export", "me/tiny_pi05", "--output", str(out), "--mode", "decomposed", "--fixtures", "1"]) == 0
    assert json.loads((out / "reflex_config.json").read_text())["model_type"] == "pi05"
    capsys.readouterr()
    assert cli_main(["export", "me/not_there", "--output", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "me/not_there" in err and "hf download me/not_there" in err and not (tmp_path / "x").exists()


def test_export_help_shows_the_checkpoint_path_first(capsys) -> None:
    with pytest.raises(SystemExit):
        cli_main(["export", "--help"])
    text = capsys.readouterr().out
    assert text.index("CHECKPOINT") < text.index("--model")
    assert "reflex-ros export ~/ckpts/my_pi05_finetune" in text and "Nothing is downloaded" in text


def test_tools_pointed_at_a_checkpoint_never_suggest_force_onto_it(tmp_path: Path, capsys) -> None:
    """bench/run/validate on a LeRobot checkpoint directory: the hint is to export it to a
    new directory, never `--force` onto the checkpoint."""
    ckpt = tmp_path / "my_ckpt"
    shutil.copytree(DATA / "pi0" / "checkpoint", ckpt)
    for argv in (["bench", str(ckpt), "--iters", "1", "--device", "cpu"], ["validate", str(ckpt)]):
        assert cli_main(argv) == 2
        err = capsys.readouterr().err
        assert "is a LeRobot checkpoint, not an export" in err and f"reflex-ros export {ckpt}" in err
        assert "--force" not in err
    assert sorted(p.name for p in ckpt.iterdir()) == sorted(p.name for p in (DATA / "pi0" / "checkpoint").iterdir())


def test_predict_input_errors_name_the_key(tmp_path: Path, export_of, capsys) -> None:
    exported = export_of("pi05")
    src = dict(np.load(DATA / "pi05" / "fixtures" / "fixture_00.npz"))
    bad = {k: v for k, v in src.items() if k != "obs.observation.state"}
    np.savez(tmp_path / "no_state.npz", **bad)
    assert cli_main(["predict", str(exported), "--inputs", str(tmp_path / "no_state.npz"),
                     "--output", str(tmp_path / "o.npz")]) == 2
    assert "obs.observation.state" in capsys.readouterr().err
    typo = {**src, "obs.observation.images.top_camera": src["obs.observation.images.base_0_rgb"]}
    np.savez(tmp_path / "typo.npz", **typo)
    assert cli_main(["predict", str(exported), "--inputs", str(tmp_path / "typo.npz"),
                     "--output", str(tmp_path / "o.npz")]) == 2
    assert "obs.observation.images.top_camera" in capsys.readouterr().err
    short = {**src, "obs.observation.state": src["obs.observation.state"][:3]}
    np.savez(tmp_path / "short.npz", **short)
    assert cli_main(["predict", str(exported), "--inputs", str(tmp_path / "short.npz"),
                     "--output", str(tmp_path / "o.npz")]) == 2
    assert "state must have shape (10,)" in capsys.readouterr().err
    # issue 13 item 12: a finite value that overflows float32 is named with the value given, never "inf"
    huge = {**src, "obs.observation.state": np.where(np.arange(10) == 3, 1e300, src["obs.observation.state"].astype(np.float64))}
    np.savez(tmp_path / "huge.npz", **huge)
    assert cli_main(["predict", str(exported), "--inputs", str(tmp_path / "huge.npz"),
                     "--output", str(tmp_path / "o.npz")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == ("error: observation.state[3] is 1e+300, which does not fit in float32; all state values must be "
                   "finite float32"), err
    assert not (tmp_path / "o.npz").exists()
