"""``iotdev-hub`` / ``python -m iotdev.emulator``: run the local IoT Hub.

    iotdev-hub serve --state ./hub --device thermostat-1 --device sensor-2:<base64 key>
    iotdev-hub demo
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sys
import threading
from pathlib import Path

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="iotdev-hub", description="A local Azure IoT Hub "
                                     "emulator: run and test device code with no cloud account.")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the emulator until SIGINT or SIGTERM")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--hub-name", default="iotdev-hub.local", help="the hub's host name")
    serve.add_argument("--mqtt-port", type=int, default=8883, help="MQTT over TLS")
    serve.add_argument("--ws-port", type=int, default=443,
                       help="MQTT over TLS WebSocket (0: a free port, -1: off)")
    serve.add_argument("--http-port", type=int, default=None,
                       help="HTTPS service and file-upload API (not yet)")
    serve.add_argument("--state", type=Path, default=Path("iotdev-hub-state"),
                       help="state folder (CA, certificates, registry, twins)")
    serve.add_argument("--device", action="append", default=[], metavar="ID[:KEY]",
                       help="register a device (repeatable); a missing key is generated")
    sub.add_parser("demo", help="the emulator and a sample device, narrated (make demo)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from ._demo import run_demo

        return run_demo()
    return _serve(args)


def _serve(args: argparse.Namespace) -> int:
    from ._hub import Hub

    hub = Hub(hub_name=args.hub_name, host=args.host, mqtt_port=args.mqtt_port,
              ws_port=None if args.ws_port == -1 else args.ws_port, state_dir=args.state)
    for spec in args.device:
        device_id, _, key = spec.partition(":")
        if hub.store.device(device_id) is None:
            hub.add_device(device_id, primary_key=key or None)
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        hub.start()
    except OSError as exc:
        print(f"iotdev-hub: cannot listen: {exc}", file=sys.stderr)
        return 2
    ca = args.state / "ca.pem"
    if hub.ca_path.resolve() != ca.resolve():
        shutil.copyfile(hub.ca_path, ca)
    print(f"iotdev-hub: MQTT/TLS on {args.host}:{hub.mqtt_port}"
          + (f", MQTT/WebSocket on {args.host}:{hub.ws_port}" if hub.ws_port else ""))
    print(f"iotdev-hub: CA certificate (server_verification_cert): {ca}")
    for device in hub.store.devices():
        if device.primary_key:
            print(f"iotdev-hub: {device.device_id}: "
                  f"{hub.connection_string(device.device_id)}")
    sys.stdout.flush()
    stop.wait()
    hub.stop()
    print("iotdev-hub: stopped")
    return 0
