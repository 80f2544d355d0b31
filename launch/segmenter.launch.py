"""Launch the sam3_ros segmenter: sam3.launch.py with node:=segmenter
(same arguments; see --show-args).

    ros2 launch sam3_ros segmenter.launch.py image:=/camera/color/image_raw model:=facebook/sam3
"""

from sam3_ros.launch_description import generate


def generate_launch_description():
    return generate(node="segmenter")
