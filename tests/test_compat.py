"""``iotdev._compat``: ``async_timeout`` behaves as ``asyncio.timeout`` (which
it is on 3.11+; on 3.10 it is our own), and ``add_note``."""

from __future__ import annotations

import asyncio

import pytest

from iotdev._compat import add_note, async_timeout


def test_timeout_expires_as_timeout_error() -> None:
    async def main() -> None:
        with pytest.raises(TimeoutError):
            async with async_timeout(0.01):
                await asyncio.Event().wait()

    asyncio.run(main())


def test_no_timeout_and_early_exit() -> None:
    async def main() -> int:
        async with async_timeout(None):
            await asyncio.sleep(0)
        async with async_timeout(30):
            return 7

    assert asyncio.run(main()) == 7


def test_outside_cancellation_is_not_a_timeout() -> None:
    async def inner(started: asyncio.Event) -> None:
        async with async_timeout(30):
            started.set()
            await asyncio.Event().wait()

    async def main() -> None:
        started = asyncio.Event()
        task = asyncio.create_task(inner(started))
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())


def test_the_task_goes_on_after_a_timeout() -> None:
    async def main() -> str:
        try:
            async with async_timeout(0.01):
                await asyncio.Event().wait()
        except TimeoutError:
            pass
        await asyncio.sleep(0)  # not cancelled again
        return "alive"

    assert asyncio.run(main()) == "alive"


def test_add_note() -> None:
    exc = ValueError("x")
    add_note(exc, "first")
    add_note(exc, "second")
    assert exc.__notes__ == ["first", "second"]
