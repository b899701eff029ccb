"""What moves messages from the outbox (``_outbox.py``) to the MQTT engine:
one policy (``PumpPolicy``: what a pump does, what a PUBLISH's outcome means,
when to connect in the background and when to stop trying) and two thin
pumps that run it, ``ThreadSender`` on the sync client's I/O thread and
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
from ._outbox import FLUSH_AFTER, Outbox, Row

if TYPE_CHECKING:
    from ._hubclient import HubConfig
    from .transport._asyncio import AsyncDriver
    from .transport._thread import Completion, ThreadDriver

__all__ = ["AsyncSender", "PumpPolicy", "ThreadSender"]

log = logging.getLogger(__name__)

Report = Callable[[BaseException], None]


class PumpPolicy:
    """The outbox's decisions, once for both senders (sans-IO: the clock is
    an argument, the sender's hooks do the rest).

    Args:
        outbox: the open outbox.
        config: ``auto_connect`` and the reconnect policy.
        report: called with background errors.
        changed: called when rows were deleted or dropped (wake the waiters).
        flush_later: called when acknowledged rows wait for a group commit;
            the sender calls ``flush()`` ``FLUSH_AFTER`` seconds later.
    """

    def __init__(self, outbox: Outbox, config: HubConfig, report: Report,
                 changed: Callable[[], None], flush_later: Callable[[], None]) -> None:
        self.outbox = outbox
        self.config = config
        self.report = report
        self.changed = changed
        self.flush_later = flush_later
        self.flush_due = False
        self.stopped = False
        self.retry_at = 0.0
        self._attempt = 0
        self._rng = random.Random()

    def pump(self, *, connected: bool, waiting: bool, send: Callable[[Row], None]) -> None:
        """Delete what was acknowledged (at once while someone ``waiting``
        or while not ``connected``), then, while connected, ``send`` the next
        rows the window has room for (in sequence order).  ``send`` raises
        ``ClientError`` when the client was shut down: the rest are released."""
        outbox = self.outbox
        if outbox.closed:
            return
        try:
            if outbox.commit(force=waiting or not connected):
                self.changed()
            if outbox.unflushed and not self.flush_due:
                self.flush_due = True
                self.flush_later()
            if not connected:
                return
            rows = outbox.take()
            for index, row in enumerate(rows):
                try:
                    send(row)
                except ClientError:  # shut down meanwhile
                    for unsent in rows[index:]:
                        outbox.release(unsent.seq)
                    return
        except ClientError as exc:  # the disk failed
            self.failed(exc)

    def flush(self) -> None:
        """Delete acknowledged rows no ``put()`` took along."""
        self.flush_due = False
        if self.outbox.closed:
            return
        try:
            if self.outbox.commit():
                self.changed()
        except ClientError as exc:
            self.failed(exc)

    def failed(self, exc: ClientError) -> None:
        if not self.stopped:
            log.error("outbox: %s", exc)
            self.report(exc)

    def settled(self, seq: int, error: BaseException | None) -> bool:
        """A PUBLISH's outcome: a PUBACK acknowledges the row (``True``: pump
        again); an engine refusal deletes it (it can never be sent: do not
        retry forever); any other failure leaves it for the next connection."""
        if error is None:
            self.outbox.acked(seq)
            return not self.outbox.closed
        if isinstance(error, ProtocolError):
            self.outbox.acked(seq)
            log.error("outbox: message %d refused by the MQTT engine, deleted: %s", seq, error)
            self.report(error)
        else:
            self.outbox.release(seq)
        return False

    def may_connect(self, *, connected: bool, reconnecting: bool, now: float) -> bool:
        """Start a background connection now?  Not before the back-off after
        a failed one has passed, whoever asks."""
        return (self.config.auto_connect and not self.stopped and not connected
                and not reconnecting and now >= self.retry_at)

    def connect_ended(self, error: BaseException | None, now: float) -> float | None:
        """A background connection succeeded (``error`` is ``None``) or
        failed: when to try again (``None``: not on our own).  ``disconnect()``
        and shutdown stop it; bad credentials, a disabled reconnect policy or
        an empty outbox too."""
        if error is None:
            self._attempt = 0
            return None
        if isinstance(error, OperationCancelled) or self.stopped:
            return None
        self.report(error)
        self._attempt += 1
        policy = self.config.reconnect_policy()
        self.retry_at = now + policy.delay(self._attempt, self._rng)
        if policy.enabled and not isinstance(error, CredentialError) and self.outbox.pending:
            return self.retry_at
        return None


class ThreadSender:
    """The outbox of a sync client, pumped on the driver's I/O thread.

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
        self._policy = PumpPolicy(outbox, config, report, self._notify, self._flush_later)
        self._changed = threading.Condition()  # rows deleted or dropped, or closed
        self._waiting = 0  # threads in wait_drained
        self._pump_due = False
        self._connecting = False  # the I/O thread's

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
        self._policy.stopped = True

    def close(self) -> None:
        """After the I/O thread ended: delete what was acknowledged, release
        the file, wake the waiters."""
        self._policy.stopped = True
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
        self._policy.pump(connected=self._driver.connected, waiting=self._waiting > 0,
                          send=self._send)

    def _send(self, row: Row) -> None:
        sent = self._driver.publish(row.topic, row.payload, 1, False)
        sent.add_done_callback(functools.partial(self._settled, row.seq))

    def _flush_later(self) -> None:
        self._set_timer("outbox-flush", time.monotonic() + FLUSH_AFTER, self._policy.flush)

    def _settled(self, seq: int, sent: Completion) -> None:
        if self._policy.settled(seq, sent.exception(0)):
            self._schedule()

    def _autoconnect(self) -> None:
        """Any thread: have the I/O thread start a background connection."""
        if self._wants_connection():
            self._set_timer("outbox-connect", time.monotonic(), self._connect)

    def _wants_connection(self) -> bool:
        return not self._connecting and self._policy.may_connect(
            connected=self._driver.connected, reconnecting=self._driver.reconnecting,
            now=time.monotonic())

    def _connect(self) -> None:
        """One background attempt at a time (its completion is resolved on
        this thread, later, so the callback cannot be missed)."""
        if self._wants_connection():
            self._connecting = True
            self._driver.connect().add_done_callback(self._connect_done)

    def _connect_done(self, attempt: Completion) -> None:
        self._connecting = False
        retry_at = self._policy.connect_ended(attempt.exception(0), time.monotonic())
        if retry_at is not None:
            self._set_timer("outbox-retry", retry_at, self._connect)


class AsyncSender:
    """The outbox of an asyncio client, pumped on its event loop; every
    outbox call runs on the loop (one small transaction each; ``put()``
    fsyncs).

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
        self._report = report
        self._connect = connect
        self._policy = PumpPolicy(outbox, config, report, self._wake, self._flush_later)
        self._sent: dict[int, asyncio.Future[None]] = {}  # rows in flight
        self._waiters: set[asyncio.Future[None]] = set()
        self._pump_due = False
        self._flush: asyncio.TimerHandle | None = None
        self._connecting: asyncio.Task[None] | None = None

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
        self._policy.stopped = True
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
        self._policy.pump(connected=self._driver.connected, waiting=bool(self._waiters),
                          send=self._send)

    def _send(self, row: Row) -> None:
        sent = self._sent[row.seq] = self._driver.publish(row.topic, row.payload, 1, False)
        sent.add_done_callback(functools.partial(self._settled, row.seq))

    def _flush_later(self) -> None:
        self._flush = asyncio.get_running_loop().call_later(FLUSH_AFTER, self._flushed)

    def _flushed(self) -> None:
        self._flush = None
        self._policy.flush()

    def _settled(self, seq: int, sent: asyncio.Future[None]) -> None:
        self._sent.pop(seq, None)
        error = OperationCancelled("cancelled") if sent.cancelled() else sent.exception()
        if self._policy.settled(seq, error):
            self._schedule()

    def _autoconnect(self) -> None:
        """One background connection task at a time."""
        if self._connecting is not None and not self._connecting.done():
            return
        loop = asyncio.get_running_loop()
        if self._policy.may_connect(connected=self._driver.connected,
                                    reconnecting=self._driver.reconnecting, now=loop.time()):
            task = self._connecting = loop.create_task(self._connect_loop())
            task.add_done_callback(self._connect_ended)

    async def _connect_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._policy.stopped:
            error: BaseException | None = None
            try:
                await self._connect()
            except (ClientError, OperationTimeout, OperationCancelled) as exc:
                error = exc
            retry_at = self._policy.connect_ended(error, loop.time())
            if retry_at is None:
                return
            await asyncio.sleep(retry_at - loop.time())  # the back-off
            if self._driver.connected or self._driver.reconnecting:
                return

    def _connect_ended(self, task: asyncio.Task[Any]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self._report(task.exception())  # type: ignore[arg-type]
