"""HTTP/1.1 client exchanges over the layer stack (proxy, TLS) with ``h11``.

Theory of operation
-------------------
The exchange logic is written once, as generators ("flows") that *yield I/O
operations* and receive their results: ``Connect``, ``Send``, ``Receive``,
``Close``, ``Sleep``, ``Progress`` and ``Deadline``.  Nothing here touches a
socket or a clock.  Running a flow is decided once, in ``_Steps``: the next
operation and its time limit, cancellation, and the translation of a failed
operation.  Two small drivers only perform the operations: ``run_sync`` on
blocking sockets in the caller's thread, ``run_async`` with asyncio streams on
the caller's loop.  A failed operation is translated once, by ``_Steps``, into
an ``iotdev`` error (``ConnectionFailedError`` and subclasses for connecting,
``ConnectionDroppedError`` for a broken connection, ``OperationTimeout``) and
thrown into the flow, which may retry (``_upload.py`` does, with back-off).

``HTTPConnection`` is one keep-alive connection to one ``Endpoint``: a fresh
``Stack`` (proxy handshake, TLS) and an ``h11`` client per socket.  ``request``
sends one request (the body in ``SEND_CHUNK`` pieces, reporting ``Progress``)
and reads the whole response; a response body over ``max_body`` bytes, a head
over ``MAX_HEAD`` bytes, a malformed status line or headers, or a connection
that ends early is a ``MalformedResponseError`` naming the server and what was
wrong.  When the server closes a *reused* keep-alive connection before sending
any byte of the response, the request is sent once more on a new connection
(the server did not process it).  ``HTTPSession`` holds a flow's connections
(one per host and port) so that the driver can close them all at the end, and
so that ``cancel()`` (from another thread: ``shutdown()``) can break a blocked
socket call.

Time: every ``Send``/``Receive`` carries an idle timeout (no progress for that
long is an ``OperationTimeout``), and ``Deadline(seconds)`` bounds everything
that follows until the next ``Deadline`` (a slow drip of bytes cannot keep an
exchange alive past it).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import socket
import threading
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, TypeVar

import h11

from .._compat import async_timeout
from .._errors import (
    ClientError,
    ConnectionDroppedError,
    OperationCancelled,
    OperationTimeout,
)
from ._endpoint import Endpoint, map_connect_error
from ._layer import Stack

__all__ = [
    "Close",
    "Connect",
    "Deadline",
    "HTTPConnection",
    "HTTPRequest",
    "HTTPResponse",
    "HTTPSession",
    "MalformedResponseError",
    "Progress",
    "Receive",
    "Send",
    "Sleep",
    "run_async",
    "run_sync",
]

T = TypeVar("T")

log = logging.getLogger(__name__)

MAX_HEAD = 64 * 1024
"""Largest response status line plus headers we accept."""
DEFAULT_MAX_BODY = 1024 * 1024
"""Largest response body we read (the hub's and storage's answers are small)."""
SEND_CHUNK = 64 * 1024
"""Request bodies go to the socket in pieces this large (progress is reported per piece)."""
RECEIVE_SIZE = 65536


class MalformedResponseError(ConnectionDroppedError):
    """The server's HTTP response was not usable: a malformed status line or
    header, a head or body over our limit, or a connection that ended before the
    response did."""


# ------------------------------------------------------------------ messages


@dataclass(frozen=True)
class HTTPRequest:
    """One request.  ``target`` is the path and query; ``label`` describes it in
    errors without the query (which may carry a SAS token)."""

    method: str
    target: str
    host: str
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b""
    progress: tuple[int, int | None] | None = None
    """Report ``Progress`` while the body is sent: (bytes before this body, total)."""

    @property
    def label(self) -> str:
        return f"{self.method} https://{self.host}{self.target.split('?', 1)[0]}"


@dataclass(frozen=True)
class HTTPResponse:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        name = name.lower()
        for key, value in self.headers:
            if key == name:
                return value
        return None


# ------------------------------------------------------------------ operations


@dataclass(frozen=True)
class Connect:
    """Open the TCP connection of ``conn`` (to ``conn.endpoint.dial_address``)."""

    conn: HTTPConnection


@dataclass(frozen=True)
class Send:
    conn: HTTPConnection
    data: bytes
    timeout: float


@dataclass(frozen=True)
class Receive:
    """Read some bytes (``b""``: end of stream)."""

    conn: HTTPConnection
    timeout: float


@dataclass(frozen=True)
class Close:
    conn: HTTPConnection


@dataclass(frozen=True)
class Sleep:
    seconds: float


@dataclass(frozen=True)
class Progress:
    """Tell the caller's progress callback: ``sent`` of ``total`` bytes."""

    sent: int
    total: int | None


@dataclass(frozen=True)
class Deadline:
    """Everything after this must finish within ``seconds`` (``None``: no bound)."""

    seconds: float | None
    what: str = "the HTTP exchange"


Operation = Connect | Send | Receive | Close | Sleep | Progress | Deadline
Flow = Generator[Operation, Any, T]


# ------------------------------------------------------------------ connection


class HTTPConnection:
    """One keep-alive HTTP/1.1 connection to ``endpoint`` (sans-IO: the driver
    keeps the socket in ``handle``)."""

    def __init__(self, endpoint: Endpoint, *, read_timeout: float = 30.0,
                 max_body: int = DEFAULT_MAX_BODY) -> None:
        self.endpoint = endpoint
        self.read_timeout = read_timeout
        self.max_body = max_body
        self.handle: Any = None
        self.stack: Stack | None = None
        self.h11: h11.Connection | None = None
        self.requests = 0  # requests sent on the current socket

    @property
    def where(self) -> str:
        return f"{self.endpoint.host}:{self.endpoint.port}"

    def _open(self) -> Flow[None]:
        if self.handle is not None:
            yield Close(self)
        yield Connect(self)
        stack = self.stack = self.endpoint.stack()
        conn = self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_HEAD)
        self.requests = 0
        stack.start()
        timeout = self.endpoint.connect_timeout
        while not stack.established:
            out = stack.data_to_send()
            if out:
                yield Send(self, out, timeout)
            data = yield Receive(self, timeout)
            if not data:
                raise ConnectionDroppedError(
                    f"{self.where} closed the connection during the handshake")
            app = stack.receive_data(data)
            if app:  # a server that speaks first: keep it for h11
                conn.receive_data(app)
        out = stack.data_to_send()
        if out:
            yield Send(self, out, timeout)

    def request(self, request: HTTPRequest) -> Flow[HTTPResponse]:
        """Send ``request`` and read its response (a flow)."""
        for attempt in range(2):
            reused = self.handle is not None and self.h11 is not None and \
                self.h11.our_state is h11.IDLE and self.requests > 0
            if not reused:
                yield from self._open()
            try:
                return (yield from self._exchange(request))
            except _StaleConnection as exc:
                yield Close(self)
                if attempt:
                    raise ConnectionDroppedError(str(exc)) from None
        raise AssertionError("unreachable")  # pragma: no cover

    def _exchange(self, request: HTTPRequest) -> Flow[HTTPResponse]:
        conn, stack = self.h11, self.stack
        assert conn is not None and stack is not None
        reused = self.requests > 0
        self.requests += 1
        headers = [("Host", request.host), *request.headers,
                   ("Content-Length", str(len(request.body)))]
        body = request.body
        total = len(body)
        try:
            stack.send(conn.send(h11.Request(method=request.method, target=request.target,
                                             headers=headers)))
            first = True
            sent = 0
            while sent < total or first:
                piece = body[sent:sent + SEND_CHUNK]
                if piece:
                    stack.send(conn.send(h11.Data(data=piece)))
                sent += len(piece)
                if sent >= total:
                    stack.send(conn.send(h11.EndOfMessage()))
                out = stack.data_to_send()
                try:
                    yield Send(self, out, self.read_timeout)
                except ConnectionDroppedError as exc:
                    if reused and first:
                        raise _StaleConnection(
                            f"{self.where} closed the kept-alive connection") from exc
                    raise
                first = False
                if request.progress is not None and piece:
                    base, grand_total = request.progress
                    yield Progress(base + sent, grand_total)
        except h11.LocalProtocolError as exc:  # pragma: no cover - our own request
            raise ClientError(f"cannot send {request.label}: {exc}") from exc
        return (yield from self._read_response(request, reused))

    def _read_response(self, request: HTTPRequest, reused: bool) -> Flow[HTTPResponse]:
        conn, stack = self.h11, self.stack
        assert conn is not None and stack is not None
        head: h11.Response | None = None
        body = bytearray()
        # Bytes the server sent after the previous response, already in h11's
        # buffer, count as received: otherwise whether an EOF that follows means
        # "stale connection, resend" would depend on how reads split them
        # (found by the http-response fuzz target).
        got_bytes = bool(conn.trailing_data[0])
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as exc:
                raise self._malformed(request, exc, head is not None) from None
            if event is h11.NEED_DATA:
                try:
                    raw = yield Receive(self, self.read_timeout)
                except ConnectionDroppedError as exc:
                    if reused and not got_bytes:
                        raise _StaleConnection(
                            f"{self.where} closed the kept-alive connection") from exc
                    raise
                if raw:
                    got_bytes = True
                elif reused and not got_bytes:
                    raise _StaleConnection(f"{self.where} closed the kept-alive connection")
                app = stack.receive_data(raw)
                out = stack.data_to_send()
                if out:
                    yield Send(self, out, self.read_timeout)
                if app:
                    conn.receive_data(app)
                if not raw or stack.closed:
                    conn.receive_data(b"")
                continue
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                head = event
                length = _content_length(event)
                if length is not None and length > self.max_body:
                    raise MalformedResponseError(
                        f"{request.label}: the response announces {length} bytes of body, "
                        f"over our limit of {self.max_body}")
            elif isinstance(event, h11.Data):
                body += event.data
                if len(body) > self.max_body:
                    raise MalformedResponseError(
                        f"{request.label}: the response body is over our limit of "
                        f"{self.max_body} bytes")
            elif isinstance(event, h11.EndOfMessage):
                assert head is not None
                log.debug("%s -> %d", request.label, head.status_code)
                response = HTTPResponse(
                    status=head.status_code,
                    reason=head.reason.decode("latin-1", "replace"),
                    headers=[(bytes(k).decode("latin-1").lower(),
                              bytes(v).decode("latin-1")) for k, v in head.headers],
                    body=bytes(body))
                if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                    conn.start_next_cycle()
                else:
                    yield Close(self)
                return response
            elif isinstance(event, h11.ConnectionClosed):
                raise MalformedResponseError(
                    f"{request.label}: {self.where} closed the connection before the "
                    "response was complete")

    def _malformed(self, request: HTTPRequest, exc: h11.RemoteProtocolError,
                   had_head: bool) -> MalformedResponseError:
        text = str(exc)
        if "buffer" in text.lower() and not had_head:
            text = f"the response head is over our limit of {MAX_HEAD} bytes"
        elif "without sending complete message body" in text or \
                "incomplete" in text.lower() or "ConnectionClosed" in text:
            text = "the connection ended before the response was complete"
        error = MalformedResponseError(f"{request.label}: bad response from {self.where}: "
                                       f"{text}")
        error.__cause__ = exc
        return error


class _StaleConnection(ConnectionDroppedError):
    """A kept-alive connection the server had closed: resend on a new one."""


def _content_length(head: h11.Response) -> int | None:
    for name, value in head.headers:
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


class HTTPSession:
    """The connections of one flow, by endpoint; closed by the driver at the end.

    ``cancel()`` may be called from any thread: blocked socket calls end and the
    flow ends with ``OperationCancelled``.
    """

    def __init__(self, *, read_timeout: float = 30.0,
                 max_body: int = DEFAULT_MAX_BODY) -> None:
        self.read_timeout = read_timeout
        self.max_body = max_body
        self.connections: dict[tuple[str, int, str | None], HTTPConnection] = {}
        self.cancelled: str | None = None
        self._lock = threading.Lock()
        self._wake = threading.Event()  # ends a sync Sleep early
        self._on_cancel: list[Callable[[], None]] = []  # ends an async Sleep early

    def connection(self, endpoint: Endpoint) -> HTTPConnection:
        key = (endpoint.host, endpoint.port, endpoint.server_hostname)
        conn = self.connections.get(key)
        if conn is None:
            conn = self.connections[key] = HTTPConnection(
                endpoint, read_timeout=self.read_timeout, max_body=self.max_body)
        return conn

    def cancel(self, reason: str) -> None:
        with self._lock:
            self.cancelled = reason
            handles = [c.handle for c in self.connections.values() if c.handle is not None]
            callbacks = list(self._on_cancel)
        self._wake.set()
        for callback in callbacks:
            callback()
        for handle in handles:
            _abort(handle)


def _abort(handle: Any) -> None:
    if isinstance(handle, socket.socket):
        try:
            handle.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
    else:  # asyncio (reader, writer)
        try:
            handle[1].transport.abort()
        except Exception:  # pragma: no cover - already gone
            pass


# ------------------------------------------------------------------ drivers


def _translate(op: Operation, exc: BaseException, session: HTTPSession,
               what: str) -> BaseException:
    """The ``iotdev`` error for an operation that failed."""
    if session.cancelled is not None:
        return OperationCancelled(session.cancelled)
    if isinstance(exc, ClientError | OperationTimeout | OperationCancelled):
        return exc
    if isinstance(op, Connect):
        return map_connect_error(exc, op.conn.endpoint)
    if isinstance(op, Send | Receive):
        if isinstance(exc, TimeoutError | socket.timeout):
            doing = "sending to" if isinstance(op, Send) else "waiting for data from"
            return OperationTimeout(f"{what}: no progress {doing} {op.conn.where} for "
                                    f"{op.timeout:g} s")
        if isinstance(exc, OSError):
            return ConnectionDroppedError(
                f"{what}: connection to {op.conn.where} lost: {exc.strerror or exc}")
    return exc


class _Steps:
    """Running a flow, decided once for both drivers: which operation is next
    and its time limit (the current ``Deadline``), cancellation, and the
    ``iotdev`` error a failed operation becomes.  The drivers only perform
    the operations.

    Args:
        flow: the flow.
        session: its connections and cancellation.
        clock: monotonic seconds (``time.monotonic`` or the loop's clock).
    """

    def __init__(self, flow: Flow[Any], session: HTTPSession,
                 clock: Callable[[], float]) -> None:
        self.flow = flow
        self.session = session
        self.clock = clock
        self.deadline: tuple[float, float, str] | None = None  # (at, seconds, what)
        self.result: Any = None
        self._value: Any = None
        self._error: BaseException | None = None

    def next(self) -> tuple[Operation, float | None] | None:
        """The next operation to perform and the seconds left for it
        (``None``: no bound); ``None`` when the flow has finished (its value
        is ``result``).  Errors the flow does not handle propagate."""
        while True:
            try:
                op = self.flow.send(self._value) if self._error is None else \
                    self.flow.throw(self._error)
            except StopIteration as stop:
                self.result = stop.value
                return None
            self._value, self._error = None, None
            if self.session.cancelled is not None:
                self._error = OperationCancelled(self.session.cancelled)
                continue
            if isinstance(op, Deadline):
                self.deadline = None if op.seconds is None else (
                    self.clock() + op.seconds, op.seconds, op.what)
                continue
            limit: float | None = None
            if self.deadline is not None:
                limit = self.deadline[0] - self.clock()
                if limit <= 0 and not isinstance(op, Close | Progress):
                    self._error = self._deadline_error()
                    continue
            return op, limit

    def performed(self, value: Any) -> None:
        """The operation succeeded with ``value``."""
        if self.session.cancelled is not None:  # the socket was shut under us
            self._error = OperationCancelled(self.session.cancelled)
        else:
            self._value = value

    def failed(self, op: Operation, exc: BaseException) -> None:
        """The operation raised ``exc``: the flow gets its ``iotdev`` error."""
        deadline = self.deadline
        if deadline is not None and isinstance(exc, TimeoutError) \
                and self.clock() >= deadline[0] - 0.001:
            self._error = self._deadline_error()
        else:
            self._error = _translate(op, exc, self.session,
                                     deadline[2] if deadline else "HTTP exchange")

    def finish(self) -> list[HTTPConnection]:
        """Close the flow; the connections whose handles the driver must close."""
        self.flow.close()
        return [conn for conn in self.session.connections.values() if conn.handle is not None]

    def _deadline_error(self) -> OperationTimeout:
        assert self.deadline is not None
        return OperationTimeout(
            f"{self.deadline[2]} did not complete within {self.deadline[1]:g} s")


def _bounded(timeout: float, limit: float | None) -> float:
    """An operation's own timeout, cut to what the deadline leaves."""
    return timeout if limit is None else max(0.001, min(timeout, limit))


def run_sync(flow: Flow[T], session: HTTPSession,
             progress: Callable[[int, int | None], Any] | None = None) -> T:
    """Run ``flow`` on blocking sockets in this thread; closes the session's
    connections at the end."""
    steps = _Steps(flow, session, time.monotonic)
    try:
        while (step := steps.next()) is not None:
            op, limit = step
            try:
                steps.performed(_perform_sync(op, limit, session, progress))
            except Exception as exc:
                steps.failed(op, exc)
        return steps.result  # type: ignore[no-any-return]
    finally:
        for conn in steps.finish():
            conn.handle.close()
            conn.handle = None


def _perform_sync(op: Operation, limit: float | None, session: HTTPSession,
                  progress: Callable[[int, int | None], Any] | None) -> Any:
    if isinstance(op, Send):
        sock: socket.socket = op.conn.handle
        sock.settimeout(_bounded(op.timeout, limit))
        sock.sendall(op.data)
        return None
    if isinstance(op, Receive):
        sock = op.conn.handle
        sock.settimeout(_bounded(op.timeout, limit))
        return sock.recv(RECEIVE_SIZE)
    if isinstance(op, Connect):
        endpoint = op.conn.endpoint
        sock = socket.create_connection(endpoint.dial_address,
                                        timeout=_bounded(endpoint.connect_timeout, limit))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with session._lock:
            op.conn.handle = sock
            cancelled = session.cancelled
        if cancelled is not None:
            raise OperationCancelled(cancelled)
        return None
    if isinstance(op, Close):
        if op.conn.handle is not None:
            op.conn.handle.close()
            op.conn.handle = None
        return None
    if isinstance(op, Sleep):
        session._wake.wait(op.seconds if limit is None else max(0.0, min(op.seconds, limit)))
        return None
    if isinstance(op, Progress):
        if progress is not None:
            progress(op.sent, op.total)
        return None
    raise AssertionError(f"unknown operation {op!r}")  # pragma: no cover


async def run_async(flow: Flow[T], session: HTTPSession,
                    progress: Callable[[int, int | None], Any] | None = None) -> T:
    """Run ``flow`` with asyncio streams on the running loop; closes the
    session's connections at the end.  ``progress`` may be a coroutine function."""
    steps = _Steps(flow, session, asyncio.get_running_loop().time)
    try:
        while (step := steps.next()) is not None:
            op, limit = step
            try:
                steps.performed(await _perform_async(op, limit, session, progress))
            except Exception as exc:
                steps.failed(op, exc)
        return steps.result  # type: ignore[no-any-return]
    finally:
        for conn in steps.finish():
            conn.handle[1].transport.abort()
            conn.handle = None


async def _perform_async(op: Operation, limit: float | None, session: HTTPSession,
                         progress: Callable[[int, int | None], Any] | None) -> Any:
    if isinstance(op, Send):
        writer: asyncio.StreamWriter = op.conn.handle[1]
        writer.write(op.data)
        async with async_timeout(_bounded(op.timeout, limit)):
            await writer.drain()
        return None
    if isinstance(op, Receive):
        reader: asyncio.StreamReader = op.conn.handle[0]
        async with async_timeout(_bounded(op.timeout, limit)):
            return await reader.read(RECEIVE_SIZE)
    if isinstance(op, Connect):
        host, port = op.conn.endpoint.dial_address
        async with async_timeout(_bounded(op.conn.endpoint.connect_timeout, limit)):
            op.conn.handle = await asyncio.open_connection(host, port, limit=RECEIVE_SIZE)
        sock = op.conn.handle[1].get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return None
    if isinstance(op, Close):
        if op.conn.handle is not None:
            op.conn.handle[1].transport.abort()
            op.conn.handle = None
        return None
    if isinstance(op, Sleep):
        loop = asyncio.get_running_loop()
        woken = loop.create_future()

        def wake() -> None:
            def settle() -> None:
                if not woken.done():
                    woken.set_result(None)

            loop.call_soon_threadsafe(settle)

        with session._lock:
            session._on_cancel.append(wake)
        try:
            seconds = op.seconds if limit is None else max(0.0, min(op.seconds, limit))
            await asyncio.wait([woken], timeout=seconds)
        finally:
            with session._lock:
                session._on_cancel.remove(wake)
            woken.cancel()
        return None
    if isinstance(op, Progress):
        if progress is not None:
            result = progress(op.sent, op.total)
            if inspect.isawaitable(result):
                await result
        return None
    raise AssertionError(f"unknown operation {op!r}")  # pragma: no cover
