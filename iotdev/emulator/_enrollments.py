"""The emulator DPS's enrollments and registration records, kept in
``{state_dir}/dps.json`` (written atomically after every change).

An *individual* enrollment names one registration id and how it proves
itself: a symmetric key pair, or X.509 (thumbprints of the device
certificate).  A *group* enrollment has a symmetric key pair; a device of the
group signs with ``derive_device_key(group_key, registration_id)``.  Either
may be disabled.  A *registration* records what DPS assigned a registration
id: its device id, hub, times, etag and the last payload.
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Enrollment", "EnrollmentStore", "GroupEnrollment", "Registration"]

STATE_FILE = "dps.json"
_REGISTRATION_ID = re.compile(r"[a-z0-9.\-_:]{1,128}", re.IGNORECASE)


def _new_key() -> str:
    return base64.b64encode(secrets.token_bytes(32)).decode("ascii")


def _check_key(name: str, key: str) -> None:
    try:
        raw = base64.b64decode(key.encode("ascii"), validate=True)
    except (ValueError, UnicodeEncodeError):
        raise ValueError(f"{name} is not base64") from None
    if not 16 <= len(raw) <= 64:
        raise ValueError(f"{name} must decode to 16 to 64 bytes, got {len(raw)}")


def _thumbprints(values: Iterable[str]) -> tuple[str, ...]:
    out = []
    for value in values:
        text = value.replace(":", "").upper()
        if not re.fullmatch(r"[0-9A-F]{40}|[0-9A-F]{64}", text):
            raise ValueError(f"thumbprint {value!r}: expected 40 or 64 hex digits")
        out.append(text)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Enrollment:
    """An individual enrollment."""

    registration_id: str
    device_id: str
    primary_key: str | None = None
    secondary_key: str | None = None
    x509_thumbprints: tuple[str, ...] = ()
    enabled: bool = True
    initial_twin: dict[str, Any] = field(default_factory=dict)

    @property
    def attestation(self) -> str:
        return "x509" if self.x509_thumbprints else "symmetricKey"


@dataclass(frozen=True, slots=True)
class GroupEnrollment:
    """A symmetric-key enrollment group."""

    group_id: str
    primary_key: str
    secondary_key: str
    enabled: bool = True


@dataclass(frozen=True, slots=True)
class Registration:
    """What DPS assigned to one registration id."""

    registration_id: str
    device_id: str
    assigned_hub: str
    created: str
    updated: str
    etag: str
    count: int = 1
    payload: Any = None
    group_id: str | None = None


class EnrollmentStore:
    """Enrollments and registrations, thread-safe, persisted in ``state_dir``.

    Raises (constructor): ``ValueError`` when the state file is not valid.
    """

    def __init__(self, state_dir: Path | str | None) -> None:
        self._lock = threading.Lock()
        self._path = None if state_dir is None else Path(state_dir) / STATE_FILE
        self.enrollments: dict[str, Enrollment] = {}
        self.groups: dict[str, GroupEnrollment] = {}
        self.registrations: dict[str, Registration] = {}
        self._mtime: int | None = None
        self.refresh()

    def refresh(self) -> None:
        """Reload the file if another process (the CLI) changed it."""
        if self._path is None:
            return
        try:
            mtime = self._path.stat().st_mtime_ns
        except FileNotFoundError:
            return
        with self._lock:
            if mtime != self._mtime:
                self.enrollments.clear()
                self.groups.clear()
                self.registrations.clear()
                self._load()
                self._mtime = mtime

    # ------------------------------------------------------------ changes

    def add_enrollment(self, registration_id: str, *, device_id: str | None = None,
                       primary_key: str | None = None, secondary_key: str | None = None,
                       x509_thumbprints: Iterable[str] = (), enabled: bool = True,
                       initial_twin: dict[str, Any] | None = None) -> Enrollment:
        """Add (or replace) an individual enrollment; keys are generated for a
        symmetric-key enrollment when not given.

        Raises:
            ValueError: bad registration id, key or thumbprint; keys and
                thumbprints together.
        """
        if not _REGISTRATION_ID.fullmatch(registration_id):
            raise ValueError(f"registration id {registration_id!r}: 1 to 128 letters, digits "
                             "and '-._:'")
        if isinstance(x509_thumbprints, str):
            raise ValueError("x509_thumbprints is a sequence of thumbprints, not one string")
        prints = _thumbprints(x509_thumbprints)
        if prints and (primary_key or secondary_key):
            raise ValueError("give symmetric keys or X.509 thumbprints, not both")
        if initial_twin is not None and (not isinstance(initial_twin, dict) or
                                         set(initial_twin) - {"tags", "desired"}):
            raise ValueError("initial_twin is {'tags': {...}, 'desired': {...}}")
        if not prints:
            primary_key = primary_key or _new_key()
            secondary_key = secondary_key or _new_key()
            _check_key("primary_key", primary_key)
            _check_key("secondary_key", secondary_key)
        enrollment = Enrollment(registration_id, device_id or registration_id, primary_key,
                                secondary_key, prints, enabled, dict(initial_twin or {}))
        with self._lock:
            self.enrollments[registration_id] = enrollment
            self._save()
        return enrollment

    def add_group(self, group_id: str, *, primary_key: str | None = None,
                  secondary_key: str | None = None, enabled: bool = True) -> GroupEnrollment:
        """Add (or replace) a symmetric-key enrollment group.

        Raises:
            ValueError: bad id or key.
        """
        if not _REGISTRATION_ID.fullmatch(group_id):
            raise ValueError(f"group id {group_id!r}: 1 to 128 letters, digits and '-._:'")
        group = GroupEnrollment(group_id, primary_key or _new_key(),
                                secondary_key or _new_key(), enabled)
        _check_key("primary_key", group.primary_key)
        _check_key("secondary_key", group.secondary_key)
        with self._lock:
            self.groups[group_id] = group
            self._save()
        return group

    def set_enabled(self, name: str, enabled: bool) -> None:
        """Enable or disable an individual enrollment or a group.

        Raises:
            KeyError: no such enrollment.
        """
        with self._lock:
            if name in self.enrollments:
                old = self.enrollments[name]
                self.enrollments[name] = Enrollment(**{**asdict(old), "enabled": enabled})
            elif name in self.groups:
                group = self.groups[name]
                self.groups[name] = GroupEnrollment(group.group_id, group.primary_key,
                                                    group.secondary_key, enabled)
            else:
                raise KeyError(f"no enrollment or group {name!r}")
            self._save()

    def remove(self, name: str) -> None:
        """Remove an individual enrollment or a group (and its registration records).

        Raises:
            KeyError: no such enrollment.
        """
        with self._lock:
            if self.enrollments.pop(name, None) is not None:
                self.registrations.pop(name, None)
            elif self.groups.pop(name, None) is not None:
                for rid, record in list(self.registrations.items()):
                    if record.group_id == name:
                        del self.registrations[rid]
            else:
                raise KeyError(f"no enrollment or group {name!r}")
            self._save()

    def record(self, registration: Registration) -> None:
        with self._lock:
            self.registrations[registration.registration_id] = registration
            self._save()

    # ---------------------------------------------------------- persistence

    def _save(self) -> None:
        if self._path is None:
            return
        document = {
            "enrollments": [asdict(e) for e in self.enrollments.values()],
            "groups": [asdict(g) for g in self.groups.values()],
            "registrations": [asdict(r) for r in self.registrations.values()],
        }
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(json.dumps(document, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp, self._path)
        self._mtime = self._path.stat().st_mtime_ns

    def _load(self) -> None:
        assert self._path is not None
        try:
            document = json.loads(self._path.read_text(encoding="utf-8"))
            for item in document.get("enrollments", []):
                item["x509_thumbprints"] = tuple(item.get("x509_thumbprints", ()))
                enrollment = Enrollment(**item)
                self.enrollments[enrollment.registration_id] = enrollment
            for item in document.get("groups", []):
                group = GroupEnrollment(**item)
                self.groups[group.group_id] = group
            for item in document.get("registrations", []):
                registration = Registration(**item)
                self.registrations[registration.registration_id] = registration
        except (ValueError, TypeError, AttributeError, KeyError) as exc:
            raise ValueError(f"{self._path}: not a valid DPS state file ({exc})") from exc
