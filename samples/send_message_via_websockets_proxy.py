"""Send telemetry over MQTT/WebSocket, optionally through a proxy (v2's
send_message_via_proxy sample).

    PROXY_TYPE (HTTP, SOCKS4 or SOCKS5), PROXY_ADDR, PROXY_PORT,
    PROXY_USERNAME, PROXY_PASSWORD: the proxy (all optional: no proxy)
    IOTHUB_DEVICE_CONNECTION_STRING, IOTHUB_CA_FILE: as in client_options.py
    IOTHUB_PORT: the emulator's WebSocket port when it is not 443
"""

import os

from client_options import client_options

from iotdev import IoTHubDeviceClient, Message, ProxyOptions


def main() -> None:
    options = client_options()
    if os.getenv("PROXY_TYPE"):
        options["proxy_options"] = ProxyOptions(
            proxy_type=os.environ["PROXY_TYPE"], proxy_addr=os.environ["PROXY_ADDR"],
            proxy_port=int(os.environ["PROXY_PORT"]),
            proxy_username=os.getenv("PROXY_USERNAME"),
            proxy_password=os.getenv("PROXY_PASSWORD"))
    client = IoTHubDeviceClient.create_from_connection_string(
        os.environ["IOTHUB_DEVICE_CONNECTION_STRING"], websockets=True, **options)
    client.connect()
    try:
        client.send_message(Message("hello over WebSocket"))
        via = f" via {os.environ['PROXY_TYPE']} proxy" if os.getenv("PROXY_TYPE") else ""
        print(f"sent a message over MQTT/WebSocket{via}")
    finally:
        client.shutdown()


if __name__ == "__main__":
    main()
