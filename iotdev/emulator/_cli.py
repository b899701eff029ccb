"""``iotdev-hub`` / ``python -m iotdev.emulator``: run the local IoT Hub, and
talk to a running one through its HTTPS service API.

    iotdev-hub serve --device thermostat-1 --device sensor-2:KEY -v
    iotdev-hub demo
    iotdev-hub --version

    iotdev-hub connection-string thermostat-1
    iotdev-hub devices
    iotdev-hub twin thermostat-1
    iotdev-hub desired thermostat-1 '{"rate": 5}'
    iotdev-hub invoke thermostat-1 reboot '{"delay": 5}' --timeout 10
    iotdev-hub c2d thermostat-1 'hello' --message-id m1 --property k=v
    iotdev-hub telemetry [thermostat-1] [--follow]
    iotdev-hub uploads [thermostat-1] [--json]

The client subcommands take ``--url`` (default ``https://127.0.0.1:8443``,
what ``serve`` listens on by default) and ``--state`` (the folder ``serve``
was given, default ``./iotdev-hub-state``) or ``--ca`` (default
``STATE/ca.pem``), and use only the standard library.  Exit codes: 0 done,
1 the service answered an error (its status and message are printed), 2 a
usage or connection error.

``serve`` reports every bad input on one line and exits with 2 (a bad
``--device``, a state path that is a file or cannot be written, a corrupt state
file, missing ``cryptography``) or 3 (a port it cannot listen on, with the
reason and what to do); it warns when a ``--device ID:KEY`` disagrees with the
key stored in the state folder (the stored one stays).  ``-v`` / ``--log-level``
set the emulator's log level (logs go to stderr).
"""

from __future__ import annotations

import argparse
import base64
import errno
import http.client
import json
import logging
import os
import shutil
import signal
import ssl
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote, urlencode, urlsplit

__all__ = ["main"]

EXIT_USAGE = 2
EXIT_LISTEN = 3
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
DEFAULT_STATE = Path("iotdev-hub-state")
DEFAULT_HTTP_PORT = 8443
DEFAULT_URL = f"https://127.0.0.1:{DEFAULT_HTTP_PORT}"
HTTP_TIMEOUT = 30.0
FOLLOW_WAIT = 20.0

_TCHAR = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyz"
                   "ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _parser() -> argparse.ArgumentParser:
    from .. import __version__

    formatter = argparse.ArgumentDefaultsHelpFormatter
    parser = argparse.ArgumentParser(prog="iotdev-hub", description="A local Azure IoT Hub "
                                     "emulator: run and test device code with no cloud account.",
                                     formatter_class=formatter)
    parser.add_argument("--version", action="version", version=f"iotdev-hub {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    logs = argparse.ArgumentParser(add_help=False)
    logs.add_argument("-v", "--verbose", action="count", default=0,
                      help="log more to stderr: -v INFO (connections, refusals with the "
                      "reason, subscriptions, telemetry), -vv DEBUG")
    logs.add_argument("--log-level", choices=LOG_LEVELS, type=str.upper, default=None,
                      help="log level (overrides -v; default WARNING)")
    serve = sub.add_parser("serve", parents=[logs], formatter_class=formatter,
                           help="run the emulator until SIGINT or SIGTERM")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--hub-name", default="iotdev-hub.local", help="the hub's host name")
    serve.add_argument("--mqtt-port", type=int, default=8883,
                       help="MQTT over TLS (0: a free port)")
    serve.add_argument("--ws-port", type=int, default=443,
                       help="MQTT over TLS WebSocket and the device HTTPS API (file upload); "
                       "0: a free port, -1: off.  Ports under 1024 need root")
    serve.add_argument("--http-port", type=int, default=DEFAULT_HTTP_PORT,
                       help="HTTPS service API, no authentication (0: a free port, -1: off)")
    serve.add_argument("--http-allow-remote", action="store_true",
                       help="serve the unauthenticated service API on a non-loopback --host")
    serve.add_argument("--state", type=Path, default=DEFAULT_STATE,
                       help="state folder (CA, certificates, registry, twins)")
    serve.add_argument("--device", action="append", default=[], metavar="ID[:KEY]",
                       help="register a device (repeatable); a missing key is generated, "
                       "KEY is base64 of 16 to 64 bytes")
    serve.add_argument("--module", action="append", default=[], metavar="DEVICE/MODULE[:KEY]",
                       help="register a module identity (repeatable; the device too if new)")
    serve.add_argument("--edge", action="append", default=[], metavar="DEVICE",
                       help="play the IoT Edge runtime of DEVICE: workload API on a Unix "
                       "socket, routes, module-to-module methods (repeatable)")
    serve.add_argument("--route", action="append", default=[], metavar="[DEVICE:]NAME=ROUTE",
                       help="an Edge route, e.g. 'up=FROM /messages/* INTO $upstream' "
                       "(repeatable; replaces the device's stored routes)")
    sub.add_parser("demo", parents=[logs], formatter_class=formatter,
                   help="the emulator and a sample device, narrated (make demo)")

    client = argparse.ArgumentParser(add_help=False)
    client.add_argument("--url", default=DEFAULT_URL,
                        help="the running emulator's service API")
    client.add_argument("--state", type=Path, default=DEFAULT_STATE,
                        help="the state folder the emulator was started with (for its CA)")
    client.add_argument("--ca", type=Path, default=None,
                        help="its CA certificate (default: STATE/ca.pem, which serve writes)")
    c2d = sub.add_parser("c2d", parents=[client], help="send a cloud-to-device message")
    c2d.add_argument("device")
    c2d.add_argument("body", help="the message (text; '-' reads bytes from stdin)")
    c2d.add_argument("--message-id")
    c2d.add_argument("--correlation-id")
    c2d.add_argument("--property", action="append", default=[], metavar="K=V",
                     help="an application property (repeatable; names are lower-cased)")
    c2d.add_argument("--ack", choices=["none", "positive", "negative", "full"])
    invoke = sub.add_parser("invoke", parents=[client], help="call a direct method")
    invoke.add_argument("device")
    invoke.add_argument("method")
    invoke.add_argument("payload", nargs="?", default=None, metavar="PAYLOAD_JSON")
    invoke.add_argument("--timeout", type=float, default=30.0, metavar="S",
                        help="seconds to wait for the device's answer (default 30)")
    invoke.add_argument("--module", metavar="MODULE", help="call a method of this module")
    twin = sub.add_parser("twin", parents=[client], help="show a device twin")
    twin.add_argument("device")
    twin.add_argument("--module", metavar="MODULE", help="show this module's twin")
    desired = sub.add_parser("desired", parents=[client], help="patch desired properties")
    desired.add_argument("device")
    desired.add_argument("--module", metavar="MODULE", help="patch this module's twin")
    desired.add_argument("patch", metavar="PATCH_JSON")
    telemetry = sub.add_parser("telemetry", parents=[client],
                               help="print telemetry, one JSON object a line")
    telemetry.add_argument("device", nargs="?", default=None)
    telemetry.add_argument("--follow", "-f", action="store_true",
                           help="keep printing new messages until interrupted")
    telemetry.add_argument("--since", type=float, default=None, metavar="EPOCH",
                           help="from this time (default: everything, or now with --follow)")
    sub.add_parser("devices", parents=[client], help="list the registered devices")
    edge_env = sub.add_parser("edge-env", help="print the IOTEDGE_* environment of an Edge "
                              "module (eval \"$(iotdev-hub edge-env DEVICE/MODULE)\")")
    edge_env.add_argument("module", metavar="DEVICE/MODULE")
    edge_env.add_argument("--state", type=Path, default=DEFAULT_STATE,
                          help="the serving emulator's state folder")
    edge_env.add_argument("--json", action="store_true", help="one JSON object")
    connection = sub.add_parser("connection-string", parents=[client],
                                help="print a device's connection string")
    connection.add_argument("device")
    uploads = sub.add_parser("uploads", parents=[client],
                             help="list the file uploads devices started")
    uploads.add_argument("device", nargs="?", default=None)
    uploads.add_argument("--json", action="store_true",
                         help="one JSON object a line (with the blob's path on disk)")
    # --- DPS (issue 15): ``iotdev-hub dps ...`` in _dps_cli.py ---
    from ._dps_cli import add_dps_commands

    add_dps_commands(sub, DEFAULT_STATE, DEFAULT_URL)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run ``iotdev-hub`` with ``argv`` (default ``sys.argv[1:]``); the exit code."""
    args = _parser().parse_args(argv)
    if args.command in ("demo", "serve"):
        _configure_logging(args)
    if args.command in ("demo", "serve", "edge-env", "dps"):
        try:
            _check_dependencies()
        except _UsageError as exc:
            print(f"iotdev-hub {args.command}: {exc}", file=sys.stderr)
            return EXIT_USAGE
    if args.command == "demo":
        from ._demo import run_demo

        return run_demo()
    if args.command == "serve":
        try:
            return _serve(args)
        except _UsageError as exc:
            print(f"iotdev-hub serve: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except _ListenError as exc:
            print(f"iotdev-hub serve: {exc}", file=sys.stderr)
            return EXIT_LISTEN
    if args.command == "edge-env":
        from ._edge_cli import edge_env

        return edge_env(args)
    if args.command == "dps":  # DPS (issue 15)
        from ._dps_cli import run_dps_command

        return run_dps_command(args)
    try:
        client = _ServiceClient(args.url, args.ca or args.state / "ca.pem")
        return _COMMANDS[args.command](client, args)
    except _UsageError as exc:
        print(f"iotdev-hub {args.command}: {exc}", file=sys.stderr)
        return 2
    except _ServiceFailure as exc:
        print(f"iotdev-hub {args.command}: {exc.status} {exc.reason}: {exc.message}",
              file=sys.stderr)
        return 1


def _configure_logging(args: argparse.Namespace) -> None:
    level = args.log_level or {0: "WARNING", 1: "INFO"}.get(args.verbose, "DEBUG")
    logging.basicConfig(level=getattr(logging, level), stream=sys.stderr,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")


def _check_dependencies() -> None:
    """The emulator's packages, checked before anything starts."""
    from .._deps import MissingDependencyError, require

    try:
        require("cryptography", "the emulator (it makes its CA and certificates)")
        require("h11", "the emulator (its HTTPS APIs)")
    except MissingDependencyError as exc:
        raise _UsageError(str(exc)) from None


def _parse_device(spec: str) -> tuple[str, str | None]:
    """``ID[:KEY]`` checked as IoT Hub checks them (``_UsageError`` otherwise)."""
    from ._records import validate_device_id, validate_key

    device_id, sep, key = spec.partition(":")
    try:
        validate_device_id(device_id)
        if sep:
            validate_key("KEY", key)
    except ValueError as exc:
        raise _UsageError(f"--device {spec!r}: {exc} (expected ID or ID:KEY, KEY the "
                          "base64 of 16 to 64 bytes)") from None
    return device_id, (key if sep else None)


def _prepare_state(state: Path) -> None:
    """The state folder exists (or can be made) and can be written."""
    try:
        if state.exists() and not state.is_dir():
            raise _UsageError(f"--state {state}: is a file, not a folder")
        state.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as exc:
        raise _UsageError(f"--state {state}: cannot create the folder: "
                          f"{exc.strerror or exc}") from None
    if not os.access(state, os.W_OK | os.X_OK):
        raise _UsageError(f"--state {state}: the folder is not writable by this user")


def _listen_error(exc: OSError, args: argparse.Namespace) -> _ListenError:
    reason = exc.strerror or str(exc)
    ports = [f"--mqtt-port {args.mqtt_port}", f"--ws-port {args.ws_port}",
             f"--http-port {args.http_port}"]
    hint = ""
    if exc.errno == errno.EACCES:
        low = [p for p in ports if 0 < int(p.rsplit(" ", 1)[1]) < 1024]
        hint = (f"; ports under 1024 ({', '.join(low) or 'none given'}) need root or "
                "CAP_NET_BIND_SERVICE: pass a port over 1023, 0 for a free one or -1 "
                "to turn a listener off (e.g. --ws-port 0)")
    elif exc.errno == errno.EADDRINUSE:
        hint = (f"; another program uses one of {', '.join(ports)} on {args.host}: stop it, "
                "or pick other ports (0: a free one)")
    elif exc.errno == errno.EADDRNOTAVAIL:
        hint = f"; {args.host} is not an address of this machine (--host)"
    return _ListenError(f"cannot listen on {args.host}: {reason}{hint}")


def _serve(args: argparse.Namespace) -> int:
    from ._hub import Hub

    for name in ("mqtt_port", "ws_port", "http_port"):
        value = getattr(args, name)
        low = 0 if name == "mqtt_port" else -1
        if not low <= value <= 65535:
            raise _UsageError(f"--{name.replace('_', '-')} {value}: expected "
                              f"{low} to 65535")
    devices = [_parse_device(spec) for spec in args.device]
    _prepare_state(args.state)
    try:
        hub = Hub(hub_name=args.hub_name, host=args.host, mqtt_port=args.mqtt_port,
                  ws_port=None if args.ws_port == -1 else args.ws_port, state_dir=args.state,
                  http_port=None if args.http_port == -1 else args.http_port,
                  http_allow_remote=args.http_allow_remote)
    except ValueError as exc:
        raise _UsageError(str(exc)) from None
    except OSError as exc:
        raise _UsageError(f"--state {args.state}: {exc.strerror or exc}"
                          + (f" ({exc.filename})" if exc.filename else "")) from None
    for device_id, key in devices:
        stored = hub.store.device(device_id)
        try:
            if stored is None:
                hub.add_device(device_id, primary_key=key)
            elif key is not None and key not in (stored.primary_key, stored.secondary_key):
                print(f"iotdev-hub serve: warning: --device {device_id}:KEY differs from "
                      f"the key stored in {args.state} for {device_id!r}; the stored key "
                      f"stays (start with a new --state, or remove {args.state}, to "
                      "change it)", file=sys.stderr)
        except ValueError as exc:
            raise _UsageError(f"--device {device_id}: {exc}") from None
        except OSError as exc:
            raise _UsageError(f"--state {args.state}: cannot save the registry: "
                              f"{exc.strerror or exc}") from None
    from ._edge_cli import print_modules, register_modules

    if register_modules(hub, args) != 0:
        return EXIT_USAGE
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        hub.start()
    except OSError as exc:
        if exc.filename is not None:  # a file, not a socket
            raise _UsageError(f"--state {args.state}: {exc.strerror or exc} "
                              f"({exc.filename})") from None
        raise _listen_error(exc, args) from None
    ca = args.state / "ca.pem"
    if hub.ca_path.resolve() != ca.resolve():
        shutil.copyfile(hub.ca_path, ca)
    print(f"iotdev-hub: MQTT/TLS on {args.host}:{hub.mqtt_port}"
          + (f", MQTT/WebSocket on {args.host}:{hub.ws_port}" if hub.ws_port else ""))
    if hub.http_port is not None:
        host = f"[{args.host}]" if ":" in args.host else args.host
        print(f"iotdev-hub: service API on https://{host}:{hub.http_port} "
              "(no authentication)")
    print(f"iotdev-hub: CA certificate (server_verification_cert): {ca}")
    for device in hub.store.devices():
        if device.primary_key:
            print(f"iotdev-hub: {device.device_id}: "
                  f"{hub.connection_string(device.device_id)}")
    print_modules(hub, args)
    print("iotdev-hub: ready (Ctrl-C stops)")
    sys.stdout.flush()
    stop.wait()
    hub.stop()
    print("iotdev-hub: stopped")
    return 0


# ---------------------------------------------------------------- the client


class _UsageError(Exception):
    """Bad arguments, or the emulator cannot be reached: exit code 2."""


class _ListenError(Exception):
    """A listener could not be opened: exit code 3."""


class _ServiceFailure(Exception):
    """The service answered an error status: exit code 1."""

    def __init__(self, status: int, reason: str, message: str) -> None:
        super().__init__(f"{status} {reason}: {message}")
        self.status = status
        self.reason = reason
        self.message = message


class _ServiceClient:
    """``http.client`` over TLS verified with the emulator's CA; one keep-alive
    connection, opened on first use."""

    def __init__(self, url: str, ca: Path) -> None:
        parts = urlsplit(url)
        try:
            port = parts.port
        except ValueError:
            port = -1
        if parts.scheme != "https" or not parts.hostname or port == -1:
            raise _UsageError(f"--url {url!r}: expected https://HOST[:PORT]")
        self.url = url
        self.host = parts.hostname
        self.port = port or 443
        self.prefix = parts.path.rstrip("/")
        if not ca.is_file():
            raise _UsageError(f"CA certificate {ca} not found: start `iotdev-hub serve` "
                              "(it writes STATE/ca.pem), or pass the --state it was started "
                              "with, or --ca")
        try:
            self.context = ssl.create_default_context(cafile=str(ca))
        except (OSError, ssl.SSLError) as exc:
            raise _UsageError(f"CA certificate {ca} is not usable: {exc}") from None
        self._conn: http.client.HTTPSConnection | None = None

    def request(self, method: str, path: str, *, body: bytes | None = None,
                document: Any = None, headers: dict[str, bytes | str] | None = None,
                query: dict[str, str] | None = None, timeout: float = HTTP_TIMEOUT) -> Any:
        """Send a request; the JSON answer (``None`` when empty).

        Raises:
            _UsageError: no connection, or the certificate did not verify.
            _ServiceFailure: an error status.
        """
        all_headers: dict[str, bytes | str] = {"accept": "application/json", **(headers or {})}
        if document is not None:
            body = json.dumps(document).encode("utf-8")
            all_headers["content-type"] = "application/json; charset=utf-8"
        target = self.prefix + path + "?" + urlencode({"api-version": "2021-04-12",
                                                       **(query or {})})
        for attempt in (0, 1):
            reused = self._conn is not None
            conn = self._connection(timeout)
            try:
                conn.request(method, target, body=body, headers=all_headers)
                response = conn.getresponse()
                data = response.read()
            except ssl.SSLCertVerificationError as exc:
                self.close()
                raise _UsageError(f"the certificate of {self.url} did not verify with the "
                                  f"given CA: {exc.verify_message or exc}") from None
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                if reused and attempt == 0 and method == "GET":
                    continue  # the server closed an idle keep-alive connection
                raise _UsageError(f"cannot reach the emulator at {self.url}: "
                                  f"{exc or type(exc).__name__}") from None
            if response.will_close:
                self.close()
            break
        if response.status >= 400:
            raise _ServiceFailure(response.status, response.reason, _error_message(data))
        if not data:
            return None
        try:
            return json.loads(data)
        except ValueError:
            raise _UsageError(f"{self.url} answered something that is not JSON") from None

    def _connection(self, timeout: float) -> http.client.HTTPSConnection:
        conn = self._conn
        if conn is None:
            conn = self._conn = http.client.HTTPSConnection(
                self.host, self.port, context=self.context, timeout=timeout)
        else:
            conn.timeout = timeout
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
        return conn

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


def _error_message(data: bytes) -> str:
    try:
        document = json.loads(data)
        message = str(document["Message"])
    except (ValueError, KeyError, TypeError):
        return data.decode("utf-8", "replace").strip() or "(no message)"
    return message


def _path(*segments: str) -> str:
    return "".join("/" + quote(segment, safe="") for segment in segments)


def _twin_path(args: argparse.Namespace, *rest: str) -> str:
    module = ("modules", args.module) if args.module else ()
    return _path("twins", args.device, *module, *rest)


def _json_argument(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise _UsageError(f"{what} is not valid JSON: {exc}") from None


def _show(document: Any) -> None:
    print(json.dumps(document, indent=2, ensure_ascii=False))


# ---------------------------------------------------------------- subcommands


def _c2d(client: _ServiceClient, args: argparse.Namespace) -> int:
    body = sys.stdin.buffer.read() if args.body == "-" else args.body.encode("utf-8")
    headers: dict[str, bytes | str] = {"content-type": "application/octet-stream"}
    if args.message_id is not None:
        headers["iothub-messageid"] = args.message_id.encode("utf-8")
    if args.correlation_id is not None:
        headers["iothub-correlationid"] = args.correlation_id.encode("utf-8")
    if args.ack is not None:
        headers["iothub-ack"] = args.ack
    for spec in args.property:
        name, sep, value = spec.partition("=")
        if not sep or not name or not set(name) <= _TCHAR:
            raise _UsageError(f"--property {spec!r}: expected NAME=VALUE, the name made "
                              "of letters, digits and !#$%&'*+-.^_`|~")
        headers[f"iothub-app-{name}"] = value.encode("utf-8")
    result = client.request("POST", _path("devices", args.device, "messages", "deviceBound"),
                            body=body, headers=headers)
    print(f"sent message {result['messageId']} to {args.device}")
    return 0


def _invoke(client: _ServiceClient, args: argparse.Namespace) -> int:
    payload = None if args.payload is None else _json_argument(args.payload, "PAYLOAD_JSON")
    if not 0 < args.timeout <= 300:
        raise _UsageError("--timeout must be over 0 and at most 300 seconds")
    result = client.request("POST", _twin_path(args, "methods"), document={
        "methodName": args.method, "payload": payload,
        "responseTimeoutInSeconds": args.timeout}, timeout=args.timeout + 15)
    _show(result)
    return 0


def _twin(client: _ServiceClient, args: argparse.Namespace) -> int:
    _show(client.request("GET", _twin_path(args)))
    return 0


def _desired(client: _ServiceClient, args: argparse.Namespace) -> int:
    patch = _json_argument(args.patch, "PATCH_JSON")
    if not isinstance(patch, dict):
        raise _UsageError("PATCH_JSON must be a JSON object")
    _show(client.request("PATCH", _twin_path(args),
                         document={"properties": {"desired": patch}}))
    return 0


def _devices(client: _ServiceClient, args: argparse.Namespace) -> int:
    devices = client.request("GET", "/devices")
    width = max([len("DEVICE"), *(len(d["deviceId"]) for d in devices)])
    print(f"{'DEVICE':<{width}}  {'STATUS':<8}  {'CONNECTION':<12}  AUTH  C2D PENDING")
    for device in devices:
        print(f"{device['deviceId']:<{width}}  {device['status']:<8}  "
              f"{device['connectionState']:<12}  {device['authentication']['type']:<4}  "
              f"{device['cloudToDeviceMessageCount']}")
    return 0


def _connection_string(client: _ServiceClient, args: argparse.Namespace) -> int:
    device = client.request("GET", _path("devices", args.device))
    key = ((device.get("authentication") or {}).get("symmetricKey") or {}).get("primaryKey")
    if not key:
        raise _UsageError(f"device {args.device!r} authenticates with X.509: it has no "
                          "connection string with a key")
    print(f"HostName={client.host};DeviceId={args.device};SharedAccessKey={key}")
    return 0


def _uploads(client: _ServiceClient, args: argparse.Namespace) -> int:
    path = _path("devices", args.device, "files") if args.device else "/files"
    uploads = client.request("GET", path)
    if args.json:
        for upload in uploads:
            print(json.dumps(upload, ensure_ascii=False))
        return 0
    rows = [(u["createdTimeUtc"], u["deviceId"], u["status"],
             "-" if u["statusCode"] is None else str(u["statusCode"]),
             "-" if u["size"] is None else str(u["size"]), u["blobName"]) for u in uploads]
    titles = ("CREATED", "DEVICE", "STATUS", "CODE", "SIZE", "BLOB")
    widths = [max([len(title), *(len(row[i]) for row in rows)])
              for i, title in enumerate(titles[:-1])]
    for row in (titles, *rows):
        cells = [cell.ljust(width) for cell, width in zip(row[:-1], widths, strict=True)]
        print("  ".join([*cells, row[-1]]))
    return 0


def _telemetry(client: _ServiceClient, args: argparse.Namespace) -> int:
    path = _path("devices", args.device, "messages", "events") if args.device \
        else "/messages/events"
    if not args.follow:
        query = {} if args.since is None else {"since": repr(args.since)}
        for message in client.request("GET", path, query=query):
            _print_message(message)
        return 0
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        for message in _follow(client, path, time.time() if args.since is None
                               else args.since):
            _print_message(message)
    except KeyboardInterrupt:
        pass
    return 0


def _interrupt(*_: object) -> NoReturn:
    raise KeyboardInterrupt


def _follow(client: _ServiceClient, path: str, since: float) -> Iterator[dict[str, Any]]:
    """Long-poll for messages at or after ``since``, forever.  Messages that
    share the last seen ``enqueuedTime`` come again in the next answer; they
    come first (arrival order), so the ones already printed are skipped."""
    seen_at_since = 0
    while True:
        messages = client.request("GET", path, query={
            "since": repr(since), "wait": f"{FOLLOW_WAIT:g}"}, timeout=FOLLOW_WAIT + 15)
        skip = seen_at_since
        for message in messages:
            enqueued = float(message["enqueuedTime"])
            if skip and enqueued == since:
                skip -= 1
                continue
            if enqueued > since:
                since, seen_at_since = enqueued, 0
            if enqueued == since:
                seen_at_since += 1
            yield message


def _print_message(message: dict[str, Any]) -> None:
    body = base64.b64decode(message["body"])
    line: dict[str, Any] = {"deviceId": message["deviceId"]}
    if message.get("moduleId"):
        line["moduleId"] = message["moduleId"]
    line["enqueuedTimeUtc"] = message["enqueuedTimeUtc"]
    line["systemProperties"] = message["systemProperties"]
    line["properties"] = message["properties"]
    try:
        line["body"] = body.decode("utf-8")
    except UnicodeDecodeError:
        line["bodyBase64"] = message["body"]
    print(json.dumps(line, ensure_ascii=False), flush=True)


_COMMANDS = {
    "c2d": _c2d,
    "invoke": _invoke,
    "twin": _twin,
    "desired": _desired,
    "telemetry": _telemetry,
    "devices": _devices,
    "connection-string": _connection_string,
    "uploads": _uploads,
}
