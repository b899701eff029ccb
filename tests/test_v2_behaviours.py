"""The azure-iot-device v2 behaviours of issue 12, each on both faces (sync and
asyncio) against the local emulator: a handler set to ``None`` unsubscribes,
an asyncio handler set before any loop runs, SAS token validation, renewal,
deprecated ``receive_*`` warnings, the client-wide receive-mode lock, ``X509``
read-only properties, ``ServiceError`` caught as ``ClientError``, factory
option validation, background errors logged without a handler, and the
asyncio ``disconnect(timeout=)``.  Checked side by side with
azure-iot-device 2.14 where v2's behaviour was in doubt.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import iotdev.aio
from iotdev import (
    X509,
    ClientError,
    IoTHubDeviceClient,
    MethodResponse,
    ProxyOptions,
    ServiceError,
)
from iotdev.emulator import Hub
from tests.test_device_client_aio import Aio
from tests.test_device_client_sync import (
    HOST,
    KEY,
    TIMEOUT,
    HubSpy,
    Recorder,
    new_id,
    sas_token,
)

AioClient = iotdev.aio.IoTHubDeviceClient
FACES = [IoTHubDeviceClient, AioClient]
METHODS = "$iothub/methods/POST/#"
# Outside the pytest.warns blocks, the deprecation warnings are expected noise.
pytestmark = pytest.mark.filterwarnings(
    "ignore:.*deprecated since azure-iot-device 2.3.0:DeprecationWarning")


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Any:
    with Hub(mqtt_port=0, ws_port=0, state_dir=tmp_path_factory.mktemp("hub")) as running:
        yield running


@pytest.fixture
def spy(hub: Hub, monkeypatch: pytest.MonkeyPatch) -> HubSpy:
    return HubSpy().install(hub, monkeypatch.setattr)


@pytest.fixture
def dev(hub: Hub) -> str:
    device_id = new_id()
    hub.add_device(device_id)
    return device_id


@pytest.fixture
def sync(hub: Hub) -> Any:
    made: list[IoTHubDeviceClient] = []

    def make(device_id: str, **kwargs: Any) -> IoTHubDeviceClient:
        kwargs.setdefault("server_verification_cert", hub.ca_pem)
        kwargs.setdefault("port", hub.mqtt_port)
        client = IoTHubDeviceClient.create_from_connection_string(
            hub.connection_string(device_id), **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        client.shutdown()


@pytest.fixture
def aio(hub: Hub) -> Aio:
    return Aio(hub)


def pending_c2d(hub: Hub, device_id: str) -> list[Any]:
    return hub.store.pending_c2d(device_id, time.time())


# ------------------------------------------------- 1. handler None unsubscribes


def test_sync_clearing_handlers_unsubscribes(hub: Hub, dev: str, sync: Any) -> None:
    client = sync(dev)
    got = Recorder()
    client.on_method_request_received = lambda r: client.send_method_response(
        MethodResponse.create_from_method_request(r, 200))
    assert hub.invoke_method(dev, "on", timeout=TIMEOUT).status == 200
    client.on_method_request_received = None  # returns once UNSUBACKed
    started = time.monotonic()
    assert hub.invoke_method(dev, "off", timeout=TIMEOUT).status == 404  # at once, no timeout
    assert time.monotonic() - started < TIMEOUT
    client.on_message_received = got
    client.on_message_received = None
    hub.send_c2d(dev, b"kept at the hub")
    assert [m.body for m in pending_c2d(hub, dev)] == [b"kept at the hub"]  # not completed
    client.on_message_received = got  # subscribes again: now it is delivered
    assert [m.data for m in got.wait(1)] == [b"kept at the hub"]
    assert client.connected


def test_aio_clearing_handlers_unsubscribes(hub: Hub, dev: str, aio: Aio) -> None:
    async def body() -> None:
        client = aio.make(dev)
        await client.connect()

        async def answer(request: Any) -> None:
            await client.send_method_response(
                MethodResponse.create_from_method_request(request, 200))

        client.on_method_request_received = answer  # SUBSCRIBE on the wire at return
        await client.get_twin()  # a round trip: the hub has processed the SUBSCRIBE
        assert (await hub.ainvoke_method(dev, "on", timeout=TIMEOUT)).status == 200
        client.on_method_request_received = None
        await asyncio.sleep(0)  # one loop turn: the UNSUBSCRIBE task writes its packet
        await client.get_twin()  # in order behind it: the hub has processed it
        assert (await hub.ainvoke_method(dev, "off", timeout=TIMEOUT)).status == 404
        got: list[Any] = []
        arrived = asyncio.Event()
        loop = asyncio.get_running_loop()  # plain handlers run on the handler thread

        def take(message: Any) -> None:
            got.append(message)
            loop.call_soon_threadsafe(arrived.set)

        client.on_message_received = take
        client.on_message_received = None
        await asyncio.sleep(0)
        await client.get_twin()
        await hub.asend_c2d(dev, b"kept at the hub")
        assert [m.body for m in pending_c2d(hub, dev)] == [b"kept at the hub"]
        client.on_message_received = take
        await asyncio.wait_for(arrived.wait(), TIMEOUT)
        assert [m.data for m in got] == [b"kept at the hub"]

    aio.run(body)


# ----------------------------------- 2. asyncio handler set before a loop runs


def test_aio_handler_set_before_any_loop_takes_effect(hub: Hub, dev: str) -> None:
    client = AioClient.create_from_connection_string(
        hub.connection_string(dev), server_verification_cert=hub.ca_pem, port=hub.mqtt_port)
    calls: list[str] = []

    def on_method(request: Any) -> Any:
        calls.append(request.name)
        return client.send_method_response(MethodResponse.create_from_method_request(request, 201))

    client.on_method_request_received = on_method  # no event loop yet

    async def main() -> int:
        try:
            await client.connect()
            await client.get_twin()  # the SUBSCRIBE made at connect is processed
            return (await hub.ainvoke_method(dev, "late", timeout=TIMEOUT)).status
        finally:
            await client.shutdown()

    assert asyncio.run(main()) == 201
    assert calls == ["late"]


def test_sync_handler_set_before_connect_with_auto_connect_off(hub: Hub, dev: str,
                                                              sync: Any) -> None:
    client = sync(dev, auto_connect=False)
    client.on_method_request_received = lambda r: client.send_method_response(
        MethodResponse.create_from_method_request(r, 202))
    assert not client.connected
    client.connect()
    client.get_twin()
    assert hub.invoke_method(dev, "late", timeout=TIMEOUT).status == 202


# ------------------------------------------------------ 3. SAS token validation


@pytest.mark.parametrize("face", FACES, ids=["sync", "aio"])
def test_create_from_sastoken_validates_as_v2(hub: Hub, dev: str, face: Any) -> None:
    with pytest.raises(ValueError, match="already expired"):
        face.create_from_sastoken(sas_token(hub, dev, ttl=-1))
    from iotdev._auth import device_resource_uri, generate_sas_token

    module_token = generate_sas_token(device_resource_uri(HOST, dev, "mod"), KEY,
                                      int(time.time() + 600))
    with pytest.raises(ValueError, match="is for a module"):
        face.create_from_sastoken(module_token)
    with pytest.raises(ValueError):
        face.create_from_sastoken("SharedAccessSignature sr=x&sig=y")


def test_sync_update_sastoken_validates_and_keeps_the_connection(
        hub: Hub, dev: str, spy: HubSpy) -> None:
    client = IoTHubDeviceClient.create_from_sastoken(
        sas_token(hub, dev), server_verification_cert=hub.ca_pem, port=hub.mqtt_port,
        auto_connect=False)
    try:
        client.update_sastoken(sas_token(hub, dev, ttl=600))  # disconnected: connects (v2)
        assert client.connected
        other = new_id()
        hub.add_device(other)
        for bad in (sas_token(hub, dev, ttl=-5), sas_token(hub, other)):
            with pytest.raises(ValueError):
                client.update_sastoken(bad)
        assert client.connected and len(spy.passwords(dev)) == 1  # no reconnect
        client.send_message("still here")
        assert [m.body for m in hub.wait_for_telemetry(dev, 1)] == [b"still here"]
    finally:
        client.shutdown()


def test_aio_update_sastoken_validates_and_keeps_the_connection(
        hub: Hub, dev: str, spy: HubSpy, aio: Aio) -> None:
    async def body() -> None:
        client = aio.keep(AioClient.create_from_sastoken(
            sas_token(hub, dev), server_verification_cert=hub.ca_pem, port=hub.mqtt_port,
            auto_connect=False))
        await client.update_sastoken(sas_token(hub, dev, ttl=600))  # connects (v2)
        assert client.connected
        other = new_id()
        hub.add_device(other)
        for bad in (sas_token(hub, dev, ttl=-5), sas_token(hub, other)):
            with pytest.raises(ValueError):
                await client.update_sastoken(bad)
        assert client.connected and len(spy.passwords(dev)) == 1
        await client.send_message("still here")
        assert [m.body for m in await hub.await_telemetry(dev, 1)] == [b"still here"]

    aio.run(body)


# ------------------------------------ 5. deprecated receive_* APIs and 6. lock


def test_sync_receive_apis_warn_and_lock_the_whole_client(dev: str, sync: Any) -> None:
    client = sync(dev, ensure_desired_properties=False)
    with pytest.warns(DeprecationWarning, match="receive_message"):
        assert client.receive_message(block=False) is None
    with pytest.warns(DeprecationWarning, match="receive_method_request"):
        assert client.receive_method_request(block=False) is None
    with pytest.warns(DeprecationWarning, match="receive_twin_desired_properties_patch"):
        assert client.receive_twin_desired_properties_patch(block=False) is None
    with pytest.raises(ClientError, match="receive APIs have already been used"):
        client.on_twin_desired_properties_patch_received = lambda p: None
    client.on_connection_state_change = lambda: None  # client events are not locked
    other = sync(dev, auto_connect=False)
    other.on_message_received = None  # as v2: even clearing a handler locks
    with pytest.raises(ClientError, match="receive handler"):
        other.receive_method_request(block=False)


def test_aio_receive_apis_warn_and_lock_the_whole_client(dev: str, spy: HubSpy,
                                                         aio: Aio) -> None:
    async def body() -> None:
        client = aio.make(dev, ensure_desired_properties=False)
        for name, topic_filter in (
                ("receive_message", f"devices/{dev}/messages/devicebound/#"),
                ("receive_method_request", METHODS),
                ("receive_twin_desired_properties_patch",
                 "$iothub/twin/PATCH/properties/desired/#")):
            with pytest.warns(DeprecationWarning, match=name):
                task = asyncio.ensure_future(getattr(client, name)())
                await asyncio.to_thread(spy.wait_subscribed, dev, topic_filter)
            task.cancel()
        with pytest.raises(ClientError, match="receive APIs have already been used"):
            client.on_method_request_received = lambda r: None
        other = aio.make(dev, auto_connect=False)
        other.on_message_received = lambda m: None
        with pytest.raises(ClientError, match="receive handler"):
            await other.receive_twin_desired_properties_patch()

    aio.run(body)


# ----------------------------------------------------------- 7. X509 (v2 names)


def test_x509_has_v2_read_only_properties() -> None:
    x509 = X509("cert.pem", "key.pem", "secret")
    assert (x509.certificate_file, x509.key_file, x509.pass_phrase) == (
        "cert.pem", "key.pem", "secret")
    assert x509.cert_file == "cert.pem"  # the alias
    with pytest.raises(AttributeError):
        x509.certificate_file = "other.pem"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        x509.key_file = "other.pem"  # type: ignore[misc]
    assert "secret" not in repr(x509)


# ------------------------------------------------- 8. errors catchable the v2 way


def test_sync_refused_twin_patch_is_caught_as_client_error(dev: str, sync: Any) -> None:
    client = sync(dev)
    try:
        client.patch_twin_reported_properties({"bad key": 1})
    except ClientError as exc:  # how v2 code catches it
        assert isinstance(exc, ServiceError) and exc.status == 400
    else:
        pytest.fail("the hub accepted an invalid patch")


def test_aio_refused_twin_patch_is_caught_as_client_error(dev: str, aio: Aio) -> None:
    async def body() -> None:
        client = aio.make(dev)
        with pytest.raises(ClientError) as info:
            await client.patch_twin_reported_properties({"$bad": 1})
        assert isinstance(info.value, ServiceError) and info.value.status == 400

    aio.run(body)


# ------------------------------------------------------- 9. factory validation


@pytest.mark.parametrize("face", FACES, ids=["sync", "aio"])
def test_factory_options_accepted_as_v2(hub: Hub, dev: str, face: Any) -> None:
    client = face.create_from_connection_string(
        hub.connection_string(dev), keep_alive="30", connection_retry_interval=5.0,
        auto_connect=False)
    assert (client._config.keep_alive, client._config.connection_retry_interval) == (30, 5)


@pytest.mark.parametrize("face", FACES, ids=["sync", "aio"])
def test_factory_options_refused_as_v2(hub: Hub, dev: str, face: Any, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="gateway_hostname"):
        face.create_from_connection_string(hub.connection_string(dev),
                                           gateway_hostname="edge.local")
    cert = hub.add_x509_device(new_id("x509"))
    x509 = X509(str(cert.cert_file), str(cert.key_file))
    with pytest.raises(TypeError, match="sastoken_ttl"):
        face.create_from_x509_certificate(x509, HOST, "d", sastoken_ttl=60)
    with pytest.raises(ValueError, match="device_id"):
        face.create_from_symmetric_key(KEY, HOST, "")
    with pytest.raises(ValueError, match="device_id"):
        face.create_from_x509_certificate(x509, HOST, "")
    missing = X509(str(tmp_path / "nope.pem"), str(cert.key_file))
    with pytest.raises(FileNotFoundError):
        face.create_from_x509_certificate(missing, HOST, "d")
    with pytest.raises(FileNotFoundError):
        face.create_from_x509_certificate(X509(str(cert.cert_file), str(tmp_path / "k")),
                                          HOST, "d")
    with pytest.raises(ValueError, match="Invalid Proxy Type"):
        ProxyOptions("http", "proxy.local", 3128)
    with pytest.raises(TypeError, match="keep_alive"):
        face.create_from_connection_string(hub.connection_string(dev), keep_alive="often")


# ------------------------------------- 10. background errors without a handler


def test_sync_background_error_without_handler_is_logged(
        hub: Hub, dev: str, sync: Any, caplog: pytest.LogCaptureFixture) -> None:
    client = sync(dev)
    ok = Recorder()

    def handler(message: Any) -> None:
        if message.data == b"bad":
            raise RuntimeError("handler bug")
        ok.add(message.data)

    with caplog.at_level(logging.WARNING, logger="iotdev"):
        client.on_message_received = handler
        hub.send_c2d(dev, b"bad")
        hub.send_c2d(dev, b"ok")
        ok.wait(1)  # handled in order: the first one's error is logged by now
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING
                and "no on_background_exception handler" in r.getMessage()]
    assert warnings and "handler bug" in warnings[0].getMessage()


def test_aio_background_error_without_handler_is_logged(
        hub: Hub, dev: str, aio: Aio, caplog: pytest.LogCaptureFixture) -> None:
    logged = threading.Event()

    class Seen(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            if "no on_background_exception handler" in record.getMessage():
                logged.set()

    async def body() -> None:
        client = aio.make(dev)
        await client.connect()

        def fail(message: Any) -> None:  # runs on the handler thread, as in v2
            raise RuntimeError("handler bug")

        client.on_message_received = fail
        await client.get_twin()
        await hub.asend_c2d(dev, b"x")
        assert await asyncio.to_thread(logged.wait, TIMEOUT), "the error was not logged"
        await client.shutdown()

    seen = Seen()
    logging.getLogger("iotdev").addHandler(seen)
    try:
        with caplog.at_level(logging.WARNING, logger="iotdev"):
            aio.run(body)
    finally:
        logging.getLogger("iotdev").removeHandler(seen)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING
                and "no on_background_exception handler" in r.getMessage()]
    assert warnings and "handler bug" in warnings[0].getMessage()


# ------------------------------------------------ 11. asyncio disconnect(timeout=)


def test_aio_disconnect_takes_a_timeout(dev: str, aio: Aio) -> None:
    async def body() -> None:
        client = aio.make(dev)
        await client.connect()
        await client.disconnect(timeout=TIMEOUT)
        assert not client.connected
        await client.connect()
        await client.disconnect()
        assert not client.connected

    aio.run(body)
