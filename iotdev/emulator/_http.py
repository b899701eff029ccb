"""HTTP/1.1 for the emulator's two HTTP APIs: the service API (``_service.py``,
on its own port) and the device API (``_files.py``: file upload and the blob
endpoint, on the device port next to MQTT over WebSocket).

Theory of operation
-------------------
An ``HTTPAPI`` is a route table: ``Route(method, pattern, handler)`` entries
plus the set of connections serving it.  Each connection is an
``HTTPConnection`` (an ``asyncio.Protocol``) that stacks the sans-IO
server-side ``TLSLayer`` under an ``h11`` server connection.  It starts its own
TLS handshake, or ``adopt``s a TLS session someone else established (the device
port reads the first request line before it knows which protocol it serves).

Requests on a connection are served one at a time (HTTP/1.1 keep-alive;
pipelined requests wait in h11's buffer, and the socket stops being read while
a handler runs, so a client cannot make the emulator buffer without bound).
The route is found as soon as the request head is in, so that its body policy
applies before any body byte is kept:

* by default the body is buffered, at most ``Route.max_body`` bytes;
* a route with ``open_body`` streams it instead: ``open_body(request)`` may
  refuse the request at once (it raises ``ServiceError``: the answer goes out
  before the body is read) or returns a ``BodySink`` that receives the body
  chunk by chunk, with its own ``limit``; the handler then finds it in
  ``request.sink``, and the connection ``abort()``s it afterwards whatever
  happened (a sink drops what its handler did not take).

A body over its limit (``Content-Length`` or a chunked body growing past it),
like any early refusal, gets its answer at once with ``Connection: close``;
the rest of the body is read and thrown away (at most ``MAX_DISCARD`` bytes,
or ``LINGER_TIMEOUT`` seconds without data), then the connection closes.

Path parameters are matched on the raw path and then percent-decoded (so a
device id with ``/`` or ``%`` travels as ``%2F``/``%25``); ``{name}`` matches
one path segment, ``{name*}`` the rest of the path.  Handlers are coroutines on
the hub's loop; they raise ``ServiceError`` for an error answer, which the
route's ``render_error`` shapes (IoT Hub's JSON by default:
``{"Message": "ErrorCode:<Name>;<text>", "ExceptionMessage": ...}``).
"""

from __future__ import annotations

import asyncio
import datetime
import http
import json
import logging
import re
import ssl
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import Any, Protocol
from urllib.parse import parse_qsl, unquote, urlsplit

import h11

from .._errors import ClientError
from ..transport._layer import Layer, Stack
from ..transport._tls import TLSLayer

_UTC = datetime.timezone.utc

__all__ = [
    "HTTPAPI",
    "BodySink",
    "HTTPConnection",
    "Request",
    "Response",
    "Route",
    "ServiceError",
    "error_response",
    "json_response",
]

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024
MAX_HEAD = 16 * 1024
MAX_DISCARD = 16 * 1024 * 1024
MAX_CONNECTIONS = 64
IDLE_TIMEOUT = 60.0
LINGER_TIMEOUT = 5.0

JSON_TYPE = "application/json; charset=utf-8"


# ------------------------------------------------------------------ requests


class ServiceError(Exception):
    """An error answer: ``status``, IoT Hub's error ``code`` name, a message."""

    def __init__(self, status: int, code: str, message: str,
                 headers: tuple[tuple[str, str], ...] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


class BodySink(Protocol):
    """Where a streamed request body goes (made by a route's ``open_body``).

    ``limit`` is the most bytes the body may have (413 past it).  ``write``
    may raise ``ServiceError`` (the request is refused at once) or ``OSError``
    (500).  ``close`` says the body is complete; ``abort`` drops whatever the
    handler did not take, and may be called more than once.
    """

    @property
    def limit(self) -> int: ...

    def write(self, data: bytes) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


@dataclass(frozen=True)
class Request:
    """A request.

    ``path`` is the raw (still percent-encoded) path, ``params`` the route's
    path parameters (decoded), ``query`` the query parameters (decoded, the last
    of repeated ones), ``headers`` the raw h11 headers (lower-case names),
    ``body`` the buffered body (empty when it went to ``sink``),
    ``peer_certificate`` the TLS client certificate (DER) when one was given.
    """

    method: str
    path: str
    query: dict[str, str]
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    params: dict[str, str] = field(default_factory=dict)
    peer_certificate: bytes | None = None
    sink: BodySink | None = None

    def header(self, name: str) -> str | None:
        """A header's value (UTF-8; repeated headers joined with ``,``)."""
        key = name.lower().encode("ascii")
        values = [header_text(value, name) for n, value in self.headers if n == key]
        return ", ".join(values) if values else None

    def json(self) -> Any:
        """The body as JSON (400 when empty or malformed)."""
        if not self.body.strip():
            raise ServiceError(400, "ArgumentNull", "the request needs a JSON body")
        try:
            return json.loads(self.body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise ServiceError(400, "ArgumentInvalid",
                               f"the body is not valid JSON: {exc}") from None


@dataclass
class Response:
    """An answer: status, body, its content type, extra headers."""

    status: int
    body: bytes = b""
    content_type: str | None = JSON_TYPE
    headers: list[tuple[str, str]] = field(default_factory=list)


def json_response(status: int, document: Any) -> Response:
    return Response(status, json.dumps(document, ensure_ascii=False).encode("utf-8"))


def error_response(error: ServiceError) -> Response:
    """IoT Hub's error shape: ``{"Message": "ErrorCode:<Name>;<text>", ...}``."""
    stamp = datetime.datetime.now(_UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    response = json_response(error.status, {
        "Message": f"ErrorCode:{error.code};{error.message}",
        "ExceptionMessage": f"Tracking ID:{uuid.uuid4().hex}-G:0-TimeStamp:{stamp}",
    })
    response.headers.extend(error.headers)
    return response


Handler = Callable[[Request], Awaitable[Response]]
ErrorRenderer = Callable[[ServiceError], Response]
BodyOpener = Callable[[Request], BodySink]


@dataclass(frozen=True)
class Route:
    """``method`` and a path ``pattern`` (named groups are path parameters),
    with the body policy: buffered up to ``max_body`` bytes, or streamed to
    the sink ``open_body`` makes; errors shaped by ``render_error``."""

    method: str
    pattern: re.Pattern[str]
    handler: Handler
    max_body: int = MAX_BODY
    open_body: BodyOpener | None = None
    render_error: ErrorRenderer = error_response


def compile_template(template: str) -> re.Pattern[str]:
    """``/twins/{id}/methods`` -> a pattern with ``id`` matching one segment;
    ``{name*}`` matches the rest of the path (one character at least)."""
    parts = re.split(r"\{(\w+\*?)\}", template)
    regex = "".join(
        re.escape(part) if i % 2 == 0
        else f"(?P<{part[:-1]}>.+)" if part.endswith("*") else f"(?P<{part}>[^/]+)"
        for i, part in enumerate(parts)
    )
    return re.compile(regex)


# ------------------------------------------------------------------ an API


class HTTPAPI:
    """A route table and the connections that serve it.

    Args:
        name: how the log names it ("service API", "device API").
        max_connections: connections beyond this many are aborted.
    """

    def __init__(self, name: str, *, max_connections: int = MAX_CONNECTIONS) -> None:
        self.name = name
        self.max_connections = max_connections
        self.routes: list[Route] = []
        self.connections: set[HTTPConnection] = set()

    def add_route(self, method: str, template: str, handler: Handler, *,
                  max_body: int = MAX_BODY, open_body: BodyOpener | None = None,
                  render_error: ErrorRenderer = error_response) -> None:
        """Serve ``method`` on ``template`` (``{name}`` is a path parameter)."""
        self.routes.append(Route(method.upper(), compile_template(template), handler,
                                 max_body, open_body, render_error))

    def resolve(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        """The route for ``method`` and the raw ``path``, and its parameters.

        Raises:
            ServiceError: 404 (no route), 405 (another method; ``Allow`` set),
                400 (a parameter is not UTF-8 once percent-decoded).
        """
        allowed: set[str] = set()
        for route in self.routes:
            match = route.pattern.fullmatch(path)
            if match is None:
                continue
            if route.method != method:
                allowed.add(route.method)
                continue
            try:
                params = {k: unquote(v, errors="strict") for k, v in match.groupdict().items()}
            except UnicodeDecodeError:
                raise ServiceError(400, "ArgumentInvalid",
                                   "the path is not UTF-8 once percent-decoded") from None
            return route, params
        if allowed:
            raise ServiceError(405, "MethodNotAllowed",
                               f"{method} is not allowed on {path} "
                               f"(allowed: {', '.join(sorted(allowed))})",
                               (("allow", ", ".join(sorted(allowed))),))
        raise ServiceError(404, "NotFound", f"no such resource: {path}")

    async def dispatch(self, request: Request) -> Response:
        """Route a request with a buffered body; a ``ServiceError`` becomes its
        error answer."""
        try:
            route, params = self.resolve(request.method, request.path)
        except ServiceError as exc:
            return error_response(exc)
        return await self.call(route, replace(request, params=params))

    @staticmethod
    async def call(route: Route, request: Request) -> Response:
        """Run ``route``'s handler; a ``ServiceError`` becomes its error answer."""
        try:
            return await route.handler(request)
        except ServiceError as exc:
            return route.render_error(exc)

    def close_connections(self, reason: str) -> None:
        for conn in list(self.connections):
            conn.close(reason)


# ------------------------------------------------------------------ one connection


class _PlainLayer(Layer):
    """No TLS: bytes pass through (the Edge workload API's Unix socket)."""

    def __init__(self) -> None:
        self._out = bytearray()

    def send(self, data: bytes) -> None:
        self._out += data

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out


class HTTPConnection(asyncio.Protocol):
    """One client connection: TLS (sans-IO) under h11, one request at a time.

    Args:
        api: the routes it serves.
        context: the server TLS context of a new connection, or
        tls: an established TLS session to carry on (see ``adopt``), or
        plain: no TLS at all (a local Unix socket).
    """

    def __init__(self, api: HTTPAPI, context: ssl.SSLContext | None = None, *,
                 tls: TLSLayer | None = None, plain: bool = False) -> None:
        self.api = api
        self.loop = asyncio.get_running_loop()
        self.tls: TLSLayer | None = None
        if plain:
            self.stack = Stack([_PlainLayer()])
        else:
            if tls is None:
                assert context is not None, "a TLS context or an established TLS layer"
                tls = TLSLayer(context, None, server_side=True)
            self.tls = tls
            self.stack = Stack([tls])
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.peer = "?"
        self._request: Request | None = None  # the request whose body is being read
        self._route: Route | None = None
        self._route_error: ServiceError | None = None  # 404/405/400 found on the head
        self._limit = MAX_BODY
        self._received = 0
        self._body = bytearray()
        self._sink: BodySink | None = None
        self._discarded: int | None = None  # bytes skipped after an early answer
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    # --------------------------------------------------------------- asyncio

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if self._attach(transport):
            self.stack.start()
            self._write()

    def adopt(self, transport: asyncio.BaseTransport, plaintext: bytes) -> None:
        """Carry on a connection whose TLS handshake is done: ``plaintext`` is
        what was already received and decrypted (the caller has made this
        object the transport's protocol)."""
        if not self._attach(transport):
            return
        if plaintext:
            self.h11.receive_data(plaintext)
        self._process()

    def _attach(self, transport: asyncio.BaseTransport) -> bool:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else "local"
        if len(self.api.connections) >= self.api.max_connections:
            log.warning("%s: refusing %s: %d connections open", self.api.name, self.peer,
                        self.api.max_connections)
            self.closed = True
            transport.abort()
            return False
        self.api.connections.add(self)
        self._arm_timer()
        return True

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            app = self.stack.receive_data(data)
        except ClientError as exc:
            self.close(f"TLS: {exc}")
            return
        self._write()
        if app:
            self.h11.receive_data(app)
        if self.stack.closed:
            self.close("the client closed the connection")
            return
        self._arm_timer()
        self._process()

    def eof_received(self) -> bool | None:
        self.close("the client closed the connection")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.close(f"connection lost: {exc}" if exc else "connection closed")

    # --------------------------------------------------------------- HTTP

    def _process(self) -> None:
        """Consume h11 events until a request is complete (or more data is needed)."""
        while not self.closed and self._task is None:
            try:
                event = self.h11.next_event()
            except h11.RemoteProtocolError as exc:
                self._protocol_error(exc)
                return
            if event is h11.NEED_DATA or event is h11.PAUSED:
                return
            if isinstance(event, h11.Request):
                self._on_head(event)
            elif isinstance(event, h11.Data):
                self._on_body(event.data)
            elif isinstance(event, h11.EndOfMessage):
                if self._discarded is not None:
                    self.close("answered before the body was read")
                    return
                self._start_handler()
            elif isinstance(event, h11.ConnectionClosed):
                self.close("the client closed the connection")
                return

    def _on_head(self, head: h11.Request) -> None:
        if _head_size(head) > MAX_HEAD:  # h11 only bounds an incomplete head
            self._respond(error_response(ServiceError(
                431, "RequestHeaderFieldsTooLarge",
                f"the request line and headers are over {MAX_HEAD} bytes")), close=True)
            self.close("answered 431")
            return
        parts = urlsplit(head.target.decode("ascii", "replace"))
        request = Request(
            method=head.method.decode("ascii", "replace").upper(),
            path=parts.path or "/",
            query=dict(parse_qsl(parts.query, keep_blank_values=True)),
            headers=tuple((bytes(n), bytes(v)) for n, v in head.headers),
            body=b"",
            peer_certificate=None if self.tls is None else
            self.tls.ssl_object.getpeercert(binary_form=True) or None,
        )
        self._route, self._route_error, self._sink = None, None, None
        self._limit, self._received = MAX_BODY, 0
        self._body.clear()
        try:
            route, params = self.api.resolve(request.method, request.path)
        except ServiceError as exc:
            self._route_error = exc
        else:
            self._route = route
            self._limit = route.max_body
            request = replace(request, params=params)
            if route.open_body is not None:
                try:
                    self._sink = route.open_body(request)
                except ServiceError as exc:
                    self._answer_early(route.render_error(exc))
                    return
                except OSError as exc:
                    self._answer_early(route.render_error(_storage_error(exc)))
                    return
                self._limit = self._sink.limit
        self._request = request
        length = _content_length(head)
        if length is not None and length > self._limit:
            self._too_large(f"{length} bytes")
        elif self.h11.they_are_waiting_for_100_continue:
            self._send_raw(h11.InformationalResponse(status_code=100, headers=[],
                                                     reason=b"Continue"))

    def _on_body(self, data: bytes) -> None:
        if self._discarded is not None:
            self._discarded += len(data)
            if self._discarded > MAX_DISCARD:
                self.close("too much data after an early answer")
            return
        self._received += len(data)
        if self._received > self._limit:
            self._too_large(f"over {self._limit} bytes")
            return
        sink = self._sink
        if sink is None:
            self._body += data
            return
        try:
            sink.write(data)
        except ServiceError as exc:
            self._answer_early(self._render(exc))
        except OSError as exc:
            self._answer_early(self._render(_storage_error(exc)))

    def _render(self, error: ServiceError) -> Response:
        route = self._route
        return route.render_error(error) if route is not None else error_response(error)

    def _start_handler(self) -> None:
        request, route, route_error = self._request, self._route, self._route_error
        assert request is not None
        sink, self._sink, self._request = self._sink, None, None
        request = replace(request, body=bytes(self._body), sink=sink)
        self._body.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.transport is not None:
            self.transport.pause_reading()
        self._task = self.loop.create_task(self._serve(route, route_error, request))

    async def _serve(self, route: Route | None, route_error: ServiceError | None,
                     request: Request) -> None:
        try:
            if route is None:
                assert route_error is not None
                response = error_response(route_error)
            else:
                if request.sink is not None:
                    request.sink.close()
                response = await self.api.call(route, request)
        except asyncio.CancelledError:
            raise
        except OSError as exc:
            log.warning("%s: %s %s: %s", self.api.name, request.method, request.path, exc)
            response = self._render(_storage_error(exc))
        except Exception:
            log.exception("%s: %s %s failed", self.api.name, request.method, request.path)
            response = self._render(ServiceError(500, "ServerError",
                                                 "the emulator failed; see its log"))
        finally:
            if request.sink is not None:
                request.sink.abort()
        self._task = None
        if self.closed:
            return
        log.debug("%s: %s %s %s -> %d", self.api.name, self.peer, request.method,
                  request.path, response.status)
        self._respond(response)
        if self.closed:
            return
        if self.h11.our_state is h11.MUST_CLOSE or self.h11.their_state is h11.MUST_CLOSE:
            self.close("the client asked to close")
            return
        try:
            self.h11.start_next_cycle()
        except h11.LocalProtocolError:
            self.close("cannot keep the connection alive")
            return
        if self.transport is not None:
            self.transport.resume_reading()
        self._arm_timer()
        self._process()

    def _respond(self, response: Response, *, close: bool = False) -> None:
        headers = [("server", "iotdev-hub")]
        bodiless = response.status in (204, 304) or response.status < 200
        if not bodiless:
            headers.append(("content-length", str(len(response.body))))
            if response.content_type is not None:
                headers.append(("content-type", response.content_type))
        headers.extend(response.headers)
        if close:
            headers.append(("connection", "close"))
        try:
            reason = http.HTTPStatus(response.status).phrase
        except ValueError:
            reason = ""
        try:
            out = self.h11.send(h11.Response(status_code=response.status, headers=headers,
                                             reason=reason))
            if response.body and not bodiless:
                out = (out or b"") + (self.h11.send(h11.Data(data=response.body)) or b"")
            out = (out or b"") + (self.h11.send(h11.EndOfMessage()) or b"")
            self.stack.send(out)
        except (h11.LocalProtocolError, ClientError) as exc:
            self.close(f"cannot answer: {exc}")
            return
        self._write()

    def _send_raw(self, event: h11.InformationalResponse) -> None:
        try:
            self.stack.send(self.h11.send(event) or b"")
        except (h11.LocalProtocolError, ClientError) as exc:
            self.close(f"cannot answer: {exc}")
            return
        self._write()

    def _too_large(self, size: str) -> None:
        """Answer 413 now and skip the rest of the body, then close."""
        self._answer_early(self._render(ServiceError(
            413, "RequestEntityTooLarge",
            f"the request body ({size}) is over the limit of {self._limit} bytes")))

    def _answer_early(self, response: Response) -> None:
        """Answer before the body is read (with ``Connection: close``); the rest
        of the body is read and dropped, then the connection closes."""
        sink, self._sink = self._sink, None
        if sink is not None:
            sink.abort()
        self._body.clear()
        self._request = None
        self._discarded = 0
        self._respond(response, close=True)
        self._arm_timer()

    def _protocol_error(self, exc: h11.RemoteProtocolError) -> None:
        text = str(exc)
        if len(text) > 200:  # h11 quotes the offending bytes
            text = text[:200] + "..."
        if self.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            status = exc.error_status_hint
            code = "RequestHeaderFieldsTooLarge" if status == 431 else "BadRequest"
            self._respond(self._render(ServiceError(status, code, f"bad request: {text}")),
                          close=True)
        self.close(f"protocol error: {text}")

    # --------------------------------------------------------------- plumbing

    def _write(self) -> None:
        raw = self.stack.data_to_send()
        if raw and self.transport is not None and not self.transport.is_closing():
            self.transport.write(raw)

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._discarded is not None:  # after an early answer: linger briefly, then close
            self._timer = self.loop.call_later(LINGER_TIMEOUT, self.close,
                                               "answered before the body was read")
        else:
            self._timer = self.loop.call_later(IDLE_TIMEOUT, self.close, "idle")

    def close(self, reason: str) -> None:
        """Close the connection (TLS close_notify first) and cancel its handler."""
        if self.closed:
            return
        self.closed = True
        self.api.connections.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        sink, self._sink = self._sink, None
        if sink is not None:
            sink.abort()
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        transport = self.transport
        if transport is not None and not transport.is_closing():
            try:
                self.stack.close()
                raw = self.stack.data_to_send()
                if raw:
                    transport.write(raw)
            except Exception:  # the connection is going anyway
                pass
            transport.close()
        log.debug("%s: connection %s closed: %s", self.api.name, self.peer, reason)


# ------------------------------------------------------------------ helpers


def header_text(value: bytes, name: str) -> str:
    """A header value as UTF-8 (400 when it is not)."""
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise ServiceError(400, "ArgumentInvalid", f"header {name} is not UTF-8") from None


def _storage_error(exc: OSError) -> ServiceError:
    return ServiceError(500, "ServerError", f"the emulator cannot store the body: {exc}")


def _content_length(head: h11.Request) -> int | None:
    for name, value in head.headers:
        if name == b"content-length":
            return int(value)  # h11 has checked it is a number
    return None


def _head_size(head: h11.Request) -> int:
    """About the size of the request line and headers on the wire."""
    return len(head.method) + len(head.target) + 12 + sum(
        len(name) + len(value) + 4 for name, value in head.headers)
