"""Answer direct methods (v2's receive_direct_method sample).

    python receive_direct_method.py [COUNT]   # stops after COUNT calls, else on Ctrl-C

Environment: see client_options.py.  Call one with
``iotdev-hub invoke DEVICE_ID reboot '{"delay": 5}'``.
"""

import os
import sys
import threading

from client_options import client_options

from iotdev import IoTHubDeviceClient, MethodResponse


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else None
    calls = 0
    done = threading.Event()
    client = IoTHubDeviceClient.create_from_connection_string(
        os.environ["IOTHUB_DEVICE_CONNECTION_STRING"], **client_options())

    def method_request_handler(method_request):
        nonlocal calls
        print(f"method {method_request.name} called with {method_request.payload}", flush=True)
        if method_request.name == "reboot":
            status, payload = 200, {"result": True, "data": "rebooting"}
        else:
            status, payload = 400, {"result": False, "data": "unknown method"}
        client.send_method_response(
            MethodResponse.create_from_method_request(method_request, status, payload))
        calls += 1
        if count is not None and calls >= count:
            done.set()

    client.on_method_request_received = method_request_handler
    print("waiting for method calls (Ctrl-C stops)", flush=True)
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    finally:
        client.shutdown()


if __name__ == "__main__":
    main()
