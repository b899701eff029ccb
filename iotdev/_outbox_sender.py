"""What moves messages from the outbox (``_outbox.py``) to the MQTT engine,
one sender per front-end: ``ThreadSender`` on the sync client's I/O thread,
``AsyncSender`` on the asyncio client's event loop.

Theory of operation
-------------------
``put()`` stores a message (durable when it returns) and asks for a *pump*.
A pump deletes what was acknowledged (group commit), then, while connected,
takes the next rows the outbox's window has room for and publishes them (QoS
1).  Each PUBLISH's outcome comes back as a completion: a PUBACK marks the
row acknowledged and asks for another pump; a failure (the driver gave the
session up: ``disconnect()``, retry off, shutdown) releases the row for the
next connection.  Pumps run on one thread only (the I/O thread, or the
loop), so rows reach the engine in sequence order; a connection (``connected``)
asks for a pump too, which is how a backlog left by an earlier run leaves.

With ``auto_connect``, a ``put()`` or a drain wait while there is no
connection starts one in the background; a failure is reported (to
``on_background_exception``) and retried with the reconnect policy's
back-off while messages wait, and no background attempt starts before that
back-off has passed, whoever asks.

Waiting for the backlog (``wait_drained``) uses a barrier: the last sequence
number stored when the wait began.  Acknowledged rows are deleted at once
while someone waits.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from iotdev_mqtt import ProtocolError

from ._compat import async_timeout
from ._errors import ClientError, CredentialError, OperationCancelled, OperationTimeout
from ._outbox import FLUSH_AFTER, Outbox

if TYPE_CHECKING:
    from ._hubclient import HubConfig
    from .transport._asyncio import AsyncDriver
    from .transport._thread import Completion, ThreadDriver

__all__ = ["AsyncSender", "ThreadSender"]

log = logging.getLogger(__name__)

Report = Callable[[BaseException], None]


class ThreadSender:
    """The outbox of a sync client, fed on the driver's I/O thread.

    Args:
        outbox: the open outbox.
        driver: the client's ``ThreadDriver``.
        config: ``auto_connect`` and the reconnect policy.
        report: called with background errors, from the I/O thread (the
            client hands them to its handler thread).
    """

    def __init__(self, outbox: Outbox, driver: ThreadDriver, config: HubConfig,
                 report: Report) -> None:
        self.outbox = outbox
        self._driver = driver
        self._config = config
        self._report = report
        self._changed = threading.Condition()  # rows deleted or dropped, or closed
        self._waiting = 0  # threads in wait_drained
        self._pump_due = False
        self._flush_due = False  # the rest below: the I/O thread's
        self._connecting = False
        self._retry_at = 0.0
        self._attempt = 0
        self._rng = random.Random()
        self._stopped = False

    # -------------------------------------------------------------- callers

    def put(self, topic: str, payload: bytes) -> None:
        """Store a message (see ``Outbox.put``), then have it sent."""
        self.outbox.put(topic, payload)
        if self._waiting:  # the put deleted or dropped rows: waiters may be done
            self._notify()
        self._schedule()
        self._autoconnect()

    def wait_drained(self, timeout: float) -> None:
        """Wait until every message stored so far has left the outbox.

        Raises:
            OperationTimeout: ``timeout`` passed first.
            OperationCancelled: the client was shut down meanwhile.
        """
        outbox = self.outbox
        barrier = outbox.last_seq
        if not outbox.drained_through(barrier):
            self._autoconnect()
        with self._changed:
            self._waiting += 1
        try:
            self._schedule()  # acknowledged rows are deleted at once while we wait
            with self._changed:
                self._changed.wait_for(
                    lambda: outbox.closed or outbox.drained_through(barrier), timeout)
        finally:
            with self._changed:
                self._waiting -= 1
        if outbox.drained_through(barrier):
            return
        if outbox.closed:
            raise OperationCancelled("the client was shut down")
        raise OperationTimeout(f"the outbox did not drain within {timeout:g} s "
                               f"({outbox.pending} messages pending)")

    def connected(self) -> None:
        """I/O thread, at a connection: pending rows leave."""
        self._schedule()

    def disconnecting(self) -> None:
        """``disconnect()``: no background connection until asked again."""
        self._set_timer("outbox-connect", None, self._connect)
        self._set_timer("outbox-retry", None, self._connect)

    def stop(self) -> None:
        """``shutdown()`` begins: start nothing new."""
        self._stopped = True

    def close(self) -> None:
        """After the I/O thread ended: delete what was acknowledged, release
        the file, wake the waiters."""
        self._stopped = True
        self.outbox.close()
        self._notify()

    # ------------------------------------------------------------ I/O thread

    def _notify(self) -> None:
        with self._changed:
            self._changed.notify_all()

    def _set_timer(self, name: str, when: float | None, fn: Callable[[], None]) -> None:
        try:
            self._driver.set_timer(name, when, fn)
        except ClientError:
            pass  # shut down: nothing left to schedule

    def _schedule(self) -> None:
        """Any thread: one pump on the I/O thread soon, for everything asked
        meanwhile."""
        if not self._pump_due:
            self._pump_due = True
            self._set_timer("outbox", time.monotonic(), self._pump)

    def _pump(self) -> None:
        self._pump_due = False
        outbox = self.outbox
        if outbox.closed:
            return
        try:
            if outbox.commit(force=self._waiting > 0 or not self._driver.connected):
                self._notify()
            if outbox.unflushed and not self._flush_due:
                self._flush_due = True
                self._set_timer("outbox-flush", time.monotonic() + FLUSH_AFTER, self._flush)
            if not self._driver.connected:
                return
            rows = outbox.take()
            for index, row in enumerate(rows):
                try:
                    sent = self._driver.publish(row.topic, row.payload, 1, False)
                except ClientError:  # shut down meanwhile
                    for unsent in rows[index:]:
                        outbox.release(unsent.seq)
                    return
                sent.add_done_callback(functools.partial(self._settled, row.seq))
        except ClientError as exc:  # the disk failed
            self._failed(exc)

    def _flush(self) -> None:
        """Delete acknowledged rows no ``put()`` took along."""
        self._flush_due = False
        if self.outbox.closed:
            return
        try:
            if self.outbox.commit():
                self._notify()
        except ClientError as exc:
            self._failed(exc)

    def _failed(self, exc: ClientError) -> None:
        if not self._stopped:
            log.error("outbox: %s", exc)
            self._report(exc)

    def _settled(self, seq: int, sent: Completion) -> None:
        """A PUBLISH's outcome: a PUBACK acknowledges the row; a failure
        leaves it for the next connection."""
        error = sent.exception(0)
        if error is None:
            self.outbox.acked(seq)
            self._schedule()
        elif isinstance(error, ProtocolError):  # can never be sent: do not retry forever
            self.outbox.acked(seq)
            log.error("outbox: message %d refused by the MQTT engine, deleted: %s", seq, error)
            self._report(error)
        else:
            self.outbox.release(seq)

    def _wants_connection(self) -> bool:
        driver = self._driver
        return (self._config.auto_connect and not self._stopped and not driver.connected
                and not driver.reconnecting and not self._connecting
                and time.monotonic() >= self._retry_at)

    def _autoconnect(self) -> None:
        """Any thread: have the I/O thread start a background connection."""
        if self._wants_connection():
            self._set_timer("outbox-connect", time.monotonic(), self._connect)

    def _connect(self) -> None:
        """One background attempt at a time (its completion is resolved on
        this thread, later, so the callback cannot be missed)."""
        if self._wants_connection():
            self._connecting = True
            self._driver.connect().add_done_callback(self._connect_done)

    def _connect_done(self, attempt: Completion) -> None:
        self._connecting = False
        error = attempt.exception(0)
        if error is None:
            self._attempt = 0
            return
        if isinstance(error, OperationCancelled) or self._stopped:
            return  # disconnect() or shutdown(): stop trying
        self._report(error)
        self._attempt += 1
        policy = self._config.reconnect_policy()
        self._retry_at = time.monotonic() + policy.delay(self._attempt, self._rng)
        if policy.enabled and not isinstance(error, CredentialError) and self.outbox.pending:
            self._set_timer("outbox-retry", self._retry_at, self._connect)


class AsyncSender:
    """The outbox of an asyncio client, fed on its event loop; every outbox
    call runs on the loop (one small transaction each; ``put()`` fsyncs).

    Args:
        outbox: the open outbox.
        driver: the client's ``AsyncDriver``.
        config: ``auto_connect`` and the reconnect policy.
        report: called with background errors, on the loop.
        connect: the client's ``connect()`` (a background connection).
    """

    def __init__(self, outbox: Outbox, driver: AsyncDriver, config: HubConfig,
                 report: Report, connect: Callable[[], Awaitable[None]]) -> None:
        self.outbox = outbox
        self._driver = driver
        self._config = config
        self._report = report
        self._connect = connect
        self._sent: dict[int, asyncio.Future[None]] = {}  # rows in flight
        self._waiters: set[asyncio.Future[None]] = set()
        self._pump_due = False
        self._flush: asyncio.TimerHandle | None = None
        self._connecting: asyncio.Task[None] | None = None
        self._retry_at = 0.0
        self._rng = random.Random()
        self._stopped = False

    def put(self, topic: str, payload: bytes) -> None:
        """Store a message (see ``Outbox.put``), then have it sent.  The
        caller should yield to the loop next (a tight send loop would starve
        the sender otherwise)."""
        self.outbox.put(topic, payload)
        self._wake()  # the put may have deleted or dropped rows
        self._schedule()
        self._autoconnect()

    async def wait_drained(self, timeout: float) -> None:
        """As ``ThreadSender.wait_drained``."""
        outbox = self.outbox
        barrier = outbox.last_seq
        if not outbox.drained_through(barrier):
            self._autoconnect()
            self._schedule()  # acknowledged rows are deleted at once while we wait
        loop = asyncio.get_running_loop()
        try:
            async with async_timeout(timeout):
                while not outbox.drained_through(barrier):
                    if outbox.closed:
                        raise OperationCancelled("the client was shut down")
                    changed: asyncio.Future[None] = loop.create_future()
                    self._waiters.add(changed)
                    try:
                        await changed
                    finally:
                        self._waiters.discard(changed)
        except TimeoutError:
            raise OperationTimeout(f"the outbox did not drain within {timeout:g} s "
                                   f"({outbox.pending} messages pending)") from None

    def connected(self) -> None:
        """At a connection: pending rows leave."""
        self._schedule()

    def disconnecting(self) -> None:
        """``disconnect()`` or ``shutdown()``: stop connecting in the background."""
        task, self._connecting = self._connecting, None
        if task is not None and not task.done():
            task.cancel()

    def close(self) -> None:
        """At shutdown, after the driver: rows whose PUBACK arrived (callbacks
        not run yet) are deleted, the file is closed, waiters are woken."""
        self._stopped = True
        self.disconnecting()
        if self._flush is not None:
            self._flush.cancel()
            self._flush = None
        for seq, sent in list(self._sent.items()):
            if sent.done() and not sent.cancelled() and sent.exception() is None:
                self.outbox.acked(seq)
        self._sent.clear()
        self.outbox.close()
        self._wake()

    # ------------------------------------------------------------------ loop

    def _wake(self) -> None:
        for waiter in list(self._waiters):
            if not waiter.done():
                waiter.set_result(None)

    def _schedule(self) -> None:
        if not self._pump_due:
            self._pump_due = True
            asyncio.get_running_loop().call_soon(self._pump)

    def _pump(self) -> None:
        self._pump_due = False
        outbox = self.outbox
        if outbox.closed:
            return
        try:
            if outbox.commit(force=bool(self._waiters) or not self._driver.connected):
                self._wake()
            if outbox.unflushed and self._flush is None:
                self._flush = asyncio.get_running_loop().call_later(FLUSH_AFTER, self._flushed)
            if not self._driver.connected:
                return
            rows = outbox.take()
            for index, row in enumerate(rows):
                try:
                    sent = self._driver.publish(row.topic, row.payload, 1, False)
                except ProtocolError as exc:  # can never be sent: do not retry forever
                    outbox.acked(row.seq)
                    log.error("outbox: message %d refused by the MQTT engine, deleted: %s",
                              row.seq, exc)
                    self._report(exc)
                    continue
                except ClientError:  # the queue is full, or shut down: later
                    for unsent in rows[index:]:
                        outbox.release(unsent.seq)
                    return
                self._sent[row.seq] = sent
                sent.add_done_callback(functools.partial(self._settled, row.seq))
        except ClientError as exc:  # the disk failed
            self._failed(exc)

    def _flushed(self) -> None:
        """Delete acknowledged rows no ``put()`` took along."""
        self._flush = None
        if self.outbox.closed:
            return
        try:
            if self.outbox.commit():
                self._wake()
        except ClientError as exc:
            self._failed(exc)

    def _failed(self, exc: ClientError) -> None:
        if not self._stopped:
            log.error("outbox: %s", exc)
            self._report(exc)

    def _settled(self, seq: int, sent: asyncio.Future[None]) -> None:
        self._sent.pop(seq, None)
        error = None if sent.cancelled() else sent.exception()
        if sent.cancelled() or error is not None:
            if isinstance(error, ProtocolError):  # can never be sent: do not retry forever
                self.outbox.acked(seq)
                log.error("outbox: message %d refused by the MQTT engine, deleted: %s",
                          seq, error)
                self._report(error)
            else:
                self.outbox.release(seq)
            return
        self.outbox.acked(seq)
        if not self.outbox.closed:
            self._schedule()

    def _autoconnect(self) -> None:
        """One background connection task at a time, none before the
        back-off after a failure."""
        driver = self._driver
        if (not self._config.auto_connect or self._stopped or driver.connected
                or driver.reconnecting):
            return
        if self._connecting is not None and not self._connecting.done():
            return
        loop = asyncio.get_running_loop()
        if loop.time() < self._retry_at:
            return
        task = self._connecting = loop.create_task(self._connect_loop())
        task.add_done_callback(self._connect_ended)

    async def _connect_loop(self) -> None:
        loop = asyncio.get_running_loop()
        policy = self._config.reconnect_policy()
        attempt = 0
        while not self._stopped:
            try:
                await self._connect()
                return
            except OperationCancelled:
                return  # disconnect() or shutdown()
            except (ClientError, OperationTimeout) as exc:
                self._report(exc)
                attempt += 1
                delay = policy.delay(attempt, self._rng)
                self._retry_at = loop.time() + delay
                if (not policy.enabled or isinstance(exc, CredentialError)
                        or not self.outbox.pending):
                    return
                await asyncio.sleep(delay)  # the back-off
            if self._driver.connected or self._driver.reconnecting:
                return

    def _connect_ended(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._report(task.exception())  # type: ignore[arg-type]
