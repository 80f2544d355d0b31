"""Launch the composed pipeline: segmenter + tracker in one process sharing one model.

    ros2 launch sam3_ros pipeline.launch.py image:=/camera/color/image_raw \
        model:=facebook/sam3 device:=cuda

The nodes keep their names (`segmenter`, `tracker`) and read their own parameter files
(segmenter_params / tracker_params, keyed by node name); model, device, dtype and autostart
below apply to both, as one shared model requires. Set each node's prompts in its file or at
run time (set_prompts services, `ros2 param set`). The camera topic is remapped for both.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.conditions import LaunchConfigurationNotEquals
from launch.substitutions import EnvironmentVariable, LaunchConfiguration
from launch_ros.actions import Node


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory("sam3_ros")
    args = [
        # Full camera frames need Fast DDS's shared-memory segment enlarged (see the XML);
        # a profile already in the environment wins, '' leaves the environment alone.
        DeclareLaunchArgument(
            "fastdds_profile",
            default_value=EnvironmentVariable(
                "FASTDDS_DEFAULT_PROFILES_FILE",
                default_value=os.path.join(share, "config", "fastdds_large_frames.xml")),
            description="Fast DDS profile for the processes started here"),
        DeclareLaunchArgument("namespace", default_value=""),
        DeclareLaunchArgument("image", default_value="image"),
        DeclareLaunchArgument("model", default_value="facebook/sam3"),
        DeclareLaunchArgument("device", default_value="auto"),
        DeclareLaunchArgument("dtype", default_value="float32"),
        DeclareLaunchArgument("segmenter_params",
                              default_value=os.path.join(share, "config", "segmenter.yaml")),
        DeclareLaunchArgument("tracker_params",
                              default_value=os.path.join(share, "config", "tracker.yaml")),
        DeclareLaunchArgument("autostart", default_value="true"),
    ]
    image = LaunchConfiguration("image")
    common = {
        "model": LaunchConfiguration("model"),
        "device": LaunchConfiguration("device"),
        "dtype": LaunchConfiguration("dtype"),
        "autostart": LaunchConfiguration("autostart"),
    }
    # No `name=` here: it would rename both nodes of the process to the same name.
    pipeline = Node(
        package="sam3_ros",
        executable="pipeline",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        parameters=[
            LaunchConfiguration("segmenter_params"),
            LaunchConfiguration("tracker_params"),
            common,
        ],
        remappings=[("image", image), ("image/compressed", [image, "/compressed"])],
    )
    profile = SetEnvironmentVariable(
        "FASTDDS_DEFAULT_PROFILES_FILE", LaunchConfiguration("fastdds_profile"),
        condition=LaunchConfigurationNotEquals("fastdds_profile", ""))
    return LaunchDescription([*args, profile, pipeline])
