"""``iotdev-hub dps ...``: run the emulator's DPS and manage its enrollments.

    iotdev-hub dps enroll thermostat-1 [--key K] [--device-id D] [--thumbprint T] [--disabled]
    iotdev-hub dps group fleet [--key K]
    iotdev-hub dps list [--json]
    iotdev-hub dps disable thermostat-1 / enable / remove
    iotdev-hub dps device-key <group key> <registration id>
    iotdev-hub dps serve [--id-scope 0ne00000000] [--host 127.0.0.1] [--mqtt-port 8884]

Enrollments live in ``{state}/dps.json`` (``--state``, default the hub's
``./iotdev-hub-state``); a running DPS picks up changes at the next
connection.  ``dps serve`` assigns devices to the hub that ``iotdev-hub
serve`` runs, creating their identity through its service API (``--url``,
``--ca``), and answers ``assignedHub`` = ``--hub-host``.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
from pathlib import Path
from typing import Any
from urllib.parse import quote

__all__ = ["add_dps_commands", "run_dps_command"]

DEFAULT_MQTT_PORT = 8884
DEFAULT_WS_PORT = 4443


def add_dps_commands(sub: Any, default_state: Path, default_url: str) -> None:
    """Add the ``dps`` subcommand (with its actions) to ``iotdev-hub``."""
    dps = sub.add_parser("dps", help="the Device Provisioning Service: serve, enrollments")
    actions = dps.add_subparsers(dest="dps_command", required=True)
    state = argparse.ArgumentParser(add_help=False)
    state.add_argument("--state", type=Path, default=default_state,
                       help=f"state folder (default ./{default_state})")
    enroll = actions.add_parser("enroll", parents=[state], help="add an individual enrollment")
    enroll.add_argument("registration_id")
    enroll.add_argument("--key", help="primary key (base64; generated when missing)")
    enroll.add_argument("--secondary-key")
    enroll.add_argument("--device-id", help="the device id to create (default: the "
                        "registration id)")
    enroll.add_argument("--thumbprint", action="append", default=[],
                        help="X.509 attestation: the device certificate's thumbprint")
    enroll.add_argument("--disabled", action="store_true")
    enroll.add_argument("--initial-twin", type=json.loads, default=None, metavar="JSON",
                        help='the new device\'s twin: {"tags": {...}, "desired": {...}}')
    group = actions.add_parser("group", parents=[state],
                               help="add a symmetric-key enrollment group")
    group.add_argument("group_id")
    group.add_argument("--key", help="primary key (base64; generated when missing)")
    group.add_argument("--secondary-key")
    group.add_argument("--disabled", action="store_true")
    listing = actions.add_parser("list", parents=[state],
                                 help="list enrollments, groups and registrations")
    listing.add_argument("--json", action="store_true")
    for name, text in (("remove", "remove an enrollment or group"),
                       ("enable", "enable an enrollment or group"),
                       ("disable", "disable an enrollment or group")):
        action = actions.add_parser(name, parents=[state], help=text)
        action.add_argument("name")
    key = actions.add_parser("device-key", help="derive a group member's device key")
    key.add_argument("group_key")
    key.add_argument("registration_id")
    serve = actions.add_parser("serve", parents=[state], help="run the DPS until SIGINT/SIGTERM")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--mqtt-port", type=int, default=DEFAULT_MQTT_PORT,
                       help=f"MQTT over TLS (default {DEFAULT_MQTT_PORT}, next to the hub's "
                       "8883; azure-iot-device dials 8883: give the DPS an address of "
                       "its own, e.g. --host 127.0.0.2 --mqtt-port 8883)")
    serve.add_argument("--ws-port", type=int, default=DEFAULT_WS_PORT,
                       help=f"MQTT over TLS WebSocket (default {DEFAULT_WS_PORT}; 0: a free "
                       "port, -1: off)")
    serve.add_argument("--id-scope", default="0ne00000000")
    serve.add_argument("--hub-host", default="127.0.0.1",
                       help="the hub's host name answered as assignedHub")
    serve.add_argument("--url", default=default_url,
                       help=f"the hub's service API, to create devices (default {default_url})")
    serve.add_argument("--ca", type=Path, default=None,
                       help="the hub's CA certificate (default {state}/ca.pem)")
    serve.add_argument("--retry-after", type=float, default=1.0,
                       help="seconds in the retry-after of 'assigning' answers")


def run_dps_command(args: argparse.Namespace) -> int:
    """Run ``iotdev-hub dps ...``; returns the exit code."""
    from .._auth import derive_device_key
    from ._enrollments import EnrollmentStore

    command = args.dps_command
    try:
        if command == "device-key":
            print(derive_device_key(args.group_key, args.registration_id))
            return 0
        if command == "serve":
            return _serve(args)
        store = EnrollmentStore(args.state)
        if command == "enroll":
            enrollment = store.add_enrollment(
                args.registration_id, device_id=args.device_id, primary_key=args.key,
                secondary_key=args.secondary_key, x509_thumbprints=args.thumbprint,
                enabled=not args.disabled, initial_twin=args.initial_twin)
            print(json.dumps(_public(enrollment)))
        elif command == "group":
            group = store.add_group(args.group_id, primary_key=args.key,
                                    secondary_key=args.secondary_key, enabled=not args.disabled)
            print(json.dumps(_public(group)))
        elif command == "list":
            _list(store, as_json=args.json)
        elif command == "remove":
            store.remove(args.name)
        else:
            store.set_enabled(args.name, command == "enable")
    except (ValueError, KeyError) as exc:
        print(f"iotdev-hub dps {command}: {exc}", file=sys.stderr)
        return 2
    return 0


def _public(item: Any) -> dict[str, Any]:
    from dataclasses import asdict

    document = asdict(item)
    document.pop("initial_twin", None)
    return document


def _list(store: Any, *, as_json: bool) -> None:
    rows = ([{"kind": "enrollment", **_public(e)} for e in store.enrollments.values()]
            + [{"kind": "group", **_public(g)} for g in store.groups.values()]
            + [{"kind": "registration", **_public(r)} for r in store.registrations.values()])
    if as_json:
        for row in rows:
            print(json.dumps(row))
        return
    for row in rows:
        if row["kind"] == "enrollment":
            how = "x509" if row["x509_thumbprints"] else "symmetric key"
            print(f"enrollment {row['registration_id']} -> {row['device_id']} ({how}"
                  f"{'' if row['enabled'] else ', disabled'})")
        elif row["kind"] == "group":
            print(f"group {row['group_id']}{'' if row['enabled'] else ' (disabled)'}")
        else:
            payload = row["payload"]
            model = payload.get("modelId") if isinstance(payload, dict) else None
            print(f"registration {row['registration_id']} -> {row['device_id']} on "
                  f"{row['assigned_hub']} ({row['count']}x, last {row['updated']}"
                  f"{', model ' + model if model else ''})")


def _serve(args: argparse.Namespace) -> int:
    from ._cli import _ServiceClient, _ServiceFailure, _UsageError
    from ._dps import DeviceCredentials, Dps

    service = _ServiceClient(args.url, args.ca or args.state / "ca.pem")
    lock = threading.Lock()  # one keep-alive connection: one request at a time

    def allocate(device_id: str, credentials: DeviceCredentials) -> None:
        auth: dict[str, Any] = {}
        if credentials.x509_thumbprints:
            auth["x509Thumbprint"] = {"primaryThumbprint": credentials.x509_thumbprints[0]}
        else:
            auth["symmetricKey"] = {"primaryKey": credentials.primary_key,
                                    "secondaryKey": credentials.secondary_key}
        with lock:
            try:
                service.request("PUT", f"/devices/{quote(device_id, safe='')}",
                                document={"deviceId": device_id, "authentication": auth})
            except (_ServiceFailure, _UsageError) as exc:
                raise RuntimeError(f"the hub refused device {device_id!r}: {exc}") from None

    dps = Dps(allocate=allocate, assigned_hub=args.hub_host, state_dir=args.state,
              id_scope=args.id_scope, host=args.host, mqtt_port=args.mqtt_port,
              ws_port=None if args.ws_port == -1 else args.ws_port,
              retry_after=args.retry_after)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        dps.start()
    except OSError as exc:
        print(f"iotdev-hub dps: cannot listen: {exc}", file=sys.stderr)
        return 2
    print(f"iotdev-hub dps: id scope {args.id_scope}; MQTT/TLS on {args.host}:{dps.mqtt_port}"
          + (f", MQTT/WebSocket on {args.host}:{dps.ws_port}" if dps.ws_port else "")
          + f"; assigns to {args.hub_host} via {args.url}")
    sys.stdout.flush()
    stop.wait()
    dps.stop()
    print("iotdev-hub dps: stopped")
    return 0
