"""Modules and the Edge mode of the emulator against Microsoft's own module
client, ``azure.iot.device.IoTHubModuleClient`` 2.14 (sync and asyncio): the
independent peer.

azure-iot-device always dials port 8883 (MQTT) and 443 (HTTPS: module-to-module
methods) of the gateway (or ``HostName``), so this module runs one hub on a
loopback address of its own (``ADDRESS``) with exactly those ports.  Binding them
needs root: without it the module is skipped, or fails when ``CI`` is true.

The Edge modules are created unmodified with ``create_from_edge_environment()``
from the environment the emulator gives (``Hub.edge_environment``): the SDK
fetches the trust bundle and every SAS signature from the emulator's workload
API on its Unix socket.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import socket
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from iotdev.emulator import Hub, HubConnection, HubObserver
from iotdev_mqtt import Connect

_IN_CI = os.environ.get("CI", "").lower() in ("true", "1")

try:  # in the test extra; a missing SDK skips, but fails in CI
    import azure.iot.device as azure_device
    import azure.iot.device.aio as azure_aio
    import azure.iot.device.exceptions as azure_exceptions
except ImportError as exc:
    if _IN_CI:
        raise
    pytest.skip(f"azure-iot-device is not installed: {exc}", allow_module_level=True)

ModuleClient: Any = azure_device.IoTHubModuleClient
AioModuleClient: Any = azure_aio.IoTHubModuleClient
Message: Any = azure_device.Message
MethodResponse: Any = azure_device.MethodResponse
X509: Any = azure_device.X509
CredentialError: Any = azure_exceptions.CredentialError

ADDRESS = "127.0.0.151"
"""This module's own loopback address (no other test module uses it)."""
HUB_NAME = "edge-test-hub.local"
EDGE = "edge-1"
TIMEOUT = 15.0
ROUTES = {
    "filterToSink": 'FROM /messages/modules/filter/outputs/out1 '
                    'INTO BrokeredEndpoint("/modules/sink/inputs/in1")',
    "sinkUp": "FROM /messages/modules/sink/* INTO $upstream",
    "alerts": "FROM /messages/modules/filter/outputs/alerts WHERE level = 'high' "
              "INTO $upstream",
}

T = TypeVar("T")

pytestmark = pytest.mark.filterwarnings(  # azure-iot-device's own ssl.SSLContext(TLSv1_2)
    "ignore:ssl.PROTOCOL_TLSv1_2 is deprecated:DeprecationWarning")


def _unavailable(reason: str) -> None:
    if _IN_CI:
        pytest.fail(f"azure-iot-device Edge tests cannot run in CI: {reason}", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    for port in (8883, 443):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((ADDRESS, port))
            except OSError as exc:
                _unavailable(f"cannot bind {ADDRESS}:{port}: {exc}")
    emulator = Hub(hub_name=HUB_NAME, host=ADDRESS, mqtt_port=8883, ws_port=443,
                   state_dir=tmp_path_factory.mktemp("edge-hub"), connection_host=ADDRESS)
    emulator.add_edge_device(EDGE, routes=ROUTES)
    emulator.add_module(EDGE, "filter")
    emulator.add_module(EDGE, "sink")
    try:
        emulator.start()
    except OSError as exc:
        _unavailable(f"the hub cannot listen on {ADDRESS}:8883/443: {exc}")
    try:
        yield emulator
    finally:
        emulator.stop()


def _run(call: Callable[..., T], *args: Any, timeout: float = TIMEOUT) -> T:
    """Run a blocking SDK call with a timeout (the SDK's own calls never time out)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = call(*args)
        except BaseException as exc:  # handed to the test thread
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise AssertionError(f"{getattr(call, '__name__', call)} did not return in {timeout} s")
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def _edge_client(hub: Hub, module_id: str, monkeypatch: pytest.MonkeyPatch,
                 cls: Any = None, **kwargs: Any) -> Any:
    for name, value in hub.edge_environment(EDGE, module_id).items():
        monkeypatch.setenv(name, value)
    kwargs.setdefault("connection_retry", False)
    return (cls or ModuleClient).create_from_edge_environment(**kwargs)


class Inbox:
    """Things a handler received, waited for with a timeout."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.items: list[Any] = []

    def add(self, item: Any) -> None:
        with self.cond:
            self.items.append(item)
            self.cond.notify_all()

    def wait(self, count: int = 1) -> list[Any]:
        with self.cond:
            assert self.cond.wait_for(lambda: len(self.items) >= count, TIMEOUT), \
                f"{len(self.items)} of {count} arrived"
            return list(self.items)


# ------------------------------------------------------------------ plain modules


def test_module_from_connection_string_telemetry_twin_and_method(hub: Hub) -> None:
    hub.add_device("plain-1")
    hub.add_module("plain-1", "m1")
    client = ModuleClient.create_from_connection_string(
        hub.connection_string("plain-1", module_id="m1"), server_verification_cert=hub.ca_pem)
    patches, methods = Inbox(), Inbox()
    try:
        _run(client.connect)
        assert hub.is_connected("plain-1", "m1")
        message = Message("t1")
        message.custom_properties = {"k": "v"}
        _run(client.send_message, message)
        (received,) = hub.wait_for_telemetry("plain-1", 1, timeout=TIMEOUT)
        assert (received.module_id, received.body, received.properties) == ("m1", b"t1",
                                                                          {"k": "v"})
        _run(client.patch_twin_reported_properties, {"fw": "1.0"})
        assert _run(client.get_twin)["reported"]["fw"] == "1.0"
        client.on_twin_desired_properties_patch_received = patches.add

        def on_method(request: Any) -> None:
            methods.add(request)
            client.send_method_response(MethodResponse.create_from_method_request(
                request, 200, {"echo": request.payload}))

        client.on_method_request_received = on_method
        hub.patch_desired("plain-1", {"rate": 3}, module_id="m1")
        assert patches.wait()[0]["rate"] == 3
        result = hub.invoke_method("plain-1", "ping", {"n": 1}, timeout=TIMEOUT,
                                   module_id="m1")
        assert (result.status, result.payload) == (200, {"echo": {"n": 1}})
        assert methods.wait()[0].name == "ping"
        assert hub.get_twin("plain-1", "m1")["properties"]["reported"]["fw"] == "1.0"
    finally:
        _run(client.shutdown)


def test_x509_module(hub: Hub) -> None:
    hub.add_device("plain-2")
    cert = hub.add_x509_module("plain-2", "xm")
    assert cert.cert_file == hub.state_dir / "modules" / "plain-2" / "xm.pem"
    client = ModuleClient.create_from_x509_certificate(
        X509(str(cert.cert_file), str(cert.key_file)), ADDRESS, "plain-2", "xm",
        server_verification_cert=hub.ca_pem)
    try:
        _run(client.connect)
        _run(client.send_message, "over X.509")
    finally:
        _run(client.shutdown)
    (received,) = hub.wait_for_telemetry("plain-2", 1, timeout=TIMEOUT)
    assert (received.module_id, received.body) == ("xm", b"over X.509")


def test_wrong_module_key_is_refused(hub: Hub) -> None:
    hub.add_device("plain-3")
    hub.add_module("plain-3", "m")
    other = hub.add_module("plain-3", "other")
    client = ModuleClient.create_from_connection_string(
        f"HostName={ADDRESS};DeviceId=plain-3;ModuleId=m;SharedAccessKey={other.primary_key}",
        server_verification_cert=hub.ca_pem, connection_retry=False)
    try:
        with pytest.raises(CredentialError):
            _run(client.connect)
    finally:
        _run(client.shutdown)
    assert not hub.is_connected("plain-3", "m")


# ------------------------------------------------------------------ Edge


def test_edge_environment_names_the_module_and_the_workload_socket(hub: Hub) -> None:
    env = hub.edge_environment(EDGE, "filter")
    module = hub.store.module(EDGE, "filter")
    assert module is not None and module.managed_by == "iotEdge"
    assert env["IOTEDGE_IOTHUBHOSTNAME"] == HUB_NAME
    assert env["IOTEDGE_GATEWAYHOSTNAME"] == ADDRESS
    assert (env["IOTEDGE_DEVICEID"], env["IOTEDGE_MODULEID"]) == (EDGE, "filter")
    assert env["IOTEDGE_MODULEGENERATIONID"] == module.generation_id
    assert env["IOTEDGE_WORKLOADURI"].startswith("unix:///")
    assert Path(env["IOTEDGE_WORKLOADURI"][len("unix://"):]).is_socket()
    with pytest.raises(KeyError):
        hub.edge_environment("plain-x", "filter")


def _workload(hub: Hub, method: str, path: str, body: Any = None) -> tuple[int, Any]:
    sock_path = hub.edge_environment(EDGE, "filter")["IOTEDGE_WORKLOADURI"][len("unix://"):]

    class UnixConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(TIMEOUT)
            self.sock.connect(sock_path)

    conn = UnixConnection("localhost")
    try:
        conn.request(method, path, body=None if body is None else json.dumps(body))
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


def test_workload_api_signs_with_the_module_key_and_refuses_what_edge_refuses(
        hub: Hub) -> None:
    import hashlib
    import hmac

    module = hub.store.module(EDGE, "sink")
    assert module is not None and module.primary_key is not None
    data = base64.b64encode(b"edge-test-hub.local%2Fdevices%2Fedge-1\n123").decode()
    sign = f"/modules/sink/genid/{module.generation_id}/sign?api-version=2019-01-30"
    status, answer = _workload(hub, "POST", sign,
                               {"keyId": "primary", "algo": "HMACSHA256", "data": data})
    expected = hmac.new(base64.b64decode(module.primary_key), base64.b64decode(data),
                        hashlib.sha256).digest()
    assert (status, answer) == (200, {"digest": base64.b64encode(expected).decode()})
    assert _workload(hub, "GET", "/trust-bundle?api-version=2019-01-30") == (
        200, {"certificate": hub.ca_pem})
    assert _workload(hub, "POST", "/modules/sink/genid/0000/sign", {
        "keyId": "primary", "algo": "HMACSHA256", "data": data})[0] == 404
    assert _workload(hub, "POST", f"/modules/nobody/genid/{module.generation_id}/sign", {
        "keyId": "primary", "algo": "HMACSHA256", "data": data})[0] == 404
    status, answer = _workload(hub, "POST", sign, {"keyId": "primary", "algo": "MD5",
                                                   "data": data})
    assert status == 400 and "HMACSHA256" in answer["message"]


def test_edge_modules_routes_twin_methods_sync_and_asyncio(
        hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    inputs, methods = Inbox(), Inbox()
    start = len(hub.telemetry(EDGE))
    sink = _edge_client(hub, "sink", monkeypatch, AioModuleClient)
    filt = _edge_client(hub, "filter", monkeypatch)
    loop = asyncio.new_event_loop()
    runner = threading.Thread(target=loop.run_forever, daemon=True)
    runner.start()

    def aio(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(TIMEOUT)

    async def on_input(message: Any) -> None:
        inputs.add(message)

    async def on_method(request: Any) -> None:
        methods.add(request)
        await sink.send_method_response(MethodResponse.create_from_method_request(
            request, 200, {"hello": request.payload}))

    try:
        async def wire() -> None:
            sink.on_message_received = on_input
            sink.on_method_request_received = on_method
            await sink.connect()

        aio(wire())
        _run(filt.connect)
        message = Message('{"t": 21}', content_type="application/json",
                          content_encoding="utf-8")
        message.custom_properties = {"site": "north"}
        _run(filt.send_message_to_output, message, "out1")
        (received,) = inputs.wait()
        assert received.input_name == "in1"
        assert received.data == b'{"t": 21}'
        # edgeHub adds the sender (connection device/module id); v2 shows unknown
        # system keys among the custom properties.
        assert received.custom_properties == {"site": "north", "$.cdid": EDGE,
                                              "$.cmid": "filter"}
        assert received.content_type == "application/json"
        aio(sink.send_message(Message("upstream from sink")))
        for level in ("low", "high"):
            alert = Message(f"alert {level}")
            alert.custom_properties = {"level": level}
            _run(filt.send_message_to_output, alert, "alerts")
        arrived = hub.wait_for_telemetry(EDGE, start + 2, timeout=TIMEOUT)[start:]
        assert sorted((m.module_id, m.body) for m in arrived) == [
            ("filter", b"alert high"), ("sink", b"upstream from sink")]
        answer = _run(filt.invoke_method, {"methodName": "greet", "payload": {"n": 1},
                                           "responseTimeoutInSeconds": 10}, EDGE, "sink")
        assert answer == {"status": 200, "payload": {"hello": {"n": 1}}}
        assert methods.wait()[0].name == "greet"
        _run(filt.patch_twin_reported_properties, {"routes": "ok"})
        hub.patch_desired(EDGE, {"threshold": 30}, module_id="sink")
        twin = aio(sink.get_twin())
        assert twin["desired"]["threshold"] == 30
        assert hub.get_twin(EDGE, "filter")["properties"]["reported"]["routes"] == "ok"
        assert hub.store.telemetry(EDGE)[start:] == arrived  # out1 did not go upstream
    finally:
        _run(filt.shutdown)
        aio(sink.shutdown())
        loop.call_soon_threadsafe(loop.stop)
        runner.join(TIMEOUT)
        loop.close()


def test_edge_routes_and_modules_persist(tmp_path: Path) -> None:
    socket_path = tmp_path / "wl.sock"
    with Hub(mqtt_port=0, ws_port=0, state_dir=tmp_path / "s") as first:
        first.add_edge_device("e", routes={"up": "FROM /messages/* INTO $upstream"},
                              workload_socket=socket_path)
        first.add_module("e", "a")
        assert socket_path.is_socket()
        with pytest.raises(ValueError, match="unknown sink"):
            first.set_routes("e", {"bad": "FROM /messages/* INTO nowhere"})
    assert not socket_path.exists()
    with Hub(mqtt_port=0, ws_port=0, state_dir=tmp_path / "s") as second:
        assert second.edge.devices["e"].routes == {"up": "FROM /messages/* INTO $upstream"}
        assert second.store.module("e", "a") is not None
        assert socket_path.is_socket()
        env = second.edge_environment("e", "a")
        assert env["IOTEDGE_WORKLOADURI"] == f"unix://{socket_path}"


def test_sas_renewal_is_signed_by_the_workload_api(hub: Hub,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    passwords = Inbox()

    class Connects(HubObserver):
        def on_connect(self, conn: HubConnection, packet: Connect,
                       refusal: str | None) -> None:
            if packet.client_id == f"{EDGE}/filter" and refusal is None:
                passwords.add(packet.password)

    watcher = Connects()
    hub.add_observer(watcher)
    # azure-iot-device renews 120 s before expiry: a 123 s token renews after ~3 s.
    client = _edge_client(hub, "filter", monkeypatch, sastoken_ttl=123)
    try:
        _run(client.connect)
        first, second = passwords.wait(2)[:2]
        assert first != second  # a new token, accepted: signed with the module's key
        _run(client.send_message, "after renewal")
    finally:
        _run(client.shutdown)
        hub.remove_observer(watcher)


def test_edge_module_over_websockets_invokes_a_device_method(
        hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    from azure.iot.device import IoTHubDeviceClient

    hub.add_device("leafless-1")
    device = IoTHubDeviceClient.create_from_connection_string(
        hub.connection_string("leafless-1"), server_verification_cert=hub.ca_pem)
    calls = Inbox()

    def on_method(request: Any) -> None:
        calls.add(request.name)
        device.send_method_response(MethodResponse.create_from_method_request(
            request, 201, {"from": "device"}))

    device.on_method_request_received = on_method
    filt = _edge_client(hub, "filter", monkeypatch, websockets=True)
    start = len(hub.telemetry(EDGE))
    try:
        _run(device.connect)
        _run(filt.connect)
        assert hub.is_connected(EDGE, "filter")
        answer = _run(filt.invoke_method, {"methodName": "reboot",
                                           "responseTimeoutInSeconds": 10}, "leafless-1")
        assert answer == {"status": 201, "payload": {"from": "device"}}
        assert calls.wait() == ["reboot"]
        alert = Message("over wss")
        alert.custom_properties = {"level": "high"}
        _run(filt.send_message_to_output, alert, "alerts")
        (arrived,) = hub.wait_for_telemetry(EDGE, start + 1, timeout=TIMEOUT)[start:]
        assert (arrived.module_id, arrived.body) == ("filter", b"over wss")
    finally:
        _run(filt.shutdown)
        _run(device.shutdown)


@pytest.mark.parametrize("case", ["no token", "no module header", "token of another module",
                                  "not an Edge module"])
def test_module_to_module_method_refusals(hub: Hub, case: str) -> None:
    import ssl
    import time

    from iotdev._auth import device_resource_uri, generate_sas_token

    if hub.store.module("plain-9", "p") is None:
        hub.add_device("plain-9")
        hub.add_module("plain-9", "p")

    def token(device_id: str, module_id: str) -> str:
        module = hub.store.module(device_id, module_id)
        assert module is not None and module.primary_key is not None
        return generate_sas_token(device_resource_uri(HUB_NAME, device_id, module_id),
                                  module.primary_key, int(time.time() + 60))

    headers = {"x-ms-edge-moduleId": f"{EDGE}/filter",
               "Authorization": token(EDGE, "filter"), "Content-Type": "application/json"}
    if case == "no token":
        del headers["Authorization"]
    elif case == "no module header":
        del headers["x-ms-edge-moduleId"]
    elif case == "token of another module":
        headers["Authorization"] = token(EDGE, "sink")
    else:
        headers.update({"x-ms-edge-moduleId": "plain-9/p", "Authorization": token("plain-9",
                                                                                    "p")})
    conn = http.client.HTTPSConnection(ADDRESS, 443, timeout=TIMEOUT,
                                       context=ssl.create_default_context(cadata=hub.ca_pem))
    try:
        conn.request("POST", f"/twins/{EDGE}/modules/sink/methods?api-version=2019-10-01",
                     body=json.dumps({"methodName": "m", "responseTimeoutInSeconds": 5}),
                     headers=headers)
        response = conn.getresponse()
        body = json.loads(response.read())
    finally:
        conn.close()
    assert response.status == 401, body
    assert "IotHubUnauthorizedAccess" in body["Message"]
