"""File upload, the hub's side: the device HTTP API on the device port
(``ws_port``, 443 by default, shared with MQTT over WebSocket as on IoT Hub).

Theory of operation
-------------------
A device uploads a file in three steps (reference section 8): it asks the hub
for storage info (``POST /devices/{id}/files`` with ``{"blobName"}``), PUTs
the file to the blob URL it got (``_blobs.py``, served by the same API), then
tells the hub how that went (``POST /devices/{id}/files/notifications``).
``DeviceAPI`` is the ``HTTPAPI`` (``_http.py``) with those routes; the device
port's ``DevicePortConnection`` (``_conn.py``) hands it every TLS connection
whose first request is not the MQTT WebSocket upgrade.  The unauthenticated
service API is not among its routes.

Both hub routes authenticate the device as MQTT does: an
``Authorization: SharedAccessSignature sr=...`` header checked like the MQTT
password (``IdentityChecks.check_token``, ``_identity.py``: the device's key,
``sr`` naming it under one of the hub's names, not expired), or, without one,
the TLS client certificate (its thumbprint registered for the device).  The
path's device must be the authenticated one: no credential or a bad one gets
401, another device's good credential 403.  Errors use IoT Hub's JSON shape.

``UploadRegistry`` remembers every upload (a ``FileUpload``, frozen) in
memory, like telemetry: it survives neither a restart nor more than
``UPLOAD_HISTORY`` newer uploads (the blobs stay on disk).  An upload is
``pending`` from the storage info on, until the device's notification makes it
``succeeded`` or ``failed`` (with the notification's ``statusCode`` and
``statusDescription``), or until its SAS expires (``expired``, and the
correlation id is spent).  At most ``MAX_PENDING_UPLOADS`` are pending per
device (403 ``IotHubQuotaExceeded``, IoT Hub's 403006, beyond).  Writes to the
blob (``BlobStore.on_write``) set ``size`` and ``path`` of its pending
uploads; a notification freezes them.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._auth import parse_device_resource_uri, parse_sas_token
from ._blobs import validate_blob_name
from ._http import HTTPAPI, Request, Response, ServiceError, json_response
from ._store import Device

if TYPE_CHECKING:
    from ._blobs import BlobStore
    from ._identity import IdentityChecks
    from ._store import Store

__all__ = [
    "DEFAULT_CONTAINER",
    "DEFAULT_SAS_TTL",
    "MAX_PENDING_UPLOADS",
    "DeviceAPI",
    "FileUpload",
    "QuotaExceededError",
    "UploadRegistry",
]

DEFAULT_CONTAINER = "device-uploads"
DEFAULT_SAS_TTL = 3600.0
"""Seconds a blob SAS lives (IoT Hub's default, ``fileUpload.sasTtlAsIso8601``)."""
MAX_PENDING_UPLOADS = 10
"""Uploads a device may have pending at once (IoT Hub's limit)."""
UPLOAD_HISTORY = 10_000
"""Uploads remembered (the oldest finished ones are forgotten first)."""
FILES_MAX_BODY = 64 * 1024
DEVICE_API_MAX_CONNECTIONS = 256

PENDING, SUCCEEDED, FAILED, EXPIRED = "pending", "succeeded", "failed", "expired"


@dataclass(frozen=True, slots=True)
class FileUpload:
    """One file upload a device started (``Hub.uploads()``).

    Attributes:
        device_id: the device.
        blob_name: ``{device_id}/{blobName}``, as in the storage info.
        container_name: the hub's upload container.
        correlation_id: the storage info's ``correlationId``.
        created: when the storage info was issued (seconds since the epoch).
        expires: when its SAS runs out.
        status: ``pending``, ``succeeded``, ``failed`` or ``expired``.
        size: bytes of the stored blob (``None`` while nothing is stored).
        path: the blob's file under ``state_dir/blobs`` (``None`` likewise).
        status_code: the notification's ``statusCode``.
        status_description: the notification's ``statusDescription``.
        notified: when the notification came.
    """

    device_id: str
    blob_name: str
    container_name: str
    correlation_id: str
    created: float
    expires: float
    status: str = PENDING
    size: int | None = None
    path: Path | None = None
    status_code: int | None = None
    status_description: str | None = None
    notified: float | None = None


class QuotaExceededError(Exception):
    """The device has ``MAX_PENDING_UPLOADS`` uploads pending."""


class UploadRegistry:
    """The uploads a hub knows (see the module docstring); thread-safe."""

    def __init__(self, history: int = UPLOAD_HISTORY) -> None:
        self._history = history
        self._uploads: OrderedDict[str, FileUpload] = OrderedDict()  # by correlation id
        self._lock = threading.Lock()

    def start(self, device_id: str, blob_name: str, container: str, *, now: float,
              expires: float) -> FileUpload:
        """Record a new pending upload.

        Raises:
            QuotaExceededError: ``device_id`` has ``MAX_PENDING_UPLOADS`` pending.
        """
        with self._lock:
            self._expire(now)
            pending = sum(1 for u in self._uploads.values()
                          if u.device_id == device_id and u.status == PENDING)
            if pending >= MAX_PENDING_UPLOADS:
                raise QuotaExceededError(
                    f"device {device_id!r} has {pending} file uploads pending: at most "
                    f"{MAX_PENDING_UPLOADS} (notify the hub of finished ones first)")
            upload = FileUpload(device_id, blob_name, container, secrets.token_urlsafe(24),
                                now, expires)
            self._uploads[upload.correlation_id] = upload
            self._trim()
            return upload

    def notify(self, device_id: str, correlation_id: str, *, success: bool,
               status_code: int | None, description: str | None, now: float) -> FileUpload:
        """Finish a pending upload of ``device_id``.

        Raises:
            LookupError: no such pending upload of the device (the message says
                whether it is unknown, finished or expired).
        """
        with self._lock:
            self._expire(now)
            upload = self._uploads.get(correlation_id)
            if upload is None or upload.device_id != device_id:
                raise LookupError(f"correlation id {correlation_id!r} is not one of device "
                                  f"{device_id!r}'s file uploads")
            if upload.status != PENDING:
                raise LookupError(f"the file upload {correlation_id!r} ({upload.blob_name}) "
                                  f"is {upload.status} already: a notification is accepted "
                                  "once, while the upload is pending")
            done = replace(upload, status=SUCCEEDED if success else FAILED,
                           status_code=status_code, status_description=description,
                           notified=now)
            self._uploads[correlation_id] = done
            return done

    def blob_written(self, blob_name: str, size: int, path: Path) -> None:
        """A blob was stored: its pending uploads get its size and path."""
        with self._lock:
            for key, upload in self._uploads.items():
                if upload.blob_name == blob_name and upload.status == PENDING:
                    self._uploads[key] = replace(upload, size=size, path=path)

    def list(self, device_id: str | None = None, *, now: float) -> list[FileUpload]:
        """The uploads (of one device, or all), oldest first."""
        with self._lock:
            self._expire(now)
            return [u for u in self._uploads.values()
                    if device_id is None or u.device_id == device_id]

    def _expire(self, now: float) -> None:
        for key, upload in self._uploads.items():
            if upload.status == PENDING and now >= upload.expires:
                self._uploads[key] = replace(upload, status=EXPIRED)

    def _trim(self) -> None:
        excess = len(self._uploads) - self._history
        if excess <= 0:
            return
        done = [k for k, u in self._uploads.items() if u.status != PENDING][:excess]
        for key in done:
            del self._uploads[key]


class DeviceAPI(HTTPAPI):
    """The device HTTP API of a ``Hub`` (see the module docstring): the file
    upload routes and the blob endpoint.

    Args:
        store: the registry the path's device is looked up in.
        identity: checks a request's SAS token or client certificate.
        uploads: records the uploads.
        blobs: the blob store (its routes are added here).
        host_name: returns the ``hostName`` of storage info.
        sas_ttl: seconds a blob SAS lives.

    Attributes:
        pending: device-port connections still reading their first request
            line (``DevicePortConnection``), closed by ``stop``.
    """

    def __init__(self, *, store: Store, identity: IdentityChecks, uploads: UploadRegistry,
                 blobs: BlobStore, host_name: Callable[[], str], sas_ttl: float) -> None:
        super().__init__("device API", max_connections=DEVICE_API_MAX_CONNECTIONS)
        self.store = store
        self.identity = identity
        self.uploads = uploads
        self.blobs = blobs
        self._host_name = host_name
        self.sas_ttl = sas_ttl
        self.pending: set[Any] = set()
        self.add_route("POST", "/devices/{id}/files", self.storage_info,
                       max_body=FILES_MAX_BODY)
        self.add_route("POST", "/devices/{id}/files/notifications", self.notify,
                       max_body=FILES_MAX_BODY)
        blobs.add_routes(self)

    def stop(self) -> None:
        """Close every connection (cancelling handlers)."""
        for conn in list(self.pending):
            conn.close("the hub is stopping")
        self.close_connections("the hub is stopping")

    @property
    def host_name(self) -> str:
        """The ``hostName`` of storage info."""
        return self._host_name()

    # ------------------------------------------------------------ routes

    async def storage_info(self, request: Request) -> Response:
        device = self._authenticate(request)
        body = _object(request)
        name = body.get("blobName")
        if not isinstance(name, str) or not name:
            raise ServiceError(400, "ArgumentInvalid", "blobName must be a non-empty string")
        blob_name = f"{device.device_id}/{name}"
        try:
            validate_blob_name(blob_name)
        except ValueError as exc:
            raise ServiceError(400, "ArgumentInvalid", str(exc)) from None
        now = time.time()
        expires = int(now + self.sas_ttl)
        container = self.blobs.container
        try:
            upload = self.uploads.start(device.device_id, blob_name, container, now=now,
                                        expires=expires)
        except QuotaExceededError as exc:
            raise ServiceError(403, "IotHubQuotaExceeded", f"403006: {exc}") from None
        return json_response(200, {
            "correlationId": upload.correlation_id,
            "hostName": self.host_name,
            "containerName": container,
            "blobName": blob_name,
            "sasToken": self.blobs.sas.token(container, blob_name, expires),
        })

    async def notify(self, request: Request) -> Response:
        device = self._authenticate(request)
        body = _object(request)
        correlation_id = body.get("correlationId")
        success = body.get("isSuccess")
        code = body.get("statusCode")
        description = body.get("statusDescription")
        if not isinstance(correlation_id, str) or not correlation_id:
            raise ServiceError(400, "ArgumentInvalid",
                               "correlationId must be a non-empty string")
        if not isinstance(success, bool):
            raise ServiceError(400, "ArgumentInvalid", "isSuccess must be true or false")
        if code is not None and (isinstance(code, bool) or not isinstance(code, int)):
            raise ServiceError(400, "ArgumentInvalid", "statusCode must be an integer")
        if description is not None and not isinstance(description, str):
            raise ServiceError(400, "ArgumentInvalid", "statusDescription must be a string")
        try:
            self.uploads.notify(device.device_id, correlation_id, success=success,
                                     status_code=code, description=description,
                                     now=time.time())
        except LookupError as exc:
            raise ServiceError(400, "ArgumentInvalid", str(exc.args[0])) from None
        return Response(204, content_type=None)

    # ------------------------------------------------------------ authentication

    def _authenticate(self, request: Request) -> Device:
        """The path's device, if the request proves to be it.

        Raises:
            ServiceError: 401 (no, or a bad, credential), 403 (another device's).
        """
        device_id = request.params["id"]
        store = self.store
        device = store.device(device_id)
        token = request.header("authorization")
        if token is not None:
            reason = self._token_refusal(device, device_id, token)
            if reason is None:
                assert device is not None
                return device
            named = _token_device(token)
            if named is not None and named != device_id and \
                    self._token_refusal(store.device(named), named, token) is None:
                raise _cross_device(named, device_id, "SAS token")
            raise ServiceError(401, "IotHubUnauthorizedAccess", reason)
        der = request.peer_certificate
        if der is None:
            raise ServiceError(401, "IotHubUnauthorizedAccess",
                               "no Authorization header (SharedAccessSignature) and no TLS "
                               "client certificate")
        if device is not None and device.enabled and \
                self.identity.check_thumbprint(der, device) is None:
            return device
        for other in store.devices():
            if other.device_id != device_id and other.enabled and other.x509_thumbprints \
                    and self.identity.check_thumbprint(der, other) is None:
                raise _cross_device(other.device_id, device_id, "client certificate")
        if device is None or not device.enabled:
            reason = _unusable(device, device_id)
        else:
            reason = self.identity.check_thumbprint(der, device) or "refused"
        raise ServiceError(401, "IotHubUnauthorizedAccess", reason)

    def _token_refusal(self, device: Device | None, device_id: str, token: str) -> str | None:
        if device is None or not device.enabled:
            return _unusable(device, device_id)
        reason, _ = self.identity.check_token(device, token)
        return reason


def _unusable(device: Device | None, device_id: str) -> str:
    if device is None:
        return f"unknown device {device_id!r}"
    return f"device {device_id!r} is disabled"


def _cross_device(owner: str, device_id: str, what: str) -> ServiceError:
    return ServiceError(403, "IotHubUnauthorizedAccess",
                        f"the {what} is device {owner!r}'s: it gives no access to device "
                        f"{device_id!r}")


def _token_device(token: str) -> str | None:
    """The device a SAS token's ``sr`` names (``None`` if none)."""
    try:
        _, device_id, _ = parse_device_resource_uri(parse_sas_token(token).resource_uri)
    except ValueError:
        return None
    return device_id


def _object(request: Request) -> dict[str, Any]:
    body = request.json()
    if not isinstance(body, dict):
        raise ServiceError(400, "ArgumentInvalid", "the body must be a JSON object")
    return body
