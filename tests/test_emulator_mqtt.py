"""The emulator against our generic MQTT clients speaking IoT Hub's topics by
hand (the IoT Hub device client has its own tests)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from iotdev._auth import device_resource_uri, generate_sas_token
from iotdev._errors import CredentialError
from iotdev.emulator import Hub
from iotdev.mqtt import MQTTClient
from iotdev_mqtt import ClientConnection, MessageReceived

TIMEOUT = 10.0


@pytest.fixture
def hub(tmp_path: Any) -> Iterator[Hub]:
    with Hub(hub_name="test-hub.local", mqtt_port=0, ws_port=0, state_dir=tmp_path) as h:
        yield h


def _token(hub: Hub, device_id: str, *, key: str | None = None, ttl: float = 3600,
           host: str | None = None) -> str:
    device = hub.store.device(device_id)
    assert device is not None
    uri = device_resource_uri(host or hub.hub_name, device_id)
    return generate_sas_token(uri, key or device.primary_key, int(time.time() + ttl))


def _client(hub: Hub, device_id: str, *, password: str | None = None,
            websockets: bool = False, **kw: Any) -> MQTTClient:
    return MQTTClient(
        "localhost", hub.ws_port if websockets else hub.mqtt_port, client_id=device_id,
        transport="websockets" if websockets else "tls",
        ws_path="/$iothub/websocket",
        username=f"{hub.hub_name}/{device_id}/?api-version=2021-04-12",
        password=password if password is not None else _token(hub, device_id),
        server_verification_cert=hub.ca_pem, clean_session=False, reconnect=False,
        connect_timeout=TIMEOUT, **kw)


@pytest.mark.parametrize("websockets", [False, True], ids=["tls", "wss"])
def test_telemetry_with_properties(hub: Hub, websockets: bool) -> None:
    hub.add_device("dev1")
    client = _client(hub, "dev1", websockets=websockets)
    try:
        client.connect(timeout=TIMEOUT)
        topic = "devices/dev1/messages/events/%24.mid=m1&%24.ct=application%2Fjson&a=1&b"
        client.publish(topic, b'{"t": 21.5}', 1).result(TIMEOUT)
    finally:
        client.shutdown()
    (message,) = hub.wait_for_telemetry("dev1", 1)
    assert message.body == b'{"t": 21.5}'
    assert message.system_properties == {"$.mid": "m1", "$.ct": "application/json"}
    assert message.properties == {"a": "1", "b": None}


def test_c2d_method_and_twin_round_trips(hub: Hub) -> None:
    hub.add_device("dev2")
    got: list[MessageReceived] = []
    arrived = threading.Condition()

    def on_message(message: MessageReceived) -> None:
        with arrived:
            got.append(message)
            arrived.notify_all()
        if message.topic.startswith("$iothub/methods/POST/"):
            rid = message.topic.split("$rid=")[1]
            body = json.loads(message.payload)
            client.publish(f"$iothub/methods/res/200/?$rid={rid}",
                           json.dumps({"echo": body}).encode(), 1)

    client = _client(hub, "dev2", on_message=on_message)
    try:
        client.connect(timeout=TIMEOUT)
        codes = client.subscribe([("devices/dev2/messages/devicebound/#", 1),
                                  ("$iothub/methods/POST/#", 1), ("$iothub/twin/res/#", 1),
                                  ("$iothub/twin/PATCH/properties/desired/#", 2),
                                  ("not/allowed", 1)], timeout=TIMEOUT)
        assert codes == (1, 1, 1, 1, 0x80)
        hub.send_c2d("dev2", b"hello device", message_id="c2d-1", properties={"k": "v w"})
        result = hub.invoke_method("dev2", "reboot", {"delay": 5}, timeout=TIMEOUT)
        assert (result.status, result.payload) == (200, {"echo": {"delay": 5}})
        client.publish("$iothub/twin/PATCH/properties/reported/?$rid=r1",
                       json.dumps({"battery": 55}).encode(), 1).result(TIMEOUT)
        client.publish("$iothub/twin/GET/?$rid=r2", b" ", 1).result(TIMEOUT)
        hub.patch_desired("dev2", {"rate": 5})

        def have(prefix: str) -> list[MessageReceived]:
            return [m for m in got if m.topic.startswith(prefix)]

        with arrived:
            assert arrived.wait_for(lambda: have("devices/dev2/messages/devicebound/")
                                    and len(have("$iothub/twin/res/")) == 2
                                    and have("$iothub/twin/PATCH/properties/desired/"),
                                    TIMEOUT), got
        (c2d,) = have("devices/dev2/messages/devicebound/")
        assert c2d.payload == b"hello device" and c2d.qos == 1
        assert "%24.mid=c2d-1" in c2d.topic and "k=v%20w" in c2d.topic
        (patch_res,) = [m for m in have("$iothub/twin/res/") if m.topic.endswith(("r1", "=2"))
                        or "rid=r1" in m.topic]
        (get_res,) = [m for m in have("$iothub/twin/res/") if "rid=r2" in m.topic]
        assert patch_res.topic.startswith("$iothub/twin/res/204/?$rid=r1")
        assert get_res.topic == "$iothub/twin/res/200/?$rid=r2"
        assert json.loads(get_res.payload)["reported"]["battery"] == 55
        (desired,) = have("$iothub/twin/PATCH/properties/desired/")
        assert json.loads(desired.payload) == {"rate": 5, "$version": 2}
    finally:
        client.shutdown()
    assert hub.store.pending_c2d("dev2", now=time.time()) == []  # PUBACK completed it


def test_c2d_sent_while_offline_is_delivered_after_reconnect(hub: Hub) -> None:
    hub.add_device("dev3")
    first = _client(hub, "dev3")
    first.connect(timeout=TIMEOUT)
    first.subscribe("devices/dev3/messages/devicebound/#", 1, timeout=TIMEOUT)
    first.disconnect()
    first.shutdown()
    hub.send_c2d("dev3", b"while you were away")
    got: list[bytes] = []
    arrived = threading.Event()
    second = _client(hub, "dev3", on_message=lambda m: (got.append(m.payload), arrived.set()))
    try:
        second.connect(timeout=TIMEOUT)  # clean session 0: the subscription persists
        assert arrived.wait(TIMEOUT)
    finally:
        second.shutdown()
    assert got == [b"while you were away"]


def test_method_to_offline_device_is_404(hub: Hub) -> None:
    hub.add_device("dev4")
    assert hub.invoke_method("dev4", "x", timeout=1).status == 404


def test_method_timeout_is_504(hub: Hub) -> None:
    hub.add_device("dev5")
    client = _client(hub, "dev5")
    try:
        client.connect(timeout=TIMEOUT)
        client.subscribe("$iothub/methods/POST/#", 1, timeout=TIMEOUT)
        assert hub.invoke_method("dev5", "ignored", timeout=0.5).status == 504
    finally:
        client.shutdown()


@pytest.mark.parametrize("case", ["wrong-key", "expired", "other-device", "disabled",
                                  "unknown", "other-host"])
def test_authentication_refusals(hub: Hub, case: str) -> None:
    hub.add_device("good")
    hub.add_device("other")
    device_id = "good"
    password: str | None = None
    if case == "wrong-key":
        password = _token(hub, "good", key=hub.store.device("other").primary_key)  # type: ignore[union-attr]
    elif case == "expired":
        password = _token(hub, "good", ttl=-10)
    elif case == "other-device":
        password = _token(hub, "other")
    elif case == "disabled":
        hub.set_enabled("good", False)
    elif case == "unknown":
        device_id = "nobody"
        password = "SharedAccessSignature sr=x&sig=y&se=1"
    elif case == "other-host":
        password = _token(hub, "good", host="evil.example")
    client = _client(hub, device_id, password=password)
    try:
        with pytest.raises(CredentialError):
            client.connect(timeout=TIMEOUT)
    finally:
        client.shutdown()


def test_token_expiring_while_connected_drops_the_connection(hub: Hub) -> None:
    hub.add_device("short")
    states: list[bool] = []
    dropped = threading.Event()
    client = _client(hub, "short", password=_token(hub, "short", ttl=1.5),
                     on_connection_state_change=lambda c, r: (states.append(c),
                                                              None if c else dropped.set()))
    try:
        client.connect(timeout=TIMEOUT)
        assert dropped.wait(TIMEOUT)
    finally:
        client.shutdown()
    assert states[:2] == [True, False]


def test_malformed_packets_close_only_that_connection(hub: Hub) -> None:
    """Raw malformed bytes after a valid CONNECT: that device is dropped, a
    second device stays connected and keeps working; the stores are intact."""
    import socket
    import ssl

    hub.add_device("bad")
    hub.add_device("fine")
    fine = _client(hub, "fine")
    fine.connect(timeout=TIMEOUT)
    try:
        fine.publish("devices/fine/messages/events/", b"before", 1).result(TIMEOUT)
        for bad_bytes in (bytes.fromhex("3807000361 2f626869".replace(" ", "")),
                          bytes.fromhex("60020001"), bytes.fromhex("30ffffffff7f")):
            engine = ClientConnection()
            engine.connect("bad", now=0, clean_session=False,
                           username=f"{hub.hub_name}/bad/?api-version=2021-04-12",
                           password=_token(hub, "bad").encode())
            ctx = ssl.create_default_context(cadata=hub.ca_pem)
            with socket.create_connection(("127.0.0.1", hub.mqtt_port), TIMEOUT) as raw, \
                    ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(engine.data_to_send())
                connack = tls.recv(4)  # session present after the first round
                assert connack in (bytes.fromhex("20020000"), bytes.fromhex("20020100"))
                tls.sendall(bad_bytes)
                assert tls.recv(100) == b""  # closed by the hub
        fine.publish("devices/fine/messages/events/", b"after", 1).result(TIMEOUT)
        assert fine.connected
    finally:
        fine.shutdown()
    assert [m.body for m in hub.telemetry("fine")] == [b"before", b"after"]



def test_hub_issues_no_tls_session_tickets(hub: Hub) -> None:
    """As IoT Hub (no session resumption): no ticket after a TLS 1.3 handshake
    (OpenSSL keeps a 16 KB buffer per client connection once one arrives), nor
    in TLS 1.2."""
    import socket
    import ssl

    hub.add_device("dev")
    for version in (ssl.TLSVersion.TLSv1_3, ssl.TLSVersion.TLSv1_2):
        engine = ClientConnection()
        engine.connect("dev", now=0, username=f"{hub.hub_name}/dev/?api-version=2021-04-12",
                       password=_token(hub, "dev").encode())
        ctx = ssl.create_default_context(cadata=hub.ca_pem)
        ctx.minimum_version = ctx.maximum_version = version
        with socket.create_connection(("127.0.0.1", hub.mqtt_port), TIMEOUT) as raw, \
                ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(engine.data_to_send())
            assert tls.recv(4) == bytes.fromhex("20020000")  # read past any ticket
            assert tls.version() == {ssl.TLSVersion.TLSv1_3: "TLSv1.3",
                                     ssl.TLSVersion.TLSv1_2: "TLSv1.2"}[version]
            assert tls.session is not None and not tls.session.has_ticket

def test_hub_usable_from_asyncio(tmp_path: Any) -> None:
    async def main() -> int:
        async with Hub(mqtt_port=0, ws_port=None, state_dir=tmp_path) as hub:
            hub.add_device("adev")
            result = await hub.ainvoke_method("adev", "m", timeout=1)
            return result.status

    assert asyncio.run(main()) == 404


def test_x509_device_authenticates_with_its_certificate(hub: Hub) -> None:
    from iotdev import X509

    cert = hub.add_x509_device("xdev")
    client = MQTTClient(
        "localhost", hub.mqtt_port, client_id="xdev", transport="tls",
        username=f"{hub.hub_name}/xdev/?api-version=2021-04-12",
        server_verification_cert=hub.ca_pem, x509=X509(str(cert.cert_file), str(cert.key_file)),
        reconnect=False, connect_timeout=TIMEOUT)
    try:
        client.connect(timeout=TIMEOUT)
        client.publish("devices/xdev/messages/events/", b"signed", 1).result(TIMEOUT)
    finally:
        client.shutdown()
    assert [m.body for m in hub.wait_for_telemetry("xdev", 1)] == [b"signed"]
    # Another device's certificate is refused.
    hub.add_x509_device("ydev")
    other = MQTTClient(
        "localhost", hub.mqtt_port, client_id="ydev", transport="tls",
        username=f"{hub.hub_name}/ydev/?api-version=2021-04-12",
        server_verification_cert=hub.ca_pem, x509=X509(str(cert.cert_file), str(cert.key_file)),
        reconnect=False, connect_timeout=TIMEOUT)
    try:
        with pytest.raises(CredentialError):
            other.connect(timeout=TIMEOUT)
    finally:
        other.shutdown()
