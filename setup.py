"""pip metadata: `pip install -e .` gives the pure core and the command-line tools without ROS.

In a ROS workspace the package is built by colcon through CMakeLists.txt (ament_cmake), which
also generates the msg/srv interfaces.
"""

import configparser
from pathlib import Path

from setuptools import find_packages, setup

# The rclpy_components entry points, shared with the colcon (CMake) install.
_entry_points = configparser.ConfigParser(delimiters=("=",))
_entry_points.optionxform = str
_entry_points.read(Path(__file__).parent / "resource" / "python_metadata" / "entry_points.txt")

setup(
    name="sam3_ros",
    version="0.1.0",
    packages=find_packages(include=["sam3_ros", "sam3_ros.*"]),
    python_requires=">=3.10",
    install_requires=["numpy", "opencv-python-headless", "torch", "torchvision",
                      "transformers>=5.0,<6", "safetensors"],
    extras_require={"quant": ["torchao"], "onnx": ["onnx", "onnxruntime", "onnxscript"],
                    "test": ["pytest", "pytest-timeout", "ruff", "scipy", "hypothesis"]},
    entry_points={
        "console_scripts": [
            "sam3-ros-make-tiny-checkpoint = sam3_ros.tools.make_tiny_checkpoint:main",
            "sam3-ros-demo = sam3_ros.tools.demo:main",
            "sam3-ros-benchmark = sam3_ros.tools.benchmark:main",
        ],
        "rclpy_components": [f"{name} = {value}" for name, value
                             in _entry_points["rclpy_components"].items()],
    },
    data_files=[("share/ament_index/resource_index/packages", ["resource/sam3_ros"]),
                ("share/sam3_ros", ["package.xml"])],
)
