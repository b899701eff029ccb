"""The asyncio driver: the same layer stack and MQTT engine on the caller's
event loop, with no threads.

Theory of operation
-------------------
An ``asyncio.Protocol`` receives bytes (``data_received``) and feeds the stack
and the engine directly; engine output is written by one coalesced flush per
loop iteration (``call_soon``), so a thousand concurrent ``publish()`` calls
leave in one ``transport.write``.  Timers come from ``next_deadline()`` through
``loop.call_at``: the handle is moved earlier when needed, and when it fires
late deadlines are simply re-armed.  ``publish()`` returns an
``asyncio.Future`` resolved by ``PublishAcked``; SUBACK/UNSUBACK resolve the
request futures.  Messages and state changes go to callbacks (plain functions
or coroutine functions, run as tasks) and to ``messages()`` queues.  A
task reconnects after the back-off the core asks for (``retry_in``).  Every
decision (engine event to completion, error translation, when to retry, what
to fail) is the shared ``DriverCore``'s (``_core.py``), as in the thread
driver: this module is the I/O around it and the ``DriverIO`` hooks.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import socket
from collections.abc import Callable
from typing import Any

from iotdev_mqtt import MessageReceived

from .._compat import async_timeout
from .._errors import ClientError, OperationCancelled
from ._core import DriverCore, settle
from ._endpoint import Endpoint, map_connect_error
from ._memory import connection_made
from ._options import ConnectOptions, ReconnectPolicy

__all__ = ["AsyncDriver"]

log = logging.getLogger(__name__)

_JITTER = random.Random()


class _Protocol(asyncio.Protocol):
    def __init__(self, driver: AsyncDriver) -> None:
        self.driver = driver
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def data_received(self, data: bytes) -> None:
        self.driver._on_data(self, data)

    def eof_received(self) -> bool | None:
        self.driver._on_data(self, b"")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.driver._on_transport_closed(self, exc)


class AsyncDriver:
    """One MQTT connection (and its reconnections) on the running event loop.

    Args are those of ``ThreadDriver``; callbacks may be coroutine functions.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        options: ConnectOptions,
        *,
        reconnect: ReconnectPolicy | None = None,
        on_message: Callable[[MessageReceived], Any] | None = None,
        on_state: Callable[[bool, str | None], Any] | None = None,
        on_error: Callable[[BaseException], Any] | None = None,
        **engine_options: Any,
    ) -> None:
        self.endpoint = endpoint
        self.options = options
        self.reconnect = reconnect or ReconnectPolicy()
        self.on_message = on_message
        self.on_state = on_state
        self.on_error = on_error
        # One generator for every driver: reconnect jitter needs no state of
        # its own, and a Random is 2.5 KB (felt with thousands of clients).
        self.core: DriverCore[asyncio.Future[Any]] = DriverCore(
            self, endpoint, options, self.reconnect, _JITTER, engine_options)
        self._proto: _Protocol | None = None
        self._attempt_done: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._flush_scheduled = False
        self._stopped = False
        self._supervisor: asyncio.Task[None] | None = None
        self._connecting: asyncio.Future[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def connected(self) -> bool:
        return self.core.connected

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The event loop the driver runs on (``None`` before its first use)."""
        return self._loop

    @property
    def reconnecting(self) -> bool:
        """Connected before, dropped, and retrying (operations wait for it)."""
        return self.core.reconnecting and not self._stopped

    # ------------------------------------------------------------- commands

    async def connect(self) -> None:
        """Connect and wait for CONNACK (the first attempt's error is raised)."""
        if self._stopped:
            raise ClientError("the client has been shut down")
        self._loop = asyncio.get_running_loop()
        self.core.want_connection()
        if self.core.connected:
            return
        if self._connecting is None or self._connecting.done():
            if self._supervisor is not None:  # connect now, not after the back-off
                self._supervisor.cancel()
                self._supervisor = None
            self._connecting = asyncio.ensure_future(self._attempt())
        await asyncio.shield(self._connecting)  # one attempt, however many callers

    async def _attempt(self) -> None:
        """One connection attempt; raises its error (the core has already
        decided what follows it)."""
        loop = self._loop
        assert loop is not None
        endpoint = self.endpoint
        host, port = endpoint.dial_address
        done: asyncio.Future[None] = loop.create_future()
        done.add_done_callback(_retrieved)
        self._attempt_done = done
        try:
            try:
                async with async_timeout(endpoint.connect_timeout):
                    _, proto = await loop.create_connection(lambda: _Protocol(self), host, port)
            except OSError as exc:  # TimeoutError included
                self.core.fail_attempt(map_connect_error(exc, endpoint), exc)
            else:
                self._proto = proto
                self.core.begin(endpoint.stack())
                self._flush()
            await done
        except asyncio.CancelledError:
            if not done.done():
                self.core.close("connection attempt cancelled", report=False)
            raise
        finally:
            if self._attempt_done is done:
                self._attempt_done = None

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> asyncio.Future[None]:
        """Queue a publish; the future resolves on PUBACK/PUBCOMP (QoS 0: once
        written).  Its errors are the core's (``_core.py``); a call after
        ``shutdown()`` raises ``ClientError`` at once."""
        fut: asyncio.Future[None] = self._future()
        self.core.publish(fut, topic, payload, qos, retain)
        self._flush_soon()
        return fut

    async def subscribe(self, subscriptions: list[tuple[str, int]]) -> tuple[int, ...]:
        result: tuple[int, ...] = await self.subscribe_nowait(subscriptions)
        return result

    def subscribe_nowait(self, subscriptions: list[tuple[str, int]]) -> asyncio.Future[Any]:
        """Write the SUBSCRIBE now (before returning) and return a future that
        resolves with the SUBACK's return codes.  What a synchronous caller (a
        property setter) uses so the request is on the wire before it returns."""
        fut: asyncio.Future[Any] = self._future()
        self.core.request(fut, "subscribe", subscriptions)
        self._flush()
        return fut

    async def unsubscribe(self, topic_filters: list[str]) -> None:
        fut: asyncio.Future[Any] = self._future()
        self.core.request(fut, "unsubscribe", topic_filters)
        self._flush_soon()
        await fut

    def _future(self) -> asyncio.Future[Any]:
        if self._stopped:
            raise ClientError("the client has been shut down")
        loop = self._loop = self._loop or asyncio.get_running_loop()
        return loop.create_future()

    def pause_reading(self, paused: bool) -> None:
        """Back-pressure: stop (``True``) or resume reading from the server on
        the current connection, for a caller whose handlers fall behind (TCP
        then holds the server back).  Idempotent; a new connection reads."""
        proto = self._proto
        if proto is not None and proto.transport is not None:
            if paused:
                proto.transport.pause_reading()
            else:
                proto.transport.resume_reading()

    async def reauthorize(self) -> None:
        """Reconnect at once with fresh credentials, keeping the session."""
        if self._proto is None:
            return
        self._goodbye()
        self.core.close("reauthorizing with new credentials", report=True)
        self._connecting = asyncio.ensure_future(self._attempt())
        await asyncio.shield(self._connecting)

    async def disconnect(self) -> None:
        """Send DISCONNECT, close, stop reconnecting; waiting operations end
        with ``OperationCancelled``."""
        if self._supervisor is not None:
            self._supervisor.cancel()
            self._supervisor = None
        self._goodbye()
        self.core.stop("disconnected by the application",
                       OperationCancelled("disconnect() was called"))

    async def shutdown(self) -> None:
        if self._stopped:
            return
        await self.disconnect()
        self._stopped = True
        for task in list(self._tasks):
            task.cancel()

    def _goodbye(self) -> None:
        proto = self._proto
        if proto is None:
            return
        raw = self.core.goodbye()
        if proto.transport is not None and raw:
            proto.transport.write(raw)

    # ----------------------------------------------- DriverIO (the core's hooks)

    def now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    def drop_transport(self) -> None:
        proto = self._proto
        self._proto = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_at = None
        if proto is not None and proto.transport is not None:
            proto.transport.close()

    def deliver(self, event: MessageReceived) -> None:
        self._call(self.on_message, event)

    def state_changed(self, connected: bool, reason: str | None) -> None:
        if connected:
            log.info("connected to %s", self.endpoint.describe())
            if self._loop is not None:
                connection_made(self._loop)  # a fleet's handshake garbage goes back
        else:
            log.info("disconnected from %s: %s", self.endpoint.describe(), reason)
        self._call(self.on_state, connected, reason)

    def report(self, exc: BaseException) -> None:
        if self.on_error is not None:
            try:
                self.on_error(exc)
            except Exception:
                log.exception("on_error raised")

    def attempt_ended(self, error: BaseException | None) -> None:
        if error is not None:
            log.debug("connection attempt to %s failed: %s", self.endpoint.describe(), error)
        settle(self._attempt_done, error=error)

    def retry_in(self, delay: float) -> None:
        if self._stopped:
            return
        log.info("reconnecting to %s in %.1f s (attempt %d)", self.endpoint.describe(), delay,
                 self.core.attempts)
        if self._supervisor is not None:
            self._supervisor.cancel()
        self._supervisor = asyncio.ensure_future(self._retry(delay))

    async def _retry(self, delay: float) -> None:
        await asyncio.sleep(delay)
        self._supervisor = None
        if not self.core.want_connected or self._stopped or self._proto is not None:
            return
        if self._connecting is not None and not self._connecting.done():
            return  # connect() is at it
        self._connecting = asyncio.ensure_future(self._attempt())
        try:
            await asyncio.shield(self._connecting)
        except (ClientError, OperationCancelled):
            pass  # reported, and retried or given up, by the core; or disconnect()

    # ------------------------------------------------------------------ I/O

    def _flush_soon(self) -> None:
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        proto = self._proto
        if proto is None or proto.transport is None:
            return
        raw = self.core.outgoing()
        if self._proto is not proto:
            return
        if raw:
            proto.transport.write(raw)
        self.core.written()
        self._arm_timer()

    def _on_data(self, proto: _Protocol, data: bytes) -> None:
        if proto is not self._proto:
            return
        self.core.receive(data)
        if data and self._proto is proto:
            self._flush()

    def _on_transport_closed(self, proto: _Protocol, exc: Exception | None) -> None:
        if proto is self._proto:
            self.core.lost(f"connection lost: {exc}" if exc else
                           "the server closed the connection", exc)

    def _arm_timer(self) -> None:
        if self._proto is None or self._loop is None:
            return
        deadline = self.core.next_deadline()
        if deadline is None:
            return
        if self._timer is not None and self._timer_at is not None and self._timer_at <= deadline:
            return  # an earlier timer will re-arm when it fires
        if self._timer is not None:
            self._timer.cancel()
        self._timer_at = deadline
        self._timer = self._loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._timer_at = None
        if self._proto is None:
            return
        deadline = self.core.next_deadline()
        if deadline is not None and self.now() >= deadline:
            self.core.tick()
        self._flush()

    # --------------------------------------------------------------- events

    def _call(self, callback: Callable[..., Any] | None, *args: Any) -> None:
        if callback is None:
            return
        try:
            result = callback(*args)
        except Exception as exc:
            log.exception("callback raised")
            self.report(exc)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._tasks.add(task)
            task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.report(task.exception())  # type: ignore[arg-type]


def _retrieved(fut: asyncio.Future[Any]) -> None:
    """Mark an attempt's outcome as seen (nobody may await it)."""
    if not fut.cancelled():
        fut.exception()
