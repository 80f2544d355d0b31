"""Run a sam3_ros node in a child process and talk to it over real DDS.

Used by the node tests, the demo and the benchmark (ros2cli is not needed).
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

_ENTRY_POINTS = {
    "segmenter": "sam3_ros.ros.segmenter_node",
    "tracker": "sam3_ros.ros.tracker_node",
    "pipeline": "sam3_ros.ros.pipeline",
}


def node_command(executable: str, params: dict[str, Any], name: str | None = None,
                 remaps: dict[str, str] | None = None,
                 args: list[str] | None = None) -> list[str]:
    """Command line equal to `ros2 run sam3_ros <executable> [args] --ros-args ...` (ros2cli
    is not needed: the installed executables only call the module's main)."""
    cmd = [sys.executable, "-c",
           f"import sys; from {_ENTRY_POINTS[executable]} import main; sys.exit(main())",
           *(args or []), "--ros-args"]
    if name:
        cmd += ["-r", f"__node:={name}"]
    for key, value in params.items():
        if isinstance(value, bool):
            value = "true" if value else "false"
        elif isinstance(value, list):
            value = "[" + ",".join(f"'{v}'" for v in value) + "]"
        cmd += ["-p", f"{key}:={value}"]
    for src, dst in (remaps or {}).items():
        cmd += ["-r", f"{src}:={dst}"]
    return cmd


def _die_with_parent() -> None:
    # A test process that crashes must not leave nodes running (they would answer the next
    # run's requests on the same domain). Linux only; elsewhere the node is stopped normally.
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


_LOGS: list[Path] = []


@atexit.register
def _remove_logs() -> None:
    # Read through `output()` while the process lives (failures quote them); left behind,
    # every test run and benchmark added files to /tmp (hundreds of them).
    for path in _LOGS:
        path.unlink(missing_ok=True)


class NodeProcess:
    """A node running in its own process; its output is kept for assertions and failures
    (in a log file removed when this process exits)."""

    def __init__(self, cmd: list[str]):
        tmp = Path(os.environ.get("TMPDIR", "/tmp"))
        self.log_path = tmp / f"sam3_node_{os.getpid()}_{id(self)}.log"
        _LOGS.append(self.log_path)
        self._log = open(self.log_path, "w")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT,
                                     env=dict(os.environ, PYTHONUNBUFFERED="1"),
                                     preexec_fn=_die_with_parent)

    def output(self) -> str:
        """Everything the node printed so far (also after `stop`)."""
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.alive():
            self.proc.send_signal(2)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


class Client:
    """An rclpy node in the test process, spun by a background executor."""

    def __init__(self, name: str = "test_client"):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor

        if not rclpy.ok():
            rclpy.init()
        self.node = rclpy.create_node(name)
        # Single-threaded: rclpy's MultiThreadedExecutor busy-loops and delays deliveries by
        # hundreds of ms under load, which would corrupt the latencies the benchmark measures.
        self.executor = SingleThreadedExecutor()
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()
        self.received: dict[str, list[Any]] = {}
        self.subscriptions: dict[str, Any] = {}
        self.received_at: dict[str, list[float]] = {}
        """time.monotonic() of each received message, parallel to `received`."""
        self._lock = threading.Condition()

    def subscribe(self, msg_type: type, topic: str, qos: Any = 10) -> None:
        self.received.setdefault(topic, [])
        self.received_at.setdefault(topic, [])

        def store(msg: Any) -> None:
            now = time.monotonic()
            with self._lock:
                self.received[topic].append(msg)
                self.received_at[topic].append(now)
                self._lock.notify_all()

        self.subscriptions[topic] = self.node.create_subscription(msg_type, topic, store, qos)

    def matched(self, topic: str, publisher: Any = None) -> bool:
        """True when this client's subscription to `topic` is matched with a publisher (and
        `publisher`, if given, with a subscription): DDS delivers only after matching."""
        sub_ok = self.subscriptions[topic].get_publisher_count() > 0
        return sub_ok and (publisher is None or publisher.get_subscription_count() > 0)

    def messages(self, topic: str) -> list[Any]:
        with self._lock:
            return list(self.received.get(topic, []))

    def wait_message(self, topic: str, predicate: Callable[[Any], bool],
                     timeout_s: float) -> tuple[float, Any] | None:
        """Block (no polling) until a message on `topic` satisfies `predicate`; return its
        (receive time, message), or None on timeout."""
        def find():
            for t, msg in zip(self.received_at[topic], self.received[topic], strict=True):
                if predicate(msg):
                    return t, msg
            return None

        with self._lock:
            self._lock.wait_for(lambda: find() is not None, timeout_s)
            return find()

    def messages_with_times(self, topic: str) -> list[tuple[float, Any]]:
        """(monotonic receive time, message) pairs."""
        with self._lock:
            return list(zip(self.received_at.get(topic, []), self.received.get(topic, []),
                            strict=True))

    def clear(self, topic: str | None = None) -> None:
        with self._lock:
            for key in [topic] if topic else list(self.received):
                self.received[key] = []
                self.received_at[key] = []

    def call(self, srv_type: type, name: str, request: Any, timeout_s: float = 60.0) -> Any:
        client = self.node.create_client(srv_type, name)
        try:
            if not client.wait_for_service(timeout_sec=timeout_s):
                raise TimeoutError(f"service {name} not available")
            future = client.call_async(request)
            deadline = time.monotonic() + timeout_s
            while not future.done():
                if time.monotonic() > deadline:
                    raise TimeoutError(f"service {name} did not answer")
                time.sleep(0.01)
            return future.result()
        finally:
            self.node.destroy_client(client)

    def close(self) -> None:
        self.executor.shutdown()
        # The spin thread may still be inside a callback (a timer publishing frames): destroying
        # the node under it raises InvalidHandle in that thread.
        self._thread.join(timeout=10.0)
        self.node.destroy_node()


def wait_for(predicate: Callable[[], Any], timeout_s: float, what: str,
             node: NodeProcess | None = None, poll_s: float = 0.02) -> Any:
    """Poll until `predicate()` is truthy; fail with the node's log otherwise."""
    deadline = time.monotonic() + timeout_s
    next_log_check = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        if node is not None and not node.alive():
            raise AssertionError(f"node died while waiting for {what}:\n{node.output()[-4000:]}")
        if node is not None and time.monotonic() >= next_log_check:
            # A node whose autostart configure failed stays up, unconfigured: it would be
            # waited for until the timeout (minutes) although its log said why at once.
            next_log_check = time.monotonic() + 0.5
            if "autostart: configure failed" in node.output():
                raise AssertionError(f"the node could not configure while waiting for {what}:"
                                     f"\n{node.output()[-4000:]}")
        time.sleep(poll_s)
    log = f"\nnode log:\n{node.output()[-4000:]}" if node is not None else ""
    raise AssertionError(f"timed out after {timeout_s} s waiting for {what}{log}")
