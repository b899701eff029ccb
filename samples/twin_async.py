"""The twin with the asyncio client: read it, report a property, then wait for
desired-property patches (v2's async twin samples).

    python twin_async.py [COUNT]   # stops after COUNT patches, else on Ctrl-C
"""

import asyncio
import os
import sys

from client_options import client_options

from iotdev.aio import IoTHubDeviceClient


async def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else None
    patches: asyncio.Queue = asyncio.Queue()
    client = IoTHubDeviceClient.create_from_connection_string(
        os.environ["IOTHUB_DEVICE_CONNECTION_STRING"], **client_options())
    async def patch_handler(patch):  # runs on the client's loop
        patches.put_nowait(patch)

    client.on_twin_desired_properties_patch_received = patch_handler
    await client.connect()
    try:
        twin = await client.get_twin()
        print(f"desired: {twin['desired']}", flush=True)
        await client.patch_twin_reported_properties({"firmware": "1.2.0"})
        print("reported firmware 1.2.0; waiting for desired property patches", flush=True)
        n = 0
        while count is None or n < count:
            patch = await patches.get()
            print(f"desired properties patch: {patch}", flush=True)
            acknowledged = {k: v for k, v in patch.items() if not k.startswith("$")}
            await client.patch_twin_reported_properties(acknowledged)
            print(f"reported: {acknowledged}", flush=True)
            n += 1
    finally:
        await client.shutdown()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
