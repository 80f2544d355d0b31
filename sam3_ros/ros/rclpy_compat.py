"""The one place that reads rclpy state not exposed by its public API.

rclpy keeps a node's parameter overrides (`--ros-args -p`, launch parameter files, component
`parameter_overrides`) in `Node._parameter_overrides` (Foxy through Kilted). The nodes read them
before declaring a parameter so a value of the wrong type (`prompts:=person`, an integer for a
float) can be converted or refused with a reason instead of raising out of `declare_parameter`
and ending the process. If a future rclpy renames the attribute, overrides are still applied by
rclpy itself; only the friendly conversion is lost (the node then refuses wrong types at start).
"""

from __future__ import annotations

from typing import Any


def parameter_override(node: Any, name: str) -> tuple[bool, Any]:
    """(True, value) when `name` has an override on `node`, else (False, None)."""
    overrides = getattr(node, "_parameter_overrides", None)
    if not isinstance(overrides, dict) or name not in overrides:
        return False, None
    return True, overrides[name].value


def parameter_override_names(node: Any) -> list[str]:
    """Names of every parameter override `node` received (empty if rclpy hides them)."""
    overrides = getattr(node, "_parameter_overrides", None)
    return list(overrides) if isinstance(overrides, dict) else []


def normalise_parameter_overrides(overrides: Any) -> Any:
    """rclpy Parameters from what a component container passes (rcl_interfaces/Parameter
    messages in `LoadNode.Request.parameters`) or from rclpy Parameters (unchanged)."""
    if not overrides:
        return overrides
    from rcl_interfaces.msg import Parameter as ParameterMsg
    from rclpy.parameter import Parameter

    return [Parameter.from_parameter_msg(p) if isinstance(p, ParameterMsg) else p
            for p in overrides]
