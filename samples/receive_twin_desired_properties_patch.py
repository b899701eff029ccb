"""Receive desired-property patches (v2's twin sample).

    python receive_twin_desired_properties_patch.py [COUNT]

Environment: see client_options.py.  Patch with
``iotdev-hub desired DEVICE_ID '{"rate": 5}'``.
"""

import os
import sys
import threading

from client_options import client_options

from iotdev import IoTHubDeviceClient


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else None
    patches = 0
    done = threading.Event()
    client = IoTHubDeviceClient.create_from_connection_string(
        os.environ["IOTHUB_DEVICE_CONNECTION_STRING"], **client_options())

    def twin_patch_handler(patch):
        nonlocal patches
        print(f"desired properties patch: {patch}", flush=True)
        # acknowledge the new value the way IoT Plug and Play does: report it back
        acknowledged = {k: v for k, v in patch.items() if not k.startswith("$")}
        client.patch_twin_reported_properties(acknowledged)
        print(f"reported: {acknowledged}", flush=True)
        patches += 1
        if count is not None and patches >= count:
            done.set()

    client.on_twin_desired_properties_patch_received = twin_patch_handler
    print("waiting for desired property patches (Ctrl-C stops)", flush=True)
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    finally:
        client.shutdown()


if __name__ == "__main__":
    main()
