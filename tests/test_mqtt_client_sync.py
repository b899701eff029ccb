"""The generic sync MQTT client (thread driver) against a real mosquitto."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import pytest

from iotdev._errors import (
    ConnectionRefusedByHostError,
    ConnectTimeoutError,
    HostNotFoundError,
    OperationCancelled,
    TLSVerificationError,
)
from iotdev.mqtt import MQTTClient
from iotdev_mqtt import MessageReceived
from tests._broker import CertAuthority, Mosquitto, MosquittoClients, free_ports, unique_name

TIMEOUT = 10.0


def _client(broker: Mosquitto, ca: CertAuthority, transport: str, **kw: Any) -> MQTTClient:
    port = {"tcp": broker.tcp_port, "tls": broker.tls_port, "websockets": broker.ws_port}
    return MQTTClient(
        "localhost" if transport != "tcp" else broker.host,
        port[transport],
        client_id=unique_name("sync"),
        transport=transport,  # type: ignore[arg-type]
        server_verification_cert=ca.ca_cert_pem if transport != "tcp" else None,
        connect_timeout=TIMEOUT,
        **kw,
    )


@pytest.mark.mosquitto
@pytest.mark.parametrize("transport", ["tcp", "tls"])
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_publish_and_receive_through_mosquitto(
    mosquitto: Mosquitto, test_ca: CertAuthority, transport: str, qos: int
) -> None:
    got: list[MessageReceived] = []
    arrived = threading.Event()

    def on_msg(msg: MessageReceived) -> None:
        got.append(msg)
        if len(got) == 5:
            arrived.set()

    topic = unique_name("iotdev/sync")
    client = _client(mosquitto, test_ca, transport)
    try:
        client.connect(timeout=TIMEOUT)
        assert client.connected
        assert client.subscribe(topic, qos, callback=on_msg, timeout=TIMEOUT) == (qos,)
        futures = [client.publish(topic, b"m%d" % i, qos) for i in range(5)]
        for fut in futures:
            fut.result(TIMEOUT)
        assert arrived.wait(TIMEOUT), got
        assert [m.payload for m in got] == [b"m%d" % i for i in range(5)]
        assert {m.qos for m in got} == {qos}
        client.disconnect()
        assert not client.connected
    finally:
        client.shutdown()


@pytest.mark.mosquitto
def test_mosquitto_pub_reaches_callback_and_threads_are_bounded(
    mosquitto: Mosquitto, test_ca: CertAuthority, mosquitto_clients: MosquittoClients
) -> None:
    before = threading.active_count()
    got: list[bytes] = []
    arrived = threading.Event()
    client = _client(mosquitto, test_ca, "tls",
                     on_message=lambda m: (got.append(m.payload), arrived.set()))
    topic = unique_name("iotdev/sync/in")
    try:
        client.connect(timeout=TIMEOUT)
        client.subscribe(topic, 1, timeout=TIMEOUT)
        mosquitto_clients.publish(mosquitto, topic, b"from mosquitto_pub", qos=1)
        assert arrived.wait(TIMEOUT)
        assert got == [b"from mosquitto_pub"]
        assert threading.active_count() - before <= 2  # the I/O and the handler thread
    finally:
        client.shutdown()
    assert threading.active_count() <= before


def test_refused_port_is_a_typed_error() -> None:
    (port,) = free_ports(1)
    client = MQTTClient("127.0.0.1", port, client_id="x", connect_timeout=5)
    try:
        with pytest.raises(ConnectionRefusedByHostError) as info:
            client.connect(timeout=TIMEOUT)
        assert isinstance(info.value.__cause__, OSError)
    finally:
        client.shutdown()


def test_unknown_host_is_a_typed_error() -> None:
    client = MQTTClient("no-such-host.invalid", 1883, client_id="x", connect_timeout=5)
    try:
        with pytest.raises(HostNotFoundError):
            client.connect(timeout=TIMEOUT)
    finally:
        client.shutdown()


def test_silent_server_times_out() -> None:
    """A server that accepts TCP and never answers: CONNACK never comes."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    client = MQTTClient("127.0.0.1", listener.getsockname()[1], client_id="x",
                        connect_timeout=1.0)
    try:
        start = time.monotonic()
        with pytest.raises(ConnectTimeoutError):
            client.connect(timeout=TIMEOUT)
        assert time.monotonic() - start < TIMEOUT
    finally:
        client.shutdown()
        listener.close()


@pytest.mark.mosquitto
def test_wrong_ca_is_a_verification_error(
    mosquitto: Mosquitto, tmp_path: Any
) -> None:
    other = CertAuthority(tmp_path / "other-ca", name="some other CA")
    client = MQTTClient("localhost", mosquitto.tls_port, client_id="x", transport="tls",
                        server_verification_cert=other.ca_cert_pem, connect_timeout=5)
    try:
        with pytest.raises(TLSVerificationError) as info:
            client.connect(timeout=TIMEOUT)
        assert "certificate" in info.value.reason
    finally:
        client.shutdown()


@pytest.mark.mosquitto
def test_wrong_hostname_is_a_verification_error(
    mosquitto: Mosquitto, test_ca: CertAuthority
) -> None:
    client = MQTTClient("127.0.0.2", mosquitto.tls_port, client_id="x", transport="tls",
                        server_verification_cert=test_ca.ca_cert_pem, connect_timeout=5)
    # 127.0.0.2 is on loopback but not in the certificate's names.
    client.endpoint.host = "127.0.0.1"
    client.endpoint.server_hostname = "not-in-the-cert.example"
    try:
        with pytest.raises(TLSVerificationError) as info:
            client.connect(timeout=TIMEOUT)
        assert "mismatch" in info.value.reason or "match" in str(info.value)
    finally:
        client.shutdown()


@pytest.mark.mosquitto
def test_reconnects_after_broker_restart_and_keeps_publishing(
    mosquitto_factory: Any, test_ca: CertAuthority
) -> None:
    broker = mosquitto_factory()
    states: list[tuple[bool, str | None]] = []
    changed = threading.Condition()

    def on_state(connected: bool, reason: str | None) -> None:
        with changed:
            states.append((connected, reason))
            changed.notify_all()

    client = _client(broker, test_ca, "tcp", retry_interval=0.2,
                     on_connection_state_change=on_state)
    try:
        client.connect(timeout=TIMEOUT)
        client.publish(unique_name("t"), b"before", 1).result(TIMEOUT)
        broker.restart()
        with changed:
            assert changed.wait_for(lambda: len(states) >= 3, TIMEOUT), states
        assert [s[0] for s in states[:3]] == [True, False, True]
        client.publish(unique_name("t"), b"after", 1).result(TIMEOUT)
    finally:
        client.shutdown()


def test_shutdown_cancels_waiting_operations() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    client = MQTTClient("127.0.0.1", listener.getsockname()[1], client_id="x",
                        connect_timeout=30.0)
    try:
        connecting = client._driver.connect()
        fut = client.publish("a/b", b"x", 1)
        client.shutdown()
        with pytest.raises(OperationCancelled):
            fut.result(TIMEOUT)
        with pytest.raises(OperationCancelled):
            connecting.result(TIMEOUT)
    finally:
        listener.close()


@pytest.mark.mosquitto
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_websocket_transport(mosquitto: Mosquitto, test_ca: CertAuthority, qos: int) -> None:
    got: list[MessageReceived] = []
    arrived = threading.Event()
    topic = unique_name("iotdev/sync/ws")
    client = _client(mosquitto, test_ca, "websockets",
                     on_message=lambda m: (got.append(m), arrived.set()))
    try:
        client.connect(timeout=TIMEOUT)
        client.subscribe(topic, qos, timeout=TIMEOUT)
        client.publish(topic, b"over websocket", qos).result(TIMEOUT)
        assert arrived.wait(TIMEOUT)
        client.disconnect()
    finally:
        client.shutdown()
    assert [(m.payload, m.qos) for m in got] == [(b"over websocket", qos)]


@pytest.mark.mosquitto
def test_blocked_handler_does_not_stall_keep_alive(
    mosquitto: Mosquitto, test_ca: CertAuthority
) -> None:
    """keep_alive=1: mosquitto drops a client silent for 1.5 s.  A handler that
    blocks for 3 s must not stop the I/O thread's PINGREQs."""
    release = threading.Event()
    entered = threading.Event()
    states: list[bool] = []

    def slow(_: MessageReceived) -> None:
        entered.set()
        release.wait(3.0)  # the handler under test blocks; nothing waits on this timing

    topic = unique_name("iotdev/sync/slow")
    client = _client(mosquitto, test_ca, "tcp", keep_alive=1, on_message=slow,
                     on_connection_state_change=lambda c, r: states.append(c))
    try:
        client.connect(timeout=TIMEOUT)
        client.subscribe(topic, 0, timeout=TIMEOUT)
        client.publish(topic, b"block", 0).result(TIMEOUT)
        assert entered.wait(TIMEOUT)
        # While the handler blocks, round trips still work and nothing dropped.
        deadline = time.monotonic() + 3.0
        while time.monotonic() < deadline:
            client.publish(unique_name("t"), b"x", 1).result(TIMEOUT)
            release.wait(0.5)
        assert client.connected
        assert False not in states
        log = mosquitto.log_text()
        assert f"Client {client._driver.options.client_id} has exceeded timeout" not in log
    finally:
        release.set()
        client.shutdown()


@pytest.mark.mosquitto
def test_credentials_callable_runs_before_every_attempt(
    mosquitto_factory: Any, test_ca: CertAuthority
) -> None:
    from iotdev.transport._options import Credentials

    broker = mosquitto_factory()
    calls: list[float] = []
    back = threading.Event()

    def fresh() -> Credentials:
        calls.append(time.monotonic())
        return Credentials("user", b"token-%d" % len(calls))

    client = MQTTClient(broker.host, broker.tcp_port, client_id=unique_name("cred"),
                        credentials=fresh, retry_interval=0.2,
                        on_connection_state_change=lambda c, r: c and len(calls) > 1
                        and back.set())
    try:
        client.connect(timeout=TIMEOUT)
        assert len(calls) == 1
        broker.restart()
        assert back.wait(TIMEOUT)
        assert len(calls) >= 2
        assert "token-" not in broker.log_text()  # never logged by the broker either
    finally:
        client.shutdown()
