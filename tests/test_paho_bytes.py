"""Our encoder writes exactly the bytes paho-mqtt 1.6.1 writes for the same packets.

paho talks to a loopback listening socket of this test (no mocks): each frame it
sends is cut out by its own remaining length (not by our decoder), decoded with
``PacketReader("server")``, compared field by field with what paho was given,
and re-encoded: ``encode(decoded) == paho's bytes``.  The fake broker answers
with our encoded CONNACK / PUBACK / PUBREC / PUBCOMP / SUBACK / UNSUBACK and
checks that paho accepted them.  No broker needed.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import paho.mqtt.client as paho
import pytest

from iotdev_mqtt import (
    ConnAck,
    Connect,
    Disconnect,
    Packet,
    PacketReader,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    UnsubAck,
    Unsubscribe,
    Will,
    encode,
)

TIMEOUT = 5.0


def _frame_length(buf: bytes | bytearray) -> int | None:
    """Length of the whole frame at the front of ``buf``, or None if incomplete.
    Independent of our decoder, so a boundary bug there cannot hide here."""
    value = 0
    for i in range(1, min(len(buf), 5)):
        value |= (buf[i] & 0x7F) << (7 * (i - 1))
        if buf[i] < 0x80:
            return 1 + i + value
    assert len(buf) < 5, f"remaining length longer than 4 bytes: {bytes(buf[:5]).hex(' ')}"
    return None


class FakeBroker:
    """One loopback listening socket; accepts one client and reads its frames."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self.conn: socket.socket | None = None
        self.buf = bytearray()
        self.reader = PacketReader("server")
        self.frames: list[bytes] = []

    def accept(self) -> None:
        self.listener.settimeout(TIMEOUT)
        self.conn, _ = self.listener.accept()

    def read_frame(self, timeout: float = TIMEOUT) -> bytes:
        assert self.conn is not None
        deadline = time.monotonic() + timeout
        while True:
            size = _frame_length(self.buf)
            if size is not None and len(self.buf) >= size:
                frame = bytes(self.buf[:size])
                del self.buf[:size]
                self.frames.append(frame)
                return frame
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(
                    f"no complete frame from paho within {timeout}s; frames so far: "
                    f"{[f.hex(' ') for f in self.frames]}; buffered: {self.buf.hex(' ')!r}"
                )
            self.conn.settimeout(remaining)
            try:
                data = self.conn.recv(65536)
            except TimeoutError:
                continue
            if not data:
                raise AssertionError(f"paho closed the connection; buffered {self.buf.hex(' ')}")
            self.buf += data

    def read_packet(self) -> tuple[Packet, bytes]:
        """The next frame, decoded by our reader and checked to re-encode byte for byte."""
        frame = self.read_frame()
        packets = self.reader.feed(frame)
        assert len(packets) == 1, f"{frame.hex(' ')} decoded to {packets!r}"
        packet = packets[0]
        assert encode(packet).hex(" ") == frame.hex(" "), f"re-encoding {packet!r}"
        return packet, frame

    def send(self, packet: Packet) -> None:
        assert self.conn is not None
        self.conn.sendall(encode(packet))

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
        self.listener.close()


class PahoClient:
    """A paho 1.6.1 client whose callbacks set events we can wait on."""

    def __init__(self, client_id: str = "paho-test", clean_session: bool = True) -> None:
        self.client = paho.Client(
            client_id=client_id, clean_session=clean_session, protocol=paho.MQTTv311,
            reconnect_on_failure=False,
        )
        self.connected = threading.Event()
        self.connect_rc: int | None = None
        self.subscribed: dict[int, tuple[int, ...]] = {}
        self.unsubscribed: set[int] = set()
        self.acks = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_unsubscribe = self._on_unsubscribe
        self.looping = False

    def _on_connect(self, client: Any, userdata: Any, flags: Any, rc: int) -> None:
        self.connect_rc = rc
        self.connected.set()

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, granted: Any) -> None:
        with self.acks:
            self.subscribed[mid] = tuple(granted)
            self.acks.notify_all()

    def _on_unsubscribe(self, client: Any, userdata: Any, mid: int) -> None:
        with self.acks:
            self.unsubscribed.add(mid)
            self.acks.notify_all()

    def wait_ack(self, what: str, mid: int) -> None:
        table = self.subscribed if what == "subscribe" else self.unsubscribed
        with self.acks:
            assert self.acks.wait_for(lambda: mid in table, TIMEOUT), f"paho saw no {what} ack"

    def start(self) -> None:
        self.client.loop_start()
        self.looping = True

    def close(self) -> None:
        if self.looping:
            self.client.disconnect()  # wakes paho's loop thread, which then exits
            self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            sock.close()


@pytest.fixture
def broker() -> Iterator[FakeBroker]:
    fake = FakeBroker()
    try:
        yield fake
    finally:
        fake.close()


def _connected(broker: FakeBroker, client: PahoClient) -> None:
    """Finish paho's CONNECT with our CONNACK and wait until paho accepts it."""
    broker.accept()
    packet, _ = broker.read_packet()
    assert isinstance(packet, Connect)
    client.start()
    broker.send(ConnAck(False, 0))
    assert client.connected.wait(TIMEOUT), "paho did not accept our CONNACK"
    assert client.connect_rc == 0


@pytest.fixture
def session(broker: FakeBroker) -> Iterator[tuple[FakeBroker, PahoClient]]:
    client = PahoClient()
    client.client.connect("127.0.0.1", broker.port, keepalive=60)
    try:
        _connected(broker, client)
        yield broker, client
    finally:
        client.close()


# ------------------------------------------------------------------ CONNECT

BIG = bytes(range(256))

CONNECT_CASES = [
    pytest.param(dict(client_id="paho-1", clean_session=True, keepalive=60), id="minimal"),
    pytest.param(dict(client_id="", clean_session=True, keepalive=60), id="empty-client-id"),
    pytest.param(
        dict(client_id="dev/1 ü", clean_session=False, keepalive=17), id="persistent-unicode-id"
    ),
    pytest.param(dict(client_id="c", keepalive=0, username="user"), id="user-no-password"),
    pytest.param(
        dict(client_id="c1", keepalive=65535, username="üser", password=b"\x00\xffpw"),
        id="user-binary-password",
    ),
    pytest.param(
        dict(client_id="c2", will=("w/t", b"bye", 1, True)), id="will-qos1-retain"
    ),
    pytest.param(
        dict(client_id="c3", clean_session=False, will=("w/ü", BIG, 2, False),
             username="u", password=b"p"),
        id="will-qos2-long-payload-user-password",
    ),
    pytest.param(dict(client_id="c4", will=("w", b"", 0, False)), id="will-empty-payload"),
]


@pytest.mark.parametrize("case", CONNECT_CASES)
def test_connect_bytes(broker: FakeBroker, case: dict[str, Any]) -> None:
    clean = case.get("clean_session", True)
    client = PahoClient(case["client_id"], clean_session=clean)
    expected_will = None
    if "will" in case:
        topic, payload, qos, retain = case["will"]
        client.client.will_set(topic, payload, qos, retain)
        expected_will = Will(topic, payload, qos, retain)
    if "username" in case:
        client.client.username_pw_set(case["username"], case.get("password"))
    keep_alive = case.get("keepalive", 60)
    try:
        # Without a loop thread, paho writes CONNECT from connect() itself.
        client.client.connect("127.0.0.1", broker.port, keepalive=keep_alive)
        broker.accept()
        packet, _ = broker.read_packet()
        assert packet == Connect(
            client_id=case["client_id"],
            clean_session=clean,
            keep_alive=keep_alive,
            username=case.get("username"),
            password=case.get("password"),
            will=expected_will,
        )
        client.start()
        broker.send(ConnAck(False, 0))
        assert client.connected.wait(TIMEOUT), "paho did not accept our CONNACK"
        assert client.connect_rc == 0
        client.client.disconnect()
        packet, frame = broker.read_packet()
        assert packet == Disconnect() and frame == b"\xe0\x00"
    finally:
        client.close()


# ------------------------------------------------------------------ PUBLISH

PUBLISH_CASES = [
    pytest.param("devices/dev1/messages/events/", b"hello", 0, False, id="qos0"),
    pytest.param("a/b", b"", 0, True, id="qos0-retain-empty"),
    pytest.param("t/ü/🙂", BIG, 1, False, id="qos1-binary-2-byte-length"),
    pytest.param("a", b"\x00\xff", 1, True, id="qos1-retain"),
    pytest.param("x/y/z", b"\x00binary\xff" * 2500, 2, False, id="qos2-3-byte-length"),
    pytest.param("r", "ünïcode".encode(), 2, True, id="qos2-retain"),
]


@pytest.mark.parametrize(("topic", "payload", "qos", "retain"), PUBLISH_CASES)
def test_publish_bytes(
    session: tuple[FakeBroker, PahoClient], topic: str, payload: bytes, qos: int, retain: bool
) -> None:
    broker, client = session
    info = client.client.publish(topic, payload, qos=qos, retain=retain)
    assert info.rc == paho.MQTT_ERR_SUCCESS
    packet, _ = broker.read_packet()
    packet_id = None if qos == 0 else info.mid
    assert packet == Publish(topic, payload, qos=qos, retain=retain, dup=False,
                             packet_id=packet_id)
    if qos == 1:
        broker.send(PubAck(info.mid))
    elif qos == 2:
        broker.send(PubRec(info.mid))
        rel, frame = broker.read_packet()
        assert rel == PubRel(info.mid)
        assert frame == bytes((0x62, 2)) + info.mid.to_bytes(2, "big")
        broker.send(PubComp(info.mid))
    info.wait_for_publish(TIMEOUT)
    assert info.is_published(), "paho did not complete the flow with our acks"


# ------------------------------------------------------------------ SUBSCRIBE / UNSUBSCRIBE

SUBSCRIBE_CASES = [
    pytest.param([("a/b", 0)], id="one-qos0"),
    pytest.param([("devices/+/messages/#", 2)], id="one-wildcards-qos2"),
    pytest.param([("a", 0), ("b/+", 1), ("c/#", 2), ("ü/x", 1), ("#", 0)], id="several"),
]


@pytest.mark.parametrize("subscriptions", SUBSCRIBE_CASES)
def test_subscribe_bytes(
    session: tuple[FakeBroker, PahoClient], subscriptions: list[tuple[str, int]]
) -> None:
    broker, client = session
    if len(subscriptions) == 1:
        rc, mid = client.client.subscribe(subscriptions[0][0], subscriptions[0][1])
    else:
        rc, mid = client.client.subscribe(subscriptions)
    assert rc == paho.MQTT_ERR_SUCCESS
    packet, _ = broker.read_packet()
    assert packet == Subscribe(mid, tuple(subscriptions))
    granted = tuple(qos if qos < 2 else 0x80 for _, qos in subscriptions)
    broker.send(SubAck(mid, granted))
    client.wait_ack("subscribe", mid)
    assert client.subscribed[mid] == granted


def test_unsubscribe_bytes(session: tuple[FakeBroker, PahoClient]) -> None:
    broker, client = session
    rc, mid = client.client.unsubscribe(["a/b", "c/+", "#"])
    assert rc == paho.MQTT_ERR_SUCCESS
    packet, _ = broker.read_packet()
    assert packet == Unsubscribe(mid, ("a/b", "c/+", "#"))
    broker.send(UnsubAck(mid))
    client.wait_ack("unsubscribe", mid)
