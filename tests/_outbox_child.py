"""The process ``test_outbox.py`` kills: sends ``{run}:{n}`` for n = 0, 1, ...
through a device client with an outbox and prints each ``n`` once
``send_message`` has returned (the message is accepted: on disk).

Prints ``ready {pending}`` first (the outbox's backlog from earlier runs),
``sent`` after the last message, then waits for the outbox to drain and
prints ``drained``.  With ``--gated`` it connects first, prints
``connected`` and waits for a line on stdin before sending.  Run as
``python tests/_outbox_child.py --help``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any


def _options(args: argparse.Namespace) -> dict[str, Any]:
    with open(args.ca, encoding="ascii") as file:
        ca = file.read()
    return {"server_verification_cert": ca, "port": args.port, "outbox_path": args.outbox,
            "connection_retry_interval": 1, "operation_timeout": 60}


def run_sync(args: argparse.Namespace) -> None:
    from iotdev import IoTHubDeviceClient

    client = IoTHubDeviceClient.create_from_connection_string(args.conn, **_options(args))
    print("ready", client.outbox_pending, flush=True)
    if args.gated:
        client.connect()
        print("connected", flush=True)
        sys.stdin.readline()
    for n in range(args.count):
        client.send_message(f"{args.run}:{n}")
        print(n, flush=True)
    print("sent", flush=True)
    client.wait_outbox_drained(timeout=60)
    print("drained", flush=True)
    client.shutdown()


async def run_aio(args: argparse.Namespace) -> None:
    from iotdev.aio import IoTHubDeviceClient

    client = IoTHubDeviceClient.create_from_connection_string(args.conn, **_options(args))
    print("ready", client.outbox_pending, flush=True)
    if args.gated:
        await client.connect()
        print("connected", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
    for n in range(args.count):
        await client.send_message(f"{args.run}:{n}")
        print(n, flush=True)
    print("sent", flush=True)
    await client.wait_outbox_drained(timeout=60)
    print("drained", flush=True)
    await client.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--conn", required=True, help="the device's connection string")
    parser.add_argument("--ca", required=True, help="the hub's CA certificate (PEM file)")
    parser.add_argument("--port", type=int, required=True, help="the hub's MQTT port")
    parser.add_argument("--outbox", required=True, help="outbox_path")
    parser.add_argument("--run", type=int, required=True, help="this run's number")
    parser.add_argument("--count", type=int, required=True, help="messages to send")
    parser.add_argument("--aio", action="store_true", help="use the asyncio client")
    parser.add_argument("--gated", action="store_true",
                        help="connect, print 'connected', wait for a line on stdin, then send")
    args = parser.parse_args()
    if args.aio:
        asyncio.run(run_aio(args))
    else:
        run_sync(args)


if __name__ == "__main__":
    main()
