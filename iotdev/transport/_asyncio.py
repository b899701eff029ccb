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
supervisor task reconnects with back-off after a drop, as the thread driver
does.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import random
import socket
from collections.abc import Callable
from typing import Any

from iotdev_mqtt import (
    ClientConnection,
    Connected,
    ConnectionLost,
    ConnectRefused,
    Event,
    MessageReceived,
    ProtocolError,
    PublishAcked,
    PublishFailed,
    QueueFull,
    RequestFailed,
    State,
    Subscribed,
    Unsubscribed,
)

from .._errors import (
    ClientError,
    ConnectionDroppedError,
    ConnectionFailedError,
    ConnectTimeoutError,
    CredentialError,
    OperationCancelled,
)
from ._endpoint import Endpoint, map_connect_error
from ._layer import Stack
from ._memory import connection_made
from ._options import ConnectOptions, ReconnectPolicy, connack_error

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
        self._engine_options = engine_options
        self.engine = ClientConnection(**engine_options)
        self._proto: _Protocol | None = None
        self._stack: Stack | None = None
        self._publishes: dict[int, asyncio.Future[None]] = {}
        self._qos0: list[asyncio.Future[None]] = []
        self._requests: dict[int, asyncio.Future[Any]] = {}
        self._attempt_done: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at: float | None = None
        self._flush_scheduled = False
        self._want_connected = False
        self._ever_connected = False
        self._connected = False
        self._stopped = False
        self._supervisor: asyncio.Task[None] | None = None
        self._connecting: asyncio.Future[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        # One generator for every driver: reconnect jitter needs no state of
        # its own, and a Random is 2.5 KB (felt with thousands of clients).
        self._rng = _JITTER
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def reconnecting(self) -> bool:
        """Connected before, dropped, and retrying (operations wait for it)."""
        return (not self._connected and self._want_connected and self._ever_connected
                and self.reconnect.enabled and not self._stopped)

    def _now(self) -> float:
        assert self._loop is not None
        return self._loop.time()

    # ------------------------------------------------------------- commands

    async def connect(self) -> None:
        """Connect and wait for CONNACK (the first attempt's error is raised)."""
        if self._stopped:
            raise ClientError("the client has been shut down")
        self._loop = asyncio.get_running_loop()
        self._want_connected = True
        if self._connected:
            return
        if self._connecting is not None and not self._connecting.done():
            await asyncio.shield(self._connecting)  # one attempt, however many callers
            return
        self._connecting = asyncio.ensure_future(self._first_attempt())
        await asyncio.shield(self._connecting)

    async def _first_attempt(self) -> None:
        try:
            await self._attempt()
        except ClientError as exc:
            self._want_connected = False
            self._fail_pending(exc)
            raise

    async def _attempt(self) -> None:
        loop = self._loop
        assert loop is not None
        endpoint = self.endpoint
        host, port = endpoint.dial_address
        done: asyncio.Future[None] = loop.create_future()
        self._attempt_done = done
        try:
            async with asyncio.timeout(endpoint.connect_timeout):
                try:
                    _, proto = await loop.create_connection(lambda: _Protocol(self), host, port)
                except OSError as exc:
                    raise map_connect_error(exc, endpoint) from exc
                self._proto = proto
                self._stack = endpoint.stack()
                self._stack.start()
                self._flush()
                await done
        except TimeoutError:
            error = ConnectTimeoutError(
                f"connecting to {endpoint.describe()} took longer than "
                f"{endpoint.connect_timeout:g} s")
            self._close(str(error), report=False)
            raise error from None
        except BaseException:
            self._close("connection attempt failed", report=False)
            raise
        finally:
            self._attempt_done = None

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> asyncio.Future[None]:
        """Queue a publish; the future resolves on PUBACK/PUBCOMP (QoS 0: once
        written).  Invalid arguments raise ``LocalProtocolError`` at once."""
        if self._stopped:
            raise ClientError("the client has been shut down")
        loop = self._loop or asyncio.get_running_loop()
        self._loop = loop
        fut: asyncio.Future[None] = loop.create_future()
        try:
            token = self.engine.publish(topic, payload, qos, retain, now=loop.time())
        except QueueFull as exc:
            raise ClientError(f"the outgoing queue is full ({exc.reason}); the connection "
                              "is down or too slow: retry later") from exc
        if qos == 0:
            self._qos0.append(fut)
        else:
            self._publishes[token] = fut
        self._flush_soon()
        return fut

    async def subscribe(self, subscriptions: list[tuple[str, int]]) -> tuple[int, ...]:
        result: tuple[int, ...] = await self.subscribe_nowait(subscriptions)
        return result

    def subscribe_nowait(self, subscriptions: list[tuple[str, int]]) -> asyncio.Future[Any]:
        """Write the SUBSCRIBE now (before returning) and return a future that
        resolves with the SUBACK's return codes.  What a synchronous caller (a
        property setter) uses so the request is on the wire before it returns."""
        self._request_check("subscribe")
        pid = self.engine.subscribe(subscriptions, now=self._now())
        fut = self._register(pid)
        self._flush()
        return fut

    async def unsubscribe(self, topic_filters: list[str]) -> None:
        self._request_check("unsubscribe")
        pid = self.engine.unsubscribe(topic_filters, now=self._now())
        await self._register(pid)

    def _request_check(self, kind: str) -> int:
        if self._stopped:
            raise ClientError("the client has been shut down")
        if self.engine.state is not State.CONNECTED:
            raise ConnectionDroppedError(f"cannot {kind}: not connected")
        return 0

    def _register(self, pid: int) -> asyncio.Future[Any]:
        assert self._loop is not None
        fut: asyncio.Future[Any] = self._loop.create_future()
        self._requests[pid] = fut
        self._flush_soon()
        return fut

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
        self._close("reauthorizing with new credentials", report=True)
        await self._attempt()

    async def disconnect(self) -> None:
        """Send DISCONNECT, close, stop reconnecting; waiting operations end
        with ``OperationCancelled``."""
        self._want_connected = False
        if self._supervisor is not None:
            self._supervisor.cancel()
            self._supervisor = None
        self._goodbye()
        self._close("disconnected by the application", report=True)
        self._fail_pending(OperationCancelled("disconnect() was called"))

    async def shutdown(self) -> None:
        if self._stopped:
            return
        await self.disconnect()
        self._stopped = True
        for task in list(self._tasks):
            task.cancel()

    def _goodbye(self) -> None:
        if self._proto is None or self._stack is None or self.engine.state is not State.CONNECTED:
            return
        self.engine.disconnect(now=self._now())
        try:
            self._stack.send(self.engine.data_to_send())
            self._stack.close()
            raw = self._stack.data_to_send()
        except ClientError:
            return
        if self._proto.transport is not None and raw:
            self._proto.transport.write(raw)

    # ------------------------------------------------------------------ I/O

    def _flush_soon(self) -> None:
        if not self._flush_scheduled and self._loop is not None:
            self._flush_scheduled = True
            self._loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        proto, stack = self._proto, self._stack
        if proto is None or stack is None or proto.transport is None:
            return
        if stack.established and self.engine.state is State.DISCONNECTED:
            self._start_mqtt()
        try:
            out = self.engine.data_to_send()
            if out:
                stack.send(out)
            raw = stack.data_to_send()
        except ClientError as exc:
            self._lost(str(exc))
            return
        if raw:
            proto.transport.write(raw)
        if self._qos0:
            for fut in self._qos0:
                if not fut.done():
                    fut.set_result(None)
            self._qos0.clear()
        self._arm_timer()

    def _start_mqtt(self) -> None:
        try:
            creds = self.options.current_credentials()
        except Exception as exc:
            self._fail_attempt(ClientError(f"the credentials callable failed: {exc}"))
            return
        self._handle(self.engine.connect(
            self.options.client_id, now=self._now(), clean_session=self.options.clean_session,
            keep_alive=self.options.keep_alive, username=creds.username,
            password=creds.password, will=self.options.will,
        ))

    def _on_data(self, proto: _Protocol, data: bytes) -> None:
        if proto is not self._proto or self._stack is None:
            return
        stack = self._stack
        try:
            app = stack.receive_data(data)
            if not stack.established:
                if not data:
                    raise ConnectionDroppedError(
                        f"{self.endpoint.describe()} closed the connection during the handshake")
                self._flush()
                return
            if self.engine.state is State.DISCONNECTED:
                self._start_mqtt()
            if app:
                self._handle(self.engine.receive_data(app, now=self._now()))
        except ProtocolError as exc:
            self._handle(list(getattr(exc, "events", ())))
            self._lost(f"protocol violation by the server: {exc}", exc)
            return
        except ClientError as exc:
            if self._connected:
                self._lost(str(exc), exc)
            else:
                self._fail_attempt(exc)
            return
        if not data or stack.closed:
            self._lost("the server closed the connection")
            return
        self._flush()

    def _on_transport_closed(self, proto: _Protocol, exc: Exception | None) -> None:
        if proto is self._proto:
            reason = f"connection lost: {exc}" if exc else "the server closed the connection"
            if self._connected:
                self._lost(reason, exc)
            else:
                self._fail_attempt(ConnectionDroppedError(reason))

    def _arm_timer(self) -> None:
        if self._proto is None or self._loop is None:
            return
        deadline = self.engine.next_deadline()
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
        deadline = self.engine.next_deadline()
        if deadline is not None and self._now() >= deadline:
            try:
                self._handle(self.engine.tick(self._now()))
            except ProtocolError as exc:
                self._lost(str(exc))
                return
        self._flush()

    # --------------------------------------------------------------- events

    def _call(self, callback: Callable[..., Any] | None, *args: Any) -> None:
        if callback is None:
            return
        try:
            result = callback(*args)
        except Exception as exc:
            log.exception("callback raised")
            self._report_error(exc)
            return
        if inspect.isawaitable(result):
            task = asyncio.ensure_future(result)
            self._tasks.add(task)
            task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._report_error(task.exception())  # type: ignore[arg-type]

    def _report_error(self, exc: BaseException) -> None:
        if self.on_error is not None:
            try:
                self.on_error(exc)
            except Exception:
                log.exception("on_error raised")

    def _handle(self, events: list[Event]) -> None:
        for event in events:
            if isinstance(event, PublishAcked):
                fut = self._publishes.pop(event.token, None)
                if fut is not None and not fut.done():
                    fut.set_result(None)
            elif isinstance(event, MessageReceived):
                self._call(self.on_message, event)
            elif isinstance(event, Subscribed):
                req = self._requests.pop(event.packet_id, None)
                if req is not None and not req.done():
                    req.set_result(event.return_codes)
            elif isinstance(event, Unsubscribed):
                req = self._requests.pop(event.packet_id, None)
                if req is not None and not req.done():
                    req.set_result(None)
            elif isinstance(event, Connected):
                self._ever_connected = True
                self._connected = True
                if self._loop is not None:
                    connection_made(self._loop)  # a fleet's handshake garbage goes back
                log.info("connected to %s", self.endpoint.describe())
                if self._attempt_done is not None and not self._attempt_done.done():
                    self._attempt_done.set_result(None)
                self._call(self.on_state, True, None)
            elif isinstance(event, ConnectRefused):
                error = connack_error(event.return_code, self.endpoint.describe())
                if event.return_code in (1, 2) or (
                    isinstance(error, CredentialError) and not self.options.refreshable
                ):
                    self._want_connected = False
                self._fail_attempt(error)
            elif isinstance(event, ConnectionLost):
                if self._connected:
                    self._lost(event.reason)
                else:
                    self._fail_attempt(ConnectTimeoutError(event.reason))
            elif isinstance(event, PublishFailed):
                fut = self._publishes.pop(event.token, None)
                if fut is not None and not fut.done():
                    fut.set_exception(ConnectionDroppedError(event.reason))
            elif isinstance(event, RequestFailed):
                req = self._requests.pop(event.packet_id, None)
                if req is not None and not req.done():
                    req.set_exception(ConnectionDroppedError(event.reason))

    # ------------------------------------------------------ loss and retry

    def _close(self, reason: str, *, report: bool) -> None:
        proto = self._proto
        self._proto = None
        self._stack = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_at = None
        if proto is not None and proto.transport is not None:
            proto.transport.close()
        if self.engine.state is not State.DISCONNECTED:
            self._handle(self.engine.connection_lost())
        if report and self._connected:
            self._connected = False
            log.info("disconnected from %s: %s", self.endpoint.describe(), reason)
            self._call(self.on_state, False, reason)
        self._connected = False

    def _lost(self, reason: str, exc: BaseException | None = None) -> None:
        """The connection is gone (before CONNACK 0 this fails the attempt)."""
        if self._proto is None:
            return
        if not self._connected:
            failed = ConnectionFailedError(
                f"{self.endpoint.describe()}: {reason} (while connecting)")
            failed.__cause__ = exc  # e.g. the malformed packet, as the thread driver does
            self._fail_attempt(failed)
            return
        self._close(reason, report=True)
        # Say why, as azure-iot-device v2 does (see the thread driver).
        dropped = ConnectionDroppedError(f"connection lost: {reason}")
        dropped.__cause__ = exc
        self._report_error(dropped)
        if self.reconnect.enabled and self._want_connected and not self._stopped:
            self._start_supervisor()
        else:
            self._want_connected = False
            self._fail_pending(ConnectionDroppedError(f"connection lost: {reason}"))

    def _fail_attempt(self, error: ClientError) -> None:
        log.debug("connection attempt to %s failed: %s", self.endpoint.describe(), error)
        if isinstance(error, ConnectionDroppedError):  # dropped before CONNACK: a failure
            failed = ConnectionFailedError(str(error))
            failed.__cause__ = error
            error = failed
        self._close(str(error), report=False)
        done = self._attempt_done
        if done is not None and not done.done():
            done.set_exception(error)
            return  # the supervisor (or connect()) decides what follows
        self._want_connected = False
        self._fail_pending(error)

    def _start_supervisor(self) -> None:
        if self._supervisor is None or self._supervisor.done():
            self._supervisor = asyncio.ensure_future(self._reconnect_loop())

    async def _reconnect_loop(self) -> None:
        attempt = 0
        while self._want_connected and not self._stopped:
            attempt += 1
            delay = self.reconnect.delay(attempt, self._rng)
            log.info("reconnecting to %s in %.1f s (attempt %d)", self.endpoint.describe(),
                     delay, attempt)
            await asyncio.sleep(delay)
            if not self._want_connected:
                return
            try:
                await self._attempt()
                return
            except ClientError as exc:
                self._report_error(exc)
                if not self._want_connected:
                    self._fail_pending(exc)
                    return

    def _fail_pending(self, error: BaseException) -> None:
        for fut in [*self._publishes.values(), *self._qos0, *self._requests.values()]:
            if not fut.done():
                fut.set_exception(error)
        self._publishes.clear()
        self._qos0.clear()
        self._requests.clear()
        self.engine = ClientConnection(**self._engine_options)
        self._ever_connected = False
