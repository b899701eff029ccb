"""The decision core of the two MQTT drivers (``_thread.py``, ``_asyncio.py``).

Theory of operation
-------------------
A driver owns the I/O: a socket and a selector on an I/O thread, or an
asyncio transport on the caller's loop; the clock; where callbacks run.  What
it *decides* is written here once, sans-IO (no sockets, threads, tasks,
clocks or logging: time comes from ``DriverIO.now()``):

* **Bytes.**  ``receive(data)`` feeds the layer stack, sends CONNECT once the
  layers are established, feeds the engine; ``outgoing()`` is what to write.
* **Events to completions.**  ``PublishAcked`` resolves the publish's waiter
  (by token), ``Subscribed`` / ``Unsubscribed`` the request's (by packet id);
  ``PublishFailed`` / ``RequestFailed`` fail them; messages go to
  ``DriverIO.deliver``.  A waiter is anything with ``done``, ``set_result``
  and ``set_exception`` (the thread driver's ``Completion``, an
  ``asyncio.Future``).
* **Retry policy.**  A failed attempt is retried (``DriverIO.retry_in`` with
  the policy's back-off) only while reconnecting after a drop, and every
  failed reconnection is reported (``on_error``), the last one too; the first
  ``connect()`` raises its failure instead.  CONNACK 1/2, and 4/5 with fixed
  credentials, stop the retries: trying again cannot help.  Giving up fails
  what is pending and drops the session (a later ``connect()`` starts afresh).
* **Timers.**  ``next_deadline()`` is the earliest of the handshake deadline
  (TCP connect to CONNACK within ``Endpoint.connect_timeout``) and the
  engine's keep-alive; ``tick()`` runs them.

Errors, translated once here (both drivers raise the same type for the same
failure; ``tests/test_driver_parity.py`` runs the scenarios through both):

====================================================  ================================
failure                                               error
====================================================  ================================
TCP connect: DNS, refused, timeout                    ``map_connect_error``: HostNotFound-,
                                                      ConnectionRefusedByHost-, ConnectTimeoutError
TLS / proxy / WebSocket handshake refused             the layer's ConnectionFailedError subclass
TCP connect to CONNACK over ``connect_timeout``       ConnectTimeoutError
the engine's CONNACK wait expires (ConnectionLost     ConnectTimeoutError (it *is* a timeout; a
before CONNACK)                                       ConnectionFailedError like the rest)
EOF, socket error, server protocol violation          ConnectionFailedError (cause chained)
before CONNACK
CONNACK refused                                       ``connack_error``: CredentialError (4, 5),
                                                      ConnectionFailedError (3), ClientError (1, 2)
the connection drops after CONNACK                    ``on_error`` gets ConnectionDroppedError;
                                                      waiters wait for the reconnection, or fail
                                                      with ConnectionDroppedError without one
a publish or request lost with its connection         ConnectionDroppedError
the outgoing queue is full                            ClientError
invalid arguments (the engine's LocalProtocolError)   that LocalProtocolError
``disconnect()`` / ``shutdown()`` while waiting       OperationCancelled
a call after ``shutdown()``                           ClientError, raised at once
====================================================  ================================

Every error of a *command* (queue full, invalid arguments, not connected)
reaches the caller through the command's waiter, in both drivers: the thread
driver cannot raise it at once (the engine lives on its I/O thread), and a
caller awaiting the future sees the same exception either way.  Only calls
after shutdown raise at once (they never reach the engine).
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Any, Generic, Protocol, TypeVar

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
)
from ._endpoint import Endpoint
from ._layer import Stack
from ._options import ConnectOptions, ReconnectPolicy, connack_error

__all__ = ["DriverCore", "DriverIO", "Waiter"]


class Waiter(Protocol):
    """What the core resolves: ``Completion`` or ``asyncio.Future``."""

    def done(self) -> bool: ...

    def set_result(self, result: Any, /) -> None: ...

    def set_exception(self, exception: BaseException, /) -> None: ...


W = TypeVar("W", bound=Waiter)


def settle(fut: Waiter | None, result: Any = None, error: BaseException | None = None) -> None:
    """Resolve ``fut`` unless it is gone or already done (or cancelled)."""
    if fut is None or fut.done():
        return
    if error is None:
        fut.set_result(result)
    else:
        fut.set_exception(error)


def chained(error: ClientError, cause: BaseException | None) -> ClientError:
    """``error`` with ``cause`` as its ``__cause__`` (``raise ... from``)."""
    if cause is not None and cause is not error and error.__cause__ is None:
        error.__cause__ = cause
    return error


class DriverIO(Protocol):
    """What the core asks of its driver: the I/O and the callbacks."""

    def now(self) -> float:
        """Monotonic seconds (the loop's clock for asyncio)."""

    def drop_transport(self) -> None:
        """Close the socket or transport now (no goodbye)."""

    def deliver(self, event: MessageReceived) -> None:
        """An application message arrived."""

    def state_changed(self, connected: bool, reason: str | None) -> None:
        """Tell the application the connection came up or went down."""

    def report(self, exc: BaseException) -> None:
        """A background error (``on_error``)."""

    def attempt_ended(self, error: BaseException | None) -> None:
        """The connection attempt in progress succeeded (``None``) or failed."""

    def retry_in(self, delay: float) -> None:
        """Start a connection attempt in ``delay`` seconds."""


class DriverCore(Generic[W]):
    """The decisions of one MQTT connection and its reconnections.

    Args:
        io: the driver.
        endpoint: where to connect (its ``connect_timeout`` bounds each attempt).
        options: what CONNECT carries.
        reconnect: the reconnect policy.
        rng: jitter for the back-off.
        engine_options: passed to ``ClientConnection``.
    """

    def __init__(self, io: DriverIO, endpoint: Endpoint, options: ConnectOptions,
                 reconnect: ReconnectPolicy, rng: random.Random,
                 engine_options: dict[str, Any]) -> None:
        self.io = io
        self.endpoint = endpoint
        self.options = options
        self.reconnect = reconnect
        self.rng = rng
        self._engine_options = engine_options
        self.engine = ClientConnection(**engine_options)
        self.stack: Stack | None = None  # the current connection's layers
        self.handshake_deadline: float | None = None
        self.publishes: dict[int, W] = {}
        self.qos0: list[W] = []
        self.requests: dict[int, W] = {}
        self.want_connected = False
        self.ever_connected = False
        self.connected = False
        self.attempts = 0  # attempts since the last connection (back-off)

    @property
    def where(self) -> str:
        return self.endpoint.describe()

    @property
    def reconnecting(self) -> bool:
        """Connected before, dropped, and retrying (operations wait for it)."""
        return (not self.connected and self.want_connected and self.ever_connected
                and self.reconnect.enabled)

    def pending(self) -> list[W]:
        return [*self.publishes.values(), *self.qos0, *self.requests.values()]

    # ------------------------------------------------------------- commands

    def want_connection(self) -> None:
        """``connect()``: connect, and retry after drops; back-off starts afresh."""
        self.want_connected = True
        self.attempts = 0

    def publish(self, fut: W, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        """Hand a publish to the engine; ``fut`` resolves on PUBACK (QoS 0:
        once written, see ``written``) or fails (see the table above)."""
        try:
            token = self.engine.publish(topic, payload, qos, retain, now=self.io.now())
        except QueueFull as exc:
            settle(fut, error=chained(ClientError(
                f"the outgoing queue is full ({exc.reason}); the connection is down or too "
                "slow: retry later"), exc))
            return
        except ProtocolError as exc:
            settle(fut, error=exc)
            return
        if qos == 0:
            self.qos0.append(fut)
        else:
            self.publishes[token] = fut

    def request(self, fut: W, kind: str, arg: Any) -> None:
        """SUBSCRIBE (``kind="subscribe"``, ``arg`` the subscriptions) or
        UNSUBSCRIBE (the filters); ``fut`` resolves on the ack."""
        if self.engine.state is not State.CONNECTED:
            settle(fut, error=ConnectionDroppedError(f"cannot {kind}: not connected"))
            return
        try:
            if kind == "subscribe":
                pid = self.engine.subscribe(arg, now=self.io.now())
            else:
                pid = self.engine.unsubscribe(arg, now=self.io.now())
        except ProtocolError as exc:
            settle(fut, error=exc)
            return
        self.requests[pid] = fut

    def written(self) -> None:
        """Everything produced so far is written: QoS 0 publishes are done."""
        if self.qos0:
            for fut in self.qos0:
                settle(fut)
            self.qos0.clear()

    def goodbye(self) -> bytes:
        """DISCONNECT and a clean close of the layers: the bytes to write last
        (nothing when not connected)."""
        stack = self.stack
        if stack is None or self.engine.state is not State.CONNECTED:
            return b""
        self.engine.disconnect(now=self.io.now())
        try:
            stack.send(self.engine.data_to_send())
            stack.close()
            return stack.data_to_send()
        except ClientError:
            return b""

    def stop(self, reason: str, error: BaseException) -> None:
        """``disconnect()`` / ``shutdown()``: close (after ``goodbye``), stop
        reconnecting, fail the attempt and every waiter with ``error``."""
        self.want_connected = False
        self.close(reason, report=True)
        self.io.attempt_ended(error)
        self.give_up(error)

    # ----------------------------------------------------------- connection

    def begin(self, stack: Stack) -> None:
        """A TCP connection is open: start the layers' handshakes (CONNECT
        follows once they are established)."""
        self.stack = stack
        self.handshake_deadline = self.io.now() + self.endpoint.connect_timeout
        try:
            stack.start()
        except ClientError as exc:
            self.fail_attempt(exc)
            return
        self._start_mqtt()

    def _start_mqtt(self) -> None:
        stack = self.stack
        if stack is None or not stack.established or self.engine.state is not State.DISCONNECTED:
            return
        try:
            creds = self.options.current_credentials()
        except Exception as exc:
            self.fail_attempt(ClientError(f"the credentials callable failed: {exc}"), exc)
            return
        self.handle(self.engine.connect(
            self.options.client_id, now=self.io.now(), clean_session=self.options.clean_session,
            keep_alive=self.options.keep_alive, username=creds.username,
            password=creds.password, will=self.options.will,
        ))

    def receive(self, data: bytes) -> None:
        """Bytes from the server (``b""``: end of stream)."""
        stack = self.stack
        if stack is None:
            return
        try:
            app = stack.receive_data(data)
            if not stack.established:
                if not data:
                    raise ConnectionDroppedError(
                        f"{self.where} closed the connection during the handshake")
                return
            self._start_mqtt()
            if app and self.stack is stack:
                self.handle(self.engine.receive_data(app, now=self.io.now()))
        except ProtocolError as exc:
            self.handle(list(getattr(exc, "events", ())))
            self.lost(f"protocol violation by the server: {exc}", exc)
            return
        except ClientError as exc:
            self.lost(str(exc), exc)
            return
        if not data or stack.closed:
            self.lost("the server closed the connection")

    def outgoing(self) -> bytes:
        """What to write now: the engine's output through the layers."""
        stack = self.stack
        if stack is None:
            return b""
        self._start_mqtt()
        if self.stack is not stack:
            return b""
        try:
            out = self.engine.data_to_send()
            if out:
                stack.send(out)
            return stack.data_to_send()
        except ClientError as exc:
            self.lost(str(exc), exc)
            return b""

    def next_deadline(self) -> float | None:
        """When ``tick()`` is due (``None``: no timer)."""
        deadline = self.handshake_deadline
        if self.stack is not None:
            engine = self.engine.next_deadline()
            if engine is not None and (deadline is None or engine < deadline):
                deadline = engine
        return deadline

    def tick(self) -> None:
        """Run what is due: the handshake deadline, the engine's keep-alive."""
        now = self.io.now()
        if self.handshake_deadline is not None and now >= self.handshake_deadline:
            self.fail_attempt(ConnectTimeoutError(
                f"connecting to {self.where} took longer than "
                f"{self.endpoint.connect_timeout:g} s"))
            return
        stack = self.stack
        if stack is not None and stack.established:
            deadline = self.engine.next_deadline()
            if deadline is not None and now >= deadline:
                try:
                    self.handle(self.engine.tick(now))
                except ProtocolError as exc:
                    self.lost(f"the MQTT engine failed: {exc}", exc)

    # --------------------------------------------------------------- events

    def handle(self, events: Iterable[Event]) -> None:
        """Engine events: resolve waiters, deliver messages, follow the
        connection's state."""
        for event in events:
            if isinstance(event, PublishAcked):
                settle(self.publishes.pop(event.token, None))
            elif isinstance(event, MessageReceived):
                self.io.deliver(event)
            elif isinstance(event, Subscribed):
                settle(self.requests.pop(event.packet_id, None), event.return_codes)
            elif isinstance(event, Unsubscribed):
                settle(self.requests.pop(event.packet_id, None))
            elif isinstance(event, Connected):
                self._connected_now()
            elif isinstance(event, ConnectRefused):
                error = connack_error(event.return_code, self.where)
                if event.return_code in (1, 2) or (
                    isinstance(error, CredentialError) and not self.options.refreshable
                ):
                    self.want_connected = False  # retrying cannot help
                self.fail_attempt(error)
            elif isinstance(event, ConnectionLost):
                if self.connected:
                    self.lost(event.reason)
                else:  # the engine's CONNACK wait expired
                    self.fail_attempt(ConnectTimeoutError(f"{self.where}: {event.reason}"))
            elif isinstance(event, PublishFailed):
                settle(self.publishes.pop(event.token, None),
                       error=ConnectionDroppedError(event.reason))
            elif isinstance(event, RequestFailed):
                settle(self.requests.pop(event.packet_id, None),
                       error=ConnectionDroppedError(event.reason))

    def _connected_now(self) -> None:
        self.handshake_deadline = None
        self.attempts = 0
        self.ever_connected = True
        self.connected = True
        self.io.attempt_ended(None)
        self.io.state_changed(True, None)

    # -------------------------------------------------------- loss and retry

    def close(self, reason: str, *, report: bool) -> None:
        """Close the connection and tell the engine (the session is kept)."""
        self.stack = None
        self.handshake_deadline = None
        self.io.drop_transport()
        if self.engine.state is not State.DISCONNECTED:
            self.handle(self.engine.connection_lost())
        was = self.connected
        self.connected = False
        if report and was:
            self.io.state_changed(False, reason)

    def lost(self, reason: str, exc: BaseException | None = None) -> None:
        """The connection is gone (before CONNACK 0 this fails the attempt)."""
        if self.stack is None:
            return
        if not self.connected:
            error = exc if isinstance(exc, ClientError) else ConnectionFailedError(
                f"{self.where}: {reason} (while connecting)")
            self.fail_attempt(error, exc)
            return
        self.close(reason, report=True)
        # Say why, as azure-iot-device v2 does: the state change carries no
        # reason, and a server that breaks the protocol after CONNACK would
        # otherwise go unreported.
        self.io.report(chained(ConnectionDroppedError(f"connection lost: {reason}"), exc))
        if self.reconnect.enabled and self.want_connected:
            self.io.retry_in(self.retry_delay())
        else:
            self.give_up(ConnectionDroppedError(f"connection lost: {reason}"))

    def fail_attempt(self, error: ClientError, cause: BaseException | None = None) -> None:
        """A connection attempt failed before CONNACK 0.  The first
        ``connect()`` reports it; a reconnection retries (policy permitting)."""
        error = chained(error, cause)
        if isinstance(error, ConnectionDroppedError):  # dropped before CONNACK: a failure
            error = chained(ConnectionFailedError(str(error)), error)
        self.close(str(error), report=False)
        self.io.attempt_ended(error)
        if self.ever_connected:  # a reconnection: say why, whether or not it goes on
            self.io.report(error)
            if self.reconnect.enabled and self.want_connected:
                self.io.retry_in(self.retry_delay())
                return
        self.give_up(error)

    def retry_delay(self) -> float:
        """Seconds before the next attempt (the policy's back-off)."""
        self.attempts += 1
        return self.reconnect.delay(self.attempts, self.rng)

    def give_up(self, error: BaseException) -> None:
        """Every waiter gets ``error``; the session is dropped (a later
        ``connect()`` starts afresh)."""
        self.want_connected = False
        pending = self.pending()
        self.publishes.clear()
        self.qos0.clear()
        self.requests.clear()
        self.engine = ClientConnection(**self._engine_options)
        self.ever_connected = False
        for fut in pending:  # last: a callback that publishes again meets the new session
            settle(fut, error=error)
