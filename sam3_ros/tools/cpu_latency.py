"""Keep the CPUs out of deep idle states while a measurement runs (Linux PM QoS).

A CPU that went idle between two frames wakes slowly: the first milliseconds of the next
frame run slower (on a VM the host may have given the core away; on a robot computer the
core left a deep C-state or dropped its clock). A latency limit of 0 microseconds written to
`/dev/cpu_dma_latency` keeps every CPU in its shallowest idle state (polling) for as long as
the file stays open, at the cost of power. The benchmarks use it to measure the node with and
without that effect (`--cpu-latency-us`); the nodes never set it (a machine-wide power
choice belongs to the robot's set-up, e.g. `jetson_clocks` or the BIOS's C-states).
"""

from __future__ import annotations

import argparse
import os
import struct
from collections.abc import Iterator
from contextlib import contextmanager

PM_QOS_DEVICE = "/dev/cpu_dma_latency"


class CpuLatencyError(RuntimeError):
    """The latency limit could not be held (no such device, no permission)."""


@contextmanager
def cpu_latency_limit(max_us: int | None, device: str = PM_QOS_DEVICE) -> Iterator[None]:
    """Hold a CPU wake-up latency limit of `max_us` microseconds for the `with` block.

    Args:
        max_us: The limit (0: polling idle only); None holds nothing.
        device: The PM QoS device file (tests pass a plain file).

    Raises:
        ValueError: `max_us` is negative or does not fit the kernel's 32-bit value.
        CpuLatencyError: the device cannot be opened for writing, with the reason.
    """
    if max_us is None:
        yield
        return
    if not 0 <= max_us <= 2**31 - 1:
        raise ValueError(f"cpu latency limit: expected 0..{2**31 - 1} us, got {max_us}")
    try:
        fd = os.open(device, os.O_WRONLY)
    except OSError as err:
        raise CpuLatencyError(f"cannot hold a CPU latency limit through {device} "
                              f"({err.strerror}; it needs root or write access)") from err
    try:
        # The kernel keeps the request while this descriptor is open (native 32-bit int).
        os.write(fd, struct.pack("=i", max_us))
        yield
    finally:
        os.close(fd)


def describe(max_us: int | None) -> str:
    """One line for a benchmark's header."""
    if max_us is None:
        return "CPU idle states as the system sets them"
    return f"CPU wake-up latency limited to {max_us} us ({PM_QOS_DEVICE} held)"


def add_option(parser: argparse.ArgumentParser) -> None:
    """The tools' `--cpu-latency-us US` option (check it with `check_option`)."""
    parser.add_argument("--cpu-latency-us", type=int, metavar="US",
                        help="hold this CPU wake-up latency limit (Linux PM QoS, "
                             f"{PM_QOS_DEVICE}, needs root) for the whole run; 0 keeps the "
                             "CPUs out of deep idle between frames")


def check_option(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuse (exit 2, one line) a `--cpu-latency-us` outside the kernel's range."""
    if args.cpu_latency_us is not None and not 0 <= args.cpu_latency_us < 2**31:
        parser.error("--cpu-latency-us must be 0 or more (microseconds)")
