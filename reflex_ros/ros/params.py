"""ROS 2 parameters from a :class:`~reflex_ros.control.params.ParamSpec` table.

Both nodes (the policy node and the simulated arm) declare their parameters through
:func:`declare_parameters`: one descriptor per spec (type, description, range, the other
rules as ``additional_constraints``: what rqt_reconfigure shows), and the values given at
start-up (``-p``, ``--params-file``, ``parameter_overrides``) found through rclpy's public
API: the node is created with ``automatically_declare_parameters_from_overrides=True``, so a
given value is a declared parameter before the table is applied; it is read, coerced to the
declared type (``-p rate:=30`` for a double), and re-declared with its descriptor.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from rcl_interfaces.msg import FloatingPointRange, IntegerRange, ParameterDescriptor, ParameterType
from rclpy.exceptions import InvalidParameterTypeException, ParameterUninitializedException
from rclpy.node import Node
from rclpy.parameter import Parameter

from reflex_ros.control.params import ParamSpec

_TYPES = {
    bool: ParameterType.PARAMETER_BOOL,
    int: ParameterType.PARAMETER_INTEGER,
    float: ParameterType.PARAMETER_DOUBLE,
    str: ParameterType.PARAMETER_STRING,
    "str[]": ParameterType.PARAMETER_STRING_ARRAY,
    "float[]": ParameterType.PARAMETER_DOUBLE_ARRAY,
}
_ARRAY_TYPES = {"str[]": Parameter.Type.STRING_ARRAY, "float[]": Parameter.Type.DOUBLE_ARRAY}
# what make a node declare every given value (so the table can find them publicly)
NODE_OPTIONS: dict[str, Any] = {"automatically_declare_parameters_from_overrides": True}


def descriptor(spec: ParamSpec, read_only: bool | None = None) -> ParameterDescriptor:
    """The spec's ParameterDescriptor; ``read_only`` overrides ``spec.read_only``."""
    note = " [reconfigure-only: change while unconfigured]" if spec.reconfigure_only else ""
    desc = ParameterDescriptor(
        name=spec.name, type=_TYPES[spec.kind], description=spec.description + note,
        read_only=spec.read_only if read_only is None else read_only, additional_constraints=spec.constraints())
    if spec.bounds is not None and spec.kind is float:
        desc.floating_point_range = [FloatingPointRange(
            from_value=float(spec.bounds[0]), to_value=float(spec.bounds[1]), step=0.0)]
    if spec.bounds is not None and spec.kind is int:
        desc.integer_range = [IntegerRange(from_value=int(spec.bounds[0]), to_value=int(spec.bounds[1]), step=1)]
    return desc


def _has_kind(kind: Any, value: Any) -> bool:
    if kind == "str[]":
        return all(isinstance(v, str) for v in value) if isinstance(value, list) else False
    if kind == "float[]":
        return isinstance(value, list) and all(isinstance(v, float) for v in value)
    return isinstance(value, kind) and (kind is bool or not isinstance(value, bool))


def given_value(node: Node, name: str) -> Any:
    """The start-up value of ``name`` if one was given (None otherwise), before declaration."""
    return node.get_parameter(name).value if node.has_parameter(name) else None


def declare_parameters(node: Node, specs: Iterable[ParamSpec],
                       defaults: Mapping[str, Any] | None = None) -> set[str]:
    """Declare every spec on ``node`` (created with :data:`NODE_OPTIONS`): a value given at
    start-up wins (coerced to the declared type), else ``defaults[name]``, else the spec's
    default. Returns the names that were given (the *explicit* parameters)."""
    explicit: set[str] = set()
    for spec in specs:
        value = (defaults or {}).get(spec.name, spec.default)
        if node.has_parameter(spec.name):  # declared from the overrides: given at start-up
            value = spec.coerce(node.get_parameter(spec.name).value)
            node.undeclare_parameter(spec.name)
            explicit.add(spec.name)
        if value is None:
            node.declare_parameter(spec.name, _ARRAY_TYPES[spec.kind], descriptor(spec), ignore_override=True)
            continue
        value = spec.coerce(value)
        if not _has_kind(spec.kind, value):  # rclpy would re-type the parameter after the value
            raise InvalidParameterTypeException(Parameter(spec.name, value=value),
                                                Parameter.Type(_TYPES[spec.kind]).name)
        node.declare_parameter(spec.name, value, descriptor(spec), ignore_override=True)
    return explicit


def parameter_values(node: Node, names: Iterable[str]) -> dict[str, Any]:
    """Current values (arrays as lists; an uninitialised array is None)."""
    out: dict[str, Any] = {}
    for name in names:
        try:
            value = node.get_parameter(name).value
        except ParameterUninitializedException:
            value = None
        out[name] = list(value) if isinstance(value, list | tuple) else value
    return out
