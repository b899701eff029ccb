"""The emulated hub's durable state: one immutable snapshot (``State``) and
its file, ``state.json``, replaced atomically on every change.

The file holds ``{"format", "version", "devices": [...], "modules": [...]}``:
each device with its twin and pending cloud-to-device messages, each module
with its twin.  A file written before modules existed has no ``modules`` and
loads as is.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from ._records import (
    C2DMessage,
    Device,
    Module,
    Twin,
    identity_key,
    validate_device_id,
    validate_module_id,
)

__all__ = ["STATE_FILE", "State", "dump_state", "load_state", "write_file_atomically"]

STATE_FILE = "state.json"
_STATE_FORMAT = "iotdev-emulator-state"
_STATE_VERSION = 1


@dataclass(frozen=True, slots=True)
class State:
    """One immutable snapshot of the durable state.

    ``twins`` is keyed by identity (``identity_key``: ``device`` or
    ``device/module``), ``modules`` likewise, ``devices`` and ``c2d`` by
    device id.  A change builds a new snapshot (``dataclasses.replace`` with
    copied top-level dicts); it never edits one.
    """

    devices: dict[str, Device] = field(default_factory=dict)
    twins: dict[str, Twin] = field(default_factory=dict)
    c2d: dict[str, tuple[C2DMessage, ...]] = field(default_factory=dict)
    modules: dict[str, Module] = field(default_factory=dict)


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


def dump_state(state: State) -> bytes:
    """The state file's bytes for ``state`` (UTF-8 JSON)."""
    devices = []
    for device_id, device in state.devices.items():
        entry = dataclasses.asdict(device)
        entry["twin"] = dataclasses.asdict(state.twins[device_id])
        entry["c2d"] = [
            {**dataclasses.asdict(m), "body": base64.b64encode(m.body).decode("ascii")}
            for m in state.c2d.get(device_id, ())
        ]
        devices.append(entry)
    modules = []
    for key, module in state.modules.items():
        entry = dataclasses.asdict(module)
        entry["twin"] = dataclasses.asdict(state.twins[key])
        modules.append(entry)
    document = {"format": _STATE_FORMAT, "version": _STATE_VERSION, "devices": devices,
                "modules": modules}
    return json.dumps(document, indent=1, ensure_ascii=False).encode("utf-8")


def load_state(path: Path) -> State:
    """Read a state file.

    Raises:
        ValueError: the file cannot be read or is not a state file (the
            message names the file and what is wrong).
    """
    devices: dict[str, Device] = {}
    twins: dict[str, Twin] = {}
    c2d: dict[str, tuple[C2DMessage, ...]] = {}
    modules: dict[str, Module] = {}
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
        for entry in document.get("modules", ()):
            twin = Twin(**entry.pop("twin"))
            module = Module(**{**entry, "x509_thumbprints": tuple(entry["x509_thumbprints"])})
            validate_module_id(module.module_id)
            if module.device_id not in devices:
                raise ValueError(f"module {module.module_id!r} of unknown device "
                                 f"{module.device_id!r}")
            key = identity_key(module.device_id, module.module_id)
            modules[key] = module
            twins[key] = twin
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path}: not a usable emulator state file: {exc}") from exc
    return State(devices, twins, c2d, modules)
