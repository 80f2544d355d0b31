"""Launch the SAM3 segmenter on a camera.

    ros2 launch sam3_ros segmenter.launch.py image:=/camera/color/image_raw \
        model:=facebook/sam3 device:=cuda prompts:="[mug, bottle, person]"

Parameter defaults come from config/segmenter.yaml (or params_file:=...); the arguments below
override them. The node configures and activates itself (parameter autostart) unless
autostart:=false, in which case a lifecycle manager drives it.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, SetEnvironmentVariable
from launch.conditions import LaunchConfigurationNotEquals
from launch.substitutions import EnvironmentVariable, LaunchConfiguration
from launch_ros.actions import LifecycleNode


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory("sam3_ros")
    default_params = os.path.join(share, "config", "segmenter.yaml")
    args = [
        # Full camera frames need Fast DDS's shared-memory segment enlarged (see the XML);
        # a profile already in the environment wins, '' leaves the environment alone.
        DeclareLaunchArgument(
            "fastdds_profile",
            default_value=EnvironmentVariable(
                "FASTDDS_DEFAULT_PROFILES_FILE",
                default_value=os.path.join(share, "config", "fastdds_large_frames.xml")),
            description="Fast DDS profile for the processes started here"),
        DeclareLaunchArgument("namespace", default_value="", description="Node namespace"),
        DeclareLaunchArgument("image", default_value="image",
                              description="Camera image topic (raw; for compressed see "
                                          "input_kind)"),
        DeclareLaunchArgument("input_kind", default_value="raw", description="raw or compressed"),
        DeclareLaunchArgument("model", default_value="facebook/sam3",
                              description="Hugging Face id or checkpoint folder"),
        DeclareLaunchArgument("device", default_value="auto", description="cpu, cuda, auto"),
        DeclareLaunchArgument("dtype", default_value="float32",
                              description="float32, float16, bfloat16"),
        DeclareLaunchArgument("prompts", default_value="[person]",
                              description="Text prompts as a YAML list"),
        DeclareLaunchArgument("autostart", default_value="true",
                              description="Configure and activate on start"),
        DeclareLaunchArgument("params_file", default_value=default_params,
                              description="Parameter file"),
    ]
    image = LaunchConfiguration("image")
    node = LifecycleNode(
        package="sam3_ros",
        executable="segmenter",
        name="segmenter",
        namespace=LaunchConfiguration("namespace"),
        output="screen",
        parameters=[
            LaunchConfiguration("params_file"),
            {
                "model": LaunchConfiguration("model"),
                "device": LaunchConfiguration("device"),
                "dtype": LaunchConfiguration("dtype"),
                "prompts": LaunchConfiguration("prompts"),
                "input_kind": LaunchConfiguration("input_kind"),
                "autostart": LaunchConfiguration("autostart"),
            },
        ],
        remappings=[("image", image), ("image/compressed", [image, "/compressed"])],
    )
    profile = SetEnvironmentVariable(
        "FASTDDS_DEFAULT_PROFILES_FILE", LaunchConfiguration("fastdds_profile"),
        condition=LaunchConfigurationNotEquals("fastdds_profile", ""))
    return LaunchDescription([*args, profile, node])
