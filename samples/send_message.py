"""Send telemetry (azure-iot-device v2's send_message sample, with iotdev's imports).

Environment (every sample; client_options.py):

    IOTHUB_DEVICE_CONNECTION_STRING  the device's connection string
    IOTHUB_CA_FILE                   the emulator's CA (iotdev-hub prints it); unset for Azure
    IOTHUB_PORT                      the emulator's MQTT port when it is not 8883
"""

import json
import os
import uuid

from client_options import client_options

from iotdev import IoTHubDeviceClient, Message


def main() -> None:
    conn_str = os.environ["IOTHUB_DEVICE_CONNECTION_STRING"]
    client = IoTHubDeviceClient.create_from_connection_string(conn_str, **client_options())
    client.connect()
    try:
        for i in range(1, 6):
            msg = Message(json.dumps({"temperature": 20 + i / 2}))
            msg.message_id = uuid.uuid4()
            msg.correlation_id = "correlation-1234"
            msg.custom_properties["tornado-warning"] = "yes"
            msg.content_encoding = "utf-8"
            msg.content_type = "application/json"
            client.send_message(msg)  # returns when the hub acknowledged it
            print(f"sent message #{i}")
    finally:
        client.shutdown()


if __name__ == "__main__":
    main()
