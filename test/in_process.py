"""A node of this package run in the test's own process (own context, spinning executor)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any


@contextmanager
def in_process_node(node_type: type, name: str, namespace: str, params: dict[str, Any],
                    spin: bool = True, **kwargs: Any) -> Iterator[Any]:
    """`node_type(name, ...)` with `params` as parameter overrides; stopped, destroyed and its
    context shut down on exit (after the caller's own clean-up inside the block)."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.parameter import Parameter

    context = rclpy.Context()
    rclpy.init(context=context)
    node = executor = None
    try:
        node = node_type(name, context=context, namespace=namespace, parameter_overrides=[
            Parameter(key, value=value) for key, value in params.items()], **kwargs)
        if spin:
            executor = SingleThreadedExecutor(context=context)
            executor.add_node(node)
            threading.Thread(target=executor.spin, daemon=True).start()
        yield node
    finally:
        if node is not None:
            node.stop_streaming()
        if executor is not None:
            executor.shutdown()
        if node is not None:
            node.destroy_node()
        rclpy.shutdown(context=context)
