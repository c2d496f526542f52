"""The parameter table (control/params.py): one declaration, everything derived from it."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from reflex_ros.control import params as P
from reflex_ros.control.embodiment import load_embodiment

REPO = Path(__file__).resolve().parent.parent


def test_policy_yaml_is_generated_from_the_table() -> None:
    """config/policy.yaml is the generator's output, byte for byte
    (regenerate: python -m reflex_ros.control.params > config/policy.yaml)."""
    assert (REPO / "config" / "policy.yaml").read_text() == P.render_yaml()


def test_generated_yaml_pins_nothing_an_embodiment_or_the_calibrator_supplies() -> None:
    given = yaml.safe_load(P.render_yaml())["/**"]["ros__parameters"]
    assert set(given) < set(P.SPECS)
    assert not set(given) & (set(P.EMBODIMENT_BACKED) | set(P.CALIBRATED))
    for name, value in given.items():
        assert P.check_value(name, value) is None and P.SPECS[name].coerce(value) == value
    text = P.render_yaml()
    for name in P.SPECS:  # every parameter is there, set or commented out
        assert f"    {name}: " in text or f"    # {name}: " in text, name


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [("engine", "tensorflow", "engine must be one of"), ("dtype", "fp64", "dtype must be one of"),
     ("chunk_strategy", "ensemble", "chunk_strategy must be one of ('replace', 'blend', 'rtc', 'temporal_ensemble')"),
     ("rtc_mode", "exact", "rtc_mode must be one of ('guided', 'inpaint')"),
     ("rtc_prefix_attention_schedule", "cosine", "one of ('zeros', 'ones', 'linear', 'exp')"),
     ("blend_window_steps", -1, "within [0, 1000]"),
     ("joint_names", ["a", "a"], "duplicates"), ("camera_topics", [""], "non-empty"),
     ("max_delta_per_step", [0.1, -0.1], "> 0"), ("position_lower", [0.0, float("nan")], "finite"),
     ("cfg_beta", 0.99, "0.0 (off) or >= 1.0"), ("control_frequency_hz", 0.01, "within [0.1, 1000.0]")],
)
def test_check_value_reasons(name: str, value, reason: str) -> None:
    assert reason in P.check_value(name, value)
    assert P.check_value("cfg_beta", 0.0) is None and P.check_value("cfg_beta", 1.0) is None


def test_consistency_rules_name_the_parameter() -> None:
    values = {s.name: s.default for s in P.PARAMS}
    values.update(P.embodiment_defaults(load_embodiment("so100")))
    assert P.check_consistency(values, n_joints=6, engine_rows=50, supported_nfe=(1, 2, 10)) is None
    short = {**values, "position_upper": [1.0]}
    assert "position_upper needs one value per joint (6 joints), got 1 values" in P.check_consistency(
        short, n_joints=6, engine_rows=None, supported_nfe=None)
    assert "skips 51 steps" in P.check_consistency({**values, "latency_compensation_ms": 1700.0}, n_joints=6,
                                                   engine_rows=50, supported_nfe=None)
    assert "supported: [1, 2, 10]" in P.check_consistency({**values, "nfe": 4}, n_joints=6, engine_rows=50,
                                                          supported_nfe=(1, 2, 10))


def test_settings_snapshot_has_every_parameter_and_is_immutable() -> None:
    values = {s.name: s.default for s in P.PARAMS}
    s = P.Settings(values)
    assert s.camera_topics == ("/camera/front/image_raw",) and s.chunk_strategy == P.DEFAULT_STRATEGY
    with pytest.raises(AttributeError):
        s.nfe = 4
    t = s.replace({"nfe": 4, "position_lower": [0.0, 1.0]})
    assert (s.nfe, t.nfe, t.position_lower) == (0, 4, (0.0, 1.0))
    assert t.as_dict()["position_lower"] == [0.0, 1.0]
    with pytest.raises(KeyError, match="nfe_typo"):
        s.replace({"nfe_typo": 1})
    with pytest.raises(KeyError, match="settings need a value"):
        P.Settings({"nfe": 0})


def test_command_line_values_are_coerced_to_the_declared_type() -> None:
    assert P.SPECS["control_frequency_hz"].coerce(30) == 30.0
    assert P.SPECS["position_lower"].coerce([0, 1]) == [0.0, 1.0]
    assert P.SPECS["execute_steps"].coerce(3) == 3 and P.SPECS["cfg_beta"].coerce(True) is True  # refused later
