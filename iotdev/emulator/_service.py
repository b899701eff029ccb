"""The emulator's service-side HTTP API: IoT Hub's service REST shapes over HTTPS.

Theory of operation
-------------------
``ServiceAPI`` listens on the hub's asyncio loop (no thread of its own); each
connection is an ``HTTPConnection`` (an ``asyncio.Protocol``) that stacks the
sans-IO server-side ``TLSLayer`` (the hub's server certificate) under an
``h11`` server connection.  Requests on a connection are served one at a time
(HTTP/1.1 keep-alive; pipelined requests wait in h11's buffer, and the socket
stops being read while a handler runs, so a client cannot make the emulator
buffer without bound).  A complete request (head and body) goes to
``ServiceAPI.dispatch``, which walks the route table: a list of
``Route(method, pattern, handler)``; ``add_route`` extends it (file upload
comes next).  Path parameters are matched on the raw path and then
percent-decoded, so a device id with ``/`` or ``%`` travels as ``%2F``/``%25``.
Query parameters the route does not know (``api-version``) are ignored.

Handlers run as coroutines on the loop and use the hub's coroutine helpers
(``_send_c2d``, ``_invoke``, ``_get_twin``, ``_patch_desired``) and its store
directly.  They raise ``ServiceError`` for an error answer, sent as IoT Hub
does: ``{"Message": "ErrorCode:<Name>;<text>", "ExceptionMessage": ...}``.

Routes (JSON in and out; ``api-version`` accepted and ignored)::

    GET   /devices                              the registry (a list)
    GET   /devices/{id}                         one device
    PUT   /devices/{id}                         create (optional keys, status)
    GET   /twins/{id}                           the twin
    PATCH /twins/{id}                           {"properties": {"desired": {...}}, "tags": {...}}
    POST  /twins/{id}/methods                   {"methodName", "payload",
                                                 "responseTimeoutInSeconds"}
                                                -> {"status", "payload"}
    POST  /devices/{id}/messages/deviceBound    C2D: the body is the message;
                                                iothub-messageid, iothub-correlationid,
                                                iothub-ack, iothub-app-{name} headers
    GET   /devices/{id}/messages/events         telemetry, ?since=EPOCH&wait=S&limit=N
    GET   /messages/events                      the same, every device

Security: there is no authentication at all, which is only acceptable on
loopback, so the API refuses to listen on another address unless it is
constructed with ``allow_remote=True``.  TLS still protects the bytes.

Limits: request bodies of at most ``MAX_BODY`` (1 MiB; a larger
``Content-Length``, or a chunked body growing past it, gets 413 at once and
the connection closes once the rest is read and discarded, up to
``MAX_DISCARD`` bytes or ``LINGER_TIMEOUT`` seconds without data); request
line plus headers at most ``MAX_HEAD`` bytes (h11's
``max_incomplete_event_size``; over it: 431); ``MAX_CONNECTIONS`` connections;
a connection idle (or stalled mid-request) for ``IDLE_TIMEOUT`` seconds is
closed; telemetry answers hold at most ``EVENTS_MAX_COUNT`` messages and about
``EVENTS_MAX_BYTES`` bytes of bodies, and long-poll at most
``EVENTS_MAX_WAIT`` seconds; method timeouts are at most
``METHOD_MAX_TIMEOUT`` seconds.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import datetime
import http
import ipaddress
import json
import logging
import math
import re
import ssl
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, unquote, urlsplit

import h11

from .._errors import ClientError
from ..transport._layer import Stack
from ..transport._tls import TLSLayer
from ._store import (
    C2D_MAX_BODY,
    Device,
    QueueFullError,
    TelemetryMessage,
    TwinError,
)

if TYPE_CHECKING:
    from ._hub import Hub

__all__ = [
    "Request",
    "Response",
    "Route",
    "ServiceAPI",
    "ServiceError",
    "check_bind_address",
    "json_response",
]

log = logging.getLogger(__name__)

MAX_BODY = 1024 * 1024
MAX_HEAD = 16 * 1024
MAX_DISCARD = 16 * 1024 * 1024
MAX_CONNECTIONS = 64
IDLE_TIMEOUT = 60.0
LINGER_TIMEOUT = 5.0
METHOD_DEFAULT_TIMEOUT = 30.0
METHOD_MAX_TIMEOUT = 300.0
METHOD_NAME_MAX = 256
EVENTS_MAX_COUNT = 1000
EVENTS_MAX_BYTES = 4 * 1024 * 1024
EVENTS_MAX_WAIT = 30.0

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


@dataclass(frozen=True)
class Request:
    """A complete request.

    ``path`` is the raw (still percent-encoded) path, ``params`` the route's
    path parameters (decoded), ``query`` the query parameters (decoded, the last
    of repeated ones), ``headers`` the raw h11 headers (lower-case names).
    """

    method: str
    path: str
    query: dict[str, str]
    headers: tuple[tuple[bytes, bytes], ...]
    body: bytes
    params: dict[str, str] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        """A header's value (UTF-8; repeated headers joined with ``,``)."""
        key = name.lower().encode("ascii")
        values = [_text(value, name) for n, value in self.headers if n == key]
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
    stamp = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    response = json_response(error.status, {
        "Message": f"ErrorCode:{error.code};{error.message}",
        "ExceptionMessage": f"Tracking ID:{uuid.uuid4().hex}-G:0-TimeStamp:{stamp}",
    })
    response.headers.extend(error.headers)
    return response


Handler = Callable[[Request], Awaitable[Response]]


@dataclass(frozen=True)
class Route:
    """``method`` and a path ``pattern`` (named groups are path parameters)."""

    method: str
    pattern: re.Pattern[str]
    handler: Handler


def _compile(template: str) -> re.Pattern[str]:
    """``/twins/{id}/methods`` -> a pattern with ``id`` matching one segment."""
    parts = re.split(r"\{(\w+)\}", template)
    regex = "".join(
        re.escape(part) if i % 2 == 0 else f"(?P<{part}>[^/]+)" for i, part in enumerate(parts)
    )
    return re.compile(regex)


def check_bind_address(host: str, allow_remote: bool) -> None:
    """Refuse a non-loopback listening address unless ``allow_remote``.

    Raises:
        ValueError: ``host`` is not ``localhost`` or a loopback address.
    """
    if allow_remote or host == "localhost":
        return
    try:
        if ipaddress.ip_address(host).is_loopback:
            return
    except ValueError:
        pass
    raise ValueError(
        f"the service API has no authentication: refusing to listen on {host!r}, which "
        "is not a loopback address (pass http_allow_remote=True, or --http-allow-remote, "
        "to do it anyway)"
    )


# ------------------------------------------------------------------ the API


class ServiceAPI:
    """The HTTPS service API of a ``Hub`` (see the module docstring).

    Args:
        hub: the hub whose loop, certificate, store and helpers it uses.
        allow_remote: listen on a non-loopback ``hub.host`` anyway.

    Raises:
        ValueError: ``hub.host`` is not loopback and ``allow_remote`` is false.
    """

    def __init__(self, hub: Hub, *, allow_remote: bool = False) -> None:
        check_bind_address(hub.host, allow_remote)
        self.hub = hub
        self.port: int | None = None
        self.routes: list[Route] = []
        self.connections: set[HTTPConnection] = set()
        self._server: asyncio.base_events.Server | None = None
        for method, template, handler in (
            ("GET", "/devices", self.list_devices),
            ("GET", "/devices/{id}", self.get_device),
            ("PUT", "/devices/{id}", self.put_device),
            ("GET", "/twins/{id}", self.get_twin),
            ("PATCH", "/twins/{id}", self.patch_twin),
            ("POST", "/twins/{id}/methods", self.invoke_method),
            ("POST", "/devices/{id}/messages/deviceBound", self.send_c2d),
            ("GET", "/devices/{id}/messages/events", self.device_events),
            ("GET", "/messages/events", self.all_events),
        ):
            self.add_route(method, template, handler)

    def add_route(self, method: str, template: str, handler: Handler) -> None:
        """Serve ``method`` on ``template`` (``{name}`` is a path parameter)."""
        self.routes.append(Route(method.upper(), _compile(template), handler))

    async def start(self, port: int) -> int:
        """Listen on ``hub.host``:``port`` (0: a free port); returns the port."""
        certs = self.hub.certs
        assert certs is not None, "the hub makes its certificates first"
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(certs.server_cert, certs.server_key)
        context.set_alpn_protocols(["http/1.1"])
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: HTTPConnection(self, context), self.hub.host, port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        """Stop listening and close every connection (cancelling handlers)."""
        server, self._server = self._server, None
        if server is not None:
            server.close()
        for conn in list(self.connections):
            conn.close("the hub is stopping")
        if server is not None:
            await server.wait_closed()

    async def dispatch(self, request: Request) -> Response:
        """Route ``request``; a ``ServiceError`` becomes its error answer."""
        try:
            allowed: set[str] = set()
            for route in self.routes:
                match = route.pattern.fullmatch(request.path)
                if match is None:
                    continue
                if route.method != request.method:
                    allowed.add(route.method)
                    continue
                params = {k: unquote(v, errors="strict") for k, v in match.groupdict().items()}
                return await route.handler(replace(request, params=params))
            if allowed:
                raise ServiceError(405, "MethodNotAllowed",
                                   f"{request.method} is not allowed on {request.path} "
                                   f"(allowed: {', '.join(sorted(allowed))})",
                                   (("allow", ", ".join(sorted(allowed))),))
            raise ServiceError(404, "NotFound", f"no such resource: {request.path}")
        except ServiceError as exc:
            return error_response(exc)
        except UnicodeDecodeError:
            return error_response(ServiceError(400, "ArgumentInvalid",
                                               "the path is not UTF-8 once percent-decoded"))

    # ------------------------------------------------------------ helpers

    def _device(self, device_id: str) -> Device:
        device = self.hub.store.device(device_id)
        if device is None:
            raise ServiceError(404, "DeviceNotFound",
                               f"device {device_id!r} is not registered in the hub")
        return device

    def _device_document(self, device: Device) -> dict[str, Any]:
        if device.primary_key is not None:
            auth: dict[str, Any] = {"type": "sas", "symmetricKey": {
                "primaryKey": device.primary_key, "secondaryKey": device.secondary_key}}
        else:
            prints = device.x509_thumbprints
            auth = {"type": "selfSigned", "x509Thumbprint": {
                "primaryThumbprint": prints[0] if prints else None,
                "secondaryThumbprint": prints[1] if len(prints) > 1 else None}}
        pending = self.hub.store.pending_c2d(device.device_id, now=time.time())
        return {
            "deviceId": device.device_id,
            "status": "enabled" if device.enabled else "disabled",
            "connectionState": "Connected" if self.hub.is_connected(device.device_id)
            else "Disconnected",
            "cloudToDeviceMessageCount": len(pending),
            "authentication": auth,
        }

    async def _twin_document(self, device_id: str) -> dict[str, Any]:
        device = self._device(device_id)
        twin = await self.hub._get_twin(device_id)
        twin["status"] = "enabled" if device.enabled else "disabled"
        twin["connectionState"] = "Connected" if self.hub.is_connected(device_id) \
            else "Disconnected"
        return twin

    # ------------------------------------------------------------ registry

    async def list_devices(self, request: Request) -> Response:
        return json_response(200, [self._device_document(d) for d in self.hub.store.devices()])

    async def get_device(self, request: Request) -> Response:
        return json_response(200, self._device_document(self._device(request.params["id"])))

    async def put_device(self, request: Request) -> Response:
        device_id = request.params["id"]
        body = request.json() if request.body.strip() else {}
        if not isinstance(body, dict):
            raise ServiceError(400, "ArgumentInvalid", "the device must be a JSON object")
        if body.get("deviceId", device_id) != device_id:
            raise ServiceError(400, "ArgumentInvalid",
                               f"deviceId {body['deviceId']!r} does not match the path")
        status = body.get("status")
        if status not in (None, "enabled", "disabled"):
            raise ServiceError(400, "ArgumentInvalid",
                               f"status {status!r} is not 'enabled' or 'disabled'")
        auth = body.get("authentication") or {}
        if not isinstance(auth, dict):
            raise ServiceError(400, "ArgumentInvalid", "authentication must be an object")
        keys = _member(auth, "symmetricKey")
        prints_doc = _member(auth, "x509Thumbprint")
        primary, secondary = (_string(keys, "primaryKey"), _string(keys, "secondaryKey"))
        prints = [p for p in (_string(prints_doc, "primaryThumbprint"),
                              _string(prints_doc, "secondaryThumbprint")) if p]
        existing = self.hub.store.device(device_id)
        if existing is not None:
            if (primary and primary != existing.primary_key) or \
                    (secondary and secondary != existing.secondary_key) or prints:
                raise ServiceError(409, "DeviceAlreadyExists",
                                   f"device {device_id!r} exists; only its status can change")
            if status is not None and (status == "enabled") != existing.enabled:
                self.hub.set_enabled(device_id, status == "enabled")
            return json_response(200, self._device_document(self._device(device_id)))
        try:
            device = self.hub.store.add_device(
                device_id, primary_key=primary, secondary_key=secondary,
                x509_thumbprints=prints, enabled=status != "disabled")
        except ValueError as exc:
            raise ServiceError(400, "ArgumentInvalid", str(exc)) from None
        return json_response(200, self._device_document(device))

    # ------------------------------------------------------------ twins

    async def get_twin(self, request: Request) -> Response:
        return json_response(200, await self._twin_document(request.params["id"]))

    async def patch_twin(self, request: Request) -> Response:
        device_id = request.params["id"]
        self._device(device_id)
        body = request.json()
        if not isinstance(body, dict):
            raise ServiceError(400, "ArgumentInvalid", "the twin patch must be a JSON object")
        unknown = set(body) - {"deviceId", "etag", "properties", "tags"}
        if unknown:
            raise ServiceError(400, "ArgumentInvalid",
                               f"unexpected member(s) {sorted(unknown)}: a twin patch is "
                               '{"properties": {"desired": {...}}, "tags": {...}}')
        if body.get("deviceId", device_id) != device_id:
            raise ServiceError(400, "ArgumentInvalid", "deviceId does not match the path")
        properties = body.get("properties", {})
        if not isinstance(properties, dict) or set(properties) - {"desired"}:
            raise ServiceError(400, "ArgumentInvalid", "properties may only hold 'desired' "
                               "(reported properties are the device's)")
        desired = properties.get("desired")
        tags = body.get("tags")
        if desired is not None and not isinstance(desired, dict):
            raise ServiceError(400, "ArgumentInvalid", "properties.desired must be an object")
        if tags is not None and not isinstance(tags, dict):
            raise ServiceError(400, "ArgumentInvalid", "tags must be an object")
        try:
            if tags:
                current = self.hub.store.twin(device_id).tags
                self.hub.store.set_tags(device_id, _merge(current, tags))
            if desired:
                await self.hub._patch_desired(device_id, desired)
        except TwinError as exc:
            raise ServiceError(exc.status, "ArgumentInvalid" if exc.status == 400
                               else "RequestEntityTooLarge", exc.message) from None
        return json_response(200, await self._twin_document(device_id))

    # ------------------------------------------------------------ methods

    async def invoke_method(self, request: Request) -> Response:
        device_id = request.params["id"]
        self._device(device_id)
        body = request.json()
        if not isinstance(body, dict):
            raise ServiceError(400, "ArgumentInvalid", "the method call must be a JSON object")
        name = body.get("methodName")
        if not isinstance(name, str) or not name or len(name) > METHOD_NAME_MAX:
            raise ServiceError(400, "ArgumentInvalid",
                               f"methodName must be a string of 1 to {METHOD_NAME_MAX} "
                               "characters")
        timeout = body.get("responseTimeoutInSeconds", METHOD_DEFAULT_TIMEOUT)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or \
                not 0 < timeout <= METHOD_MAX_TIMEOUT:
            raise ServiceError(400, "ArgumentInvalid",
                               "responseTimeoutInSeconds must be a number over 0 and at "
                               f"most {METHOD_MAX_TIMEOUT:.0f}")
        result = await self.hub._invoke(device_id, name, body.get("payload"), float(timeout))
        error = result.payload.get("errorCode") if isinstance(result.payload, dict) else None
        if result.status == 404 and error == 404103:
            raise ServiceError(404, "DeviceNotOnline",
                               f"device {device_id!r} is not connected or not subscribed "
                               "to direct methods")
        if result.status == 504 and error == 504101:
            raise ServiceError(504, "GatewayTimeout",
                               f"timed out after {timeout} s waiting for {device_id!r} "
                               f"to answer {name!r}")
        return json_response(200, {"status": result.status, "payload": result.payload})

    # ------------------------------------------------------------ cloud-to-device

    async def send_c2d(self, request: Request) -> Response:
        device_id = request.params["id"]
        self._device(device_id)
        if len(request.body) > C2D_MAX_BODY:
            raise ServiceError(413, "MessageTooLarge",
                               f"a C2D message of {len(request.body)} bytes is over "
                               f"{C2D_MAX_BODY}")
        properties: dict[str, str] = {}
        for raw_name, raw_value in request.headers:
            name = raw_name.decode("ascii", "replace")
            if name.startswith("iothub-app-"):
                key = name[len("iothub-app-"):]
                if not key:
                    raise ServiceError(400, "ArgumentInvalid", "an empty property name")
                properties[key] = _text(raw_value, name)
        ack = request.header("iothub-ack")
        try:
            message = await self.hub._send_c2d(
                device_id, request.body, message_id=request.header("iothub-messageid"),
                correlation_id=request.header("iothub-correlationid"),
                properties=properties, ack=ack)
        except QueueFullError as exc:
            raise ServiceError(403, "DeviceMaximumQueueDepthExceeded", str(exc)) from None
        except LookupError as exc:
            raise ServiceError(404, "DeviceNotFound", str(exc)) from None
        except ValueError as exc:
            raise ServiceError(400, "ArgumentInvalid", str(exc)) from None
        return json_response(200, {
            "messageId": message.message_id, "correlationId": message.correlation_id,
            "expiryTimeUtc": _iso(message.expiry)})

    # ------------------------------------------------------------ telemetry

    async def device_events(self, request: Request) -> Response:
        device_id = request.params["id"]
        self._device(device_id)
        return await self._events(request, device_id)

    async def all_events(self, request: Request) -> Response:
        return await self._events(request, None)

    async def _events(self, request: Request, device_id: str | None) -> Response:
        since = _number(request, "since", None, -math.inf, math.inf)
        wait = _number(request, "wait", 0.0, 0.0, EVENTS_MAX_WAIT)
        limit = int(_number(request, "limit", EVENTS_MAX_COUNT, 1, EVENTS_MAX_COUNT))
        store = self.hub.store
        messages = store.telemetry(device_id, since)
        cond = self.hub._telemetry_event
        if not messages and wait > 0 and cond is not None:
            try:
                async with cond:
                    await asyncio.wait_for(
                        cond.wait_for(lambda: bool(store.telemetry(device_id, since))), wait)
            except TimeoutError:
                pass
            messages = store.telemetry(device_id, since)
        out: list[dict[str, Any]] = []
        size = 0
        for message in messages[:limit]:
            if out and size + len(message.body) > EVENTS_MAX_BYTES:
                break
            size += len(message.body)
            out.append(_telemetry_document(message))
        return json_response(200, out)


# ------------------------------------------------------------------ one connection


class HTTPConnection(asyncio.Protocol):
    """One client connection: TLS (sans-IO) under h11, one request at a time."""

    def __init__(self, api: ServiceAPI, context: ssl.SSLContext) -> None:
        self.api = api
        self.loop = asyncio.get_running_loop()
        self.stack = Stack([TLSLayer(context, None, server_side=True)])
        self.h11 = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.peer = "?"
        self._head: h11.Request | None = None
        self._body = bytearray()
        self._discarded: int | None = None  # bytes skipped after an early 413
        self._task: asyncio.Task[None] | None = None
        self._timer: asyncio.TimerHandle | None = None

    # --------------------------------------------------------------- asyncio

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        if len(self.api.connections) >= MAX_CONNECTIONS:
            log.warning("service API: refusing %s: %d connections open", self.peer,
                        MAX_CONNECTIONS)
            self.closed = True
            transport.abort()
            return
        self.api.connections.add(self)
        self.stack.start()
        self._write()
        self._arm_timer()

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
                self._head = event
                self._body.clear()
                length = _content_length(event)
                if _head_size(event) > MAX_HEAD:  # h11 only bounds an incomplete head
                    self._respond(error_response(ServiceError(
                        431, "RequestHeaderFieldsTooLarge",
                        f"the request line and headers are over {MAX_HEAD} bytes")),
                        close=True)
                    self.close("answered 431")
                    return
                if length is not None and length > MAX_BODY:
                    self._too_large(length)
                elif self.h11.they_are_waiting_for_100_continue:
                    self._send_raw(h11.InformationalResponse(status_code=100, headers=[],
                                                             reason=b"Continue"))
            elif isinstance(event, h11.Data):
                if self._discarded is not None:
                    self._discarded += len(event.data)
                    if self._discarded > MAX_DISCARD:
                        self.close("too much data after 413")
                        return
                    continue
                self._body += event.data
                if len(self._body) > MAX_BODY:
                    self._too_large(None)
            elif isinstance(event, h11.EndOfMessage):
                if self._discarded is not None:
                    self.close("answered 413")
                    return
                self._start_handler()
            elif isinstance(event, h11.ConnectionClosed):
                self.close("the client closed the connection")
                return

    def _start_handler(self) -> None:
        head = self._head
        assert head is not None
        self._head = None
        target = head.target.decode("ascii", "replace")
        parts = urlsplit(target)
        request = Request(
            method=head.method.decode("ascii", "replace").upper(),
            path=parts.path or "/",
            query=dict(parse_qsl(parts.query, keep_blank_values=True)),
            headers=tuple((bytes(n), bytes(v)) for n, v in head.headers),
            body=bytes(self._body),
        )
        self._body.clear()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self.transport is not None:
            self.transport.pause_reading()
        self._task = self.loop.create_task(self._serve(request))

    async def _serve(self, request: Request) -> None:
        try:
            response = await self.api.dispatch(request)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("service API: %s %s failed", request.method, request.path)
            response = error_response(ServiceError(500, "ServerError",
                                                   "the emulator failed; see its log"))
        self._task = None
        if self.closed:
            return
        log.debug("service API: %s %s %s -> %d", self.peer, request.method, request.path,
                  response.status)
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
        headers = [("server", "iotdev-hub"), ("content-length", str(len(response.body)))]
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
            if response.body:
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

    def _too_large(self, length: int | None) -> None:
        """Answer 413 now and skip the rest of the body, then close."""
        size = f"{length} bytes" if length is not None else f"over {MAX_BODY} bytes"
        self._body.clear()
        self._discarded = 0
        self._respond(error_response(ServiceError(
            413, "RequestEntityTooLarge",
            f"the request body ({size}) is over the limit of {MAX_BODY} bytes")), close=True)
        self._arm_timer()

    def _protocol_error(self, exc: h11.RemoteProtocolError) -> None:
        if self.h11.our_state in (h11.IDLE, h11.SEND_RESPONSE):
            status = exc.error_status_hint
            code = "RequestHeaderFieldsTooLarge" if status == 431 else "BadRequest"
            self._respond(error_response(ServiceError(status, code, f"bad request: {exc}")),
                          close=True)
        self.close(f"protocol error: {exc}")

    # --------------------------------------------------------------- plumbing

    def _write(self) -> None:
        raw = self.stack.data_to_send()
        if raw and self.transport is not None and not self.transport.is_closing():
            self.transport.write(raw)

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._discarded is not None:  # after an early 413: linger briefly, then close
            self._timer = self.loop.call_later(LINGER_TIMEOUT, self.close, "answered 413")
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
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        transport = self.transport
        if transport is not None and not transport.is_closing():
            try:
                self.stack.close()
                self._write_to(transport)
            except Exception:  # the connection is going anyway
                pass
            transport.close()
        log.debug("service API: connection %s closed: %s", self.peer, reason)

    def _write_to(self, transport: asyncio.Transport) -> None:
        raw = self.stack.data_to_send()
        if raw:
            transport.write(raw)


# ------------------------------------------------------------------ helpers


def _text(value: bytes, name: str) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise ServiceError(400, "ArgumentInvalid", f"header {name} is not UTF-8") from None


def _content_length(head: h11.Request) -> int | None:
    for name, value in head.headers:
        if name == b"content-length":
            return int(value)  # h11 has checked it is a number
    return None


def _head_size(head: h11.Request) -> int:
    """About the size of the request line and headers on the wire."""
    return len(head.method) + len(head.target) + 12 + sum(
        len(name) + len(value) + 4 for name, value in head.headers)


def _member(document: dict[str, Any], name: str) -> dict[str, Any]:
    value = document.get(name) or {}
    if not isinstance(value, dict):
        raise ServiceError(400, "ArgumentInvalid", f"authentication.{name} must be an object")
    return value


def _string(document: dict[str, Any], name: str) -> str | None:
    value = document.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ServiceError(400, "ArgumentInvalid", f"{name} must be a string")
    return value


def _number(request: Request, name: str, default: Any, low: float, high: float) -> Any:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and low <= value <= high):
        raise ServiceError(400, "ArgumentInvalid",
                           f"query parameter {name}={raw!r} must be a number"
                           + (f" from {low:g} to {high:g}" if math.isfinite(low) else ""))
    return value


def _merge(target: dict[str, Any], patch: dict[str, Any]) -> dict[str, Any]:
    """``target`` with ``patch`` merged in (null deletes, objects merge)."""
    result = dict(target)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = _merge(result[key], value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def _iso(epoch: float) -> str:
    moment = datetime.datetime.fromtimestamp(epoch, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _telemetry_document(message: TelemetryMessage) -> dict[str, Any]:
    return {
        "deviceId": message.device_id,
        "moduleId": message.module_id,
        "enqueuedTime": message.enqueued,
        "enqueuedTimeUtc": _iso(message.enqueued),
        "systemProperties": dict(message.system_properties),
        "properties": dict(message.properties),
        "body": base64.b64encode(message.body).decode("ascii"),
    }
