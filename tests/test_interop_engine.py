"""ClientConnection against a real mosquitto, driven by a small blocking socket
loop; mosquitto_pub / mosquitto_sub and paho-mqtt are the independent peers."""

from __future__ import annotations

import socket
import ssl
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from iotdev_mqtt import (
    ClientConnection,
    Connected,
    Event,
    MessageReceived,
    PublishAcked,
    State,
    Subscribed,
    Unsubscribed,
)
from tests._broker import Mosquitto, MosquittoClients, unique_name
from tests._ci import require_module

pytestmark = pytest.mark.mosquitto

TIMEOUT = 10.0


class Driver:
    """A minimal blocking I/O loop around ``ClientConnection`` (tests only)."""

    def __init__(self, broker: Mosquitto, *, tls: bool = False, **engine: Any) -> None:
        self.broker = broker
        self.tls = tls
        self.conn = ClientConnection(**engine)
        self.sock: socket.socket | None = None
        self.events: list[Event] = []
        self.received = bytearray()

    def open(self, client_id: str, **connect: Any) -> None:
        port = self.broker.tls_port if self.tls else self.broker.tcp_port
        sock = socket.create_connection((self.broker.host, port), timeout=TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls:
            ctx = ssl.create_default_context(cafile=str(self.broker.ca_cert))
            sock = ctx.wrap_socket(sock, server_hostname="localhost")
        self.sock = sock
        self.events += self.conn.connect(client_id, now=time.monotonic(), **connect)
        self.flush()
        self.wait_for(lambda: any(isinstance(e, Connected) for e in self.events))

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and self.sock is not None:
            self.sock.sendall(data)

    def step(self, timeout: float) -> None:
        assert self.sock is not None
        self.flush()
        deadline = self.conn.next_deadline()
        wait = timeout if deadline is None else min(timeout, deadline - time.monotonic())
        self.sock.settimeout(max(0.001, wait))
        try:
            data = self.sock.recv(65536)
        except (TimeoutError, ssl.SSLWantReadError):
            self.events += self.conn.tick(time.monotonic())
        else:
            if not data:
                raise AssertionError(f"broker closed the connection; events: {self.events}")
            self.received += data
            self.events += self.conn.receive_data(data, now=time.monotonic())
        self.flush()

    def wait_for(self, done: Callable[[], bool], timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while not done():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out; events so far: {self.events}\n"
                                     f"broker log:\n{self.broker.log_tail()}")
            self.step(min(left, 0.5))

    def of(self, kind: type[Any]) -> list[Any]:
        return [e for e in self.events if isinstance(e, kind)]

    def drop(self) -> None:
        """Close the socket without DISCONNECT (a network failure)."""
        assert self.sock is not None
        self.sock.close()
        self.sock = None
        self.events += self.conn.connection_lost()

    def close(self) -> None:
        if self.sock is not None:
            if self.conn.state is State.CONNECTED:
                self.conn.disconnect(now=time.monotonic())
                self.flush()
            self.sock.close()
            self.sock = None
            self.events += self.conn.connection_lost()


@pytest.fixture
def driver(mosquitto: Mosquitto) -> Any:
    made: list[Driver] = []

    def make(**kw: Any) -> Driver:
        d = Driver(mosquitto, **kw)
        made.append(d)
        return d

    yield make
    for d in made:
        d.close()


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_receive_from_mosquitto_pub(
    driver: Any, mosquitto: Mosquitto, mosquitto_clients: MosquittoClients, qos: int, tls: bool
) -> None:
    d = driver(tls=tls)
    d.open(unique_name("engine-sub"))
    topic = unique_name("iotdev/interop/down")
    pid = d.conn.subscribe(topic, qos, now=time.monotonic())
    d.wait_for(lambda: bool(d.of(Subscribed)))
    assert d.of(Subscribed)[0].packet_id == pid
    assert d.of(Subscribed)[0].return_codes == (qos,)
    payload = bytes(range(256)) * 3
    mosquitto_clients.publish(mosquitto, topic, payload, qos=qos)
    d.wait_for(lambda: bool(d.of(MessageReceived)))
    msg = d.of(MessageReceived)[0]
    assert (msg.topic, msg.payload, msg.qos) == (topic, payload, qos)
    if qos == 2:  # our PUBREC was answered by PUBREL, which we completed
        d.wait_for(lambda: not d.conn.session.inbound_qos2)
    d.conn.unsubscribe(topic, now=time.monotonic())
    d.wait_for(lambda: bool(d.of(Unsubscribed)))


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_publish_to_mosquitto_sub(
    driver: Any, mosquitto: Mosquitto, mosquitto_clients: MosquittoClients, qos: int
) -> None:
    topic = unique_name("iotdev/interop/up")
    watcher = mosquitto_clients.subscribe(mosquitto, topic, qos=2, count=3)
    try:
        d = driver()
        d.open(unique_name("engine-pub"))
        tokens = [d.conn.publish(topic, f"m{i}".encode(), qos, now=time.monotonic())
                  for i in range(3)]
        if qos:
            d.wait_for(lambda: len(d.of(PublishAcked)) == 3)
            assert [e.token for e in d.of(PublishAcked)] == tokens
        else:
            d.flush()
        assert watcher.wait_exit(TIMEOUT) == 0
    finally:
        watcher.close()
    lines = [line for line in watcher.lines if line.startswith(topic)]
    assert lines == [f"{topic} m0", f"{topic} m1", f"{topic} m2"]


def test_session_resumes_with_queued_messages(
    driver: Any, mosquitto: Mosquitto, mosquitto_clients: MosquittoClients
) -> None:
    client_id = unique_name("engine-session")
    topic = unique_name("iotdev/interop/session")
    d = driver()
    d.open(client_id, clean_session=False)
    d.conn.subscribe(topic, 1, now=time.monotonic())
    d.wait_for(lambda: bool(d.of(Subscribed)))
    d.close()
    for i in range(3):  # while we are offline: mosquitto queues them for the session
        mosquitto_clients.publish(mosquitto, topic, f"offline-{i}".encode(), qos=1)
    d.events.clear()
    d.open(client_id, clean_session=False)
    assert d.of(Connected)[0].session_present is True
    d.wait_for(lambda: len(d.of(MessageReceived)) == 3)
    assert [m.payload for m in d.of(MessageReceived)] == [b"offline-0", b"offline-1",
                                                           b"offline-2"]


def test_inflight_publish_resent_with_dup_after_drop(
    driver: Any, mosquitto: Mosquitto, mosquitto_clients: MosquittoClients
) -> None:
    """Send a QoS 1 PUBLISH and drop the socket before reading the PUBACK: after
    reconnecting with clean session 0 the engine re-sends it with DUP=1 and the
    same id, mosquitto acks it, and the subscriber gets it (at least once)."""
    client_id = unique_name("engine-resend")
    topic = unique_name("iotdev/interop/resend")
    watcher = mosquitto_clients.subscribe(mosquitto, topic, qos=1, count=1)
    try:
        d = driver()
        d.open(client_id, clean_session=False)
        token = d.conn.publish(topic, b"survives", 1, now=time.monotonic())
        d.flush()
        pid = next(iter(d.conn.session.inflight))
        d.drop()
        assert d.conn.pending() == [token]
        d.events.clear()
        d.open(client_id, clean_session=False)
        d.wait_for(lambda: bool(d.of(PublishAcked)))
        assert d.of(PublishAcked)[0] == PublishAcked(token, pid)
        assert d.conn.pending() == []
        # mosquitto logs the flags it received: DUP=1, QoS 1, the original id.
        assert f"Received PUBLISH from {client_id} (d1, q1, r0, m{pid}, '{topic}'" in (
            mosquitto.log_text()
        )
        assert watcher.wait_exit(TIMEOUT) == 0
        assert f"{topic} survives" in watcher.lines
    finally:
        watcher.close()


def test_keep_alive_pings_a_real_broker(driver: Any) -> None:
    d = driver()
    d.open(unique_name("engine-ka"), keep_alive=1)
    d.wait_for(lambda: d.received.count(b"\xd0\x00") >= 2, timeout=8)
    assert d.conn.state is State.CONNECTED


def test_pipelined_publishes_reach_paho_in_order(driver: Any, mosquitto: Mosquitto) -> None:
    paho: Any = require_module("paho.mqtt.client", "the test extra")
    topic = unique_name("iotdev/interop/paho")
    got: list[bytes] = []
    subscribed = threading.Event()
    all_in = threading.Event()
    n = 200

    peer = paho.Client(client_id=unique_name("paho"), clean_session=True)

    def on_connect(client: Any, userdata: Any, flags: Any, rc: int) -> None:
        client.subscribe(topic, qos=1)

    def on_subscribe(client: Any, userdata: Any, mid: int, granted: Any) -> None:
        subscribed.set()

    def on_message(client: Any, userdata: Any, message: Any) -> None:
        got.append(message.payload)
        if len(got) == n:
            all_in.set()

    peer.on_connect = on_connect
    peer.on_subscribe = on_subscribe
    peer.on_message = on_message
    peer.connect(mosquitto.host, mosquitto.tcp_port, keepalive=30)
    peer.loop_start()
    try:
        assert subscribed.wait(TIMEOUT), "paho never got its SUBACK"
        d = driver(max_inflight=20)
        d.open(unique_name("engine-pipeline"))
        for i in range(n):
            d.conn.publish(topic, b"%05d" % i, 1, now=time.monotonic())
        d.wait_for(lambda: len(d.of(PublishAcked)) == n)
        assert all_in.wait(TIMEOUT), f"paho got {len(got)} of {n}"
    finally:
        peer.loop_stop()
        peer.disconnect()
    assert got == [b"%05d" % i for i in range(n)]
