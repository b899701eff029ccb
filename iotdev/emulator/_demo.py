"""``make demo``: the emulator and a sample device in one process, narrated.

The device side is written with ``iotdev.IoTHubDeviceClient``, exactly as an
application would be; the service side uses the ``Hub`` API.  Everything runs
on loopback with free ports and a throwaway state folder, and stops cleanly.
"""

from __future__ import annotations

import json
import tempfile
import threading
import time
from typing import Any

from .._models import Message, MethodRequest, MethodResponse
from .._sync_client import IoTHubDeviceClient
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
        device_client = IoTHubDeviceClient.create_from_connection_string(
            hub.connection_string(device.device_id), server_verification_cert=hub.ca_pem,
            port=hub.mqtt_port, https_port=hub.ws_port)
        sample = _SampleDevice(device_client)
        device_client.on_method_request_received = sample.on_method
        device_client.on_twin_desired_properties_patch_received = sample.on_desired
        device_client.on_message_received = sample.on_c2d
        try:
            device_client.connect()
            _say("device", "connected with IoTHubDeviceClient (MQTT over TLS, SAS token)")
            deadline = time.monotonic() + seconds_of_telemetry
            n = 0
            while time.monotonic() < deadline or n < 3:
                n += 1
                body = json.dumps({"temperature": 20.0 + n / 2})
                device_client.send_message(Message(body, content_type="application/json",
                                                   content_encoding="utf-8"))
                _say("device", f"sent telemetry {body}")
                arrived = hub.wait_for_telemetry("thermostat-1", n, timeout=10)[-1]
                _say("hub", f"received telemetry {arrived.body.decode()} "
                            f"(content type {arrived.system_properties.get('$.ct')})")
                time.sleep(0.5)  # the demo's own pace, for a human reader
            result = hub.invoke_method("thermostat-1", "setMode", {"mode": "eco"}, timeout=10)
            _say("hub", f"direct method setMode -> status {result.status}, "
                        f"payload {json.dumps(result.payload)}")
            hub.patch_desired("thermostat-1", {"targetTemperature": 21.5})
            _say("hub", "desired property targetTemperature = 21.5")
            if not sample.reported.wait(10):
                _say("hub", "no reported answer from the device")
                return 1
            twin = hub.get_twin("thermostat-1")["properties"]["reported"]
            _say("hub", f"device reported: {json.dumps(twin)}")
            hub.send_c2d("thermostat-1", "please recalibrate", message_id="c2d-1")
            if not sample.c2d.wait(10):
                _say("hub", "the cloud-to-device message was not received")
                return 1
            log = "\n".join(f"{n:04d} temperature ok" for n in range(200)).encode()
            upload = device_client.upload_blob("diagnostics/today.log", log,
                                               content_type="text/plain")
            _say("device", f"uploaded {upload.size} bytes to {upload.url} (HTTPS, "
                           "then notified the hub)")
            for record in hub.uploads("thermostat-1"):
                _say("hub", f"file upload {record.blob_name}: {record.status}, "
                            f"{record.size} bytes stored")
            device_client.disconnect()
            _say("device", "disconnected")
        finally:
            device_client.shutdown()
    _say("hub", "stopped. Everything ran locally, no account needed.")
    return 0


class _SampleDevice:
    """The device's handlers (they run on the client's handler thread)."""

    def __init__(self, client: IoTHubDeviceClient) -> None:
        self.client = client
        self.reported = threading.Event()
        self.c2d = threading.Event()

    def on_method(self, request: MethodRequest) -> None:
        _say("device", f"method {request.name} called with {json.dumps(request.payload)}")
        self.client.send_method_response(MethodResponse.create_from_method_request(
            request, 200, {"result": f"{request.name} done"}))

    def on_desired(self, patch: Any) -> None:
        _say("device", f"desired properties: {json.dumps(patch)}")
        if "targetTemperature" in patch:
            self.client.patch_twin_reported_properties(
                {"targetTemperature": patch["targetTemperature"], "ack": "applied"})
            self.reported.set()

    def on_c2d(self, message: Message) -> None:
        _say("device", f"cloud-to-device message: {message.data.decode()!r} "
                       f"(id {message.message_id})")
        self.c2d.set()
