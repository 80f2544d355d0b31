"""launch_ros actions for the package's launch files (imports `launch`: robots only).

Every decision lives in `sam3_ros.launch_plan` (pure, tested in CI); this module only declares
the arguments and maps the plan onto `launch_ros` actions.
"""

from __future__ import annotations

import contextlib
import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchContext, LaunchDescription
from launch.actions import (
    DeclareLaunchArgument,
    LogInfo,
    OpaqueFunction,
    RegisterEventHandler,
    SetEnvironmentVariable,
)
from launch.event_handlers import OnShutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import LifecycleNode, Node

from sam3_ros.launch_plan import LAUNCH_ARGUMENTS, KeyedParameters, parameter_file_paths, plan


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
    # Files, not dicts: launch_ros would key a dict itself (see launch_plan).
    parameter_files = parameter_file_paths(launch_plan.parameters)
    written = [path for path, entry in zip(parameter_files, launch_plan.parameters, strict=True)
               if isinstance(entry, KeyedParameters)]

    def remove_written(_event: object, _context: LaunchContext) -> None:
        # Read by the node at its start; left behind, every launch added files to /tmp.
        for path in written:
            with contextlib.suppress(OSError):
                os.unlink(path)

    actions.append(RegisterEventHandler(OnShutdown(on_shutdown=remove_written)))
    common = {
        "package": "sam3_ros",
        "executable": launch_plan.executable,
        "parameters": parameter_files,
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
