"""The package's Fast DDS profile for camera-sized messages (config/fastdds_large_frames.xml).

Fast DDS moves samples larger than its default 512 KiB shared-memory segment over UDP
loopback, where a 1 MiB image takes ~15 ms and best-effort readers lose most frames; the
profile enlarges the segment. It must be in the environment before rclpy creates its first
node, in the publishing process above all (see the XML's comment).
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping
from pathlib import Path

PROFILE_ENV = "FASTDDS_DEFAULT_PROFILES_FILE"
PROFILE_NAME = "fastdds_large_frames.xml"


def large_frames_profile() -> Path:
    """Path of the installed profile.

    Raises:
        FileNotFoundError: The package's share folder does not hold it (not installed).
    """
    from ament_index_python.packages import get_package_share_directory

    path = Path(get_package_share_directory("sam3_ros")) / "config" / PROFILE_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing: rebuild the package (colcon build)")
    return path


def use_large_frames_profile(environ: MutableMapping[str, str] = os.environ) -> str:
    """Point `FASTDDS_DEFAULT_PROFILES_FILE` at the package's profile unless it is already set
    (a user's own profile wins). Call before `rclpy.init`; child processes inherit it.

    Returns:
        The profile file now in the environment.
    """
    if not environ.get(PROFILE_ENV):
        environ[PROFILE_ENV] = str(large_frames_profile())
    return environ[PROFILE_ENV]
