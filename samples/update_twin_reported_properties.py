"""Read the twin and update reported properties (v2's get_twin and
update_twin_reported_properties samples).  Environment: see client_options.py."""

import datetime
import os

from client_options import client_options

from iotdev import IoTHubDeviceClient


def main() -> None:
    client = IoTHubDeviceClient.create_from_connection_string(
        os.environ["IOTHUB_DEVICE_CONNECTION_STRING"], **client_options())
    client.connect()
    try:
        twin = client.get_twin()
        print(f"desired: {twin['desired']}")
        now = datetime.datetime.now(datetime.timezone.utc).isoformat()
        client.patch_twin_reported_properties({"firmware": "1.2.0", "lastBoot": now})
        print(f"reported: {client.get_twin()['reported']}")
    finally:
        client.shutdown()


if __name__ == "__main__":
    main()
