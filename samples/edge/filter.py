"""An IoT Edge filter module (azure-iot-device v2 code: only the import
differs).  It reads a simulated temperature sensor, forwards the readings over
the threshold of its twin's desired property ``threshold`` (default 30) to its
output ``alerts``, asks the sink module for its statistics with a direct
method, and ends the stream with a message marked ``end``."""

from iotdev import IoTHubModuleClient, Message

READINGS = [21.5, 24.0, 31.2, 28.9, 35.4, 22.1, 33.3]


def main() -> None:
    client = IoTHubModuleClient.create_from_edge_environment()
    client.connect()
    desired = client.get_twin()["desired"]
    threshold = desired.get("threshold", 30)
    sent = 0
    for number, value in enumerate(READINGS):
        if value <= threshold:
            continue
        message = Message(f'{{"reading": {number}, "temperature": {value}}}',
                          content_type="application/json", content_encoding="utf-8")
        message.custom_properties = {"level": "high" if value > 33 else "warm"}
        client.send_message_to_output(message, "alerts")
        sent += 1
    client.patch_twin_reported_properties({"forwarded": sent, "threshold": threshold})
    answer = client.invoke_method({"methodName": "stats", "payload": {"from": "filter"},
                                   "responseTimeoutInSeconds": 30}, "edge-1", "sink")
    print(f"filter: forwarded {sent} of {len(READINGS)} readings; sink stats -> {answer}")
    end = Message("{}")
    end.custom_properties = {"end": "true"}
    client.send_message_to_output(end, "alerts")
    client.shutdown()


if __name__ == "__main__":
    main()
