"""The emulator against unauthenticated and cross-device access: what a socket
that never authenticates can cost it (CONNECT timeout, bytes before CONNECT),
and that an authenticated device cannot reach another device's topics (MQTT)
or files (HTTPS).  Real TLS sockets on loopback; every wait has a deadline."""

from __future__ import annotations

import logging
import socket
import ssl
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from iotdev import CredentialError
from iotdev._auth import device_resource_uri, generate_sas_token
from iotdev.emulator import Hub
from iotdev.mqtt import MQTTClient
from iotdev_mqtt import ClientConnection, PacketTooLarge, ServerConnection

TIMEOUT = 10.0


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    with Hub(hub_name="sec-hub.local", mqtt_port=0, ws_port=0, connect_timeout=1.0,
             state_dir=tmp_path_factory.mktemp("hub")) as running:
        yield running


def token(hub: Hub, device_id: str) -> str:
    device = hub.store.device(device_id)
    assert device is not None and device.primary_key
    return generate_sas_token(device_resource_uri(hub.hub_name, device_id),
                              device.primary_key, int(time.time() + 600))


def new_device(hub: Hub) -> str:
    device_id = f"sec-{uuid.uuid4().hex[:8]}"
    hub.add_device(device_id)
    return device_id


def tls_socket(hub: Hub, port: int | None = None) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cadata=hub.ca_pem)
    raw = socket.create_connection(("127.0.0.1", port or hub.mqtt_port), TIMEOUT)
    return ctx.wrap_socket(raw, server_hostname="localhost")


def closed_by_peer(sock: socket.socket, wait: float = TIMEOUT) -> bool:
    """Read until EOF or a reset within ``wait`` seconds."""
    sock.settimeout(wait)
    try:
        while sock.recv(4096):
            pass
    except (ConnectionResetError, ssl.SSLError):
        return True
    except TimeoutError:
        return False
    return True


# ------------------------------------------------------------------ unauthenticated


@pytest.mark.parametrize("port", ["mqtt", "ws"])
def test_a_socket_that_never_sends_connect_is_closed(hub: Hub, port: str) -> None:
    with tls_socket(hub, hub.mqtt_port if port == "mqtt" else hub.ws_port) as tls:
        assert closed_by_peer(tls), "the hub kept a silent socket open"


def test_a_socket_that_never_finishes_tls_is_closed(hub: Hub) -> None:
    with socket.create_connection(("127.0.0.1", hub.mqtt_port), TIMEOUT) as raw:
        raw.sendall(b"\x16\x03\x01")  # the start of a ClientHello, then nothing
        assert closed_by_peer(raw)


def test_bytes_before_connect_are_bounded(hub: Hub, caplog: pytest.LogCaptureFixture) -> None:
    """A CONNECT announcing 200 KB (under the hub's packet limit, over its
    64 KiB limit before CONNECT) is refused for its size, not for taking long:
    the hub's log says why it closed the connection."""
    caplog.set_level(logging.DEBUG, logger="iotdev.emulator")
    with tls_socket(hub) as tls:
        tls.sendall(bytes([0x10, 0xC0, 0x9A, 0x0C]))  # CONNECT, remaining length 200,000
        try:
            for _ in range(200):
                tls.sendall(b"\x00" * 1000)
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError):
            pass
        assert closed_by_peer(tls)
    reasons = [r.getMessage() for r in caplog.records if "closed:" in r.getMessage()]
    assert any("limit before CONNECT" in reason for reason in reasons), reasons


def test_server_engine_limit_before_connect() -> None:
    """The engine's own limit: bytes of an incomplete first packet over
    ``max_connect_size`` raise; after CONNECT, big packets are fine."""
    server = ServerConnection(max_packet_size=1 << 20, max_connect_size=100, now=0.0)
    with pytest.raises(PacketTooLarge, match="limit before CONNECT"):
        server.receive_data(bytes([0x10, 0xC8, 0x01]) + b"\x00" * 150, now=0.0)
    client = ClientConnection()
    client.connect("c", now=0.0)
    server = ServerConnection(max_packet_size=1 << 20, max_connect_size=100, now=0.0)
    server.receive_data(client.data_to_send(), now=0.0)
    server.accept(now=0.0)
    client.receive_data(server.data_to_send(), now=0.0)
    client.publish("t", b"x" * 5000, 0, now=0.0)
    events = server.receive_data(client.data_to_send(), now=0.0)
    assert len(events) == 1 and len(events[0].payload) == 5000  # type: ignore[attr-defined]
    with pytest.raises(ValueError, match="max_connect_size"):
        ServerConnection(max_connect_size=4)


# ------------------------------------------------------------------ cross-device


def client(hub: Hub, device_id: str, **kw: Any) -> MQTTClient:
    return MQTTClient(
        "localhost", hub.mqtt_port, client_id=device_id, transport="tls",
        username=f"{hub.hub_name}/{device_id}/?api-version=2021-04-12",
        password=token(hub, device_id), server_verification_cert=hub.ca_pem,
        reconnect=False, connect_timeout=TIMEOUT, **kw)


def test_a_device_cannot_subscribe_to_another_devices_messages(hub: Hub) -> None:
    me, other = new_device(hub), new_device(hub)
    device = client(hub, me)
    device.connect(timeout=TIMEOUT)
    try:
        codes = device.subscribe([(f"devices/{other}/messages/devicebound/#", 1),
                                  ("devices/+/messages/devicebound/#", 1),
                                  ("#", 1),
                                  (f"devices/{me}/messages/devicebound/#", 1)])
        assert list(codes) == [0x80, 0x80, 0x80, 1]
    finally:
        device.shutdown()


def test_a_device_cannot_publish_as_another_device(hub: Hub) -> None:
    me, other = new_device(hub), new_device(hub)
    device = client(hub, me)
    device.connect(timeout=TIMEOUT)
    try:
        device.publish(f"devices/{other}/messages/events/", b"spoofed", 1)
        deadline = time.monotonic() + TIMEOUT
        while device.connected and time.monotonic() < deadline:
            time.sleep(0.01)  # polling the state the hub's close produces
        assert not device.connected, "the hub accepted telemetry for another device"
    finally:
        device.shutdown()
    assert hub.telemetry(other) == []


def test_a_device_cannot_connect_with_another_devices_client_id(hub: Hub) -> None:
    me, other = new_device(hub), new_device(hub)
    spoof = MQTTClient(
        "localhost", hub.mqtt_port, client_id=other, transport="tls",
        username=f"{hub.hub_name}/{other}/?api-version=2021-04-12",
        password=token(hub, me), server_verification_cert=hub.ca_pem,
        reconnect=False, connect_timeout=TIMEOUT)
    try:
        with pytest.raises(CredentialError):
            spoof.connect(timeout=TIMEOUT)
    finally:
        spoof.shutdown()
