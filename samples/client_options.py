"""The options every sample passes to ``create_from_*``, from the environment.

    IOTHUB_CA_FILE   the emulator's CA certificate (``iotdev-hub serve`` prints its
                     path): ``server_verification_cert``.  Unset for Azure IoT Hub.
    IOTHUB_PORT      the emulator's port when it is not the default (8883 for
                     MQTT/TLS, 443 for WebSocket): iotdev's ``port`` option.
"""

import os


def client_options() -> dict:
    options = {}
    if os.getenv("IOTHUB_CA_FILE"):
        with open(os.environ["IOTHUB_CA_FILE"]) as f:
            options["server_verification_cert"] = f.read()
    if os.getenv("IOTHUB_PORT"):
        options["port"] = int(os.environ["IOTHUB_PORT"])
    return options
