"""sam3_ros: Segment Anything 3 for ROS 2.

`sam3_ros.core` is pure Python (numpy, torch, transformers) and never imports rclpy or message
types; `sam3_ros.ros` holds the thin ROS 2 adapters (nodes, message conversions).
"""

# The generated interfaces (sam3_ros.msg / sam3_ros.srv) are installed by colcon into the install
# space, while the hand-written modules may be imported from a source checkout (tests, pip -e).
# extend_path joins every `sam3_ros` directory on sys.path into this one package.
from pkgutil import extend_path

__path__ = extend_path(__path__, __name__)

__version__ = "0.1.0"
