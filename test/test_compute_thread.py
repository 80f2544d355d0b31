"""The process's compute thread: one thread runs every model call, in order."""

from __future__ import annotations

import threading

import pytest

from sam3_ros.core.compute_thread import compute_thread, run_on_compute_thread


def _current() -> threading.Thread:
    return threading.current_thread()


def test_every_caller_gets_the_same_thread_which_is_not_the_callers():
    seen = []
    callers = [threading.Thread(target=lambda: seen.append(run_on_compute_thread(_current)))
               for _ in range(4)]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    seen.append(run_on_compute_thread(_current))
    assert len({id(t) for t in seen}) == 1
    assert seen[0] is compute_thread()
    assert seen[0] is not threading.main_thread()


def test_arguments_results_and_exceptions_pass_through():
    assert run_on_compute_thread(divmod, 7, 2) == (3, 1)
    assert run_on_compute_thread(sorted, [3, 1], reverse=True) == [3, 1]
    with pytest.raises(ZeroDivisionError):
        run_on_compute_thread(divmod, 1, 0)
    assert run_on_compute_thread(divmod, 9, 3) == (3, 0)  # still serving after an error


def test_nested_calls_run_inline_instead_of_deadlocking():
    outer = run_on_compute_thread(lambda: (_current(), run_on_compute_thread(_current)))
    assert outer[0] is outer[1]


def test_calls_never_overlap():
    active, overlaps = [0], []
    lock = threading.Lock()

    def work() -> None:
        with lock:
            active[0] += 1
            overlaps.append(active[0])
        threading.Event().wait(0.002)
        with lock:
            active[0] -= 1

    callers = [threading.Thread(target=run_on_compute_thread, args=(work,)) for _ in range(8)]
    for t in callers:
        t.start()
    for t in callers:
        t.join()
    assert overlaps == [1] * 8
