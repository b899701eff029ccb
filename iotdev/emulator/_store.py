"""The emulated hub's state: identity registry, twins, C2D queues, telemetry.

Theory of operation
-------------------
Everything the hub remembers lives in one ``Store``.  Durable state (devices,
their twins and their pending cloud-to-device messages) is an immutable
snapshot, ``_State``: three dicts keyed by device id whose values are frozen
dataclasses (or tuples of them).  A change never edits the snapshot; it builds
a new one (copying the top-level dicts and replacing the entries it touches),
writes it to ``state.json`` when the store has a directory, and only then makes
it current.  If the write fails (disk full, a crash in ``os.replace``) the
exception propagates and the store still holds the previous snapshot, so memory
and disk never disagree.  The file is replaced atomically: a temporary file in
the same folder, flushed and fsynced, then ``os.replace``, then an fsync of the
folder.

Twin sections are plain JSON dicts held inside frozen ``Twin`` objects.  They
are never mutated in place (a merge builds new dicts along the patched paths
and shares the untouched branches), and whatever leaves the store is a deep
copy, so callers cannot change the hub's state behind its back.

Telemetry is a diagnostic log, not durable state: bounded deques per device,
in memory only.

The store does no I/O besides ``state.json`` and takes time as an argument
(``now``, epoch seconds) wherever it matters.  One re-entrant lock serialises
every call, because the hub's service API and its event loop run on different
threads; nothing blocking happens under it except the state-file write.

Limits follow IoT Hub (reference sections 5, 7.4 and 12); exceeding one raises
a typed error: ``ValueError`` for bad arguments, ``TwinError`` (with the HTTP
status the service answers) for twin documents, ``QueueFullError`` for a full
C2D queue, ``DeviceNotFoundError`` for an unknown device.
"""

from __future__ import annotations

import base64
import binascii
import collections
import contextlib
import copy
import dataclasses
import datetime
import json
import math
import os
import re
import secrets
import tempfile
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "C2DMessage",
    "Device",
    "DeviceNotFoundError",
    "QueueFullError",
    "Store",
    "TelemetryMessage",
    "Twin",
    "TwinError",
    "twin_section_size",
    "validate_device_id",
    "write_file_atomically",
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

STATE_FILE = "state.json"
_STATE_FORMAT = "iotdev-emulator-state"
_STATE_VERSION = 1

_DEVICE_ID_RE = re.compile(r"[A-Za-z0-9\-.%_*?!(),:=@$']{1,128}")
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


@dataclass(frozen=True, slots=True)
class _State:
    """One immutable snapshot of the durable state (see the module docstring)."""

    devices: dict[str, Device]
    twins: dict[str, Twin]
    c2d: dict[str, tuple[C2DMessage, ...]]


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


def _validate_key(name: str, key: str) -> None:
    try:
        raw = base64.b64decode(key.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error, AttributeError):
        raise ValueError(f"{name} is not valid base64") from None
    if not SYMMETRIC_KEY_MIN_BYTES <= len(raw) <= SYMMETRIC_KEY_MAX_BYTES:
        raise ValueError(
            f"{name} decodes to {len(raw)} bytes; IoT Hub needs "
            f"{SYMMETRIC_KEY_MIN_BYTES} to {SYMMETRIC_KEY_MAX_BYTES}"
        )


def _normalise_thumbprints(values: Iterable[str]) -> tuple[str, ...]:
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


def _is_control(char: str) -> bool:
    """C0 and C1 control characters (and DEL between them), Unicode category Cc."""
    code = ord(char)
    return code < 0x20 or 0x7F <= code <= 0x9F


def _where(section: str, path: tuple[str, ...]) -> str:
    return ".".join((section, *path))


def _check_key(section: str, path: tuple[str, ...], key: object) -> str:
    where = _where(section, path)
    if not isinstance(key, str):
        raise TwinError(400, f"{where}: key {key!r} is not a string")
    if not key:
        raise TwinError(400, f"{where}: empty key")
    size = len(key.encode("utf-8", "surrogatepass"))
    if size > TWIN_MAX_KEY_BYTES:
        raise TwinError(
            400, f"{where}: key {key[:32]!r}... is {size} bytes, over {TWIN_MAX_KEY_BYTES}"
        )
    for char in key:
        if char in ".$ " or _is_control(char):
            raise TwinError(
                400, f"{where}: key {key!r} contains {char!r} (no '.', '$', space or "
                "control characters)"
            )
    return key


def _check_value(section: str, path: tuple[str, ...], value: object, depth: int) -> None:
    """Check ``value`` found at ``path``.

    ``depth`` counts the containers between the section root and ``value``
    (0 for a root member), so an object or array is allowed up to
    ``TWIN_MAX_DEPTH`` keys below the root, as in the service's example (ten
    nested objects, the innermost holding a plain property).
    """
    if value is None or isinstance(value, bool):
        return
    where = _where(section, path)
    if isinstance(value, int):
        if not TWIN_INT_MIN <= value <= TWIN_INT_MAX:
            raise TwinError(
                400, f"{where}: integer {value} is outside {TWIN_INT_MIN}..{TWIN_INT_MAX}"
            )
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise TwinError(400, f"{where}: {value} is not a JSON number")
    elif isinstance(value, str):
        size = len(value.encode("utf-8", "surrogatepass"))
        if size > TWIN_MAX_STRING_BYTES:
            raise TwinError(
                400, f"{where}: string of {size} bytes is over {TWIN_MAX_STRING_BYTES}"
            )
    elif isinstance(value, dict | list):
        if depth + 1 > TWIN_MAX_DEPTH:
            raise TwinError(
                400, f"{where}: nested deeper than {TWIN_MAX_DEPTH} levels"
            )
        if isinstance(value, dict):
            for key, item in value.items():
                name = _check_key(section, path, key)
                _check_value(section, (*path, name), item, depth + 1)
        else:
            for index, item in enumerate(value):
                _check_value(section, (*path, f"[{index}]"), item, depth + 1)
    else:
        raise TwinError(400, f"{where}: {type(value).__name__} is not a JSON value")


def _check_document(section: str, document: object) -> dict[str, Any]:
    """Validate a patch (or a whole tags object) against reference 7.4."""
    if not isinstance(document, dict):
        raise TwinError(
            400, f"{section}: the document must be a JSON object, not {type(document).__name__}"
        )
    for key, item in document.items():
        name = _check_key(section, (), key)
        _check_value(section, (name,), item, 0)
    return document


def _text_size(text: str) -> int:
    return sum(1 for char in text if not _is_control(char))


def twin_section_size(document: Mapping[str, Any]) -> int:
    """The size IoT Hub charges a twin section against its limit.

    The service's rule ("Understand device twins", twin size): each property
    adds the length of its key and of its value; strings count their
    characters except C0/C1 control characters, numbers 8, booleans 4, a
    nested object the sum over its members.  Arrays (not covered by the rule)
    count the sum of their elements, and ``null`` inside an array counts 0.
    ``$version``/``$metadata`` are never part of a stored section.
    """
    return sum(_text_size(key) + _value_size(value) for key, value in document.items())


def _value_size(value: object) -> int:
    if isinstance(value, bool):
        return 4
    if isinstance(value, int | float):
        return 8
    if isinstance(value, str):
        return _text_size(value)
    if isinstance(value, dict):
        return twin_section_size(value)
    if isinstance(value, list):
        return sum(_value_size(item) for item in value)
    return 0


def _merge(target: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """A new dict: ``target`` with ``patch`` merged in (null deletes, objects merge)."""
    result = dict(target)
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            current = result.get(key)
            result[key] = _merge(current if isinstance(current, dict) else {}, value)
        else:
            result[key] = copy.deepcopy(value)
    return result


def _check_size(section: str, document: Mapping[str, Any], limit: int) -> None:
    size = twin_section_size(document)
    if size > limit:
        raise TwinError(413, f"{section}: the section would be {size} bytes, over {limit}")


def _iso_time(now: float) -> str:
    moment = datetime.datetime.fromtimestamp(now, datetime.timezone.utc)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


# ------------------------------------------------------------------ files


def write_file_atomically(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file.

    Writes a temporary file in the same folder with permissions ``mode``,
    flushes and fsyncs it, ``os.replace``s it over ``path`` and fsyncs the
    folder.  On any failure the temporary file is removed and ``path`` is
    untouched.

    Raises:
        OSError: the write, the fsync or the rename failed.
    """
    directory = path.parent
    fd, temp_name = tempfile.mkstemp(dir=directory, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            os.chmod(temp_name, mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_name, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp_name)
        raise
    _fsync_directory(directory)


def _fsync_directory(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # not possible on every platform (Windows)
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def _dump_state(state: _State) -> bytes:
    devices = []
    for device_id, device in state.devices.items():
        entry = dataclasses.asdict(device)
        entry["twin"] = dataclasses.asdict(state.twins[device_id])
        entry["c2d"] = [
            {**dataclasses.asdict(m), "body": base64.b64encode(m.body).decode("ascii")}
            for m in state.c2d.get(device_id, ())
        ]
        devices.append(entry)
    document = {"format": _STATE_FORMAT, "version": _STATE_VERSION, "devices": devices}
    return json.dumps(document, indent=1, ensure_ascii=False).encode("utf-8")


def _load_state(path: Path) -> _State:
    devices: dict[str, Device] = {}
    twins: dict[str, Twin] = {}
    c2d: dict[str, tuple[C2DMessage, ...]] = {}
    try:
        document = json.loads(path.read_bytes())
        if document.get("format") != _STATE_FORMAT or document.get("version") != _STATE_VERSION:
            raise ValueError(
                f"format {document.get('format')!r} version {document.get('version')!r}, "
                f"expected {_STATE_FORMAT!r} version {_STATE_VERSION}"
            )
        for entry in document["devices"]:
            twin = Twin(**entry.pop("twin"))
            messages = tuple(
                C2DMessage(**{**raw, "body": base64.b64decode(raw["body"], validate=True)})
                for raw in entry.pop("c2d")
            )
            device = Device(**{**entry, "x509_thumbprints": tuple(entry["x509_thumbprints"])})
            validate_device_id(device.device_id)
            devices[device.device_id] = device
            twins[device.device_id] = twin
            if messages:
                c2d[device.device_id] = messages
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: not a usable emulator state file: {exc}") from exc
    return _State(devices, twins, c2d)


# ------------------------------------------------------------------ the store


class Store:
    """The emulated hub's state (see the module docstring).

    Args:
        directory: where ``state.json`` lives (created if missing; loaded if
            present); ``None`` keeps everything in memory.
        c2d_queue_limit: pending cloud-to-device messages per device (50).
        telemetry_limit: telemetry messages kept per device (the oldest are
            dropped first).

    Raises:
        ValueError: ``state.json`` exists but cannot be read as a state file.
    """

    def __init__(
        self,
        directory: Path | None = None,
        *,
        c2d_queue_limit: int = C2D_MAX_PENDING,
        telemetry_limit: int = TELEMETRY_DEFAULT_LIMIT,
    ) -> None:
        if c2d_queue_limit < 1 or telemetry_limit < 1:
            raise ValueError("c2d_queue_limit and telemetry_limit must be at least 1")
        self.directory = None if directory is None else Path(directory)
        self.c2d_queue_limit = c2d_queue_limit
        self.telemetry_limit = telemetry_limit
        self._lock = threading.RLock()
        self._state = _State({}, {}, {})
        self._telemetry: dict[str, collections.deque[tuple[int, TelemetryMessage]]] = {}
        self._telemetry_seq = 0
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            if self.path is not None and self.path.exists():
                self._state = _load_state(self.path)

    @property
    def path(self) -> Path | None:
        """The state file, or ``None`` for a memory-only store."""
        return None if self.directory is None else self.directory / STATE_FILE

    def _commit(self, state: _State) -> None:
        """Persist ``state`` (if the store has a directory), then make it current."""
        if self.path is not None:
            write_file_atomically(self.path, _dump_state(state))
        self._state = state

    def _require(self, device_id: str) -> Device:
        device = self._state.devices.get(device_id)
        if device is None:
            raise DeviceNotFoundError(device_id)
        return device

    # -------------------------------------------------------------- registry

    def add_device(
        self,
        device_id: str,
        *,
        primary_key: str | None = None,
        secondary_key: str | None = None,
        x509_thumbprints: Iterable[str] = (),
        enabled: bool = True,
        now: float | None = None,
    ) -> Device:
        """Register a device with an empty twin and an empty C2D queue.

        A device given thumbprints authenticates with X.509 and has no keys;
        otherwise missing keys are generated (base64 of 32 random bytes).

        Args:
            device_id: 1..128 ASCII letters, digits and ``-.%_*?!(),:=@$'``.
            primary_key, secondary_key: base64 keys of 16 to 64 bytes.
            x509_thumbprints: SHA-1 or SHA-256 hex thumbprints (colons allowed,
                stored upper case without them).
            enabled: a disabled device is refused at connect.
            now: creation time, epoch seconds (default: the clock).

        Returns:
            The new ``Device``.

        Raises:
            ValueError: bad id, duplicate id, bad key or thumbprint, or keys
                and thumbprints together.
        """
        validate_device_id(device_id)
        if isinstance(x509_thumbprints, str):
            raise ValueError("x509_thumbprints is a sequence of thumbprints, not one string")
        thumbprints = _normalise_thumbprints(x509_thumbprints)
        if thumbprints and (primary_key is not None or secondary_key is not None):
            raise ValueError(
                f"device {device_id!r}: give symmetric keys or X.509 thumbprints, not both"
            )
        if not thumbprints:
            for name, key in (("primary_key", primary_key), ("secondary_key", secondary_key)):
                if key is not None:
                    _validate_key(name, key)
            primary_key = primary_key or _new_key()
            secondary_key = secondary_key or _new_key()
        device = Device(
            device_id=device_id,
            primary_key=primary_key,
            secondary_key=secondary_key,
            x509_thumbprints=thumbprints,
            enabled=bool(enabled),
            created=_iso_time(time.time() if now is None else now),
        )
        with self._lock:
            state = self._state
            if device_id in state.devices:
                raise ValueError(f"device {device_id!r} already exists")
            self._commit(
                _State(
                    {**state.devices, device_id: device},
                    {**state.twins, device_id: Twin()},
                    state.c2d,
                )
            )
        return device

    def device(self, device_id: str) -> Device | None:
        """The device with this id, or ``None``."""
        with self._lock:
            return self._state.devices.get(device_id)

    def devices(self) -> list[Device]:
        """Every device, in registration order."""
        with self._lock:
            return list(self._state.devices.values())

    def set_enabled(self, device_id: str, enabled: bool) -> Device:
        """Enable or disable a device.

        Returns:
            The updated ``Device``.

        Raises:
            DeviceNotFoundError: no such device.
        """
        with self._lock:
            state = self._state
            device = dataclasses.replace(self._require(device_id), enabled=bool(enabled))
            self._commit(_State({**state.devices, device_id: device}, state.twins, state.c2d))
            return device

    def remove_device(self, device_id: str) -> None:
        """Delete a device with its twin, its C2D queue and its telemetry.

        Raises:
            DeviceNotFoundError: no such device.
        """
        with self._lock:
            state = self._state
            self._require(device_id)
            devices = dict(state.devices)
            twins = dict(state.twins)
            c2d = dict(state.c2d)
            del devices[device_id], twins[device_id]
            c2d.pop(device_id, None)
            self._commit(_State(devices, twins, c2d))
            self._telemetry.pop(device_id, None)

    # -------------------------------------------------------------- twin

    def twin(self, device_id: str) -> Twin:
        """A copy of the device's twin (changing it changes nothing in the store).

        Raises:
            DeviceNotFoundError: no such device.
        """
        with self._lock:
            self._require(device_id)
            return copy.deepcopy(self._state.twins[device_id])

    def _replace_twin(self, device_id: str, twin: Twin) -> None:
        state = self._state
        self._commit(_State(state.devices, {**state.twins, device_id: twin}, state.c2d))

    def patch_desired(self, device_id: str, patch: dict[str, Any]) -> dict[str, Any]:
        """Merge a patch into the desired properties (service side).

        Members are merged recursively; a member set to ``None`` is deleted;
        arrays and other values replace what was there.

        Returns:
            The notification body the device gets: a copy of ``patch`` (its
            nulls included) plus ``"$version"``: the new desired version.

        Raises:
            DeviceNotFoundError: no such device.
            TwinError: 400 for a malformed patch or a broken limit, 413 when
                the desired section would exceed 32 KB; nothing changes.
        """
        with self._lock:
            self._require(device_id)
            _check_document("desired", patch)
            twin = self._state.twins[device_id]
            desired = _merge(twin.desired, patch)
            _check_size("desired", desired, TWIN_MAX_SECTION_SIZE)
            version = twin.desired_version + 1
            self._replace_twin(
                device_id, dataclasses.replace(twin, desired=desired, desired_version=version)
            )
            return {**copy.deepcopy(patch), "$version": version}

    def patch_reported(self, device_id: str, patch: dict[str, Any]) -> int:
        """Merge a device's patch into its reported properties.

        Returns:
            The new reported version.

        Raises:
            DeviceNotFoundError: no such device.
            TwinError: as ``patch_desired``, for the reported section.
        """
        with self._lock:
            self._require(device_id)
            _check_document("reported", patch)
            twin = self._state.twins[device_id]
            reported = _merge(twin.reported, patch)
            _check_size("reported", reported, TWIN_MAX_SECTION_SIZE)
            version = twin.reported_version + 1
            self._replace_twin(
                device_id, dataclasses.replace(twin, reported=reported, reported_version=version)
            )
            return version

    def set_tags(self, device_id: str, tags: dict[str, Any]) -> dict[str, Any]:
        """Replace the twin's tags (nulls in ``tags`` are dropped).

        Returns:
            A copy of the stored tags.

        Raises:
            DeviceNotFoundError: no such device.
            TwinError: 400 for malformed tags, 413 over 8 KB; nothing changes.
        """
        with self._lock:
            self._require(device_id)
            _check_document("tags", tags)
            stored = _merge({}, tags)
            _check_size("tags", stored, TWIN_MAX_TAGS_SIZE)
            twin = self._state.twins[device_id]
            self._replace_twin(device_id, dataclasses.replace(twin, tags=stored))
            return copy.deepcopy(stored)

    # -------------------------------------------------------------- cloud-to-device

    def enqueue_c2d(
        self,
        device_id: str,
        body: bytes,
        *,
        message_id: str | None = None,
        correlation_id: str | None = None,
        properties: Mapping[str, str] | None = None,
        ttl: float = C2D_DEFAULT_TTL,
        ack: str | None = None,
        now: float,
    ) -> C2DMessage:
        """Queue a cloud-to-device message.

        Expired messages are dropped first, so they never count against the
        queue limit.

        Args:
            device_id: the target device.
            body: at most 64 KB.
            message_id: at most 128 ASCII characters from the message-id set
                (a UUID4 when ``None``).
            correlation_id: any string or ``None``.
            properties: application properties, ``str`` to ``str``.
            ttl: seconds to live, over 0 and at most 2 days.
            ack: feedback requested: ``none``, ``positive``, ``negative``, ``full``.
            now: the current time, epoch seconds.

        Returns:
            The queued ``C2DMessage``.

        Raises:
            DeviceNotFoundError: no such device.
            QueueFullError: the device already has ``c2d_queue_limit`` messages.
            ValueError: body too large, or a bad id, property, ttl or ack.
        """
        if not isinstance(body, bytes | bytearray | memoryview):
            raise ValueError(f"a C2D body must be bytes, not {type(body).__name__}")
        body = bytes(body)
        if len(body) > C2D_MAX_BODY:
            raise ValueError(f"a C2D body of {len(body)} bytes is over {C2D_MAX_BODY}")
        if message_id is None:
            message_id = str(uuid.uuid4())
        elif not isinstance(message_id, str) or not _MESSAGE_ID_RE.fullmatch(message_id):
            raise ValueError(
                f"invalid message id {message_id!r}: use 1 to {MESSAGE_ID_MAX} ASCII "
                "letters, digits and -:.+%_#*?!(),=@;$'"
            )
        if correlation_id is not None and not isinstance(correlation_id, str):
            raise ValueError("correlation_id must be a string")
        props = dict(properties or {})
        for key, value in props.items():
            if not isinstance(key, str) or not key or not isinstance(value, str):
                raise ValueError(f"C2D property {key!r}: {value!r} must map a name to a str")
        if not 0 < ttl <= C2D_MAX_TTL:
            raise ValueError(f"ttl {ttl} must be over 0 and at most {C2D_MAX_TTL:.0f} seconds")
        if ack is not None and ack not in C2D_ACK_VALUES:
            raise ValueError(f"ack {ack!r} is not one of {sorted(C2D_ACK_VALUES)}")
        message = C2DMessage(
            body=body,
            message_id=message_id,
            correlation_id=correlation_id,
            properties=props,
            expiry=now + ttl,
            enqueued=now,
            lock_token=str(uuid.uuid4()),
            delivery_count=0,
            ack=ack,
        )
        with self._lock:
            state = self._state
            self._require(device_id)
            live = tuple(m for m in state.c2d.get(device_id, ()) if m.expiry > now)
            if len(live) >= self.c2d_queue_limit:
                raise QueueFullError(device_id, self.c2d_queue_limit)
            self._commit(
                _State(state.devices, state.twins, {**state.c2d, device_id: (*live, message)})
            )
        return _copy_message(message)

    def pending_c2d(self, device_id: str, now: float) -> list[C2DMessage]:
        """The device's unexpired messages, oldest first (expired ones are dropped).

        A message expires at ``expiry`` exactly.  An unknown device has none.
        """
        with self._lock:
            state = self._state
            queue = state.c2d.get(device_id, ())
            live = tuple(m for m in queue if m.expiry > now)
            if len(live) != len(queue):
                c2d = _with_queue(state, device_id, live)
                self._commit(_State(state.devices, state.twins, c2d))
            return [_copy_message(m) for m in live]

    def record_c2d_delivery(self, device_id: str, lock_token: str) -> C2DMessage | None:
        """Count one more delivery of a pending message.

        Returns:
            The updated message, or ``None`` if it is no longer pending.
        """
        with self._lock:
            state = self._state
            queue = state.c2d.get(device_id, ())
            for index, message in enumerate(queue):
                if message.lock_token == lock_token:
                    updated = dataclasses.replace(
                        message, delivery_count=message.delivery_count + 1
                    )
                    live = (*queue[:index], updated, *queue[index + 1 :])
                    self._commit(
                        _State(state.devices, state.twins, _with_queue(state, device_id, live))
                    )
                    return _copy_message(updated)
            return None

    def complete_c2d(self, device_id: str, lock_token: str) -> bool:
        """Remove a delivered message (the device's PUBACK completes it).

        Returns:
            ``True`` if the message was pending, ``False`` otherwise (already
            completed, expired, or unknown device).
        """
        with self._lock:
            state = self._state
            queue = state.c2d.get(device_id, ())
            live = tuple(m for m in queue if m.lock_token != lock_token)
            if len(live) == len(queue):
                return False
            self._commit(_State(state.devices, state.twins, _with_queue(state, device_id, live)))
            return True

    # -------------------------------------------------------------- telemetry

    def record_telemetry(self, message: TelemetryMessage) -> None:
        """Keep a received telemetry message (memory only; the oldest of the
        device's ``telemetry_limit`` messages goes first)."""
        with self._lock:
            log = self._telemetry.get(message.device_id)
            if log is None:
                log = self._telemetry[message.device_id] = collections.deque(
                    maxlen=self.telemetry_limit
                )
            self._telemetry_seq += 1
            log.append((self._telemetry_seq, message))

    def telemetry(
        self, device_id: str | None = None, since: float | None = None
    ) -> list[TelemetryMessage]:
        """Telemetry received, in arrival order.

        Args:
            device_id: one device's messages, or everyone's when ``None``.
            since: only messages with ``enqueued >= since`` (epoch seconds).
        """
        with self._lock:
            if device_id is None:
                entries = sorted(
                    (entry for log in self._telemetry.values() for entry in log),
                    key=lambda entry: entry[0],
                )
            else:
                entries = list(self._telemetry.get(device_id, ()))
        return [m for _, m in entries if since is None or m.enqueued >= since]


def _with_queue(
    state: _State, device_id: str, queue: tuple[C2DMessage, ...]
) -> dict[str, tuple[C2DMessage, ...]]:
    c2d = dict(state.c2d)
    if queue:
        c2d[device_id] = queue
    else:
        c2d.pop(device_id, None)
    return c2d


def _copy_message(message: C2DMessage) -> C2DMessage:
    return dataclasses.replace(message, properties=dict(message.properties))


def _new_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode("ascii")
