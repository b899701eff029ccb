"""Answer direct methods with the asyncio client (v2's async sample).

    python receive_direct_method_async.py [COUNT]
"""

import asyncio
import os
import sys

from client_options import client_options

from iotdev import MethodResponse
from iotdev.aio import IoTHubDeviceClient


async def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else None
    done = asyncio.Event()
    calls = 0
    client = IoTHubDeviceClient.create_from_connection_string(
        os.environ["IOTHUB_DEVICE_CONNECTION_STRING"], **client_options())

    async def method_request_handler(method_request):
        nonlocal calls
        print(f"method {method_request.name} called with {method_request.payload}", flush=True)
        status = 200 if method_request.name == "reboot" else 400
        await client.send_method_response(MethodResponse.create_from_method_request(
            method_request, status, {"result": status == 200}))
        calls += 1
        if count is not None and calls >= count:
            done.set()

    client.on_method_request_received = method_request_handler
    await client.connect()
    print("waiting for method calls (Ctrl-C stops)", flush=True)
    try:
        await done.wait()
    finally:
        await client.shutdown()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
