"""launch_ros actions for the package's launch files (imports `launch`: robots only).

Every decision lives in `sam3_ros.launch_plan` (pure, tested in CI); this module only declares
the arguments and maps the plan onto `launch_ros` actions.
"""

from __future__ import annotations

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchContext, LaunchDescription
from launch.actions import DeclareLaunchArgument, LogInfo, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node

from sam3_ros.launch_plan import LAUNCH_ARGUMENTS, parameter_file_paths, plan


def _default_profile() -> str:
    return os.path.join(get_package_share_directory("sam3_ros"), "config",
                        "fastdds_large_frames.xml")


def _actions(context: LaunchContext) -> list:
    values = {name: LaunchConfiguration(name).perform(context) for name in LAUNCH_ARGUMENTS}
    # The namespace of an enclosing PushRosNamespace, if any (launch_ros keeps it here).
    outer = context.launch_configurations.get("ros_namespace", "") or ""
    launch_plan = plan(values, _default_profile(), outer_namespace=outer)
    actions: list = [LogInfo(msg=f"[sam3_ros] WARNING: {text}") for text in launch_plan.warnings]
    actions += [SetEnvironmentVariable(key, value)
                for key, value in launch_plan.environment.items()]
    common = {
        "package": "sam3_ros",
        "executable": launch_plan.executable,
        # Files, not dicts: launch_ros would key a dict itself (see launch_plan).
        "parameters": parameter_file_paths(launch_plan.parameters),
        "remappings": launch_plan.remappings,
        "ros_arguments": launch_plan.ros_arguments,
        "arguments": launch_plan.arguments,
        "output": "screen",
    }
    namespace = launch_plan.action_namespace
    if launch_plan.lifecycle:
        actions.append(LifecycleNode(name=launch_plan.name, namespace=namespace, **common))
    else:
        # No name=: it would give every node of the process the same name.
        actions.append(Node(namespace=namespace, **common))
    return actions


def generate(**fixed: str) -> LaunchDescription:
    """The launch description; `fixed` presets arguments (e.g. node="tracker") as defaults."""
    arguments = []
    for name, (default, description) in LAUNCH_ARGUMENTS.items():
        if name == "fastdds_profile":
            default = _default_profile()
        arguments.append(DeclareLaunchArgument(
            name, default_value=fixed.get(name, default), description=description))
    return LaunchDescription([*arguments, OpaqueFunction(function=_actions)])
