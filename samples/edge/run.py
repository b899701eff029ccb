"""Run the Edge sample in one command: the emulator plays the IoT Edge
runtime of device ``edge-1`` (workload API, edgeHub routes, module-to-module
methods), and the two modules start unmodified from the environment it gives
them, each in its own process:

    sudo python samples/edge/run.py            # or --address 127.0.0.2

The routes: the filter's output ``alerts`` goes to the sink's input
``alerts``; whatever the sink sends goes upstream (the hub's telemetry).
Modules dial 8883 (MQTT) and 443 (HTTPS) of the gateway, as IoT Edge
modules do, hence root (or ``CAP_NET_BIND_SERVICE``) for the emulator."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from iotdev.emulator import Hub

HERE = Path(__file__).resolve().parent
DEVICE = "edge-1"
ROUTES = {
    "filterToSink": 'FROM /messages/modules/filter/outputs/alerts '
                    'INTO BrokeredEndpoint("/modules/sink/inputs/alerts")',
    "sinkToHub": "FROM /messages/modules/sink/* INTO $upstream",
}


def start_module(hub: Hub, module_id: str) -> subprocess.Popen[str]:
    env = {**os.environ, **hub.edge_environment(DEVICE, module_id)}
    return subprocess.Popen([sys.executable, str(HERE / f"{module_id}.py")], env=env,
                            stdout=subprocess.PIPE, text=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--address", default="127.0.0.1", help="where the emulator listens")
    parser.add_argument("--timeout", type=float, default=60.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="iotdev-edge-sample-") as state:
        hub = Hub(hub_name="sample-hub.local", host=args.address, mqtt_port=8883, ws_port=443,
                  state_dir=state, connection_host=args.address)
        hub.add_edge_device(DEVICE, routes=ROUTES)
        hub.add_module(DEVICE, "filter")
        hub.add_module(DEVICE, "sink")
        hub.start()
        codes: dict[str, int] = {}
        try:
            hub.patch_desired(DEVICE, {"threshold": 30}, module_id="filter")
            sink = start_module(hub, "sink")
            assert sink.stdout is not None
            if sink.stdout.readline().strip() != "sink: ready":  # subscribed: inputs, methods
                sink.kill()
                return 1
            filt = start_module(hub, "filter")
            for name, process in (("filter", filt), ("sink", sink)):
                out, _ = process.communicate(timeout=args.timeout)
                print(out, end="")
                codes[name] = process.returncode
            deadline = time.monotonic() + args.timeout
            while not hub.telemetry(DEVICE) and time.monotonic() < deadline:
                time.sleep(0.05)
            for message in hub.telemetry(DEVICE):
                print(f"hub: from {message.module_id}: {json.loads(message.body)}")
            print(f"filter twin reported: "
                  f"{hub.get_twin(DEVICE, 'filter')['properties']['reported']}")
        finally:
            hub.stop()
    return 0 if codes and all(code == 0 for code in codes.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
