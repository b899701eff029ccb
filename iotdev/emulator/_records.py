"""The emulated hub's records and their validation: identities (devices and
modules), twins, cloud-to-device and telemetry messages, the limits IoT Hub
enforces on them and the errors a broken limit raises.

Everything here is a frozen dataclass or a pure function: no I/O, no clock
(times are arguments), no locks.  ``_twins.py`` holds the twin-document rules,
``_persist.py`` the state file and ``_store.py`` the store built on them.
"""

from __future__ import annotations

import base64
import binascii
import copy
import dataclasses
import datetime
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "C2DMessage",
    "Device",
    "DeviceNotFoundError",
    "Module",
    "QueueFullError",
    "TelemetryMessage",
    "Twin",
    "TwinError",
    "UnknownModuleError",
    "identity_key",
    "validate_device_id",
    "validate_module_id",
]

# ------------------------------------------------------------------ limits

DEVICE_ID_MAX = 128
C2D_MAX_PENDING = 50
C2D_MAX_BODY = 64 * 1024
C2D_DEFAULT_TTL = 3600.0
C2D_MAX_TTL = 2 * 24 * 3600.0
C2D_ACK_VALUES = frozenset({"none", "positive", "negative", "full"})
MESSAGE_ID_MAX = 128
TELEMETRY_DEFAULT_LIMIT = 10_000

TWIN_MAX_SECTION_SIZE = 32 * 1024
TWIN_MAX_TAGS_SIZE = 8 * 1024
TWIN_MAX_DEPTH = 10
TWIN_MAX_KEY_BYTES = 1024
TWIN_MAX_STRING_BYTES = 4 * 1024
TWIN_INT_MIN = -4503599627370496
TWIN_INT_MAX = 4503599627370495

SYMMETRIC_KEY_MIN_BYTES = 16
SYMMETRIC_KEY_MAX_BYTES = 64

MODULE_ID_MAX = 128

_DEVICE_ID_RE = re.compile(r"[A-Za-z0-9\-.%_*?!(),:=@$']{1,128}")
_MODULE_ID_RE = re.compile(r"[A-Za-z0-9\-:.+%_#*?!(),=@;$']{1,128}")
_MESSAGE_ID_RE = re.compile(r"[A-Za-z0-9\-:.+%_#*?!(),=@;$']{1,128}")
_THUMBPRINT_RE = re.compile(r"[0-9A-F]{40}|[0-9A-F]{64}")


# ------------------------------------------------------------------ errors


class TwinError(Exception):
    """A twin update the service would refuse.

    Attributes:
        status: the HTTP-style status IoT Hub answers: 400 for a malformed
            document or a broken per-value limit, 413 when the resulting section
            would be over its size limit.
        message: what is wrong, naming the section and the property path.
    """

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class QueueFullError(Exception):
    """The device's cloud-to-device queue already holds its maximum of messages."""

    def __init__(self, device_id: str, limit: int) -> None:
        super().__init__(
            f"the cloud-to-device queue of {device_id!r} is full ({limit} pending messages)"
        )
        self.device_id = device_id
        self.limit = limit


class DeviceNotFoundError(LookupError):
    """No device with this id is registered."""

    def __init__(self, device_id: str) -> None:
        super().__init__(f"no device {device_id!r} in the registry")
        self.device_id = device_id


class UnknownModuleError(LookupError):
    """No module with this id is registered on the device."""

    def __init__(self, device_id: str, module_id: str) -> None:
        super().__init__(f"no module {module_id!r} on device {device_id!r} in the registry")
        self.device_id = device_id
        self.module_id = module_id


# ------------------------------------------------------------------ records


@dataclass(frozen=True, slots=True)
class Device:
    """A device identity in the registry.

    ``primary_key``/``secondary_key`` are base64 symmetric keys (both ``None``
    for an X.509 device); ``x509_thumbprints`` are upper-case hex SHA-1 (40
    digits) or SHA-256 (64 digits) certificate thumbprints; ``created`` is an
    ISO 8601 UTC time.
    """

    device_id: str
    primary_key: str | None
    secondary_key: str | None
    x509_thumbprints: tuple[str, ...]
    enabled: bool
    created: str

    def connection_string(self, host_name: str) -> str:
        """``HostName=...;DeviceId=...;SharedAccessKey=<primary key>``.

        Raises:
            ValueError: the device authenticates with X.509 and has no key.
        """
        if self.primary_key is None:
            raise ValueError(
                f"device {self.device_id!r} uses X.509 authentication and has no "
                "symmetric key for a connection string"
            )
        return f"HostName={host_name};DeviceId={self.device_id};SharedAccessKey={self.primary_key}"


@dataclass(frozen=True, slots=True)
class Module:
    """A module identity of a device (IoT Hub's module registry).

    Keys and thumbprints as for ``Device``.  ``managed_by`` is ``"iotEdge"``
    for modules of an Edge device the emulator plays the runtime of, else
    ``None``; ``generation_id`` changes when the module is re-created (the Edge
    workload API signs under it).  A module follows its device's
    ``enabled``.
    """

    device_id: str
    module_id: str
    primary_key: str | None
    secondary_key: str | None
    x509_thumbprints: tuple[str, ...]
    created: str
    generation_id: str
    managed_by: str | None = None

    @property
    def identity(self) -> str:
        """``{device_id}/{module_id}``: the MQTT client id and the store's key."""
        return identity_key(self.device_id, self.module_id)

    def connection_string(self, host_name: str, gateway_host: str | None = None) -> str:
        """``HostName=...;DeviceId=...;ModuleId=...;SharedAccessKey=...``
        (with ``GatewayHostName=`` when ``gateway_host`` is given).

        Raises:
            ValueError: the module authenticates with X.509 and has no key.
        """
        if self.primary_key is None:
            raise ValueError(
                f"module {self.identity!r} uses X.509 authentication and has no "
                "symmetric key for a connection string"
            )
        text = (f"HostName={host_name};DeviceId={self.device_id};ModuleId={self.module_id};"
                f"SharedAccessKey={self.primary_key}")
        return text if gateway_host is None else f"{text};GatewayHostName={gateway_host}"


@dataclass(frozen=True, slots=True)
class Twin:
    """A device twin: desired and reported properties with their versions, and tags.

    The dicts hold no ``$version``/``$metadata``; each section's version starts
    at 1 and grows by one with every accepted update of that section.
    """

    desired: dict[str, Any] = field(default_factory=dict)
    desired_version: int = 1
    reported: dict[str, Any] = field(default_factory=dict)
    reported_version: int = 1
    tags: dict[str, Any] = field(default_factory=dict)

    def properties_document(self) -> dict[str, Any]:
        """What a device's twin GET returns (reference 7.2).

        Returns:
            ``{"desired": {..., "$version": n}, "reported": {..., "$version": m}}``
            as fresh dicts (no tags, no ``$metadata``).
        """
        return {
            "desired": {**copy.deepcopy(self.desired), "$version": self.desired_version},
            "reported": {**copy.deepcopy(self.reported), "$version": self.reported_version},
        }


@dataclass(frozen=True, slots=True)
class C2DMessage:
    """A cloud-to-device message waiting in a device's queue.

    ``expiry`` and ``enqueued`` are epoch seconds; ``lock_token`` identifies
    the message for completion; ``delivery_count`` counts deliveries so far;
    ``ack`` is the requested feedback (``none``/``positive``/``negative``/``full``).
    """

    body: bytes
    message_id: str
    correlation_id: str | None
    properties: dict[str, str]
    expiry: float
    enqueued: float
    lock_token: str
    delivery_count: int = 0
    ack: str | None = None


@dataclass(frozen=True, slots=True)
class TelemetryMessage:
    """A device-to-cloud message as the hub received it.

    ``system_properties`` are the ``$.``-keys of the property bag, ``properties``
    the application properties (a value is ``None`` for a bare key);
    ``enqueued`` is epoch seconds.
    """

    device_id: str
    module_id: str | None
    body: bytes
    system_properties: dict[str, str]
    properties: dict[str, str | None]
    enqueued: float


# ------------------------------------------------------------------ validation


def validate_device_id(device_id: str) -> None:
    """Check a device id as IoT Hub does.

    Raises:
        ValueError: not 1..128 ASCII letters, digits or ``-.%_*?!(),:=@$'``.
    """
    if not isinstance(device_id, str) or not _DEVICE_ID_RE.fullmatch(device_id):
        raise ValueError(
            f"invalid device id {device_id!r}: use 1 to {DEVICE_ID_MAX} ASCII letters, "
            "digits and -.%_*?!(),:=@$'"
        )


def validate_module_id(module_id: str) -> None:
    """Check a module id as IoT Hub does.

    Raises:
        ValueError: not 1..128 ASCII letters, digits or ``-:.+%_#*?!(),=@;$'``.
    """
    if not isinstance(module_id, str) or not _MODULE_ID_RE.fullmatch(module_id):
        raise ValueError(
            f"invalid module id {module_id!r}: use 1 to {MODULE_ID_MAX} ASCII letters, "
            "digits and -:.+%_#*?!(),=@;$'"
        )


def identity_key(device_id: str, module_id: str | None = None) -> str:
    """The key of an identity: ``device`` or ``device/module`` (device ids
    cannot hold ``/``, so the two never collide)."""
    return device_id if module_id is None else f"{device_id}/{module_id}"


def validate_key(name: str, key: str) -> None:
    try:
        raw = base64.b64decode(key.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error, AttributeError):
        raise ValueError(f"{name} is not valid base64") from None
    if not SYMMETRIC_KEY_MIN_BYTES <= len(raw) <= SYMMETRIC_KEY_MAX_BYTES:
        raise ValueError(
            f"{name} decodes to {len(raw)} bytes; IoT Hub needs "
            f"{SYMMETRIC_KEY_MIN_BYTES} to {SYMMETRIC_KEY_MAX_BYTES}"
        )


def normalise_thumbprints(values: Iterable[str]) -> tuple[str, ...]:
    result: list[str] = []
    for value in values:
        if not isinstance(value, str):
            raise ValueError(f"thumbprint {value!r} is not a string")
        upper = value.replace(":", "").strip().upper()
        if not _THUMBPRINT_RE.fullmatch(upper):
            raise ValueError(
                f"thumbprint {value!r} is not 40 (SHA-1) or 64 (SHA-256) hex digits"
            )
        if upper not in result:
            result.append(upper)
    return tuple(result)



def iso_time(now: float) -> str:
    moment = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")



def new_key() -> str:
    """A new symmetric key: base64 of 32 random bytes."""
    return base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def copy_message(message: C2DMessage) -> C2DMessage:
    """A copy whose properties dict is the caller's own."""
    return dataclasses.replace(message, properties=dict(message.properties))
