"""Parameter declaration in the node itself (ros/params.py from the control/params.py table):
embodiment defaults, explicit overrides win, command-line integers accepted for doubles, the
explicit set the calibrator needs, a descriptor with description and range for every spec."""

from __future__ import annotations

import pytest
import rclpy
from rclpy.context import Context
from rclpy.parameter import Parameter
from rclpy.signals import SignalHandlerOptions

from reflex_ros.control import params as P
from reflex_ros.ros.params import descriptor
from reflex_ros.ros.policy_node import PolicyNode


@pytest.fixture()
def make_node():
    ctx = Context()
    rclpy.init(context=ctx, signal_handler_options=SignalHandlerOptions.NO)
    nodes: list[PolicyNode] = []

    def make(**overrides) -> PolicyNode:
        node = PolicyNode(f"reflex_params_{len(nodes)}", context=ctx,
                          parameter_overrides=[Parameter(k, value=v) for k, v in overrides.items()])
        nodes.append(node)
        return node
    yield make
    for node in nodes:
        node.destroy_node()
    rclpy.try_shutdown(context=ctx)


def test_embodiment_supplies_defaults_and_explicit_values_win(make_node) -> None:
    node = make_node(embodiment="ur5", control_frequency_hz=40, position_upper=[1, 2, 3, 4, 5, 6])

    def get(name: str):
        return node.get_parameter(name).value
    assert list(get("joint_names"))[0] == "shoulder_pan_joint"
    assert get("execute_steps") == 10 and get("latency_compensation_ms") == 40.0  # from ur5.yaml
    assert get("control_frequency_hz") == 40.0  # explicit integer, coerced to double
    assert list(get("position_upper")) == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    assert list(get("position_lower"))[2] == -3.09  # not given: the preset's
    explicit = node.explicit_parameters
    assert set(explicit) == {"embodiment", "control_frequency_hz", "position_upper"}
    assert explicit["control_frequency_hz"] == 40.0


def test_user_changes_become_explicit_and_are_validated(make_node) -> None:
    node = make_node(embodiment="so100")
    assert "nfe" not in node.explicit_parameters
    result = node.set_parameters([Parameter("nfe", value=4)])[0]
    assert result.successful
    assert node.explicit_parameters["nfe"] == 4
    refused = node.set_parameters([Parameter("cfg_beta", value=0.3)])[0]
    assert not refused.successful and "cfg_beta" in refused.reason
    assert "cfg_beta" not in node.explicit_parameters
    # while unconfigured, reconfigure-only parameters can be fixed
    assert node.set_parameters([Parameter("export_dir", value="/tmp/x")])[0].successful


def test_no_embodiment_leaves_robot_parameters_unset(make_node) -> None:
    node = make_node()
    values = node.parameter_values()
    assert values["joint_names"] is None and values["position_lower"] is None
    assert values["control_frequency_hz"] == P.SPECS["control_frequency_hz"].default


def test_unknown_embodiment_does_not_crash_construction(make_node) -> None:
    node = make_node(embodiment="kuka")
    assert node.get_parameter("embodiment").value == "kuka"
    assert node.parameter_values()["joint_names"] is None


@pytest.mark.parametrize("name", sorted(P.SPECS))
def test_every_parameter_has_a_descriptor_with_description_and_range(name: str) -> None:
    spec = P.SPECS[name]
    desc = descriptor(spec)
    assert desc.description and desc.name == name
    if spec.kind in (int, float):
        assert desc.integer_range or desc.floating_point_range, f"{name} has no range"
    if spec.choices:
        assert desc.additional_constraints.startswith("one of: ")


def test_a_string_given_for_a_double_is_refused_at_start_up(make_node) -> None:
    from rclpy.exceptions import InvalidParameterTypeException

    with pytest.raises(InvalidParameterTypeException):
        make_node(control_frequency_hz="fast")
