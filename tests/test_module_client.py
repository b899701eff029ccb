"""``iotdev.IoTHubModuleClient`` and ``iotdev.aio.IoTHubModuleClient`` against
the emulator: plain modules (connection string, SAS token, X.509) and IoT
Edge modules made with ``create_from_edge_environment()`` from the
environment the emulator prints, whose trust bundle and SAS signatures come
from the workload API on its Unix socket.  Outputs and inputs go through the
Edge routes between our modules and Microsoft's own
``azure.iot.device.IoTHubModuleClient`` (the independent peer), both ways.

azure-iot-device always dials 8883 and 443, so the hub listens on this
module's own loopback address (``ADDRESS``) with those ports; binding them
needs root (skipped without it, failing when ``CI`` is true)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

import iotdev
import iotdev.aio
from iotdev import ClientError, CredentialError, Message, MethodResponse, ServiceError
from iotdev._auth import device_resource_uri, generate_sas_token
from iotdev.emulator import Hub, HubConnection, HubObserver
from iotdev_mqtt import Connect
from tests._workload_fake import FakeWorkload

_IN_CI = os.environ.get("CI", "").lower() in ("true", "1")

try:  # in the test extra; a missing SDK skips, but fails in CI
    import azure.iot.device as azure_device
except ImportError as exc:
    if _IN_CI:
        raise
    pytest.skip(f"azure-iot-device is not installed: {exc}", allow_module_level=True)

ADDRESS = "127.0.0.155"
"""This module's own loopback address (no other test module uses it)."""
HUB_NAME = "module-test-hub.local"
EDGE = "edge-m"
TIMEOUT = 15.0
ROUTES = {
    "toSink": 'FROM /messages/modules/filter/outputs/out1 '
              'INTO BrokeredEndpoint("/modules/sink/inputs/in1")',
    "toAzureSink": 'FROM /messages/modules/filter/outputs/out1 '
                   'INTO BrokeredEndpoint("/modules/msink/inputs/in1")',
    "fromAzure": 'FROM /messages/modules/mfilter/outputs/out1 '
                 'INTO BrokeredEndpoint("/modules/sink/inputs/fromazure")',
    "sinkUp": "FROM /messages/modules/sink/* INTO $upstream",
}

pytestmark = pytest.mark.filterwarnings(  # azure-iot-device's own ssl.SSLContext(TLSv1_2)
    "ignore:ssl.PROTOCOL_TLSv1_2 is deprecated:DeprecationWarning")


def _unavailable(reason: str) -> None:
    if _IN_CI:
        pytest.fail(f"module client tests cannot run in CI: {reason}", pytrace=False)
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
                   state_dir=tmp_path_factory.mktemp("module-hub"), connection_host=ADDRESS)
    emulator.add_edge_device(EDGE, routes=ROUTES)
    for module_id in ("filter", "sink", "mfilter", "msink"):
        emulator.add_module(EDGE, module_id)
    emulator.add_device("plain")
    emulator.add_module("plain", "m1")
    try:
        emulator.start()
    except OSError as exc:
        _unavailable(f"the hub cannot listen on {ADDRESS}:8883/443: {exc}")
    try:
        yield emulator
    finally:
        emulator.stop()


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


def _edge_env(hub: Hub, module_id: str, monkeypatch: pytest.MonkeyPatch,
              cli: bool = False) -> None:
    """Set the module's ``IOTEDGE_*`` environment: the emulator's, or (``cli``)
    what ``iotdev-hub edge-env DEVICE/MODULE --json`` prints."""
    env = hub.edge_environment(EDGE, module_id)
    if cli:
        done = subprocess.run([sys.executable, "-m", "iotdev.emulator", "edge-env",
                               f"{EDGE}/{module_id}", "--state", str(hub.state_dir),
                               "--json"], capture_output=True, text=True, timeout=60,
                              check=True)
        env = json.loads(done.stdout)
        assert env == hub.edge_environment(EDGE, module_id)
    for name, value in env.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def loop() -> Iterator[Callable[[Any], Any]]:
    """Run coroutines on a loop in another thread (the sync clients' handlers
    run on this one)."""
    running = asyncio.new_event_loop()
    runner = threading.Thread(target=running.run_forever, daemon=True)
    runner.start()

    def run(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, running).result(TIMEOUT)

    yield run
    running.call_soon_threadsafe(running.stop)
    runner.join(TIMEOUT)
    running.close()


# ------------------------------------------------------------------ plain modules


def test_sync_module_every_method_from_a_connection_string(hub: Hub) -> None:
    client = iotdev.IoTHubModuleClient.create_from_connection_string(
        hub.connection_string("plain", module_id="m1"), server_verification_cert=hub.ca_pem,
        operation_timeout=TIMEOUT)
    patches, methods, states = Inbox(), Inbox(), Inbox()
    start = len(hub.telemetry("plain"))
    try:
        client.on_connection_state_change = lambda: states.add(client.connected)
        client.connect()
        assert hub.is_connected("plain", "m1") and states.wait() == [True]
        message = Message("t1")
        message.custom_properties = {"k": "v"}
        client.send_message(message)
        output = Message("to an output")
        client.send_message_to_output(output, "out9")
        assert output.output_name == "out9"  # as v2: the caller's message carries it
        arrived = hub.wait_for_telemetry("plain", start + 2, timeout=TIMEOUT)[start:]
        assert [(m.module_id, m.body, m.properties) for m in arrived] == [
            ("m1", b"t1", {"k": "v"}), ("m1", b"to an output", {})]
        assert arrived[1].system_properties.get("$.on") == "out9"
        client.patch_twin_reported_properties({"fw": "1.0"})
        assert client.get_twin()["reported"]["fw"] == "1.0"
        assert hub.get_twin("plain", "m1")["properties"]["reported"]["fw"] == "1.0"
        client.on_twin_desired_properties_patch_received = patches.add

        def on_method(request: Any) -> None:
            methods.add(request)
            client.send_method_response(MethodResponse.create_from_method_request(
                request, 200, {"echo": request.payload}))

        client.on_method_request_received = on_method
        hub.patch_desired("plain", {"rate": 3}, module_id="m1")
        assert patches.wait()[0]["rate"] == 3
        result = hub.invoke_method("plain", "ping", {"n": 1}, timeout=TIMEOUT, module_id="m1")
        assert (result.status, result.payload) == (200, {"echo": {"n": 1}})
        assert methods.wait()[0].name == "ping"
        with pytest.raises(ClientError, match="create_from_edge_environment"):
            client.invoke_method({"methodName": "x"}, "plain")  # as v2: Edge clients only
        with pytest.raises(TypeError):
            client.send_message_to_output("x", None)  # type: ignore[arg-type]
        client.disconnect()
        assert not client.connected
    finally:
        client.shutdown()
    with pytest.raises(ClientError):
        client.connect()


def test_sync_receive_message_on_input_is_deprecated_and_keyed_by_input(hub: Hub) -> None:
    hub.add_module(EDGE, "apireader")
    hub.set_routes(EDGE, {**ROUTES, "api": 'FROM /messages/modules/filter/outputs/api '
                                           'INTO BrokeredEndpoint("/modules/apireader/'
                                           'inputs/first")'})
    reader = iotdev.IoTHubModuleClient.create_from_connection_string(
        hub.connection_string(EDGE, module_id="apireader"),
        server_verification_cert=hub.ca_pem)
    sender = iotdev.IoTHubModuleClient.create_from_connection_string(
        hub.connection_string(EDGE, module_id="filter"), server_verification_cert=hub.ca_pem)
    try:
        with pytest.warns(DeprecationWarning, match="receive_message_on_input"):
            assert reader.receive_message_on_input("first", block=False) is None
        sender.send_message_to_output(Message("via api"), "api")
        with pytest.warns(DeprecationWarning):
            assert reader.receive_message_on_input("second", timeout=0.2) is None
        with pytest.warns(DeprecationWarning):
            got = reader.receive_message_on_input("first", timeout=TIMEOUT)
        assert got is not None and (got.data, got.input_name) == (b"via api", "first")
        with pytest.raises(ClientError, match="receive APIs"):
            reader.on_message_received = print  # v2's receive-mode lock
    finally:
        reader.shutdown()
        sender.shutdown()
        hub.set_routes(EDGE, ROUTES)


def test_sastoken_and_x509_modules_sync_and_asyncio(hub: Hub,
                                                     loop: Callable[[Any], Any]) -> None:
    module = hub.store.module("plain", "m1")
    assert module is not None and module.primary_key is not None
    uri = device_resource_uri(ADDRESS, "plain", "m1")
    token = generate_sas_token(uri, module.primary_key, int(time.time() + 300))
    client = iotdev.IoTHubModuleClient.create_from_sastoken(
        token, server_verification_cert=hub.ca_pem)
    start = len(hub.telemetry("plain"))
    try:
        client.send_message("by token")  # auto_connect
        client.update_sastoken(generate_sas_token(uri, module.primary_key,
                                                  int(time.time() + 600)))
        client.send_message("by a new token")
        with pytest.raises(ValueError, match="device"):
            client.update_sastoken(generate_sas_token(
                device_resource_uri(ADDRESS, "plain"), module.primary_key,
                int(time.time() + 600)))
    finally:
        client.shutdown()
    cert = hub.add_x509_module("plain", "xm")

    async def x509_module() -> None:
        aclient = iotdev.aio.IoTHubModuleClient.create_from_x509_certificate(
            iotdev.X509(str(cert.cert_file), str(cert.key_file)), ADDRESS, "plain", "xm",
            server_verification_cert=hub.ca_pem)
        try:
            await aclient.connect()
            await aclient.send_message_to_output("x509 output", "o")
        finally:
            await aclient.shutdown()

    loop(x509_module())
    arrived = hub.wait_for_telemetry("plain", start + 3, timeout=TIMEOUT)[start:]
    assert sorted((m.module_id, m.body) for m in arrived) == [
        ("m1", b"by a new token"), ("m1", b"by token"), ("xm", b"x509 output")]


# ------------------------------------------------------------------ refusals


def test_factories_refuse_what_v2_refuses(hub: Hub, monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    device_string = hub.connection_string("plain")
    module_string = hub.connection_string("plain", module_id="m1")
    for cls in (iotdev.IoTHubModuleClient, iotdev.aio.IoTHubModuleClient):
        with pytest.raises(ValueError, match="device"):
            cls.create_from_connection_string(device_string)
        with pytest.raises(TypeError, match="gateway_hostname"):
            cls.create_from_connection_string(module_string, gateway_hostname="gw")
        assert not hasattr(cls, "create_from_symmetric_key")  # v2's module has none
        assert not hasattr(cls, "receive_message")
        assert not hasattr(cls, "upload_blob")
    with pytest.raises(ValueError, match="module"):
        iotdev.IoTHubDeviceClient.create_from_connection_string(module_string)
    assert not hasattr(iotdev.IoTHubDeviceClient, "send_message_to_output")
    key = hub.store.module("plain", "m1").primary_key  # type: ignore[union-attr]
    device_token = generate_sas_token(device_resource_uri(ADDRESS, "plain"), key,
                                      int(time.time() + 60))
    with pytest.raises(ValueError, match="for a device"):
        iotdev.IoTHubModuleClient.create_from_sastoken(device_token)
    expired = generate_sas_token(device_resource_uri(ADDRESS, "plain", "m1"), key,
                                 int(time.time() - 10))
    with pytest.raises(ValueError, match="expired"):
        iotdev.IoTHubModuleClient.create_from_sastoken(expired)
    with pytest.raises(TypeError, match="sastoken_ttl"):
        iotdev.IoTHubModuleClient.create_from_x509_certificate(
            iotdev.X509(__file__, __file__), ADDRESS, "plain", "m1", sastoken_ttl=60)
    for name in [n for n in os.environ if n.startswith("IOTEDGE_") or n.startswith("Edge")]:
        monkeypatch.delenv(name)
    with pytest.raises(OSError, match=r"^IoT Edge environment not configured correctly$"):
        iotdev.IoTHubModuleClient.create_from_edge_environment()
    _edge_env(hub, "filter", monkeypatch)
    for option in ("server_verification_cert", "gateway_hostname"):
        with pytest.raises(TypeError, match=option):
            iotdev.aio.IoTHubModuleClient.create_from_edge_environment(**{option: "x"})


def test_wrong_module_key_is_refused(hub: Hub) -> None:
    other = hub.store.module(EDGE, "msink")
    assert other is not None
    client = iotdev.IoTHubModuleClient.create_from_connection_string(
        f"HostName={ADDRESS};DeviceId=plain;ModuleId=m1;SharedAccessKey={other.primary_key}",
        server_verification_cert=hub.ca_pem, connection_retry=False)
    try:
        with pytest.raises(CredentialError):
            client.connect(timeout=TIMEOUT)
    finally:
        client.shutdown()


@pytest.mark.parametrize("case", ["trust-bundle 404", "sign 500", "no socket"])
def test_failing_workload_api_is_an_oserror_naming_the_status(
        hub: Hub, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    _edge_env(hub, "filter", monkeypatch)
    path = Path(f"/tmp/iotdev-wl-{os.getpid()}-{case.split()[0]}.sock")
    path.unlink(missing_ok=True)
    monkeypatch.setenv("IOTEDGE_WORKLOADURI", f"unix://{path}")
    fake = None
    if case == "trust-bundle 404":
        fake = FakeWorkload(path, {"/trust-bundle": 404})
    elif case == "sign 500":
        fake = FakeWorkload(path, {"sign": 500},
                            {"/trust-bundle": {"certificate": hub.ca_pem}})
    try:
        with pytest.raises(OSError) as caught:
            iotdev.IoTHubModuleClient.create_from_edge_environment()
    finally:
        if fake is not None:
            fake.close()
        path.unlink(missing_ok=True)
    text = str(caught.value)
    assert str(path) in text
    if case == "trust-bundle 404":
        assert "404" in text and "/trust-bundle" in text
    elif case == "sign 500":
        assert "500" in text and isinstance(caught.value, ValueError)  # v2: ValueError
    else:
        assert "could not be reached" in text


def test_workload_api_over_http(hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    """An ``http://host:port`` workload URI (the runtime's other form)."""
    module = hub.store.module(EDGE, "filter")
    assert module is not None
    fake = FakeWorkload(None, {}, {"/trust-bundle": {"certificate": hub.ca_pem}},
                        key=module.primary_key)
    port = fake.server.getsockname()[1]
    _edge_env(hub, "filter", monkeypatch)
    monkeypatch.setenv("IOTEDGE_WORKLOADURI", f"http://127.0.0.1:{port}/edge/")
    try:
        client = iotdev.IoTHubModuleClient.create_from_edge_environment(sastoken_ttl=600)
        try:
            client.connect()
            assert hub.is_connected(EDGE, "filter")
        finally:
            client.shutdown()
    finally:
        fake.close()
    targets = [target for target, _ in fake.requests]
    assert targets[0] == "/edge/trust-bundle?api-version=2019-01-30"  # under the URI's path
    assert targets[1] == (f"/edge/modules/filter/genid/{module.generation_id}/sign"
                          "?api-version=2019-01-30")
    assert json.loads(fake.requests[1][1])["keyId"] == "primary"
    assert len(targets) == 2  # the signature made at creation served the CONNECT


def test_asyncio_client_signs_without_blocking_its_loop(
        hub: Hub, monkeypatch: pytest.MonkeyPatch, loop: Callable[[Any], Any],
        tmp_path: Path) -> None:
    """The workload API answers a signature only once a task on the client's
    loop says so: a client that signed blocking on its loop would never get
    the answer (the task could not run) and fail after the workload timeout."""
    module = hub.store.module(EDGE, "sink")
    assert module is not None
    path = tmp_path / "workload.sock"
    fake = FakeWorkload(path, {}, {"/trust-bundle": {"certificate": hub.ca_pem}},
                        key=module.primary_key)
    _edge_env(hub, "sink", monkeypatch)
    monkeypatch.setenv("IOTEDGE_WORKLOADURI", f"unix://{path}")
    client = iotdev.aio.IoTHubModuleClient.create_from_edge_environment()

    async def first_connection() -> None:  # takes the token signed at creation
        await client.connect()
        await client.disconnect()

    loop(first_connection())
    fake.gate.clear()
    fake.signing.clear()
    before = len(fake.requests)

    async def release() -> None:
        assert await asyncio.to_thread(fake.signing.wait, TIMEOUT)
        fake.gate.set()  # runs on the client's loop: only if the loop is free

    async def scenario() -> None:
        try:
            await asyncio.gather(client.connect(), release())
            assert client.connected
        finally:
            await client.shutdown()

    try:
        loop(scenario())
    finally:
        fake.gate.set()
        fake.close()
    signs = [t for t, _ in fake.requests[before:] if "/sign" in t]
    assert len(signs) == 1  # the CONNECT took the token signed ahead


# ------------------------------------------------------------------ Edge


def test_edge_modules_ours_and_azure_through_routes(
        hub: Hub, monkeypatch: pytest.MonkeyPatch, loop: Callable[[Any], Any]) -> None:
    ours_in, azure_in, methods = Inbox(), Inbox(), Inbox()
    _edge_env(hub, "sink", monkeypatch)
    sink = iotdev.aio.IoTHubModuleClient.create_from_edge_environment(
        operation_timeout=TIMEOUT)
    _edge_env(hub, "filter", monkeypatch, cli=True)
    filt = iotdev.IoTHubModuleClient.create_from_edge_environment(operation_timeout=TIMEOUT)
    _edge_env(hub, "msink", monkeypatch)
    msink = azure_device.IoTHubModuleClient.create_from_edge_environment(
        connection_retry=False)
    _edge_env(hub, "mfilter", monkeypatch)
    mfilter = azure_device.IoTHubModuleClient.create_from_edge_environment(
        connection_retry=False)
    start = len(hub.telemetry(EDGE))

    async def on_method(request: Any) -> None:
        methods.add(request)
        await sink.send_method_response(MethodResponse.create_from_method_request(
            request, 200, {"hello": request.payload}))

    async def wire() -> None:
        sink.on_message_received = ours_in.add
        sink.on_method_request_received = on_method
        await sink.connect()

    def on_azure_method(request: Any) -> None:
        msink.send_method_response(azure_device.MethodResponse.create_from_method_request(
            request, 201, {"azure": request.payload}))

    try:
        loop(wire())
        msink.on_message_received = azure_in.add
        msink.on_method_request_received = on_azure_method
        msink.connect()
        mfilter.connect()
        filt.connect()
        message = Message('{"t": 21}', content_type="application/json",
                          content_encoding="utf-8")
        message.custom_properties = {"site": "north"}
        filt.send_message_to_output(message, "out1")  # to our sink and Microsoft's
        mfilter.send_message_to_output(azure_device.Message("from azure"), "out1")
        got = {m.input_name: m for m in ours_in.wait(2)}
        assert got["in1"].data == b'{"t": 21}'
        assert got["in1"].content_type == "application/json"
        assert got["in1"].custom_properties == {"site": "north", "$.cdid": EDGE,
                                                "$.cmid": "filter"}
        assert got["fromazure"].data == b"from azure"
        (theirs,) = azure_in.wait()
        assert (theirs.input_name, theirs.data) == ("in1", b'{"t": 21}')
        loop(sink.send_message("upstream from sink"))
        loop(sink.send_message_to_output("sink output", "any"))
        arrived = hub.wait_for_telemetry(EDGE, start + 2, timeout=TIMEOUT)[start:]
        assert sorted(m.body for m in arrived) == [b"sink output", b"upstream from sink"]
        # module-to-module methods through the gateway, to ours and to Microsoft's
        answer = filt.invoke_method({"methodName": "greet", "payload": {"n": 1},
                                     "responseTimeoutInSeconds": 10}, EDGE, "sink")
        assert answer == {"status": 200, "payload": {"hello": {"n": 1}}}
        assert methods.wait()[0].name == "greet"
        answer = loop(sink.invoke_method({"methodName": "hi", "payload": 2}, EDGE, "msink"))
        assert answer == {"status": 201, "payload": {"azure": 2}}
        answer = mfilter.invoke_method({"methodName": "again", "payload": 3,
                                        "responseTimeoutInSeconds": 10}, EDGE, "sink")
        assert answer == {"status": 200, "payload": {"hello": 3}}
        with pytest.raises(ServiceError) as missing:
            filt.invoke_method({"methodName": "x", "responseTimeoutInSeconds": 5}, EDGE,
                               "nobody")
        assert missing.value.status == 404
        with pytest.raises(KeyError):
            filt.invoke_method({"payload": 1}, EDGE, "sink")  # as v2
        filt.patch_twin_reported_properties({"routes": "ok"})
        hub.patch_desired(EDGE, {"threshold": 30}, module_id="sink")
        assert loop(sink.get_twin())["desired"]["threshold"] == 30
        assert hub.get_twin(EDGE, "filter")["properties"]["reported"]["routes"] == "ok"
    finally:
        filt.shutdown()
        loop(sink.shutdown())
        msink.shutdown()
        mfilter.shutdown()


def test_asyncio_receive_message_on_input(hub: Hub, monkeypatch: pytest.MonkeyPatch,
                                          loop: Callable[[Any], Any]) -> None:
    _edge_env(hub, "sink", monkeypatch)
    sink = iotdev.aio.IoTHubModuleClient.create_from_edge_environment()
    _edge_env(hub, "filter", monkeypatch)
    filt = iotdev.IoTHubModuleClient.create_from_edge_environment()

    async def first() -> Any:
        with pytest.warns(DeprecationWarning, match="receive_message_on_input"):
            waiting = asyncio.ensure_future(sink.receive_message_on_input("in1"))
            await asyncio.sleep(0)
        await sink.connect()
        return waiting

    try:
        waiting = loop(first())
        filt.send_message_to_output("by api", "out1")

        async def result() -> Any:
            return await asyncio.wait_for(waiting, TIMEOUT)

        got = loop(result())
        assert (got.data, got.input_name) == (b"by api", "in1")
    finally:
        filt.shutdown()
        loop(sink.shutdown())


def test_sas_renewal_is_signed_by_the_workload_api(
        hub: Hub, monkeypatch: pytest.MonkeyPatch, loop: Callable[[Any], Any]) -> None:
    passwords = Inbox()

    class Connects(HubObserver):
        def on_connect(self, conn: HubConnection, packet: Connect,
                       refusal: str | None) -> None:
            if packet.client_id in (f"{EDGE}/filter", f"{EDGE}/sink") and refusal is None:
                passwords.add((packet.client_id, packet.password))

    watcher = Connects()
    hub.add_observer(watcher)
    _edge_env(hub, "filter", monkeypatch)
    # a 6 s token is renewed after 5 s (the session's floor), by reconnecting
    filt = iotdev.IoTHubModuleClient.create_from_edge_environment(sastoken_ttl=6)
    _edge_env(hub, "sink", monkeypatch)
    sink = iotdev.aio.IoTHubModuleClient.create_from_edge_environment(sastoken_ttl=6)
    try:
        filt.connect()
        loop(sink.connect())
        seen = passwords.wait(4)
        for client_id in (f"{EDGE}/filter", f"{EDGE}/sink"):
            mine = [p for c, p in seen if c == client_id]
            assert len(mine) >= 2 and mine[0] != mine[1], client_id
        filt.send_message_to_output("after renewal", "out1")
        assert filt.connected
    finally:
        filt.shutdown()
        loop(sink.shutdown())
        hub.remove_observer(watcher)


def test_edge_debug_variables_fallback(hub: Hub, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in [n for n in os.environ if n.startswith("IOTEDGE_")]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("EdgeHubConnectionString",
                       hub.connection_string(EDGE, module_id="filter", host=HUB_NAME)
                       + f";GatewayHostName={ADDRESS}")
    monkeypatch.setenv("EdgeModuleCACertificateFile", str(hub.ca_path))
    start = len(hub.telemetry(EDGE))
    client = iotdev.IoTHubModuleClient.create_from_edge_environment(websockets=True)
    try:
        client.send_message_to_output("debug", "nowhere")  # over wss://gateway:443
        client.send_message("up")  # no route takes a filter's plain telemetry
        assert hub.is_connected(EDGE, "filter")
        with pytest.raises(ServiceError) as offline:  # an Edge call: the gateway answers
            client.invoke_method({"methodName": "m", "responseTimeoutInSeconds": 5}, EDGE,
                                 "sink")
        assert offline.value.status == 404
    finally:
        client.shutdown()
    assert hub.telemetry(EDGE)[start:] == []
    monkeypatch.setenv("EdgeModuleCACertificateFile", "/nonexistent/ca.pem")
    with pytest.raises(FileNotFoundError):
        iotdev.IoTHubModuleClient.create_from_edge_environment()


def test_reconnect_and_outbox_keep_outputs_and_inputs(
        hub: Hub, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The hub drops the Edge device's modules (disabled, then enabled again):
    both reconnect with tokens the workload API signs afresh, the sink's input
    subscription comes back, and an output stored in the outbox while the
    connection was down arrives."""
    got, sink_states = Inbox(), Inbox()
    _edge_env(hub, "sink", monkeypatch)
    sink = iotdev.IoTHubModuleClient.create_from_edge_environment(
        connection_retry_interval=1)
    _edge_env(hub, "filter", monkeypatch)
    filt = iotdev.IoTHubModuleClient.create_from_edge_environment(
        connection_retry_interval=1, outbox_path=tmp_path / "outbox.db")
    sink.on_connection_state_change = lambda: sink_states.add(sink.connected)
    sink.on_message_received = got.add  # connects (auto_connect, as v2)
    try:
        sink.connect()
        filt.connect()
        filt.send_message_to_output("before", "out1")
        filt.wait_outbox_drained(timeout=TIMEOUT)
        assert got.wait()[0].data == b"before"
        hub.set_enabled(EDGE, False)
        assert sink_states.wait(2)[:2] == [True, False]
        filt.send_message_to_output("while down", "out1")  # stored on disk
        hub.set_enabled(EDGE, True)
        filt.wait_outbox_drained(timeout=TIMEOUT)
        assert filt.outbox_pending == 0
        assert [m.data for m in got.wait(2)] == [b"before", b"while down"]
        assert got.items[1].input_name == "in1"
    finally:
        hub.set_enabled(EDGE, True)
        filt.shutdown()
        sink.shutdown()


def test_asyncio_receive_apis_update_sastoken_and_disconnect(
        hub: Hub, loop: Callable[[Any], Any]) -> None:
    module = hub.store.module("plain", "m1")
    assert module is not None and module.primary_key is not None
    uri, key = device_resource_uri(ADDRESS, "plain", "m1"), module.primary_key

    def token(ttl: int) -> str:
        return generate_sas_token(uri, key, int(time.time() + ttl))

    async def scenario() -> None:
        client = iotdev.aio.IoTHubModuleClient.create_from_sastoken(
            token(300), server_verification_cert=hub.ca_pem)
        try:
            with pytest.warns(DeprecationWarning):
                first = asyncio.ensure_future(client.receive_twin_desired_properties_patch())
                await asyncio.sleep(0)
            with pytest.warns(DeprecationWarning):
                request = asyncio.ensure_future(client.receive_method_request("reboot"))
                await asyncio.sleep(0)
            await client.connect()
            await asyncio.to_thread(hub.patch_desired, "plain", {"mode": "api"},
                                    module_id="m1")

            async def patches() -> dict[str, Any]:
                patch = await first
                while "mode" not in patch:  # the desired refresh after connect came first
                    with pytest.warns(DeprecationWarning):
                        patch = await client.receive_twin_desired_properties_patch()
                return patch  # type: ignore[no-any-return]

            assert (await asyncio.wait_for(patches(), TIMEOUT))["mode"] == "api"
            call = asyncio.ensure_future(asyncio.to_thread(
                hub.invoke_method, "plain", "reboot", {"now": True}, timeout=TIMEOUT,
                module_id="m1"))
            got = await asyncio.wait_for(request, TIMEOUT)
            await client.send_method_response(MethodResponse.create_from_method_request(
                got, 202, "rebooting"))
            result = await call
            assert (result.status, result.payload) == (202, "rebooting")
            await client.update_sastoken(token(600))  # reconnects with it
            assert client.connected
            await client.patch_twin_reported_properties({"after": "update"})
            assert (await client.get_twin())["reported"]["after"] == "update"
            await client.disconnect()
            assert not client.connected
        finally:
            await client.shutdown()

    loop(scenario())
