"""``make demo``: the emulator and a sample device in one process, narrated.

The device side is written with the generic MQTT client speaking IoT Hub's
topics (until the IoT Hub device client lands); the service side uses the
``Hub`` API.  Everything runs on loopback with free ports and a throwaway
state folder, and stops cleanly.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from typing import Any

from iotdev_mqtt import MessageReceived

from .._auth import device_resource_uri, generate_sas_token
from ..mqtt import MQTTClient
from ._hub import Hub

__all__ = ["run_demo"]


def _say(who: str, text: str) -> None:
    print(f"[{who:>7}] {text}", flush=True)


def run_demo(seconds_of_telemetry: float = 2.0) -> int:
    """Run the narrated demo; returns the process exit code."""
    with tempfile.TemporaryDirectory(prefix="iotdev-demo-") as state, \
            Hub(hub_name="demo-hub.local", mqtt_port=0, ws_port=0, state_dir=state) as hub:
        device = hub.add_device("thermostat-1")
        _say("hub", f"emulator listening: MQTT/TLS on 127.0.0.1:{hub.mqtt_port}, "
                    f"MQTT/WebSocket on 127.0.0.1:{hub.ws_port}")
        _say("hub", f"CA certificate: {hub.ca_path}")
        _say("hub", "device connection string: "
                    f"{hub.connection_string('thermostat-1').split(';SharedAccessKey=')[0]}"
                    ";SharedAccessKey=<hidden>")
        assert device.primary_key is not None
        token = generate_sas_token(device_resource_uri(hub.hub_name, device.device_id),
                                   device.primary_key, int(time.time() + 3600))
        events = _SampleDevice()
        client = MQTTClient(
            "localhost", hub.mqtt_port, client_id=device.device_id, transport="tls",
            username=f"{hub.hub_name}/{device.device_id}/?api-version=2021-04-12",
            password=token, server_verification_cert=hub.ca_pem, clean_session=False,
            on_message=events.on_message)
        events.client = client
        try:
            client.connect(timeout=10)
            _say("device", "connected over TLS with a SAS token")
            client.subscribe([("devices/thermostat-1/messages/devicebound/#", 1),
                              ("$iothub/methods/POST/#", 1), ("$iothub/twin/res/#", 1),
                              ("$iothub/twin/PATCH/properties/desired/#", 1)], timeout=10)
            deadline = time.monotonic() + seconds_of_telemetry
            n = 0
            while time.monotonic() < deadline or n < 3:
                n += 1
                body = json.dumps({"temperature": 20.0 + n / 2}).encode()
                client.publish("devices/thermostat-1/messages/events/"
                               "%24.ct=application%2Fjson&%24.ce=utf-8", body, 1).result(10)
                _say("device", f"sent telemetry {body.decode()}")
                (arrived, *_) = hub.wait_for_telemetry("thermostat-1", n, timeout=10)[-1:]
                _say("hub", f"received telemetry {arrived.body.decode()} "
                            f"(content type {arrived.system_properties.get('$.ct')})")
                time.sleep(0.5)  # the demo's own pace, for a human reader
            result = hub.invoke_method("thermostat-1", "setMode", {"mode": "eco"}, timeout=10)
            _say("hub", f"direct method setMode -> status {result.status}, "
                        f"payload {json.dumps(result.payload)}")
            hub.patch_desired("thermostat-1", {"targetTemperature": 21.5})
            _say("hub", "desired property targetTemperature = 21.5")
            if not events.reported.wait(10):
                _say("hub", "no reported answer from the device")
                return 1
            twin = hub.get_twin("thermostat-1")["properties"]["reported"]
            _say("hub", f"device reported: {json.dumps(twin)}")
            hub.send_c2d("thermostat-1", "please recalibrate", message_id="c2d-1")
            if not events.c2d.wait(10):
                _say("hub", "the cloud-to-device message was not received")
                return 1
            client.disconnect()
            _say("device", "disconnected")
        finally:
            client.shutdown()
    _say("hub", "stopped. Everything ran locally, no account needed.")
    return 0


class _SampleDevice:
    """The device's handlers: answer methods, report desired changes, show C2D."""

    def __init__(self) -> None:
        self.client: Any = None
        self.reported = threading.Event()
        self.c2d = threading.Event()

    def on_message(self, message: MessageReceived) -> None:
        topic = message.topic
        if topic.startswith("$iothub/methods/POST/"):
            name = topic.split("/")[3]
            rid = topic.split("$rid=")[1]
            _say("device", f"method {name} called with {message.payload.decode()}")
            self.client.publish(f"$iothub/methods/res/200/?$rid={rid}",
                                json.dumps({"result": f"{name} done"}).encode(), 1)
        elif topic.startswith("$iothub/twin/PATCH/properties/desired/"):
            patch = json.loads(message.payload)
            _say("device", f"desired properties changed: {json.dumps(patch)}")
            reported = {"targetTemperature": patch.get("targetTemperature"), "ack": "applied"}
            self.client.publish("$iothub/twin/PATCH/properties/reported/?$rid=1",
                                json.dumps(reported).encode(), 1)
        elif topic.startswith("$iothub/twin/res/204/"):
            self.reported.set()
        elif "/messages/devicebound/" in topic:
            _say("device", f"cloud-to-device message: {message.payload.decode()!r}")
            self.c2d.set()
