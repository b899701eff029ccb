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

Handlers run as coroutines on the loop and use a ``ServiceBackend`` (the
hub's router, ``_router.py``: ``send_c2d``, ``invoke``, ``twin_document``,
``patch_desired``...) and the store, both given to the constructor.  They
raise ``ServiceError`` for an error answer, sent as IoT Hub does:
``{"Message": "ErrorCode:<Name>;<text>", "ExceptionMessage": ...}``.

Routes (JSON in and out; ``api-version`` accepted and ignored)::

    GET   /devices                              the registry (a list)
    GET   /devices/{id}                         one device
    PUT   /devices/{id}                         create (optional keys, status)
    GET   /devices/{id}/modules                 the device's modules (a list)
    GET   /devices/{id}/modules/{mid}           one module
    PUT   /devices/{id}/modules/{mid}           create (optional keys)
    GET   /twins/{id}[/modules/{mid}]           the (module) twin
    PATCH /twins/{id}[/modules/{mid}]           {"properties": {"desired": {...}}, "tags": {...}}
    POST  /twins/{id}[/modules/{mid}]/methods   {"methodName", "payload",
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
from collections.abc import Callable
from typing import Any, Protocol

from ._certs import CertPaths
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
from ._router import MethodResult
from ._store import (
    C2D_MAX_BODY,
    C2DMessage,
    Device,
    Module,
    QueueFullError,
    Store,
    TelemetryMessage,
    TwinError,
)

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
    "ServiceBackend",
    "ServiceError",
    "check_bind_address",
    "error_response",
    "invoke_method",
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


class ServiceBackend(Protocol):
    """What the service API asks of the hub (``_router.Router`` is one)."""

    def is_connected(self, device_id: str, module_id: str | None = None) -> bool: ...

    def set_enabled(self, device_id: str, enabled: bool) -> None: ...

    def twin_document(self, device_id: str, module_id: str | None = None) -> dict[str, Any]: ...

    async def patch_desired(self, device_id: str, patch: dict[str, Any],
                            module_id: str | None = None) -> dict[str, Any]: ...

    async def invoke(self, device_id: str, name: str, payload: Any, timeout: float,
                     module_id: str | None = None) -> MethodResult: ...

    async def send_c2d(self, device_id: str, body: bytes, **kw: Any) -> C2DMessage: ...

    async def wait_for_telemetry(self, ready: Callable[[], bool], timeout: float) -> bool: ...


class ServiceAPI(HTTPAPI):
    """The HTTPS service API of a hub (see the module docstring).

    Args:
        host: the address it will listen on.
        store: the registry, twins and telemetry.
        backend: the hub's operations on connected clients.
        uploads: returns the file uploads (of one device, or all).
        allow_remote: listen on a non-loopback ``host`` anyway.

    Raises:
        ValueError: ``host`` is not loopback and ``allow_remote`` is false.
    """

    def __init__(self, host: str, *, store: Store, backend: ServiceBackend,
                 uploads: Callable[[str | None], list[FileUpload]],
                 allow_remote: bool = False) -> None:
        check_bind_address(host, allow_remote)
        super().__init__("service API", max_connections=MAX_CONNECTIONS)
        self.host = host
        self.store = store
        self.backend = backend
        self.uploads = uploads
        self.port: int | None = None
        self._server: asyncio.base_events.Server | None = None
        for method, template, handler in (
            ("GET", "/devices", self.list_devices),
            ("GET", "/devices/{id}", self.get_device),
            ("PUT", "/devices/{id}", self.put_device),
            ("GET", "/devices/{id}/modules", self.list_modules),
            ("GET", "/devices/{id}/modules/{mid}", self.get_module),
            ("PUT", "/devices/{id}/modules/{mid}", self.put_module),
            ("GET", "/twins/{id}", self.get_twin),
            ("PATCH", "/twins/{id}", self.patch_twin),
            ("POST", "/twins/{id}/methods", self.invoke_method),
            ("GET", "/twins/{id}/modules/{mid}", self.get_twin),
            ("PATCH", "/twins/{id}/modules/{mid}", self.patch_twin),
            ("POST", "/twins/{id}/modules/{mid}/methods", self.invoke_method),
            ("POST", "/devices/{id}/messages/deviceBound", self.send_c2d),
            ("GET", "/devices/{id}/messages/events", self.device_events),
            ("GET", "/messages/events", self.all_events),
            ("GET", "/devices/{id}/files", self.device_uploads),
            ("GET", "/files", self.all_uploads),
        ):
            self.add_route(method, template, handler)

    async def start(self, port: int, certs: CertPaths) -> int:
        """Listen on ``host``:``port`` (0: a free port) with the hub's server
        certificate; returns the port."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(certs.server_cert, certs.server_key)
        context.set_alpn_protocols(["http/1.1"])
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: HTTPConnection(self, context), self.host, port)
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
        device = self.store.device(device_id)
        if device is None:
            raise ServiceError(404, "DeviceNotFound",
                               f"device {device_id!r} is not registered in the hub")
        return device

    def _target(self, request: Request) -> tuple[Device, str | None]:
        """The path's device and module id (``None`` for the device itself)."""
        device = self._device(request.params["id"])
        module_id = request.params.get("mid")
        if module_id is not None and self.store.module(device.device_id, module_id) is None:
            raise ServiceError(404, "ModuleNotFound", f"module {module_id!r} of device "
                               f"{device.device_id!r} is not registered in the hub")
        return device, module_id

    def _device_document(self, device: Device) -> dict[str, Any]:
        auth = _auth_document(device.primary_key, device.secondary_key,
                              device.x509_thumbprints)
        pending = self.store.pending_c2d(device.device_id, now=time.time())
        return {
            "deviceId": device.device_id,
            "status": "enabled" if device.enabled else "disabled",
            "connectionState": "Connected" if self.backend.is_connected(device.device_id)
            else "Disconnected",
            "cloudToDeviceMessageCount": len(pending),
            "authentication": auth,
        }

    def _twin_document(self, device: Device, module_id: str | None) -> dict[str, Any]:
        twin = self.backend.twin_document(device.device_id, module_id)
        twin["status"] = "enabled" if device.enabled else "disabled"
        twin["connectionState"] = "Connected" if self.backend.is_connected(
            device.device_id, module_id) else "Disconnected"
        return twin

    def _module_document(self, module: Module) -> dict[str, Any]:
        document = _auth_document(module.primary_key, module.secondary_key,
                                  module.x509_thumbprints)
        return {
            "deviceId": module.device_id,
            "moduleId": module.module_id,
            "managedBy": module.managed_by,
            "generationId": module.generation_id,
            "connectionState": "Connected" if self.backend.is_connected(
                module.device_id, module.module_id) else "Disconnected",
            "authentication": document,
        }

    # ------------------------------------------------------------ registry

    async def list_devices(self, request: Request) -> Response:
        return json_response(200, [self._device_document(d) for d in self.store.devices()])

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
        existing = self.store.device(device_id)
        if existing is not None:
            if (primary and primary != existing.primary_key) or \
                    (secondary and secondary != existing.secondary_key) or prints:
                raise ServiceError(409, "DeviceAlreadyExists",
                                   f"device {device_id!r} exists; only its status can change")
            if status is not None and (status == "enabled") != existing.enabled:
                self.backend.set_enabled(device_id, status == "enabled")
            return json_response(200, self._device_document(self._device(device_id)))
        try:
            device = self.store.add_device(
                device_id, primary_key=primary, secondary_key=secondary,
                x509_thumbprints=prints, enabled=status != "disabled")
        except ValueError as exc:
            raise ServiceError(400, "ArgumentInvalid", str(exc)) from None
        return json_response(200, self._device_document(device))

    # ------------------------------------------------------------ modules

    async def list_modules(self, request: Request) -> Response:
        device = self._device(request.params["id"])
        return json_response(200, [self._module_document(m)
                                   for m in self.store.modules(device.device_id)])

    async def get_module(self, request: Request) -> Response:
        device, module_id = self._target(request)
        module = self.store.module(device.device_id, module_id or "")
        assert module is not None
        return json_response(200, self._module_document(module))

    async def put_module(self, request: Request) -> Response:
        device = self._device(request.params["id"])
        module_id = request.params["mid"]
        body = request.json() if request.body.strip() else {}
        if not isinstance(body, dict):
            raise ServiceError(400, "ArgumentInvalid", "the module must be a JSON object")
        auth = body.get("authentication") or {}
        if not isinstance(auth, dict):
            raise ServiceError(400, "ArgumentInvalid", "authentication must be an object")
        keys = _member(auth, "symmetricKey")
        prints_doc = _member(auth, "x509Thumbprint")
        prints = [p for p in (_string(prints_doc, "primaryThumbprint"),
                              _string(prints_doc, "secondaryThumbprint")) if p]
        existing = self.store.module(device.device_id, module_id)
        if existing is not None:
            return json_response(200, self._module_document(existing))
        try:
            module = self.store.add_module(
                device.device_id, module_id, primary_key=_string(keys, "primaryKey"),
                secondary_key=_string(keys, "secondaryKey"), x509_thumbprints=prints)
        except ValueError as exc:
            raise ServiceError(400, "ArgumentInvalid", str(exc)) from None
        return json_response(200, self._module_document(module))

    # ------------------------------------------------------------ twins

    async def get_twin(self, request: Request) -> Response:
        return json_response(200, self._twin_document(*self._target(request)))

    async def patch_twin(self, request: Request) -> Response:
        device, module_id = self._target(request)
        device_id = device.device_id
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
                current = self.store.twin(device_id, module_id).tags
                self.store.set_tags(device_id, _merge(current, tags), module_id=module_id)
            if desired:
                await self.backend.patch_desired(device_id, desired, module_id)
        except TwinError as exc:
            raise ServiceError(exc.status, "ArgumentInvalid" if exc.status == 400
                               else "RequestEntityTooLarge", exc.message) from None
        return json_response(200, self._twin_document(device, module_id))

    # ------------------------------------------------------------ methods

    async def invoke_method(self, request: Request) -> Response:
        device, module_id = self._target(request)
        return await invoke_method(self.backend, device.device_id, module_id, request)

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
            message = await self.backend.send_c2d(
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
        store = self.store
        messages = store.telemetry(device_id, since)
        if not messages and wait > 0:
            await self.backend.wait_for_telemetry(
                lambda: bool(store.telemetry(device_id, since)), wait)
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
        return json_response(200, [_upload_document(u) for u in self.uploads(device_id)])

    async def all_uploads(self, request: Request) -> Response:
        return json_response(200, [_upload_document(u) for u in self.uploads(None)])


async def invoke_method(backend: ServiceBackend, device_id: str, module_id: str | None,
                        request: Request) -> Response:
    """Serve a direct-method call (``{"methodName", "payload",
    "responseTimeoutInSeconds"}``) on a device or module: the service API's
    route and the Edge hub's module-to-module one.

    Returns:
        200 with ``{"status", "payload"}`` as the device answered.

    Raises:
        ServiceError: 400 for a bad call, 404 ``DeviceNotOnline``, 504
            ``GatewayTimeout``.
    """
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
    result = await backend.invoke(device_id, name, body.get("payload"), float(timeout),
                                  module_id)
    target = device_id if module_id is None else f"{device_id}/{module_id}"
    kind = "device" if module_id is None else "module"
    error = result.payload.get("errorCode") if isinstance(result.payload, dict) else None
    if result.status == 404 and error == 404103:
        raise ServiceError(404, "DeviceNotOnline",
                           f"{kind} {target!r} is not connected or not subscribed "
                           "to direct methods")
    if result.status == 504 and error == 504101:
        raise ServiceError(504, "GatewayTimeout",
                           f"timed out after {timeout} s waiting for {target!r} "
                           f"to answer {name!r}")
    return json_response(200, {"status": result.status, "payload": result.payload})


# ------------------------------------------------------------------ helpers


def _auth_document(primary: str | None, secondary: str | None,
                   prints: tuple[str, ...]) -> dict[str, Any]:
    if primary is not None:
        return {"type": "sas", "symmetricKey": {"primaryKey": primary,
                                                "secondaryKey": secondary}}
    return {"type": "selfSigned", "x509Thumbprint": {
        "primaryThumbprint": prints[0] if prints else None,
        "secondaryThumbprint": prints[1] if len(prints) > 1 else None}}


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
