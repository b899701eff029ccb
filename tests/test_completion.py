"""``Completion`` (the thread driver's future): outcomes and callbacks.  (The
race between ``add_done_callback`` on a caller's thread and ``_finish`` on the
I/O thread is closed by a lock; CPython's GIL makes that window too narrow to
hit from a test, so it is covered by review, not here.)"""

from __future__ import annotations

import pytest

from iotdev.transport._thread import Completion


def test_callbacks_run_once_before_and_after_completion() -> None:
    calls: list[str] = []
    fut = Completion()
    fut.add_done_callback(lambda f: calls.append("before"))
    fut.set_result(5)
    fut.add_done_callback(lambda f: calls.append("after"))
    fut.set_result(6)  # a second outcome is ignored
    assert calls == ["before", "after"] and fut.result(0) == 5


def test_result_timeout_and_exception() -> None:
    fut = Completion()
    with pytest.raises(TimeoutError):
        fut.result(0.01)
    fut.set_exception(ValueError("no"))
    with pytest.raises(ValueError, match="no"):
        fut.result(0)
    assert isinstance(fut.exception(0), ValueError)
