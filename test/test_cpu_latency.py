"""The benchmarks' CPU latency limit (Linux PM QoS): what is written, when it is released,
and the refusals (a plain file stands in for /dev/cpu_dma_latency)."""

from __future__ import annotations

import os
import struct
import sys
from contextlib import suppress

import pytest

from sam3_ros.tools.cpu_latency import CpuLatencyError, cpu_latency_limit, describe

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="Linux PM QoS")


def _held(device) -> int:
    """How many of this process's descriptors are open on `device` (Linux)."""
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        with suppress(OSError):  # the listing's own descriptor, closed by now
            count += os.readlink(f"/proc/self/fd/{fd}") == str(device)
    return count


@pytest.mark.parametrize("max_us", [0, 1, 2**31 - 1])
def test_the_limit_is_written_and_held_for_the_block(tmp_path, max_us):
    device = tmp_path / "cpu_dma_latency"
    device.write_bytes(b"")
    with cpu_latency_limit(max_us, str(device)):
        assert device.read_bytes() == struct.pack("=i", max_us)
        assert _held(device) == 1  # the kernel keeps the request while it is open
    assert _held(device) == 0


def test_released_when_the_block_raises(tmp_path):
    device = tmp_path / "cpu_dma_latency"
    device.write_bytes(b"")
    with pytest.raises(KeyError), cpu_latency_limit(0, str(device)):
        raise KeyError("measurement failed")
    assert _held(device) == 0


def test_none_holds_nothing(tmp_path):
    with cpu_latency_limit(None, str(tmp_path / "absent")):
        pass
    assert not (tmp_path / "absent").exists()
    assert describe(None) == "CPU idle states as the system sets them"
    assert describe(0) == "CPU wake-up latency limited to 0 us (/dev/cpu_dma_latency held)"


@pytest.mark.parametrize(("max_us", "error", "match"), [
    (-1, ValueError, r"expected 0\.\.2147483647 us, got -1"),
    (2**31, ValueError, r"got 2147483648"),
    (0, CpuLatencyError, r"cannot hold a CPU latency limit through .*absent "
                         r"\(No such file or directory; it needs root or write access\)"),
])
def test_refusals(tmp_path, max_us, error, match):
    with pytest.raises(error, match=match), cpu_latency_limit(max_us, str(tmp_path / "absent")):
        pytest.fail("the block must not run")


@pytest.mark.parametrize("tool", ["sam3_ros.tools.benchmark", "sam3_ros.tools.node_trace"])
def test_tools_refuse_a_negative_limit_in_one_line(tool):
    import subprocess

    done = subprocess.run([sys.executable, "-m", tool, "--cpu-latency-us", "-5"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--cpu-latency-us must be 0 or more" in done.stderr
    assert "Traceback" not in done.stderr
