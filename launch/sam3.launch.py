"""Launch a sam3_ros node on a camera: the segmenter, the tracker, or both sharing one model.

    ros2 launch sam3_ros sam3.launch.py node:=tracker image:=/camera/color/image_raw \
        model:=facebook/sam3 device:=cuda prompts:="[mug, bottle]"

`ros2 launch sam3_ros sam3.launch.py --show-args` lists every argument. Arguments left unset
never override your params_file. segmenter.launch.py, tracker.launch.py and
pipeline.launch.py are this file with `node` preset.
"""

from sam3_ros.launch_description import generate


def generate_launch_description():
    return generate()
