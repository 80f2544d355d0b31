"""ROS 2 adapters: nodes and message conversions (msg -> numpy -> core -> result -> msg)."""
