"""Receive cloud-to-device messages with the asyncio client (v2's async
receive_message sample).

    python receive_message_async.py [COUNT]   # stops after COUNT messages, else on Ctrl-C
"""

import asyncio
import os
import sys

from client_options import client_options

from iotdev.aio import IoTHubDeviceClient


async def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else None
    done = asyncio.Event()
    received = 0
    client = IoTHubDeviceClient.create_from_connection_string(
        os.environ["IOTHUB_DEVICE_CONNECTION_STRING"], **client_options())

    async def message_handler(message):  # a plain function runs on a handler thread, as in v2
        nonlocal received
        received += 1
        print(f"message received: {message.data.decode()} {message.custom_properties}",
              flush=True)
        if count is not None and received >= count:
            done.set()

    client.on_message_received = message_handler
    await client.connect()
    print("waiting for messages (Ctrl-C stops)", flush=True)
    try:
        await done.wait()
    finally:
        await client.shutdown()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
