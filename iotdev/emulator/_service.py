"""The emulator's service-side HTTP API: IoT Hub's service REST shapes over HTTPS.

Theory of operation
-------------------
``ServiceAPI`` listens on the hub's asyncio loop (no thread of its own); it is
an ``HTTPAPI`` (``_http.py``: the route table, and one ``HTTPConnection`` per
client, h11 over the sans-IO server-side ``TLSLayer`` with the hub's server
certificate, HTTP/1.1 keep-alive, one request at a time).  ``add_route``
extends the table.  Path parameters are matched on the raw path and then
percent-decoded, so a device id with ``/`` or ``%`` travels as ``%2F``/``%25``.
Query parameters the route does not know (``api-version``) are ignored.  The
devices' own HTTP API (file upload) is another ``HTTPAPI`` on the device port
(``_files.py``); this one is never reachable there.

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
    GET   /devices/{id}/files                   file uploads of a device (records)
    GET   /files                                the same, every device

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
import ipaddress
import logging
import math
import ssl
import time
from typing import TYPE_CHECKING, Any

from ._files import FileUpload
from ._http import (
    HTTPAPI,
    IDLE_TIMEOUT,
    LINGER_TIMEOUT,
    MAX_BODY,
    MAX_CONNECTIONS,
    MAX_DISCARD,
    MAX_HEAD,
    HTTPConnection,
    Request,
    Response,
    Route,
    ServiceError,
    error_response,
    header_text,
    json_response,
)
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
    "IDLE_TIMEOUT",
    "LINGER_TIMEOUT",
    "MAX_BODY",
    "MAX_CONNECTIONS",
    "MAX_DISCARD",
    "MAX_HEAD",
    "Request",
    "Response",
    "Route",
    "ServiceAPI",
    "ServiceError",
    "check_bind_address",
    "error_response",
    "json_response",
]

log = logging.getLogger(__name__)

METHOD_DEFAULT_TIMEOUT = 30.0
METHOD_MAX_TIMEOUT = 300.0
METHOD_NAME_MAX = 256
EVENTS_MAX_COUNT = 1000
EVENTS_MAX_BYTES = 4 * 1024 * 1024
EVENTS_MAX_WAIT = 30.0


# ------------------------------------------------------------------ addresses


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


class ServiceAPI(HTTPAPI):
    """The HTTPS service API of a ``Hub`` (see the module docstring).

    Args:
        hub: the hub whose loop, certificate, store and helpers it uses.
        allow_remote: listen on a non-loopback ``hub.host`` anyway.

    Raises:
        ValueError: ``hub.host`` is not loopback and ``allow_remote`` is false.
    """

    def __init__(self, hub: Hub, *, allow_remote: bool = False) -> None:
        check_bind_address(hub.host, allow_remote)
        super().__init__("service API", max_connections=MAX_CONNECTIONS)
        self.hub = hub
        self.port: int | None = None
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
            ("GET", "/devices/{id}/files", self.device_uploads),
            ("GET", "/files", self.all_uploads),
        ):
            self.add_route(method, template, handler)

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
        self.close_connections("the hub is stopping")
        if server is not None:
            await server.wait_closed()

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
                properties[key] = header_text(raw_value, name)
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
            except (TimeoutError, asyncio.TimeoutError):  # distinct on 3.10
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

    # ------------------------------------------------------------ file uploads

    async def device_uploads(self, request: Request) -> Response:
        device_id = request.params["id"]
        self._device(device_id)
        return json_response(200, [_upload_document(u) for u in self.hub.uploads(device_id)])

    async def all_uploads(self, request: Request) -> Response:
        return json_response(200, [_upload_document(u) for u in self.hub.uploads()])


# ------------------------------------------------------------------ helpers


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
    moment = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _upload_document(upload: FileUpload) -> dict[str, Any]:
    return {
        "deviceId": upload.device_id,
        "blobName": upload.blob_name,
        "containerName": upload.container_name,
        "correlationId": upload.correlation_id,
        "status": upload.status,
        "size": upload.size,
        "path": None if upload.path is None else str(upload.path),
        "statusCode": upload.status_code,
        "statusDescription": upload.status_description,
        "created": upload.created,
        "createdTimeUtc": _iso(upload.created),
        "expiryTimeUtc": _iso(upload.expires),
        "notifiedTimeUtc": None if upload.notified is None else _iso(upload.notified),
    }


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
