"""Export with parity, the bundle format and `reflex-ros export` / `validate` (issue 2).

Real exports (the session fixtures in conftest.py plus one deliberately broken export), real
onnxruntime sessions, real torch reference. Tampering always happens on a copy so the
session fixtures stay pristine.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

from reflex_ros.cli import main as cli_main
from reflex_ros.engine.bundle import (
    CONFIG_FILE,
    EXPERT_FILE,
    MONOLITHIC_FILE,
    PREFIX_FILE,
    load_bundle,
    model_hash,
)
from reflex_ros.engine.export import export_model, perturb_onnx_weights
from reflex_ros.engine.export_cli import PERTURB_ENV
from reflex_ros.engine.loader import load_engine
from reflex_ros.engine.parity import STRICT_THRESHOLD, ParityCheckFailed
from reflex_ros.engine.types import ExportError, ReflexError


def _copy(src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(src, dst)
    return dst


def _edit_config(export_dir: Path, **changes) -> None:
    path = export_dir / CONFIG_FILE
    config = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    path.write_text(json.dumps(config))


# --------------------------------------------------------------------------- a good export


def test_tiny_export_passes_strict_parity_for_both_graphs(tiny_export: Path) -> None:
    config = json.loads((tiny_export / CONFIG_FILE).read_text())
    parity = config["parity"]
    assert parity["passed"] is True
    assert set(parity["max_abs_diff_by_layout"]) == {"decomposed", "monolithic"}
    for layout, max_abs in parity["max_abs_diff_by_layout"].items():
        assert max_abs <= STRICT_THRESHOLD, f"{layout} parity {max_abs:.2e} > 1e-5"
    assert parity["max_abs_diff_across_all"] == max(parity["max_abs_diff_by_layout"].values())


def test_reflex_config_has_reflex_keys_and_names_every_tensor(tiny_export: Path) -> None:
    config = json.loads((tiny_export / CONFIG_FILE).read_text())
    assert config["export_kind"] == "decomposed"  # serving default with --mode both
    assert config["export_kinds"] == ["decomposed", "monolithic"]
    assert config["num_denoising_steps"] == 10
    assert config["supported_nfe"] == list(range(1, 101))  # the decomposed graphs serve any NFE
    assert config["model_type"] == "reflex_ros_flow_vla" and config["camera_names"] == ["camera0"]
    for key in ("chunk_size", "action_dim", "action_width", "max_state_dim", "num_cameras", "image_size",
                "max_lang_tokens", "opset", "reflex_ros_version", "format_version", "export_command"):
        assert key in config, key
    d = config["decomposed"]

    def names(specs):
        return [n for n, _, _ in specs]

    assert (d["prefix_file"], d["expert_file"]) == (PREFIX_FILE, EXPERT_FILE)
    assert d["kv_k_names"] == [f"past_k_{i}" for i in range(d["num_layers"])]
    assert "past_v_0" in names(d["prefix_outputs"]) and "past_v_0" in names(d["expert_inputs"])
    assert names(d["expert_outputs"]) == ["v_t"] and "prefix_pad_masks" in names(d["prefix_outputs"])
    assert d["prefix_inputs"][0] == ["images", "uint8", ["batch", 1, 64, 64, 3]]
    assert config["monolithic"]["file"] == MONOLITHIC_FILE
    assert config["monolithic"]["outputs"] == [["actions", "float32", [1, 50, 8]]]
    for name in (PREFIX_FILE, EXPERT_FILE, MONOLITHIC_FILE, config["policy"]["weights_file"],
                 config["policy"]["config_file"]):
        assert (tiny_export / name).is_file(), name
    assert not [p.name for p in tiny_export.parent.iterdir() if ".partial-" in p.name]


def test_two_camera_export_records_its_geometry(tiny_export_2cam: Path) -> None:
    bundle = load_bundle(tiny_export_2cam)
    assert bundle.config.num_cameras == 2 and bundle.config.camera_names == ("camera0", "camera1")
    ins = bundle.signature("decomposed", "prefix").inputs
    assert dict((n, s) for n, _, s in ins)["images"][1] == 2
    assert bundle.config.parity["max_abs_diff_across_all"] <= STRICT_THRESHOLD


def test_model_hash_is_stable_and_tracks_weights_not_onnx(tiny_export: Path, tmp_path: Path) -> None:
    original = model_hash(tiny_export)
    assert len(original) == 16 and original == load_bundle(tiny_export).model_hash
    copy = _copy(tiny_export, tmp_path)
    assert model_hash(copy) == original  # a property of the content, not the path
    perturb_onnx_weights(copy / EXPERT_FILE, 1e-3)
    assert model_hash(copy) == original  # ONNX bytes are not part of the identity
    cfg_path = copy / "policy_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["seed"] = cfg["seed"] + 1
    cfg_path.write_text(json.dumps(cfg))
    assert model_hash(copy) != original


# --------------------------------------------------------------------------- validate


def test_validate_passes_and_writes_json(tiny_export: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "parity.json"
    rc = cli_main(["validate", str(tiny_export), "--strict", "--fixtures", "2", "--output-json", str(out)])
    assert rc == 0
    doc = json.loads(out.read_text())
    assert doc["passed"] is True and doc["threshold"] == STRICT_THRESHOLD
    assert doc["max_abs_diff_across_all"] <= STRICT_THRESHOLD
    assert [(f["layout"], f["fixture_idx"]) for f in doc["fixtures"]] == [
        ("decomposed", 0), ("decomposed", 1), ("monolithic", 0), ("monolithic", 1)
    ]
    assert doc["fixtures"][1]["cfg_beta"] == 2.0  # odd fixtures exercise CFG (batch 2)
    assert doc["max_abs_diff_across_all"] == max(f["max_abs_diff"] for f in doc["fixtures"])
    table = capsys.readouterr().out
    assert "fixture_idx" in table and "max_abs_diff_across_all" in table and "PASS" in table


def test_validate_tampered_export_exits_1(tiny_export: Path, tmp_path: Path, capsys) -> None:
    copy = _copy(tiny_export, tmp_path)
    perturb_onnx_weights(copy / EXPERT_FILE, 1e-3)
    out = tmp_path / "parity.json"
    rc = cli_main(["validate", str(copy), "--fixtures", "2", "--output-json", str(out)])
    assert rc == 1
    doc = json.loads(out.read_text())
    assert doc["passed"] is False and doc["max_abs_diff_across_all"] > doc["threshold"]
    assert doc["max_abs_diff_by_layout"]["monolithic"] <= doc["threshold"]  # only the expert was touched
    assert "FAIL" in capsys.readouterr().out


def test_validate_corrupt_export_exits_2_with_one_line_hint(tiny_export: Path, tmp_path: Path, capsys) -> None:
    copy = _copy(tiny_export, tmp_path)
    data = (copy / PREFIX_FILE).read_bytes()
    (copy / PREFIX_FILE).write_bytes(data[: len(data) // 3])
    rc = cli_main(["validate", str(copy)])
    err = capsys.readouterr().err.strip()
    assert rc == 2
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert PREFIX_FILE in err and "reflex-ros export" in err


# --------------------------------------------------------------------------- the refusal


def test_export_refuses_when_onnx_disagrees_and_leaves_nothing(tmp_path: Path, monkeypatch, capsys) -> None:
    """Through the real CLI: the graphs are perturbed before parity -> exit 1, no DIR."""
    out = tmp_path / "refused"
    monkeypatch.setenv(PERTURB_ENV, "0.01")
    rc = cli_main(["export", "--model", "tiny", "--output", str(out), "--mode", "decomposed", "--fixtures", "1"])
    captured = capsys.readouterr()
    assert rc == 1
    assert not out.exists()
    assert list(tmp_path.iterdir()) == []  # no temporary directory left behind either
    assert "FAIL" in captured.out and "nothing was written" in captured.err


def test_failed_forced_export_keeps_the_previous_export(tiny_export: Path, tmp_path: Path) -> None:
    """--force replaces DIR only after parity passes; a failed export must not destroy it."""
    out = tmp_path / "existing"
    shutil.copytree(tiny_export, out)
    before = sorted(p.name for p in out.iterdir())
    with pytest.raises(ParityCheckFailed) as info:
        export_model(preset="tiny", output_dir=out, mode="monolithic", nfe=1, fixtures=1, force=True,
                     perturb_onnx=0.01, log=None)
    assert not info.value.report.passed
    assert info.value.report.max_abs_diff_across_all > info.value.report.threshold
    assert sorted(p.name for p in out.iterdir()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing"]


def test_force_never_replaces_a_directory_that_is_not_an_export(tmp_path: Path, capsys) -> None:
    """A LeRobot checkpoint (or anything else) must never be the target of --force."""
    out = tmp_path / "checkpoint"
    out.mkdir()
    (out / "config.json").write_text("{}")
    rc = cli_main(["export", "--model", "tiny", "--output", str(out), "--force"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "holds no reflex_config.json" in err and len(err.splitlines()) == 1
    assert [p.name for p in out.iterdir()] == ["config.json"]


def test_export_into_an_existing_empty_directory(tmp_path: Path) -> None:
    """An empty directory (a mount point, one the user made) is filled in place."""
    out = tmp_path / "empty"
    out.mkdir()
    report = export_model(preset="tiny", output_dir=out, mode="decomposed", fixtures=1, log=None)
    assert report.passed and (out / CONFIG_FILE).is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


def test_export_into_non_empty_dir_without_force_is_an_error(tmp_path: Path, capsys) -> None:
    out = tmp_path / "busy"
    out.mkdir()
    (out / "file").write_text("x")
    rc = cli_main(["export", "--model", "tiny", "--output", str(out)])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "--force" in err and str(out) in err and len(err.splitlines()) == 1
    with pytest.raises(ExportError, match="not a directory"):
        export_model(preset="tiny", output_dir=out / "file", log=None)


def test_export_rejects_bad_arguments_naming_them(tmp_path: Path) -> None:
    with pytest.raises(ReflexError, match="nfe=0"):
        export_model(preset="tiny", output_dir=tmp_path / "a", nfe=0, log=None)
    with pytest.raises(ReflexError, match="unknown model preset 'huge'"):
        export_model(preset="huge", output_dir=tmp_path / "b", log=None)
    with pytest.raises(ReflexError, match="export mode 'split'"):
        export_model(preset="tiny", output_dir=tmp_path / "c", mode="split", log=None)
    with pytest.raises(ReflexError, match="opset 99 is not supported.*14..20"):
        export_model(preset="tiny", output_dir=tmp_path / "d", opset=99, log=None)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- load_bundle errors


def test_missing_directory_and_missing_config(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="does not exist.*reflex-ros export"):
        load_bundle(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ExportError, match=f"{CONFIG_FILE} is missing"):
        load_bundle(tmp_path / "empty")


def test_config_not_json_or_missing_key(tiny_export: Path, tmp_path: Path) -> None:
    copy = _copy(tiny_export, tmp_path)
    _edit_config(copy, chunk_size=None)
    with pytest.raises(ExportError, match="lacks required key.*chunk_size"):
        load_bundle(copy)
    (copy / CONFIG_FILE).write_text("{not json")
    with pytest.raises(ExportError, match=f"{CONFIG_FILE} is not valid JSON"):
        load_bundle(copy)


def test_referenced_file_missing(tiny_export: Path, tmp_path: Path) -> None:
    copy = _copy(tiny_export, tmp_path)
    (copy / EXPERT_FILE).unlink()
    with pytest.raises(ExportError, match=f"graph file missing: .*{EXPERT_FILE}.*--force"):
        load_bundle(copy)
    (copy / "policy.safetensors").unlink()
    with pytest.raises(ExportError, match="policy file missing: .*policy.safetensors"):
        load_bundle(copy)


@pytest.mark.parametrize("damage", ["truncated", "garbage"])
def test_corrupt_onnx_is_an_export_error(tiny_export: Path, tmp_path: Path, damage: str) -> None:
    copy = _copy(tiny_export, tmp_path)
    path = copy / MONOLITHIC_FILE
    if damage == "truncated":
        path.write_bytes(path.read_bytes()[:1000])
    else:
        path.write_bytes(bytes(range(256)) * 64)
    with pytest.raises(ExportError, match=f"{MONOLITHIC_FILE} is not a readable ONNX model"):
        load_bundle(copy)


def test_config_that_does_not_match_the_onnx_names_the_tensor(tiny_export: Path, tmp_path: Path) -> None:
    copy = _copy(tiny_export, tmp_path)
    config = json.loads((copy / CONFIG_FILE).read_text())
    assert config["decomposed"]["prefix_outputs"][0][0] == "past_k_0"
    config["decomposed"]["prefix_outputs"][0][2][2] += 1
    (copy / CONFIG_FILE).write_text(json.dumps(config))
    with pytest.raises(ExportError, match=r"vlm_prefix.onnx output 'past_k_0' dim 2 is \d+, .*expects \d+"):
        load_bundle(copy)


def test_policy_config_disagreeing_with_reflex_config(tiny_export: Path, tmp_path: Path) -> None:
    copy = _copy(tiny_export, tmp_path)
    _edit_config(copy, action_dim=7)
    with pytest.raises(ExportError, match="gives action_dim=8 but reflex_config.json has action_dim=7"):
        load_bundle(copy).processor()
    with pytest.raises(ExportError, match="action_dim=8 but reflex_config.json has action_dim=7"):
        load_engine(copy)


def test_export_written_by_another_format_version_is_refused(tiny_export: Path, tmp_path: Path) -> None:
    copy = _copy(tiny_export, tmp_path)
    _edit_config(copy, format_version=1)
    with pytest.raises(ExportError, match="format_version 1; this reflex_ros reads version 2.*--force"):
        load_bundle(copy)


def test_onnx_input_renamed_is_caught_before_any_session(tiny_export: Path, tmp_path: Path) -> None:
    import onnx

    copy = _copy(tiny_export, tmp_path)
    model = onnx.load(str(copy / EXPERT_FILE))
    old = model.graph.input[0].name
    model.graph.input[0].name = "x_noisy"
    for node in model.graph.node:
        node.input[:] = ["x_noisy" if i == old else i for i in node.input]
    onnx.save(model, str(copy / EXPERT_FILE))
    with pytest.raises(ExportError, match=r"expert_denoise.onnx inputs are .*x_noisy.*expects .*x_t"):
        load_bundle(copy)


def test_large_graphs_use_one_external_data_file(tmp_path: Path, monkeypatch) -> None:
    """pi0-size graphs exceed protobuf's 2 GB: weights go to `<graph>.onnx.data`. Forced here
    on tiny by lowering the threshold; parity then runs on the external-data graphs."""
    import reflex_ros.engine.export as export_module

    monkeypatch.setattr(export_module, "EXTERNAL_DATA_THRESHOLD_BYTES", 0)
    out = tmp_path / "ext"
    report = export_model(preset="tiny", output_dir=out, mode="decomposed", fixtures=1, strict=True, log=None)
    assert report.passed and report.max_abs_diff_across_all <= STRICT_THRESHOLD
    names = sorted(p.name for p in out.iterdir())
    assert f"{PREFIX_FILE}.data" in names and f"{EXPERT_FILE}.data" in names
    assert not [n for n in names if n.startswith(".work-") or n.startswith("onnx::")]
    assert (out / PREFIX_FILE).stat().st_size < (out / f"{PREFIX_FILE}.data").stat().st_size
    data = out / f"{EXPERT_FILE}.data"
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(ExportError, match=f"{EXPERT_FILE}.data is truncated"):
        load_bundle(out)
    data.unlink()
    with pytest.raises(ExportError, match=f"{EXPERT_FILE}.data, which is missing"):
        load_bundle(out)


# --------------------------------------------------------------------------- output places (issue 13 items 10-11)


class Mounts:
    """Real tmpfs mounts (root in a mount-capable container, as on the dev machine and in CI):
    the only way to make a directory unwritable for root, and the mount point users hit."""

    def __init__(self) -> None:
        self.points: list[Path] = []

    def tmpfs(self, target: Path, read_only: bool = False) -> Path:
        import subprocess

        target.mkdir(parents=True, exist_ok=True)
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m" + (",ro" if read_only else ""), "tmpfs",
                               str(target)], capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip() or done.returncode}); these cases need "
                        "root with CAP_SYS_ADMIN")
        self.points.append(target)
        return target

    def read_only(self, target: Path) -> None:
        import subprocess

        subprocess.run(["mount", "-o", "remount,ro", str(target)], check=True)

    def close(self) -> None:
        import subprocess

        for point in reversed(self.points):
            subprocess.run(["umount", "-l", str(point)], capture_output=True)


@pytest.fixture()
def mounts():
    m = Mounts()
    try:
        yield m
    finally:
        m.close()


def _one_line_error(capsys) -> tuple[str, str]:
    captured = capsys.readouterr()
    err = captured.err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return captured.out, err


def test_validate_output_json_unwritable_exits_2_before_the_parity_check(tiny_export: Path, tmp_path: Path,
                                                                         mounts, capsys) -> None:
    """It used to run the whole check, then print a traceback and exit 1 (the parity-failure code)."""
    locked = mounts.tmpfs(tmp_path / "ro", read_only=True)
    (tmp_path / "a_file").write_text("x")
    for target, why in ((locked / "parity.json", f"cannot create {locked / 'parity.json'}: {locked} is not writable"),
                        (tmp_path / "a_file" / "parity.json", "is not a directory"),
                        (tmp_path, f"{tmp_path} is a directory")):
        rc = cli_main(["validate", str(tiny_export), "--fixtures", "1", "--output-json", str(target)])
        out, err = _one_line_error(capsys)
        assert rc == 2 and err.startswith("error: --output-json: ") and why in err, err
        assert out == ""  # refused up front: no parity table was printed


def test_export_into_an_empty_mount_point_fills_it(tmp_path: Path, mounts, capsys) -> None:
    """It used to fail with OSError [Errno 16] Device or resource busy (and, once filled in
    place from a sibling, EXDEV: the sibling is on another filesystem)."""
    out = mounts.tmpfs(tmp_path / "mnt")
    rc = cli_main(["export", "--model", "tiny", "--output", str(out), "--mode", "decomposed", "--fixtures", "1"])
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    assert os.path.ismount(out) and (out / CONFIG_FILE).is_file()
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no temporary directory left
    assert [p.name for p in tmp_path.iterdir()] == ["mnt"]
    load_bundle(out)


def test_export_into_an_empty_directory_whose_parent_is_not_writable(tmp_path: Path, mounts, capsys) -> None:
    """A writable empty directory (here a mount point) in a read-only parent is filled in place;
    a new directory there, or an empty one that is itself read-only, is refused up front."""
    parent = mounts.tmpfs(tmp_path / "parent")
    (parent / "empty_ro").mkdir()
    (parent / "mnt").mkdir()
    mounts.read_only(parent)
    out = mounts.tmpfs(parent / "mnt")
    assert cli_main(["export", "--model", "tiny", "--output", str(out), "--mode", "decomposed",
                     "--fixtures", "1"]) == 0, capsys.readouterr().err
    assert (out / CONFIG_FILE).is_file()
    capsys.readouterr()
    for target, why in ((parent / "new", f"cannot write next to {parent / 'new'}: {parent} is not writable"),
                        (parent / "empty_ro", f"cannot write into {parent / 'empty_ro'}: the directory is not "
                                              "writable")):
        rc = cli_main(["export", "--model", "tiny", "--output", str(target), "--mode", "decomposed"])
        stdout, err = _one_line_error(capsys)
        assert rc == 2 and why in err, err
        assert stdout == ""  # refused before loading or exporting anything


def test_fp16_export_keeps_the_float32_signature_and_needs_a_gpu_provider(tiny_export: Path, tmp_path: Path,
                                                                         capsys) -> None:
    """--precision fp16 rewrites the graphs in fp16 (for ONNX Runtime's CUDA provider) with the
    same float32 inputs and outputs; its parity check, and serving it, need a GPU provider,
    refused up front on the CPU with what to do instead."""
    import onnx

    from reflex_ros.engine.bundle import read_config
    from reflex_ros.engine.export import convert_graphs_to_fp16

    rc = cli_main(["export", "--model", "tiny", "--output", str(tmp_path / "half"), "--precision", "fp16"])
    assert rc == 2 and "--parity-provider cuda" in capsys.readouterr().err and not (tmp_path / "half").exists()
    copy = _copy(tiny_export, tmp_path)
    config = read_config(copy)
    convert_graphs_to_fp16(copy, config)
    _edit_config(copy, precision="fp16")
    bundle = load_bundle(copy)  # the graphs still match the config's float32 signatures
    assert bundle.config.precision == "fp16"
    model = onnx.load(str(copy / EXPERT_FILE))
    assert {init.data_type for init in model.graph.initializer if init.dims} == {onnx.TensorProto.FLOAT16}
    assert {i.type.tensor_type.elem_type for i in model.graph.input} == {onnx.TensorProto.FLOAT,
                                                                          onnx.TensorProto.BOOL}
    with pytest.raises(ReflexError, match="graphs are fp16, which CPUExecutionProvider cannot run"):
        load_engine(copy, provider="cpu")
