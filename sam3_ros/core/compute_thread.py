"""One thread per process for all model work (loading, prompts, inference).

PyTorch's CPU kernels parallelise with OpenMP, and libgomp keeps one thread team per thread
that starts parallel work. A second team (model loaded in one thread, frames inferred in
another; or two nodes' workers) puts more OpenMP threads in the process than there are cores,
and libgomp then stops spin-waiting between parallel regions: every one of the hundreds of
small kernels per frame pays a futex wake-up. Measured on this project's 2-core machine with
the tiny checkpoint: 18-20 ms per frame on the thread that loaded the model, 30-36 ms on any
other thread. Running every torch call of the process on this one thread keeps one team.

The thread is the process runtime's (`core.runtime.Runtime.default()`): calls made here run
between the runtime's frame cycles.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from sam3_ros.core.runtime import Runtime

P = ParamSpec("P")
R = TypeVar("R")


def run_on_compute_thread(fn: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
    """Run `fn` on the process's compute thread, wait, and return its result.

    Calls from any thread queue in order (the model is never used by two callers at once);
    an exception raised by `fn` is raised here. A call made from the compute thread itself runs
    directly, so nested use cannot deadlock.
    """
    return Runtime.default().call(fn, *args, **kwargs)


def compute_thread() -> threading.Thread | None:
    """The compute thread, once the process runtime exists (for tests and diagnostics)."""
    runtime = Runtime._default
    return runtime.thread if runtime is not None else None
