"""One fleet run, in a fresh process: N asyncio IoT Hub device clients on one
event loop, each sending one message per second.

``python -m bench._fleet --kind iotdev|azure --devices N --host H --port P
--ca FILE --key KEY --prefix fleet- --window S --connect-cap S`` prints
``window-start`` and ``window-end`` as the send window opens and closes (the
parent samples the server's CPU then), then one JSON line (see ``run``), and
exits.  Run by the ``scale-*`` figures
(``bench/scale.py``), one process per sample, so that every sample starts
from the same interpreter and its RSS is the fleet's.

What is measured:

1. ``rss0``: VmRSS after the imports (the client package, ``ssl``), before the
   first client is created.
2. Connect: the N clients are created (``create_from_symmetric_key``) and
   connected, at most ``--concurrency`` connects in flight (the server's listen
   backlog is finite); ``connect_s`` is the wall time from the first creation
   to the last CONNACK.  A connect still pending at ``--connect-cap`` seconds
   is given up: the run then reports how many connected in that time.
3. Send: every connected device sends a 200-byte ``Message`` (QoS 1, awaited
   to its PUBACK) once a second, on its own phase (device i at i/N s), for
   ``--window`` seconds.  ``cpu_s`` is the process's CPU time (user + system,
   every thread: ``time.process_time``) over that window, ``wall_s`` its length, ``sent`` the sends
   acknowledged in it and ``send_p50_ms``/``send_p99_ms`` the send-to-PUBACK
   times.  A send that is still waiting when the next one is due delays it (no
   second send in flight per device): a server that cannot keep up shows as a
   rate below N messages/s and long send times.
4. ``rss1``: VmRSS at the end of the window; ``threads``: the process's
   threads (from ``/proc/self/status``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import time
import warnings
from typing import Any

from bench._fleet_hub import raise_nofile, run_delay

PAYLOAD = b"x" * 200


def _status(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def _percentile(values: list[float], fraction: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def run(args: argparse.Namespace) -> dict[str, Any]:
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    import ssl  # noqa: F401  (in rss0 for both kinds: every client needs it)

    if args.kind == "iotdev":
        from iotdev import Message
        from iotdev.aio import IoTHubDeviceClient

        def make(device_id: str) -> Any:
            return IoTHubDeviceClient.create_from_symmetric_key(
                args.key, args.host, device_id, server_verification_cert=ca_pem,
                port=args.port)
    else:
        from azure.iot.device import Message  # type: ignore[assignment]
        from azure.iot.device.aio import IoTHubDeviceClient as Azure

        if args.port != 8883:
            raise SystemExit("azure-iot-device always dials port 8883")

        def make(device_id: str) -> Any:
            return Azure.create_from_symmetric_key(
                symmetric_key=args.key, hostname=args.host, device_id=device_id,
                server_verification_cert=ca_pem)

    with open(args.ca) as handle:
        ca_pem = handle.read()
    loop = asyncio.get_running_loop()
    rss0 = _status("VmRSS")
    threads0 = _status("Threads")

    # ---- connect
    clients: list[Any] = []
    connected: list[Any] = []
    errors: list[str] = []
    gate = asyncio.Semaphore(args.concurrency)

    async def connect_one(device_id: str) -> None:
        async with gate:
            client = make(device_id)
            clients.append(client)
            try:
                await client.connect()
            except Exception as exc:
                errors.append(f"{device_id}: {type(exc).__name__}: {exc}"[:200])
                return
            connected.append(client)

    start = loop.time()
    tasks = [asyncio.ensure_future(connect_one(f"{args.prefix}{i}"))
             for i in range(args.devices)]
    _done, pending = await asyncio.wait(tasks, timeout=args.connect_cap)
    connect_s = loop.time() - start
    capped = bool(pending)
    for task in pending:
        task.cancel()
    rss_connected = _status("VmRSS")
    threads_connected = _status("Threads")

    # ---- send, one message per second per device
    sent = 0
    failed = 0
    latencies: list[float] = []
    window = args.window if connected else 0.0
    begin = loop.time() + 0.2
    end = begin + window

    async def sender(index: int, client: Any) -> None:
        nonlocal sent, failed
        due = begin + (index / max(1, len(connected)))
        while due < end:
            delay = due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            t0 = loop.time()
            try:
                await client.send_message(Message(PAYLOAD))
            except Exception as exc:
                failed += 1
                if len(errors) < 50:
                    errors.append(f"send: {type(exc).__name__}: {exc}"[:200])
            else:
                t1 = loop.time()
                if t1 <= end:
                    sent += 1
                    latencies.append(t1 - t0)
            due += 1.0

    senders = [asyncio.ensure_future(sender(i, c)) for i, c in enumerate(connected)]
    await asyncio.sleep(max(0.0, begin - loop.time()))
    cpu_start, wall_start, wait_start = time.process_time(), loop.time(), run_delay()
    print("window-start", flush=True)  # the parent samples the server now
    await asyncio.sleep(max(0.0, end - loop.time()))
    cpu_end, wall_end, wait_end = time.process_time(), loop.time(), run_delay()
    print("window-end", flush=True)
    rss1 = _status("VmRSS")
    threads1 = _status("Threads")
    # Let sends due just before the end finish (not counted, but no error noise).
    if senders:
        await asyncio.wait(senders, timeout=5.0)
    result = {
        "kind": args.kind,
        "devices": args.devices,
        "connected": len(connected),
        "connect_s": connect_s,
        "connect_capped": capped,
        "rss0_kb": rss0,
        "rss_connected_kb": rss_connected,
        "rss1_kb": rss1,
        "threads0": threads0,
        "threads_connected": threads_connected,
        "threads": threads1,
        "window_s": window,
        "wall_s": wall_end - wall_start,
        "cpu_s": cpu_end - cpu_start,
        "run_delay_s": wait_end - wait_start,
        "sent": sent,
        "failed": failed,
        "send_p50_ms": statistics.median(latencies) * 1000 if latencies else 0.0,
        "send_p99_ms": _percentile(latencies, 0.99) * 1000,
        "errors": errors[:10],
        "error_count": len(errors),
    }
    print(json.dumps(result), flush=True)
    # ---- clean up, bounded (not measured)
    if args.kind == "iotdev":
        try:
            await asyncio.wait_for(asyncio.gather(*(c.shutdown() for c in clients),
                                                  return_exceptions=True), 20)
        except TimeoutError:
            pass
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench._fleet")
    parser.add_argument("--kind", choices=("iotdev", "azure"), required=True)
    parser.add_argument("--devices", type=int, required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--ca", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--prefix", default="fleet-")
    parser.add_argument("--window", type=float, default=5.0)
    parser.add_argument("--connect-cap", type=float, default=120.0)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args(argv)
    raise_nofile()
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    loop.run_until_complete(run(args))  # not asyncio.run: see below
    sys.stdout.flush()
    # azure-iot-device's clients keep non-daemon threads and take seconds each
    # to shut down; the measurement is printed, so leave without waiting.
    os._exit(0)


if __name__ == "__main__":
    main()
