"""The fleet figures' server: the IoT Hub emulator (``iotdev.emulator.Hub``) in
a process of its own, with many devices registered at once.

``python -m bench._fleet_hub --host 127.0.0.150 --port 8883 --devices 5000
--prefix fleet- --key <base64>`` registers ``fleet-0`` ... ``fleet-4999`` (all
with the same primary key), listens for MQTT over TLS only, prints one line
``ready <port> <CA file>`` and then answers each line read on stdin:

* ``stats``: one JSON line ``{"telemetry": <messages received so far>,
  "connected": <devices connected now>, "cpu": <process CPU seconds>,
  "run_delay": <seconds its threads waited for a CPU>, "time": <monotonic>}``;
* end of input (the parent closed the pipe or died): stop and exit.

The registry is kept in memory: the hub's ``state.json`` would be rewritten
(and fsynced) once per ``add_device``, which for thousands of devices takes
minutes and measures the disk, not the hub.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path


def run_delay() -> float:
    """Seconds this process's threads have spent runnable but waiting for a CPU
    (``/proc/self/task/*/schedstat``, second field); 0 where unavailable."""
    total = 0
    try:
        for task in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{task}/schedstat") as stat:
                    total += int(stat.read().split()[1])
            except (OSError, IndexError, ValueError):
                continue
    except OSError:
        return 0.0
    return total / 1e9


def raise_nofile() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = max(soft, 1 << 20)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._fleet_hub")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--devices", type=int, required=True)
    parser.add_argument("--prefix", default="fleet-")
    parser.add_argument("--key", required=True)
    parser.add_argument("--state", type=Path, default=None)
    args = parser.parse_args(argv)

    raise_nofile()
    from iotdev.emulator import Hub
    from iotdev.emulator._store import Store

    state = args.state or Path(tempfile.mkdtemp(prefix="iotdev-bench-fleet-hub-"))
    hub = Hub(host=args.host, mqtt_port=args.port, ws_port=None, state_dir=state)
    hub.store = Store(None)  # memory only (see the module docstring)
    ids = [f"{args.prefix}{i}" for i in range(args.devices)]
    for device_id in ids:
        hub.add_device(device_id, primary_key=args.key, secondary_key=args.key)
    hub.start()
    print(f"ready {hub.mqtt_port} {hub.ca_path}", flush=True)
    try:
        for line in sys.stdin:
            if line.strip() == "stats":
                print(json.dumps({
                    "telemetry": len(hub.telemetry()),
                    "connected": sum(1 for d in ids if hub.is_connected(d)),
                    "cpu": time.process_time(),  # every thread of the process
                    "run_delay": run_delay(),
                    "time": time.monotonic(),
                }), flush=True)
    finally:
        try:
            hub.stop(timeout=10)
        except Exception as exc:  # the parent is gone or does not care any more
            print(f"stop failed: {exc!r}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
