"""The emulated hub's state: identity registry, twins, C2D queues, telemetry.

Theory of operation
-------------------
Everything the hub remembers lives in one ``Store``.  Durable state (devices,
their modules, the twins of both and the devices' pending cloud-to-device
messages) is an immutable snapshot, ``_persist.State``: dicts keyed by
identity whose values are frozen dataclasses (``_records.py``) or tuples of
them.  A change never edits the snapshot; it builds
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

The records and their limits are ``_records.py``, the twin-document rules
``_twins.py``, the state file ``_persist.py``; this module is the store.

Limits follow IoT Hub (reference sections 5, 7.4 and 12); exceeding one raises
a typed error: ``ValueError`` for bad arguments, ``TwinError`` (with the HTTP
status the service answers) for twin documents, ``QueueFullError`` for a full
C2D queue, ``DeviceNotFoundError`` for an unknown device.
"""

from __future__ import annotations

import collections
import copy
import dataclasses
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ._persist import STATE_FILE, State, dump_state, load_state, write_file_atomically
from ._records import (
    _MESSAGE_ID_RE,
    C2D_ACK_VALUES,
    C2D_DEFAULT_TTL,
    C2D_MAX_BODY,
    C2D_MAX_PENDING,
    C2D_MAX_TTL,
    MESSAGE_ID_MAX,
    TELEMETRY_DEFAULT_LIMIT,
    TWIN_MAX_SECTION_SIZE,
    TWIN_MAX_TAGS_SIZE,
    C2DMessage,
    Device,
    DeviceNotFoundError,
    Module,
    QueueFullError,
    TelemetryMessage,
    Twin,
    TwinError,
    UnknownModuleError,
    copy_message,
    identity_key,
    iso_time,
    new_key,
    normalise_thumbprints,
    validate_device_id,
    validate_key,
    validate_module_id,
)
from ._twins import check_document, check_size, merge, twin_section_size

__all__ = [
    "C2D_MAX_BODY",
    "STATE_FILE",
    "C2DMessage",
    "Device",
    "DeviceNotFoundError",
    "Module",
    "QueueFullError",
    "Store",
    "TelemetryMessage",
    "Twin",
    "TwinError",
    "UnknownModuleError",
    "twin_section_size",
    "validate_device_id",
    "write_file_atomically",
]

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
        self._state = State()
        self._telemetry: dict[str, collections.deque[tuple[int, TelemetryMessage]]] = {}
        self._telemetry_seq = 0
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            if self.path is not None and self.path.exists():
                self._state = load_state(self.path)

    @property
    def path(self) -> Path | None:
        """The state file, or ``None`` for a memory-only store."""
        return None if self.directory is None else self.directory / STATE_FILE

    def _commit(self, state: State) -> None:
        """Persist ``state`` (if the store has a directory), then make it current."""
        if self.path is not None:
            write_file_atomically(self.path, dump_state(state))
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
        thumbprints = normalise_thumbprints(x509_thumbprints)
        if thumbprints and (primary_key is not None or secondary_key is not None):
            raise ValueError(
                f"device {device_id!r}: give symmetric keys or X.509 thumbprints, not both"
            )
        if not thumbprints:
            for name, key in (("primary_key", primary_key), ("secondary_key", secondary_key)):
                if key is not None:
                    validate_key(name, key)
            primary_key = primary_key or new_key()
            secondary_key = secondary_key or new_key()
        device = Device(
            device_id=device_id,
            primary_key=primary_key,
            secondary_key=secondary_key,
            x509_thumbprints=thumbprints,
            enabled=bool(enabled),
            created=iso_time(time.time() if now is None else now),
        )
        with self._lock:
            state = self._state
            if device_id in state.devices:
                raise ValueError(f"device {device_id!r} already exists")
            self._commit(
                dataclasses.replace(
                    state,
                    devices={**state.devices, device_id: device},
                    twins={**state.twins, device_id: Twin()},
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
            self._commit(dataclasses.replace(state, devices={**state.devices, device_id: device}))
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
            modules = {k: m for k, m in state.modules.items() if m.device_id != device_id}
            for key in set(state.modules) - set(modules):
                del twins[key]
            self._commit(State(devices, twins, c2d, modules))
            self._telemetry.pop(device_id, None)

    # -------------------------------------------------------------- modules

    def add_module(
        self,
        device_id: str,
        module_id: str,
        *,
        primary_key: str | None = None,
        secondary_key: str | None = None,
        x509_thumbprints: Iterable[str] = (),
        managed_by: str | None = None,
        now: float | None = None,
    ) -> Module:
        """Register a module of a device, with an empty module twin.

        Keys and thumbprints as in ``add_device``.

        Args:
            device_id: a registered device.
            module_id: 1..128 ASCII letters, digits and ``-:.+%_#*?!(),=@;$'``.
            primary_key, secondary_key: base64 keys of 16 to 64 bytes.
            x509_thumbprints: SHA-1 or SHA-256 hex thumbprints.
            managed_by: ``"iotEdge"`` for a module of an Edge device.
            now: creation time, epoch seconds (default: the clock).

        Returns:
            The new ``Module``.

        Raises:
            DeviceNotFoundError: no such device.
            ValueError: bad or duplicate module id, bad key or thumbprint, or
                keys and thumbprints together.
        """
        validate_module_id(module_id)
        if isinstance(x509_thumbprints, str):
            raise ValueError("x509_thumbprints is a sequence of thumbprints, not one string")
        thumbprints = normalise_thumbprints(x509_thumbprints)
        if thumbprints and (primary_key is not None or secondary_key is not None):
            raise ValueError(
                f"module {device_id}/{module_id}: give symmetric keys or X.509 thumbprints, "
                "not both"
            )
        if not thumbprints:
            for name, key in (("primary_key", primary_key), ("secondary_key", secondary_key)):
                if key is not None:
                    validate_key(name, key)
            primary_key = primary_key or new_key()
            secondary_key = secondary_key or new_key()
        module = Module(
            device_id=device_id,
            module_id=module_id,
            primary_key=primary_key,
            secondary_key=secondary_key,
            x509_thumbprints=thumbprints,
            created=iso_time(time.time() if now is None else now),
            generation_id=uuid.uuid4().hex[:16],
            managed_by=managed_by,
        )
        key = identity_key(device_id, module_id)
        with self._lock:
            state = self._state
            self._require(device_id)
            if key in state.modules:
                raise ValueError(f"module {module_id!r} of device {device_id!r} already exists")
            self._commit(
                dataclasses.replace(
                    state,
                    modules={**state.modules, key: module},
                    twins={**state.twins, key: Twin()},
                )
            )
        return module

    def module(self, device_id: str, module_id: str) -> Module | None:
        """The module, or ``None``."""
        with self._lock:
            return self._state.modules.get(identity_key(device_id, module_id))

    def modules(self, device_id: str | None = None) -> list[Module]:
        """Every module (of one device, or of all), in registration order."""
        with self._lock:
            return [m for m in self._state.modules.values()
                    if device_id is None or m.device_id == device_id]

    def remove_module(self, device_id: str, module_id: str) -> None:
        """Delete a module with its twin.

        Raises:
            UnknownModuleError: no such module.
        """
        key = identity_key(device_id, module_id)
        with self._lock:
            state = self._state
            if key not in state.modules:
                raise UnknownModuleError(device_id, module_id)
            modules = dict(state.modules)
            twins = dict(state.twins)
            del modules[key], twins[key]
            self._commit(dataclasses.replace(state, modules=modules, twins=twins))

    def _twin_key(self, device_id: str, module_id: str | None) -> str:
        self._require(device_id)
        key = identity_key(device_id, module_id)
        if module_id is not None and key not in self._state.modules:
            raise UnknownModuleError(device_id, module_id)
        return key

    # -------------------------------------------------------------- twin

    def twin(self, device_id: str, module_id: str | None = None) -> Twin:
        """A copy of the device's (or module's) twin (changing it changes
        nothing in the store).

        Raises:
            DeviceNotFoundError: no such device.
            UnknownModuleError: no such module.
        """
        with self._lock:
            return copy.deepcopy(self._state.twins[self._twin_key(device_id, module_id)])

    def _replace_twin(self, key: str, twin: Twin) -> None:
        state = self._state
        self._commit(dataclasses.replace(state, twins={**state.twins, key: twin}))

    def patch_desired(self, device_id: str, patch: dict[str, Any], *,
                      module_id: str | None = None) -> dict[str, Any]:
        """Merge a patch into the desired properties (service side).

        Members are merged recursively; a member set to ``None`` is deleted;
        arrays and other values replace what was there.

        Args:
            device_id: the device.
            patch: the desired-properties patch.
            module_id: the module whose twin to patch (default: the device's).

        Returns:
            The notification body the device gets: a copy of ``patch`` (its
            nulls included) plus ``"$version"``: the new desired version.

        Raises:
            DeviceNotFoundError: no such device.
            UnknownModuleError: no such module.
            TwinError: 400 for a malformed patch or a broken limit, 413 when
                the desired section would exceed 32 KB; nothing changes.
        """
        with self._lock:
            key = self._twin_key(device_id, module_id)
            check_document("desired", patch)
            twin = self._state.twins[key]
            desired = merge(twin.desired, patch)
            check_size("desired", desired, TWIN_MAX_SECTION_SIZE)
            version = twin.desired_version + 1
            self._replace_twin(
                key, dataclasses.replace(twin, desired=desired, desired_version=version)
            )
            return {**copy.deepcopy(patch), "$version": version}

    def patch_reported(self, device_id: str, patch: dict[str, Any], *,
                       module_id: str | None = None) -> int:
        """Merge a device's (or module's) patch into its reported properties.

        Returns:
            The new reported version.

        Raises:
            DeviceNotFoundError: no such device.
            UnknownModuleError: no such module.
            TwinError: as ``patch_desired``, for the reported section.
        """
        with self._lock:
            key = self._twin_key(device_id, module_id)
            check_document("reported", patch)
            twin = self._state.twins[key]
            reported = merge(twin.reported, patch)
            check_size("reported", reported, TWIN_MAX_SECTION_SIZE)
            version = twin.reported_version + 1
            self._replace_twin(
                key, dataclasses.replace(twin, reported=reported, reported_version=version)
            )
            return version

    def set_tags(self, device_id: str, tags: dict[str, Any], *,
                 module_id: str | None = None) -> dict[str, Any]:
        """Replace the twin's tags (nulls in ``tags`` are dropped).

        Returns:
            A copy of the stored tags.

        Raises:
            DeviceNotFoundError: no such device.
            UnknownModuleError: no such module.
            TwinError: 400 for malformed tags, 413 over 8 KB; nothing changes.
        """
        with self._lock:
            key = self._twin_key(device_id, module_id)
            check_document("tags", tags)
            stored = merge({}, tags)
            check_size("tags", stored, TWIN_MAX_TAGS_SIZE)
            twin = self._state.twins[key]
            self._replace_twin(key, dataclasses.replace(twin, tags=stored))
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
                dataclasses.replace(state, c2d={**state.c2d, device_id: (*live, message)})
            )
        return copy_message(message)

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
                self._commit(dataclasses.replace(state, c2d=c2d))
            return [copy_message(m) for m in live]

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
                        dataclasses.replace(state, c2d=_with_queue(state, device_id, live))
                    )
                    return copy_message(updated)
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
            self._commit(dataclasses.replace(state, c2d=_with_queue(state, device_id, live)))
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
    state: State, device_id: str, queue: tuple[C2DMessage, ...]
) -> dict[str, tuple[C2DMessage, ...]]:
    c2d = dict(state.c2d)
    if queue:
        c2d[device_id] = queue
    else:
        c2d.pop(device_id, None)
    return c2d

