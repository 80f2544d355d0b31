"""The package's Fast DDS profile: it is installed, well formed, big enough for camera frames,
and full frames arrive over best effort with it (node tier: two processes over real DDS)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import pytest

from sam3_ros.ros.fastdds import PROFILE_ENV, large_frames_profile, use_large_frames_profile
from sam3_ros.tools.transport_check import run_check

NS = {"f": "http://www.eprosima.com"}


def test_profile_is_installed_and_sized_for_1080p_rgb8():
    root = ET.parse(large_frames_profile()).getroot()
    shm = [d for d in root.iterfind(".//f:transport_descriptor", NS)
           if d.findtext("f:type", namespaces=NS) == "SHM"]
    assert len(shm) == 1
    frame_1080p = 1920 * 1080 * 3
    assert int(shm[0].findtext("f:segment_size", namespaces=NS)) >= 2 * frame_1080p
    participant = root.find(".//f:participant", NS)
    assert participant.get("is_default_profile") == "true"
    used = {t.text for t in participant.iterfind(".//f:userTransports/f:transport_id", NS)}
    declared = {d.findtext("f:transport_id", namespaces=NS)
                for d in root.iterfind(".//f:transport_descriptor", NS)}
    assert used == declared  # UDP stays: discovery and peers on other machines


@pytest.mark.parametrize(("environ", "expected"), [
    ({}, None),                                          # unset: the package's profile
    ({PROFILE_ENV: ""}, None),                           # empty counts as unset
    ({PROFILE_ENV: "/robot/my_profile.xml"}, "/robot/my_profile.xml"),  # the user's wins
])
def test_use_profile_keeps_a_users_own(environ, expected):
    result = use_large_frames_profile(environ)
    assert result == (expected or str(large_frames_profile()))
    assert environ[PROFILE_ENV] == result


def test_full_frames_arrive_over_best_effort_with_the_profile():
    rows = run_check("package", ["640x480"], frames=5, timeout_s=5.0)
    assert {(r["qos"], r["image"]) for r in rows} == {("best_effort", "640x480"),
                                                        ("reliable", "640x480")}
    for row in rows:
        assert row["lost"] == 0, row


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc")
def test_transport_echo_exits_when_its_parent_dies():
    # The shell starts the echo, prints its pid and exits (as a killed measuring process
    # would): the orphaned echo must stop instead of answering the next run.
    out = subprocess.run(
        ["sh", "-c", f"'{sys.executable}' -m sam3_ros.tools.transport_check --echo $$ "
                     ">/dev/null 2>&1 & echo $!; sleep 2"],
        capture_output=True, text=True, timeout=60, check=True)
    pid = int(out.stdout.split()[0])
    deadline = time.monotonic() + 30
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _running(pid), f"echo {pid} still running after its parent exited"
