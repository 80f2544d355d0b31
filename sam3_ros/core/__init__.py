"""Pure core of sam3_ros: no rclpy, no message types. Tested without ROS."""
