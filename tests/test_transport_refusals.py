"""Connection failures of both drivers, each a typed error within its timeout,
against real local servers (TLS servers in a thread, mosquitto with a password
file); and the generic clients with paho-mqtt as the independent peer."""

from __future__ import annotations

import asyncio
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from iotdev._errors import (
    ClientError,
    ConnectionDroppedError,
    ConnectionFailedError,
    CredentialError,
    TLSError,
    TLSVerificationError,
)
from iotdev.aio import MQTTClient as AsyncClient
from iotdev.mqtt import MQTTClient
from iotdev_mqtt import MessageReceived
from tests._broker import CertAuthority, Mosquitto, require_program, unique_name
from tests._ci import require_module, skip_or_fail

TIMEOUT = 10.0


class _TLSServer:
    """Accepts connections in a thread and does ``behaviour(sock)`` with each."""

    def __init__(self, behaviour: Callable[[socket.socket], None]) -> None:
        self.listener = socket.socket()
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen()
        self.port = self.listener.getsockname()[1]
        self.errors: list[BaseException] = []
        self._behaviour = behaviour
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                conn.settimeout(TIMEOUT)
                try:
                    self._behaviour(conn)
                except (OSError, ssl.SSLError) as exc:
                    self.errors.append(exc)

    def close(self) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
        except OSError:
            pass
        self.listener.close()
        self._thread.join(TIMEOUT)
        assert not self._thread.is_alive()


@pytest.fixture
def tls_server() -> Iterator[Callable[[Callable[[socket.socket], None]], _TLSServer]]:
    made: list[_TLSServer] = []

    def make(behaviour: Callable[[socket.socket], None]) -> _TLSServer:
        server = _TLSServer(behaviour)
        made.append(server)
        return server

    yield make
    for server in made:
        server.close()


def _server_context(cert: Any, *, maximum: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert.cert if hasattr(cert, "cert") else cert[0],
                        cert.key if hasattr(cert, "key") else cert[1])
    if maximum is not None:
        ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        ctx.maximum_version = maximum
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    return ctx


def _handshake_then_wait(ctx: ssl.SSLContext) -> Callable[[socket.socket], None]:
    def behaviour(conn: socket.socket) -> None:
        with ctx.wrap_socket(conn, server_side=True) as tls:
            tls.recv(1)
    return behaviour


def _both_drivers(port: int, ca_pem: str, **kw: Any) -> list[BaseException]:
    """Connect with the sync and the asyncio client; return both errors."""
    errors: list[BaseException] = []
    sync = MQTTClient("localhost", port, client_id="x", transport="tls",
                      server_verification_cert=ca_pem, connect_timeout=3, **kw)
    try:
        sync.connect(timeout=TIMEOUT)
    except BaseException as exc:
        errors.append(exc)
    finally:
        sync.shutdown()

    async def main() -> None:
        client = AsyncClient("localhost", port, client_id="x", transport="tls",
                             server_verification_cert=ca_pem, connect_timeout=3, **kw)
        try:
            await client.connect(timeout=TIMEOUT)
        except BaseException as exc:
            errors.append(exc)
        finally:
            await client.shutdown()

    asyncio.run(main())
    return errors


def test_expired_server_certificate(test_ca: CertAuthority, tls_server: Any) -> None:
    cert = test_ca.issue_server_cert(expired=True)
    server = tls_server(_handshake_then_wait(_server_context(cert)))
    errors = _both_drivers(server.port, test_ca.ca_cert_pem)
    assert len(errors) == 2
    for error in errors:
        assert isinstance(error, TLSVerificationError), error
        assert "expired" in error.reason
        assert isinstance(error.__cause__, ssl.SSLCertVerificationError)


def test_device_client_checks_the_host_name_for_mqtt_and_https(
        test_ca: CertAuthority, tls_server: Any) -> None:
    """A certificate from the trusted CA but for another name is refused by the
    device client's MQTT connection and by its HTTPS (file upload) calls."""
    from iotdev import IoTHubDeviceClient

    cert = test_ca.issue_server_cert("other.example", dns_names=("other.example",), ips=(),
                                     file_stem="other-name")
    server = tls_server(_handshake_then_wait(_server_context(cert)))
    client = IoTHubDeviceClient.create_from_symmetric_key(
        "QUJDRA==", "localhost", "dev", server_verification_cert=test_ca.ca_cert_pem,
        port=server.port, https_port=server.port, connection_retry=False,
        operation_timeout=TIMEOUT)
    try:
        for call in (client.connect, lambda: client.get_storage_info_for_blob("x")):
            with pytest.raises(TLSVerificationError) as refused:
                call()
            assert "localhost" in str(refused.value) or "mismatch" in refused.value.reason
    finally:
        client.shutdown()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion.TLSv1_1 is deprecated:DeprecationWarning")
def test_server_offering_only_tls_1_1(test_ca: CertAuthority, tls_server: Any) -> None:
    try:
        ctx = _server_context(test_ca.issue_server_cert(file_stem="tls11"),
                              maximum=ssl.TLSVersion.TLSv1_1)
    except (ssl.SSLError, ValueError) as exc:  # pragma: no cover - depends on OpenSSL
        skip_or_fail(f"this OpenSSL cannot offer TLS 1.1 at all: {exc}")
    server = tls_server(_handshake_then_wait(ctx))
    errors = _both_drivers(server.port, test_ca.ca_cert_pem)
    assert len(errors) == 2
    for error in errors:
        assert isinstance(error, TLSError) and not isinstance(error, TLSVerificationError), error


def test_server_closing_mid_handshake(test_ca: CertAuthority, tls_server: Any) -> None:
    def behaviour(conn: socket.socket) -> None:
        conn.recv(5)  # the start of the ClientHello, then hang up

    server = tls_server(behaviour)
    errors = _both_drivers(server.port, test_ca.ca_cert_pem)
    assert len(errors) == 2
    for error in errors:
        assert isinstance(error, ConnectionFailedError | ConnectionDroppedError), error


def test_server_closing_after_tls_before_connack(test_ca: CertAuthority,
                                                 tls_server: Any) -> None:
    ctx = _server_context(test_ca.issue_server_cert(file_stem="no-connack"))

    def behaviour(conn: socket.socket) -> None:
        with ctx.wrap_socket(conn, server_side=True) as tls:
            tls.recv(100)  # the CONNECT, then close without CONNACK

    server = tls_server(behaviour)
    errors = _both_drivers(server.port, test_ca.ca_cert_pem)
    assert len(errors) == 2
    for error in errors:
        assert isinstance(error, ClientError), error


@pytest.fixture
def password_broker(mosquitto_factory: Any, tmp_path: Any) -> Mosquitto:
    passwd = require_program("mosquitto_passwd")
    path = tmp_path / "passwd"
    subprocess.run([passwd, "-b", "-c", str(path), "alice", "right"], check=True,
                   capture_output=True)
    path.chmod(0o644)
    broker: Mosquitto = mosquitto_factory(
        extra_config=f"allow_anonymous false\npassword_file {path}\n")
    return broker


@pytest.mark.mosquitto
def test_bad_password_is_a_credential_error_and_not_retried(password_broker: Mosquitto) -> None:
    client = MQTTClient(password_broker.host, password_broker.tcp_port, client_id="x",
                        username="alice", password="wrong", retry_interval=0.1)
    try:
        with pytest.raises(CredentialError) as info:
            client.connect(timeout=TIMEOUT)
        assert "not authorized" in str(info.value) or "bad user name" in str(info.value)
        assert not client._driver._want_connected
    finally:
        client.shutdown()
    ok = MQTTClient(password_broker.host, password_broker.tcp_port, client_id="y",
                    username="alice", password="right")
    try:
        ok.connect(timeout=TIMEOUT)
        assert ok.connected
    finally:
        ok.shutdown()


@pytest.mark.mosquitto
def test_bad_password_async(password_broker: Mosquitto) -> None:
    async def main() -> None:
        client = AsyncClient(password_broker.host, password_broker.tcp_port, client_id="x",
                             username="alice", password="wrong")
        with pytest.raises(CredentialError):
            await client.connect(timeout=TIMEOUT)

    asyncio.run(main())


def _paho_peer(broker: Mosquitto, topic: str, count: int) -> tuple[Any, list[Any], Any]:
    paho: Any = require_module("paho.mqtt.client", "the test extra")
    got: list[Any] = []
    done = threading.Event()
    subscribed = threading.Event()
    peer = paho.Client(client_id=unique_name("paho"))
    peer.on_connect = lambda c, u, f, rc: c.subscribe(topic, 2)
    peer.on_subscribe = lambda c, u, m, g: subscribed.set()

    def on_message(c: Any, u: Any, message: Any) -> None:
        got.append((message.payload, message.qos))
        if len(got) == count:
            done.set()

    peer.on_message = on_message
    peer.connect(broker.host, broker.tcp_port)
    peer.loop_start()
    assert subscribed.wait(TIMEOUT)
    return peer, got, done


@pytest.mark.mosquitto
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_sync_client_to_paho_and_back(mosquitto: Mosquitto, test_ca: CertAuthority,
                                      qos: int) -> None:
    topic = unique_name("iotdev/paho/sync")
    peer, got, done = _paho_peer(mosquitto, topic, 3)
    back = unique_name("iotdev/paho/back")
    received: list[MessageReceived] = []
    arrived = threading.Event()
    client = MQTTClient("localhost", mosquitto.tls_port, client_id=unique_name("s"),
                        transport="tls", server_verification_cert=test_ca.ca_cert_pem)
    try:
        client.connect(timeout=TIMEOUT)
        client.subscribe(back, qos, callback=lambda m: (received.append(m), arrived.set()),
                         timeout=TIMEOUT)
        for i in range(3):
            client.publish(topic, b"s%d" % i, qos).result(TIMEOUT)
        assert done.wait(TIMEOUT)
        peer.publish(back, b"from paho", qos).wait_for_publish()
        assert arrived.wait(TIMEOUT)
    finally:
        client.shutdown()
        peer.loop_stop()
        peer.disconnect()
    assert got == [(b"s%d" % i, qos) for i in range(3)]
    assert [(m.payload, m.qos) for m in received] == [(b"from paho", qos)]


@pytest.mark.mosquitto
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_async_client_to_paho_and_back(mosquitto: Mosquitto, test_ca: CertAuthority,
                                       qos: int) -> None:
    topic = unique_name("iotdev/paho/aio")
    back = unique_name("iotdev/paho/aio-back")
    peer, got, done = _paho_peer(mosquitto, topic, 3)

    async def main() -> list[MessageReceived]:
        async with AsyncClient("localhost", mosquitto.tls_port, client_id=unique_name("a"),
                               transport="tls",
                               server_verification_cert=test_ca.ca_cert_pem) as client:
            await client.subscribe(back, qos, timeout=TIMEOUT)
            await asyncio.wait_for(asyncio.gather(
                *(client.publish(topic, b"a%d" % i, qos) for i in range(3))), TIMEOUT)
            assert await asyncio.to_thread(done.wait, TIMEOUT)
            messages = client.messages()
            await asyncio.to_thread(lambda: peer.publish(back, b"from paho", qos)
                                    .wait_for_publish())
            return [await asyncio.wait_for(anext(messages), TIMEOUT)]

    try:
        received = asyncio.run(main())
    finally:
        peer.loop_stop()
        peer.disconnect()
    assert got == [(b"a%d" % i, qos) for i in range(3)]
    assert [(m.payload, m.qos) for m in received] == [(b"from paho", qos)]
