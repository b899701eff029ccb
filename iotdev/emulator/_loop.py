"""An emulator's event loop (the hub's, the DPS's) on a background thread, so
that sync and asyncio callers can both drive it: ``start`` runs a set-up
coroutine on the new loop and returns once it is done (or re-raises its
error), ``call``/``acall`` run a coroutine on the loop from another thread or
another loop, ``stop`` runs a tear-down coroutine and ends the thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["LoopThread"]

T = TypeVar("T")


class LoopThread:
    """One asyncio loop on one daemon thread.

    Args:
        name: the thread's name.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None

    @property
    def running(self) -> bool:
        """Whether the loop runs."""
        return self._thread is not None and self.loop is not None

    def start(self, setup: Callable[[], Coroutine[Any, Any, None]], timeout: float) -> None:
        """Start the thread and run ``setup()`` on its loop.

        Raises:
            TimeoutError: ``setup`` did not finish within ``timeout`` seconds.
            BaseException: whatever ``setup`` raised (the thread is gone then).
        """
        if self._thread is not None:
            return
        self._started.clear()
        self._start_error = None
        self._thread = threading.Thread(target=self._run, args=(setup,), name=self.name,
                                        daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise TimeoutError(f"{self.name} did not start in time")
        if self._start_error is not None:
            self._thread = None
            self.loop = None
            raise self._start_error

    def _run(self, setup: Callable[[], Coroutine[Any, Any, None]]) -> None:
        loop = asyncio.new_event_loop()
        self.loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(setup())
        except BaseException as exc:
            self._start_error = exc
            self._started.set()
            loop.close()
            return
        self._started.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    def stop(self, teardown: Callable[[], Coroutine[Any, Any, None]], timeout: float) -> None:
        """Run ``teardown()`` on the loop, then stop the loop and join the thread."""
        loop, thread = self.loop, self._thread
        if loop is None or thread is None:
            return
        fut = asyncio.run_coroutine_threadsafe(teardown(), loop)
        try:
            fut.result(timeout)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)
            self._thread = None
            self.loop = None

    def call(self, coro: Coroutine[Any, Any, T], timeout: float | None = 60.0) -> T:
        """Run ``coro`` on the loop from another thread; return its result.

        Raises:
            RuntimeError: the loop does not run.
        """
        loop = self.loop
        if loop is None:
            coro.close()
            raise RuntimeError("the hub is not running: call start()")
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    async def acall(self, coro: Coroutine[Any, Any, T]) -> T:
        """Await ``coro`` on the loop from another event loop."""
        loop = self.loop
        if loop is None:
            coro.close()
            raise RuntimeError("the hub is not running: call start()")
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))

    def call_soon(self, callback: Callable[[], None]) -> None:
        """Run ``callback`` on the loop soon (no-op when it does not run)."""
        loop = self.loop
        if loop is not None:
            loop.call_soon_threadsafe(callback)
