"""Send telemetry with the asyncio client, ten messages concurrently (v2's
async send_message sample).  Environment: see client_options.py."""

import asyncio
import os
import uuid

from client_options import client_options

from iotdev import Message
from iotdev.aio import IoTHubDeviceClient


async def main() -> None:
    client = IoTHubDeviceClient.create_from_connection_string(
        os.environ["IOTHUB_DEVICE_CONNECTION_STRING"], **client_options())
    await client.connect()

    async def send(i: int) -> None:
        msg = Message(f"test message #{i}")
        msg.message_id = uuid.uuid4()
        await client.send_message(msg)
        print(f"sent message #{i}")

    try:
        await asyncio.gather(*(send(i) for i in range(1, 11)))
    finally:
        await client.shutdown()


if __name__ == "__main__":
    asyncio.run(main())
