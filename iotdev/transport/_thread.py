"""The synchronous driver: one I/O thread owns the socket, the layer stack and
the MQTT engine; callers hand it commands and wait on futures.

Theory of operation
-------------------
The engine, the core and the socket are guarded by one I/O lock, which the
I/O thread holds whenever it is not asleep in ``select`` (or dialling).  A call
(``subscribe()``, ``connect()`` ...) appends a command to a deque, writes one
byte to a wake-up socket pair and returns a ``Completion`` (a small future).
``publish()`` on a connection that is up, with nothing queued before it and
nothing left unwritten, instead takes the I/O lock and hands the message to
the engine and the socket itself (one thread hop less per message: the I/O
thread only reads the PUBACK); anything else (a partial write, a deadline
moved earlier) wakes the I/O thread, which carries on as for a command.
Calls made while holding the I/O lock (done callbacks, ``intercept``, timers)
always queue.  The I/O thread sleeps in
``selectors`` on the server socket and the wake-up socket, with a timeout from
the engine's ``next_deadline()`` (keep-alive), the handshake deadline or the
reconnect time.  Each turn it reads what arrived, feeds the stack and the
engine, runs queued commands, runs the timers, and writes what the engine
produced (non-blocking; a partial write keeps the rest and waits for
writability).  Engine events resolve futures (``PublishAcked`` by token,
``Subscribed`` by packet id) or go to the handler thread (messages, connection
state changes): user callbacks never run on the I/O thread and never under a
lock, so a slow handler cannot stall keep-alive.

Every decision (engine event to completion, error translation, when to
retry, what to fail) is the shared ``DriverCore``'s (``_core.py``), as in the
asyncio driver: this module is the I/O around it (the selector loop, the
socket, the wake-up pair, the handler thread, back-pressure) and the
``DriverIO`` hooks the core calls.  Reconnection: on any loss the core closes
the connection and, with the policy enabled, asks for an attempt after the
back-off (``retry_in``), which ``_turn`` opens when it is due; the engine
re-sends unacknowledged publishes with DUP=1, and their futures stay pending
across the gap.
"""

from __future__ import annotations

import functools
import logging
import queue
import random
import selectors
import socket
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from iotdev_mqtt import MessageReceived

from .._errors import ClientError, OperationCancelled
from ._core import DriverCore, settle
from ._endpoint import Endpoint, map_connect_error
from ._options import ConnectOptions, ReconnectPolicy

__all__ = ["Completion", "ThreadDriver"]

log = logging.getLogger(__name__)

Handler = Callable[[Any], None]

# Back-pressure.  The I/O thread stops reading from the server while the
# handler thread has more than MAX_HANDLER_BACKLOG bytes of messages waiting
# (until they are down to a quarter of it), or while more than
# MAX_PENDING_OUT bytes wait to be written (a server that does not read our
# acks): TCP then holds the server back, so a flood cannot grow memory
# without bound.  A queued message counts its payload plus MESSAGE_OVERHEAD.
MAX_HANDLER_BACKLOG = 4 << 20
MAX_PENDING_OUT = 4 << 20
# How long publish() waits for the I/O lock before it queues the message instead.
DIRECT_WAIT = 0.005
MESSAGE_OVERHEAD = 512


_CALLBACKS = threading.Lock()
"""Orders ``Completion.add_done_callback`` against ``_finish`` (held for a few
instructions; uncontended on the hot path)."""


class Completion:
    """The outcome of one operation, set by the I/O thread and awaited by
    callers: the part of ``concurrent.futures.Future`` that matters here
    (``result``, ``exception``, ``done``, ``add_done_callback``), built on one
    pre-acquired lock, which is the cheapest wake-up a thread can wait on."""

    __slots__ = ("_callbacks", "_done", "_exc", "_lock", "_result")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()
        self._done = False
        self._result: Any = None
        self._exc: BaseException | None = None
        self._callbacks: list[Callable[[Completion], None]] | None = None

    def done(self) -> bool:
        return self._done

    def cancel(self) -> bool:
        """Operations cannot be withdrawn once submitted."""
        return False

    def _wait(self, timeout: float | None) -> None:
        if not self._done:
            if not self._lock.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
                raise TimeoutError
            self._lock.release()  # let any other waiter through

    def result(self, timeout: float | None = None) -> Any:
        """Wait for the outcome; raise the operation's error, or
        ``TimeoutError`` when ``timeout`` passes first."""
        self._wait(timeout)
        if self._exc is not None:
            raise self._exc
        return self._result

    def exception(self, timeout: float | None = None) -> BaseException | None:
        self._wait(timeout)
        return self._exc

    def add_done_callback(self, fn: Callable[[Completion], None]) -> None:
        """Call ``fn(self)`` when done (at once if it is; otherwise on the I/O
        thread, so keep it short)."""
        with _CALLBACKS:  # a caller's thread racing the I/O thread's _finish()
            if not self._done:
                if self._callbacks is None:
                    self._callbacks = []
                self._callbacks.append(fn)
                return
        fn(self)

    def _finish(self) -> None:
        with _CALLBACKS:
            self._done = True
            callbacks = self._callbacks
        self._lock.release()
        if callbacks:
            for fn in callbacks:
                try:
                    fn(self)
                except Exception:
                    log.exception("done callback raised")

    def set_result(self, value: Any) -> None:
        if not self._done:
            self._result = value
            self._finish()

    def set_exception(self, exc: BaseException) -> None:
        if not self._done:
            self._exc = exc
            self._finish()


class ThreadDriver:
    """One MQTT connection (and its reconnections) on one I/O thread.

    Args:
        endpoint: where to connect.
        options: what CONNECT carries.
        reconnect: the reconnect policy.
        on_message: called with each ``MessageReceived`` on the handler thread.
        on_state: called with ``(connected: bool, reason: str | None)`` on the
            handler thread at every connection state change.
        on_error: called with background exceptions (a handler that raised, a
            failed reconnect) on the handler thread.
        intercept: called on the I/O thread with each message first; returning
            ``True`` consumes it.  For responses that resolve a waiting caller
            (which may itself be a handler): keep it short, never block.
        on_io_state: called on the I/O thread at the very moment the
            connection comes up (``True``) or goes down (``False``).
        engine_options: passed to ``ClientConnection``.
    """

    def __init__(
        self,
        endpoint: Endpoint,
        options: ConnectOptions,
        *,
        reconnect: ReconnectPolicy | None = None,
        on_message: Handler | None = None,
        on_state: Callable[[bool, str | None], None] | None = None,
        on_error: Handler | None = None,
        intercept: Callable[[MessageReceived], bool] | None = None,
        on_io_state: Callable[[bool], None] | None = None,
        **engine_options: Any,
    ) -> None:
        self.endpoint = endpoint
        self.intercept = intercept
        self.on_io_state = on_io_state
        self.options = options
        self.reconnect = reconnect or ReconnectPolicy()
        self.on_message = on_message
        self.on_state = on_state
        self.on_error = on_error
        self.core: DriverCore[Completion] = DriverCore(
            self, endpoint, options, self.reconnect, random.Random(), engine_options)
        self._commands: deque[Callable[[], None]] = deque()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._sock: socket.socket | None = None
        self._pending_out = b""
        self._mask = selectors.EVENT_READ
        self._retry_at: float | None = None
        self._connect_future: Completion | None = None
        self._stopping = False
        # Checking _stopping and queueing a command are one step under this
        # lock: a call racing shutdown() is either queued before the stop
        # command (and cancelled by it) or refused, never queued behind it.
        self._submit_lock = threading.Lock()
        self._backlog = 0  # bytes of messages queued for the handler thread
        self._backlog_lock = threading.Lock()
        self._reading_paused = False
        self._timers: dict[str, tuple[float, Callable[[], None]]] = {}
        # The I/O lock (see the module docstring), the thread holding it, and
        # when the I/O thread's select() times out (None: no timeout).
        self._io_lock = threading.Lock()
        self._io_owner = 0
        self._wait: float | None = None
        self._sleep_until: float | None = None
        self._thread = threading.Thread(target=self._run, name="iotdev-io", daemon=True)
        self._handlers: queue.SimpleQueue[Callable[[], None] | None] = queue.SimpleQueue()
        self._handler_thread: threading.Thread | None = None
        self._thread.start()

    # ------------------------------------------------------------ caller side

    @property
    def connected(self) -> bool:
        return self.core.connected

    @property
    def _want_connected(self) -> bool:
        return self.core.want_connected

    @property
    def handler_thread(self) -> threading.Thread | None:
        """The thread that runs callbacks (``None`` until the first one)."""
        return self._handler_thread

    @property
    def reconnecting(self) -> bool:
        """Connected before, dropped, and retrying (operations wait for it)."""
        return self.core.reconnecting

    def _submit(self, command: Callable[[], None], *, last: bool = False) -> None:
        with self._submit_lock:
            if self._stopping:
                raise ClientError("the client has been shut down")
            self._commands.append(command)
            if last:  # the stop command: nothing may be queued after it
                self._stopping = True
        self._wake()

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass  # the wake-up buffer is full: the I/O thread is awake anyway

    def connect(self) -> Completion:
        """Connect (or wait for the connection in progress)."""
        fut = Completion()
        self._submit(lambda: self._cmd_connect(fut))
        return fut

    def set_timer(self, name: str, when: float | None, fn: Callable[[], None]) -> None:
        """Run ``fn`` on the I/O thread at monotonic time ``when`` (``None``
        cancels); one timer per name, replaced by the next call.  Keep ``fn``
        short; hand user callbacks to ``dispatch``."""
        def command() -> None:
            if when is None:
                self._timers.pop(name, None)
            else:
                self._timers[name] = (when, fn)
        self._submit(command)

    def dispatch(self, call: Callable[[], None]) -> None:
        """Run ``call`` on the handler thread (after the callbacks already queued)."""
        self._dispatch(call)

    def publish(self, topic: str, payload: bytes, qos: int, retain: bool) -> Completion:
        """Queue a publish; the future resolves on PUBACK/PUBCOMP (QoS 0: once
        written).  Its errors are the core's (``_core.py``)."""
        fut = Completion()
        if not self._publish_now(fut, topic, payload, qos, retain):
            self._submit(lambda: self.core.publish(fut, topic, payload, qos, retain))
        return fut

    def _publish_now(self, fut: Completion, topic: str, payload: bytes, qos: int,
                     retain: bool) -> bool:
        """Publish from the caller's thread when the connection is up and
        idle (see the module docstring); ``False``: queue it instead."""
        me = threading.get_ident()
        if self._io_owner == me or self._stopping:  # a callback under the lock; shutdown
            return False
        # The I/O thread holds this lock for a turn (microseconds), but a turn
        # may also sign a token (an Edge workload call) or commit the outbox:
        # wait briefly, then queue the publish rather than block the caller.
        if not self._io_lock.acquire(timeout=DIRECT_WAIT):
            return False
        self._io_owner = me
        try:
            sock = self._sock
            if sock is None or self._stopping or self._commands or self._pending_out or \
                    not self.core.connected:
                return False  # queued work first, or no connection: the I/O thread's
            self.core.publish(fut, topic, payload, qos, retain)
            raw = self.core.outgoing()
            if self._sock is not sock:  # the layers failed: the loss is reported
                self._wake()
                return True
            if raw:
                try:
                    sent = sock.send(raw)
                except (BlockingIOError, InterruptedError):
                    sent = 0
                except OSError:
                    sent = 0  # the I/O thread meets the error on its write
                self._pending_out = raw[sent:]
            if self._pending_out:
                self._wake()  # it waits for writability and writes the rest
                return True
            self.core.written()
            deadline = self.core.next_deadline()
            if deadline is not None and (self._sleep_until is None
                                         or deadline < self._sleep_until):
                self._wake()  # e.g. the wait for this PUBACK ends before its timeout
            return True
        finally:
            self._io_owner = 0
            self._io_lock.release()

    def subscribe(self, subscriptions: list[tuple[str, int]]) -> Completion:
        fut = Completion()
        self._submit(lambda: self.core.request(fut, "subscribe", subscriptions))
        return fut

    def unsubscribe(self, topic_filters: list[str]) -> Completion:
        fut = Completion()
        self._submit(lambda: self.core.request(fut, "unsubscribe", topic_filters))
        return fut

    def reauthorize(self) -> Completion:
        """Reconnect at once with fresh credentials (SAS renewal), keeping the
        session: in-flight publishes are re-sent after the new CONNACK."""
        fut = Completion()
        self._submit(lambda: self._cmd_reauthorize(fut))
        return fut

    def disconnect(self) -> Completion:
        """Send DISCONNECT, close, and stop reconnecting."""
        fut = Completion()
        self._submit(lambda: self._cmd_disconnect(fut))
        return fut

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop the I/O and handler threads; pending operations end with
        ``OperationCancelled``.  Idempotent."""
        try:
            self._submit(self._cmd_shutdown, last=True)
        except ClientError:
            return  # already stopping
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout)
        if self._handler_thread is not None:
            self._handlers.put(None)
            if threading.current_thread() is not self._handler_thread:
                self._handler_thread.join(timeout)

    # ---------------------------------------------------------- handler thread

    def _dispatch(self, call: Callable[[], None]) -> None:
        if self._handler_thread is None:
            self._handler_thread = threading.Thread(
                target=self._run_handlers, name="iotdev-handlers", daemon=True)
            self._handler_thread.start()
        self._handlers.put(call)

    def _run_handlers(self) -> None:
        while True:
            call = self._handlers.get()
            if call is None:
                return
            try:
                call()
            except Exception as exc:  # a user handler failed: report, keep going
                log.exception("handler raised")
                if self.on_error is not None:
                    try:
                        self.on_error(exc)
                    except Exception:
                        log.exception("on_error raised")

    # ------------------------------------------------ DriverIO (the core's hooks)

    def now(self) -> float:
        return time.monotonic()

    def drop_transport(self) -> None:
        sock = self._sock
        if sock is not None:
            try:
                self._selector.unregister(sock)
            except (KeyError, ValueError):
                pass
            sock.close()
            self._sock = None
        self._pending_out = b""

    def deliver(self, event: MessageReceived) -> None:
        if self.intercept is not None and self.intercept(event):
            return  # consumed on the I/O thread (e.g. a response a caller awaits)
        if self.on_message is not None:
            size = len(event.payload) + MESSAGE_OVERHEAD
            with self._backlog_lock:
                self._backlog += size
            self._dispatch(functools.partial(self._deliver, self.on_message, event, size))

    def state_changed(self, connected: bool, reason: str | None) -> None:
        if connected:
            log.info("connected to %s", self.endpoint.describe())
        else:
            log.info("disconnected from %s: %s", self.endpoint.describe(), reason)
        if self.on_io_state is not None:  # I/O thread, at the very moment of the change
            try:
                self.on_io_state(connected)
            except Exception as exc:
                log.exception("on_io_state raised")
                self.report(exc)
        if self.on_state is not None:
            on_state = self.on_state
            self._dispatch(lambda: on_state(connected, reason))

    def report(self, exc: BaseException) -> None:
        if self.on_error is not None:
            on_error = self.on_error
            self._dispatch(lambda: on_error(exc))

    def attempt_ended(self, error: BaseException | None) -> None:
        if error is not None:
            log.debug("connection attempt to %s failed: %s", self.endpoint.describe(), error)
        settle(self._connect_future, error=error)

    def retry_in(self, delay: float) -> None:
        self._retry_at = time.monotonic() + delay
        log.info("reconnecting to %s in %.1f s (attempt %d)", self.endpoint.describe(), delay,
                 self.core.attempts)

    # --------------------------------------------------------------- commands

    def _cmd_connect(self, fut: Completion) -> None:
        self.core.want_connection()
        if self.core.connected:
            fut.set_result(None)
            return
        if self._connect_future is not None and not self._connect_future.done():
            self._connect_future.add_done_callback(lambda f: _copy(f, fut))
            return
        self._connect_future = fut
        if self._sock is None:
            self._retry_at = time.monotonic()

    def _cmd_reauthorize(self, fut: Completion) -> None:
        if self._sock is None:
            fut.set_result(None)
            return
        self._goodbye()
        self.core.close("reauthorizing with new credentials", report=True)
        if self._connect_future is None or self._connect_future.done():
            self._connect_future = fut
        else:
            self._connect_future.add_done_callback(lambda f: _copy(f, fut))
        self.core.want_connected = True
        self._retry_at = time.monotonic()

    def _cmd_disconnect(self, fut: Completion) -> None:
        self._retry_at = None
        self._goodbye()
        self.core.stop("disconnected by the application",
                       OperationCancelled("disconnect() was called"))
        fut.set_result(None)

    def _goodbye(self) -> None:
        """Send DISCONNECT (and a clean close of the layers), waiting briefly
        for the socket to take it."""
        sock = self._sock
        if sock is None:
            return
        data = self._pending_out + self.core.goodbye()
        try:
            sock.settimeout(1.0)
            sock.sendall(data)
        except OSError:
            pass
        self._pending_out = b""

    def _cmd_shutdown(self) -> None:
        self._goodbye()
        self.core.stop("shut down", OperationCancelled("the client was shut down"))
        raise _Stop

    # ---------------------------------------------------------------- I/O loop

    def _run(self) -> None:
        try:
            while True:
                self._turn()
        except _Stop:
            pass
        except BaseException as exc:  # a bug: never die silently, never leave waiters
            log.exception("the I/O thread failed")
            self._stopping = True
            error = ClientError(f"the I/O thread failed: {exc!r}")
            error.__cause__ = exc
            waiting = self.core.pending()
            if self._connect_future is not None:
                waiting.append(self._connect_future)
            for fut in waiting:
                fut.set_exception(error)
            while self._commands:  # commands that can no longer run
                self._commands.popleft()
            with self._io_lock:  # no direct publish writes to the dead socket
                if self._sock is not None:
                    self._sock.close()
                    self._sock = None
                self.core.connected = False
            self.report(exc)
        finally:
            self._selector.close()
            self._wake_r.close()
            self._wake_w.close()

    def _timeout(self, now: float) -> float | None:
        deadlines = [d for d in (self.core.next_deadline(), self._retry_at) if d is not None]
        deadlines += [when for when, _ in self._timers.values()]
        if not deadlines:
            return None
        return max(0.0, min(deadlines) - now)

    def _turn(self) -> None:
        ready = self._selector.select(self._wait)
        with self._io_lock:
            self._io_owner = threading.get_ident()
            try:
                dial = self._process(ready)
            finally:
                self._io_owner = 0
        if dial:  # blocking TCP connect, outside the lock
            endpoint = self.endpoint
            try:
                sock: socket.socket | OSError = socket.create_connection(
                    endpoint.dial_address, timeout=endpoint.connect_timeout)
            except OSError as exc:
                sock = exc
            with self._io_lock:
                self._io_owner = threading.get_ident()
                try:
                    self._open(sock)
                    self._after()
                finally:
                    self._io_owner = 0

    def _process(self, ready: list[tuple[selectors.SelectorKey, int]]) -> bool:
        """One turn's work under the I/O lock; ``True``: dial (the retry is due)."""
        for key, mask in ready:
            if key.fileobj is self._wake_r:
                try:
                    self._wake_r.recv(65536)  # one read; more bytes just wake us again
                except (BlockingIOError, OSError):
                    pass
            elif mask & selectors.EVENT_READ:
                self._read()
        while self._commands:
            self._commands.popleft()()
        now = time.monotonic()
        if self._timers:
            for name, (when, fn) in list(self._timers.items()):
                if now >= when:
                    del self._timers[name]
                    try:
                        fn()
                    except Exception as exc:  # a timer callback must not kill I/O
                        log.exception("timer %s raised", name)
                        self.report(exc)
        if self._retry_at is not None and now >= self._retry_at and self._sock is None:
            self._retry_at = None
            if self.core.want_connected:
                return True
        self._after()
        return False

    def _after(self) -> None:
        """The end of a turn: timers of the engine, writes, the next timeout."""
        now = time.monotonic()
        deadline = self.core.next_deadline()
        if deadline is not None and now >= deadline:
            self.core.tick()
        self._flush()
        now = time.monotonic()
        self._wait = self._timeout(now)
        self._sleep_until = None if self._wait is None else now + self._wait

    def _open(self, sock: socket.socket | OSError) -> None:
        """One connection attempt, dialled (``sock``, or the error of the TCP
        connect): the handshakes run in the loop."""
        endpoint = self.endpoint
        if isinstance(sock, OSError):
            self.core.fail_attempt(map_connect_error(sock, endpoint), sock)
            return
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        self._sock = sock
        self._selector.register(sock, selectors.EVENT_READ)
        self._mask = selectors.EVENT_READ
        self.core.begin(endpoint.stack())

    def _read(self) -> None:
        sock = self._sock
        if sock is None:
            return
        try:
            data = sock.recv(262144)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self.core.lost(f"socket error: {exc}", exc)
            return
        self.core.receive(data)

    def _flush(self) -> None:
        sock = self._sock
        if sock is None:
            return
        raw = self.core.outgoing()
        if self._sock is not sock:
            return
        data = self._pending_out + raw if self._pending_out else raw
        if data:
            try:
                sent = sock.send(data)
            except (BlockingIOError, InterruptedError):
                sent = 0
            except OSError as exc:
                self.core.lost(f"socket error: {exc}", exc)
                return
            self._pending_out = data[sent:]
        self._update_interest(sock)
        if not self._pending_out:
            self.core.written()

    def _update_interest(self, sock: socket.socket) -> None:
        """Select the socket for writing while bytes wait, and for reading
        unless back-pressure applies (see ``MAX_HANDLER_BACKLOG``)."""
        with self._backlog_lock:
            # Never before CONNACK: a new connection's handshake is always read,
            # whatever the handlers still have to do from the last one.
            paused = self.core.connected and self._backlog > (
                MAX_HANDLER_BACKLOG // 4 if self._reading_paused else MAX_HANDLER_BACKLOG)
            self._reading_paused = paused
        pending = len(self._pending_out)
        mask = 0 if paused or pending > MAX_PENDING_OUT else selectors.EVENT_READ
        if pending:
            mask |= selectors.EVENT_WRITE
        if mask != self._mask:  # epoll_ctl only when the interest changes
            if not self._mask:
                self._selector.register(sock, mask)
            elif not mask:
                self._selector.unregister(sock)
            else:
                self._selector.modify(sock, mask)
            self._mask = mask

    def _deliver(self, on_message: Handler, event: MessageReceived, size: int) -> None:
        """Handler thread: one message to ``on_message``; then its bytes leave
        the backlog, and the I/O thread is woken if it paused reading for them."""
        try:
            on_message(event)
        finally:
            with self._backlog_lock:
                self._backlog -= size
                wake = self._reading_paused and self._backlog <= MAX_HANDLER_BACKLOG // 4
            if wake:
                try:
                    self._wake_w.send(b"\0")
                except (BlockingIOError, OSError):
                    pass


class _Stop(Exception):
    """Ends the I/O loop (shutdown)."""


def _copy(src: Completion, dst: Completion) -> None:
    exc = src.exception()
    if exc is not None:
        dst.set_exception(exc)
    else:
        dst.set_result(None)
