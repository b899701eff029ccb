"""What Python 3.10 lacks: ``asyncio.timeout`` and ``BaseException.add_note``.

On 3.11 and newer ``async_timeout`` *is* ``asyncio.timeout``.  On 3.10 it is a
small equivalent: the task is cancelled at the deadline and the cancellation
leaving the block becomes ``TimeoutError`` (a cancellation from anyone else
goes through unchanged).  Only the ``async with async_timeout(delay):`` form is
supported.
"""

from __future__ import annotations

import asyncio
import sys
from types import TracebackType

__all__ = ["add_note", "async_timeout"]


class _Timeout:
    def __init__(self, delay: float | None) -> None:
        self._delay = delay
        self._handle: asyncio.TimerHandle | None = None
        self._task: asyncio.Task[object] | None = None
        self._fired = False

    def _fire(self) -> None:
        self._fired = True
        if self._task is not None:
            self._task.cancel()

    async def __aenter__(self) -> _Timeout:
        task = asyncio.current_task()
        if task is None:
            raise RuntimeError("async_timeout() must be used inside a task")
        self._task = task
        if self._delay is not None:
            loop = asyncio.get_running_loop()
            self._handle = loop.call_at(loop.time() + max(self._delay, 0.0), self._fire)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None,
                        exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._fired and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc


if sys.version_info >= (3, 11):
    async_timeout = asyncio.timeout
else:
    def async_timeout(delay: float | None) -> _Timeout:
        """``asyncio.timeout(delay)`` for Python 3.10 (see the module docstring)."""
        return _Timeout(delay)


def add_note(exc: BaseException, note: str) -> None:
    """``exc.add_note(note)``; on 3.10 the note goes to ``__notes__`` the same way
    (3.10's traceback does not print it, ``except`` handlers can read it)."""
    if sys.version_info >= (3, 11):
        exc.add_note(note)
    else:
        notes = getattr(exc, "__notes__", None)
        exc.__notes__ = [*(notes or []), note]  # type: ignore[attr-defined]
