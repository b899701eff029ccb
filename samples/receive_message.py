"""Receive cloud-to-device messages with a handler (v2's receive_message sample).

    python receive_message.py [COUNT]   # stops after COUNT messages, else on Ctrl-C

Environment: see client_options.py.  Send one with
``iotdev-hub c2d DEVICE_ID 'hello' --property k=v``.
"""

import os
import sys
import threading

from client_options import client_options

from iotdev import IoTHubDeviceClient


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else None
    received = 0
    done = threading.Event()
    client = IoTHubDeviceClient.create_from_connection_string(
        os.environ["IOTHUB_DEVICE_CONNECTION_STRING"], **client_options())

    def message_handler(message):
        nonlocal received
        received += 1
        print(f"message received: {message.data.decode()} {message.custom_properties}",
              flush=True)
        if count is not None and received >= count:
            done.set()

    client.on_message_received = message_handler  # subscribes (and connects) here
    print("waiting for messages (Ctrl-C stops)", flush=True)
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    finally:
        client.shutdown()


if __name__ == "__main__":
    main()
