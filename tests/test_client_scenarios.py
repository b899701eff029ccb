"""Scripted, byte-exact client scenarios (conformance reference sections 4, 6, 7).

Each test plays a fake broker against ``ClientConnection``: it feeds exactly the
bytes the broker sends and asserts exactly the bytes the client emits through
``data_to_send()``.  Rows 1-17 are the mosquitto ``test/lib`` client tests of
section 6, followed by the paho-python extras and the session, ordering, window,
packet identifier and error rules of sections 4 and 7.

Time is a plain float passed as ``now``; nothing sleeps.  Expected bytes are
written out by hand (hex from the reference, ASCII fields spelled out), never
produced by the package's own encoder.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from iotdev_mqtt import (
    ClientConnection,
    Connected,
    ConnectionLost,
    ConnectRefused,
    LocalProtocolError,
    MalformedPacket,
    MessageReceived,
    PublishAcked,
    PublishFailed,
    QueueFull,
    RemoteProtocolError,
    RequestFailed,
    State,
    Subscribed,
    Unsubscribed,
    Will,
)

H = bytes.fromhex

CONNACK = H("20 02 00 00")
CONNACK_SP = H("20 02 01 00")
DISCONNECT = H("E0 00")
PINGREQ = H("C0 00")
PINGRESP = H("D0 00")

# CONNECT "c", keep alive 60, clean session 1 / 0.
CONNECT_C = H("10 0D 00 04 4D 51 54 54 04 02 00 3C 00 01 63")
CONNECT_C_RESUME = H("10 0D 00 04 4D 51 54 54 04 00 00 3C 00 01 63")

# V12 / V14 / V16 of section 5.1.
V12 = H("30 07 00 03 61 2F 62 68 69")
V14 = H("32 09 00 03 61 2F 62 00 01 68 69")
V16 = H("34 09 00 03 61 2F 62 FF FF 68 69")


def open_client(
    client_id: str = "c",
    *,
    now: float = 0.0,
    keep_alive: int = 60,
    clean_session: bool = True,
    **options: object,
) -> ClientConnection:
    """A client that has sent CONNECT (drained) and received CONNACK 0."""
    client = ClientConnection(**options)  # type: ignore[arg-type]
    assert client.connect(
        client_id, now=now, clean_session=clean_session, keep_alive=keep_alive
    ) == []
    assert client.data_to_send()[:1] == b"\x10"
    assert client.receive_data(CONNACK, now=now) == [Connected(False)]
    assert client.state is State.CONNECTED
    return client


def broker_closes(client: ClientConnection) -> None:
    """The fake broker closes the socket: EOF, then the I/O layer's hook."""
    assert client.receive_data(b"", now=0.0) == []
    client.connection_lost()
    assert client.state is State.DISCONNECTED
    assert client.data_to_send() == b""


# ======================================================================
# Section 6, mosquitto test/lib rows 1-17
# ======================================================================


def test_row01_con_discon_success() -> None:
    client = ClientConnection()
    assert client.state is State.DISCONNECTED
    assert client.connect("01-con-discon-success", now=0.0, keep_alive=60) == []
    assert client.data_to_send() == (
        H("10 21 00 04 4D 51 54 54 04 02 00 3C 00 15") + b"01-con-discon-success"
    )
    assert client.state is State.CONNECTING
    assert client.receive_data(CONNACK, now=0.1) == [Connected(session_present=False)]
    assert client.state is State.CONNECTED
    assert client.data_to_send() == b""
    client.disconnect(now=0.2)
    assert client.data_to_send() == DISCONNECT
    assert client.state is State.CLOSING
    assert client.next_deadline() is None
    assert client.connection_lost() == []
    assert client.state is State.DISCONNECTED


CONNECT_KEEPALIVE = (
    H("10 20 00 04 4D 51 54 54 04 02 00 05 00 14") + b"01-keepalive-pingreq"
)


def test_row02_keepalive_pingreq() -> None:
    client = ClientConnection()
    client.connect("01-keepalive-pingreq", now=0.0, keep_alive=5)
    assert client.data_to_send() == CONNECT_KEEPALIVE
    assert client.receive_data(CONNACK, now=0.5) == [Connected(False)]
    # The keep-alive interval counts from the client's last packet (CONNECT at 0).
    assert client.next_deadline() == 5.0
    assert client.tick(4.999) == []
    assert client.data_to_send() == b""
    assert client.tick(5.0) == []
    assert client.data_to_send() == PINGREQ
    assert client.tick(5.5) == []
    assert client.data_to_send() == b""  # one PINGREQ outstanding at a time
    # The broker "sleeps 1 s", then answers: the outstanding ping is cleared.
    assert client.receive_data(PINGRESP, now=6.0) == []
    assert client.next_deadline() == 10.0
    assert client.tick(9.999) == []
    assert client.data_to_send() == b""
    assert client.tick(10.0) == []
    assert client.data_to_send() == PINGREQ
    assert client.state is State.CONNECTED


def test_keepalive_missing_pingresp_is_connection_lost() -> None:
    client = open_client(keep_alive=5)
    client.tick(5.0)
    assert client.data_to_send() == PINGREQ
    # Default ping_timeout is the keep-alive interval.
    assert client.next_deadline() == 10.0
    assert client.tick(9.999) == []
    assert client.state is State.CONNECTED
    events = client.tick(10.0)
    assert len(events) == 1 and isinstance(events[0], ConnectionLost)
    assert "PINGRESP" in events[0].reason
    assert client.state is State.CLOSING
    assert client.data_to_send() == b""
    assert client.next_deadline() is None
    # Late bytes are ignored; the I/O layer closes and reports the loss.
    assert client.receive_data(PINGRESP, now=10.5) == []
    assert client.connection_lost() == []
    assert client.state is State.DISCONNECTED


def test_keepalive_custom_ping_timeout() -> None:
    client = open_client(keep_alive=5, ping_timeout=2.0)
    client.tick(5.0)
    assert client.data_to_send() == PINGREQ
    assert client.next_deadline() == 7.0
    assert client.tick(6.999) == []
    assert [type(e) for e in client.tick(7.0)] == [ConnectionLost]
    assert client.state is State.CLOSING


def test_keepalive_sends_during_outstanding_ping_do_not_cancel_it() -> None:
    client = open_client(keep_alive=5)
    client.tick(5.0)
    assert client.data_to_send() == PINGREQ
    client.publish("a/b", b"hi", 0, now=7.0)
    assert client.data_to_send() == V12
    assert client.next_deadline() == 10.0
    assert [type(e) for e in client.tick(10.0)] == [ConnectionLost]


def test_keepalive_zero_disables_the_timer() -> None:
    client = ClientConnection()
    client.connect("c", now=0.0, keep_alive=0)
    assert client.data_to_send() == H("10 0D 00 04 4D 51 54 54 04 02 00 00 00 01 63")
    client.receive_data(CONNACK, now=0.0)
    assert client.next_deadline() is None
    assert client.tick(1e9) == []
    assert client.data_to_send() == b""


# Each sends one packet at t=3 (keep alive 5, CONNECT at 0).
def _send_qos0(c: ClientConnection) -> bytes:
    c.publish("a/b", b"hi", 0, now=3.0)
    return V12


def _send_qos1(c: ClientConnection) -> bytes:
    c.publish("a/b", b"hi", 1, now=3.0)
    return V14


def _send_subscribe(c: ClientConnection) -> bytes:
    c.subscribe("a/b", 1, now=3.0)
    return H("82 08 00 01 00 03 61 2F 62 01")


def _send_unsubscribe(c: ClientConnection) -> bytes:
    c.unsubscribe("a/b", now=3.0)
    return H("A2 07 00 01 00 03 61 2F 62")


def _send_puback(c: ClientConnection) -> bytes:
    c.receive_data(V14, now=3.0)
    return H("40 02 00 01")


def _send_manual_ack(c: ClientConnection) -> bytes:
    # auto_ack=False: the message arrives at 1, the application acks at 3.
    c.receive_data(V14, now=1.0)
    assert c.data_to_send() == b""
    assert c.ack(1, now=3.0) is True
    return H("40 02 00 01")


def _send_pubcomp(c: ClientConnection) -> bytes:
    c.receive_data(H("62 02 03 E8"), now=3.0)
    return H("70 02 03 E8")


def _send_pubrel(c: ClientConnection) -> bytes:
    c.receive_data(H("50 02 00 09"), now=3.0)
    return H("62 02 00 09")


@pytest.mark.parametrize(
    "send",
    [
        _send_qos0, _send_qos1, _send_subscribe, _send_unsubscribe, _send_puback,
        _send_manual_ack, _send_pubcomp, _send_pubrel,
    ],
)
def test_keepalive_any_send_resets_the_idle_timer(
    send: Callable[[ClientConnection], bytes],
) -> None:
    client = open_client(keep_alive=5, auto_ack=send is not _send_manual_ack)
    assert client.next_deadline() == 5.0
    expected = send(client)
    assert client.data_to_send() == expected
    assert client.next_deadline() == 8.0
    assert client.tick(5.0) == []
    assert client.data_to_send() == b""
    assert client.tick(7.999) == []
    assert client.data_to_send() == b""
    assert client.tick(8.0) == []
    assert client.data_to_send() == PINGREQ


def test_keepalive_counts_outbound_silence_only() -> None:
    # [MQTT-3.1.2-23]: receiving does not reset the client's timer.
    client = open_client(keep_alive=5)
    assert client.receive_data(V12, now=3.0) == [
        MessageReceived("a/b", b"hi", 0, False, False, None)
    ]
    assert client.receive_data(PINGRESP, now=4.0) == []
    assert client.next_deadline() == 5.0
    client.tick(5.0)
    assert client.data_to_send() == PINGREQ


def test_connack_timeout() -> None:
    client = ClientConnection(connect_timeout=10.0)
    client.connect("c", now=100.0)
    assert client.data_to_send() == CONNECT_C
    assert client.next_deadline() == 110.0
    assert client.tick(109.999) == []
    assert client.state is State.CONNECTING
    events = client.tick(110.0)
    assert len(events) == 1 and isinstance(events[0], ConnectionLost)
    assert "CONNACK" in events[0].reason
    assert client.state is State.CLOSING
    assert client.data_to_send() == b""
    assert client.next_deadline() is None
    assert client.receive_data(CONNACK, now=111.0) == []  # too late: ignored
    assert client.state is State.CLOSING
    client.connection_lost()
    assert client.state is State.DISCONNECTED


def test_row03_no_clean_session() -> None:
    client = ClientConnection()
    client.connect("01-no-clean-session", now=0.0, clean_session=False)
    assert client.data_to_send() == (
        H("10 1F 00 04 4D 51 54 54 04 00 00 3C 00 13") + b"01-no-clean-session"
    )


def test_row04_unpwd_set() -> None:
    client = ClientConnection()
    client.connect("01-unpwd-set", now=0.0, username="uname", password=b";'[08gn=#")
    assert client.data_to_send() == (
        H("10 2A 00 04 4D 51 54 54 04 C2 00 3C 00 0C") + b"01-unpwd-set"
        + H("00 05") + b"uname" + H("00 09") + b";'[08gn=#"
    )


def test_row05_will_set() -> None:
    client = ClientConnection()
    will = Will("topic/on/unexpected/disconnect", b"will message", qos=1, retain=True)
    client.connect("01-will-set", now=0.0, will=will)
    assert client.data_to_send() == (
        H("10 45 00 04 4D 51 54 54 04 2E 00 3C 00 0B") + b"01-will-set"
        + H("00 1E") + b"topic/on/unexpected/disconnect"
        + H("00 0C") + b"will message"
    )


def test_row06_will_unpwd_set() -> None:
    client = ClientConnection()
    client.connect(
        "01-will-unpwd-set", now=0.0, username="oibvvwqw", password=b"#'^2hg9a&nm38*us",
        will=Will("will-topic", b"will message", qos=2),
    )
    assert client.data_to_send() == (
        H("10 53 00 04 4D 51 54 54 04 D6 00 3C 00 11") + b"01-will-unpwd-set"
        + H("00 0A") + b"will-topic"
        + H("00 0C") + b"will message"
        + H("00 08") + b"oibvvwqw"
        + H("00 10") + b"#'^2hg9a&nm38*us"
    )


def _subscribe_bytes(qos: int) -> bytes:
    return H("82 0E 00 01 00 09") + f"qos{qos}/test".encode() + bytes([qos])


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_row07_subscribe(qos: int) -> None:
    client = open_client(f"subscribe-qos{qos}-test")
    assert client.subscribe(f"qos{qos}/test", qos, now=1.0) == 1  # first id is 1
    assert client.data_to_send() == _subscribe_bytes(qos)
    assert client.receive_data(H("90 03 00 01") + bytes([qos]), now=1.1) == [
        Subscribed(1, (f"qos{qos}/test",), (qos,))
    ]
    client.disconnect(now=1.2)
    assert client.data_to_send() == DISCONNECT


@pytest.mark.parametrize("when", ["before connect()", "before CONNACK"])
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_row07_subscribe_async_bytes_identical(qos: int, when: str) -> None:
    # 02-subscribe-qosN-async: subscribe issued before CONNACK; it leaves right
    # after CONNACK, byte-identical to the synchronous case.
    client = ClientConnection()
    if when == "before connect()":
        assert client.subscribe(f"qos{qos}/test", qos, now=0.0) == 1
    client.connect(f"subscribe-qos{qos}-test", now=0.0)
    if when == "before CONNACK":
        assert client.subscribe(f"qos{qos}/test", qos, now=0.0) == 1
    assert client.data_to_send()[:1] == b"\x10"  # the CONNECT only
    assert client.data_to_send() == b""
    assert client.receive_data(CONNACK, now=0.5) == [Connected(False)]
    assert client.data_to_send() == _subscribe_bytes(qos)
    assert client.receive_data(H("90 03 00 01") + bytes([qos]), now=0.6) == [
        Subscribed(1, (f"qos{qos}/test",), (qos,))
    ]


PUB_QOS1 = H("32 18 00 0D") + b"pub/qos1/test" + H("00 01") + b"message"
PUB_QOS1_DUP = H("3A 18 00 0D") + b"pub/qos1/test" + H("00 01") + b"message"
CONNECT_QOS1_CLEAN = H("10 1D 00 04 4D 51 54 54 04 02 00 3C 00 11") + b"publish-qos1-test"
CONNECT_QOS1_RESUME = H("10 1D 00 04 4D 51 54 54 04 00 00 3C 00 11") + b"publish-qos1-test"


def _qos1_first_connection(client: ClientConnection, clean: bool) -> int:
    client.connect("publish-qos1-test", now=0.0, clean_session=clean)
    assert client.data_to_send() == (CONNECT_QOS1_CLEAN if clean else CONNECT_QOS1_RESUME)
    client.receive_data(CONNACK, now=0.1)
    token = client.publish("pub/qos1/test", b"message", 1, now=0.2)
    assert client.data_to_send() == PUB_QOS1
    broker_closes(client)  # no PUBACK
    assert client.pending() == [token]
    return token


def test_row08_qos1_disconnect_resume_session() -> None:
    client = ClientConnection()
    token = _qos1_first_connection(client, clean=False)
    assert client.connect("publish-qos1-test", now=1.0, clean_session=False) == []
    assert client.data_to_send() == CONNECT_QOS1_RESUME
    assert client.receive_data(CONNACK_SP, now=1.1) == [Connected(True)]
    assert client.data_to_send() == PUB_QOS1_DUP  # DUP=1, same id 1
    assert client.receive_data(H("40 02 00 01"), now=1.2) == [PublishAcked(token, 1)]
    assert client.pending() == []
    client.disconnect(now=1.3)
    assert client.data_to_send() == DISCONNECT


def test_row08_qos1_disconnect_clean_resend_like_mosquitto() -> None:
    client = ClientConnection(clean_session_policy="resend")
    token = _qos1_first_connection(client, clean=True)
    assert client.connect("publish-qos1-test", now=1.0) == []
    assert client.data_to_send() == CONNECT_QOS1_CLEAN
    assert client.receive_data(CONNACK, now=1.1) == [Connected(False)]
    assert client.data_to_send() == PUB_QOS1_DUP
    assert client.receive_data(H("40 02 00 01"), now=1.2) == [PublishAcked(token, 1)]
    client.disconnect(now=1.3)
    assert client.data_to_send() == DISCONNECT


def test_row08_qos1_disconnect_clean_republish() -> None:
    client = ClientConnection()  # "republish" is the default
    token = _qos1_first_connection(client, clean=True)
    assert client.connect("publish-qos1-test", now=1.0) == []
    assert client.data_to_send() == CONNECT_QOS1_CLEAN
    assert client.pending() == [token]
    assert client.receive_data(CONNACK, now=1.1) == [Connected(False)]
    # A new message: fresh packet identifier, DUP=0.
    assert client.data_to_send() == (
        H("32 18 00 0D") + b"pub/qos1/test" + H("00 02") + b"message"
    )
    # The old id means nothing in the new session: an ack for it is ignored.
    assert client.receive_data(H("40 02 00 01"), now=1.2) == []
    assert client.receive_data(H("40 02 00 02"), now=1.3) == [PublishAcked(token, 2)]
    assert client.pending() == []


def test_row08_qos1_disconnect_clean_fail() -> None:
    client = ClientConnection(clean_session_policy="fail")
    token = _qos1_first_connection(client, clean=True)
    events = client.connect("publish-qos1-test", now=1.0)
    assert [(type(e), e.token) for e in events] == [(PublishFailed, token)]  # type: ignore[union-attr]
    assert client.pending() == []
    assert client.data_to_send() == CONNECT_QOS1_CLEAN
    assert client.receive_data(CONNACK, now=1.1) == [Connected(False)]
    assert client.data_to_send() == b""


PUB_QOS2 = H("34 18 00 0D") + b"pub/qos2/test" + H("00 01") + b"message"
PUB_QOS2_DUP = H("3C 18 00 0D") + b"pub/qos2/test" + H("00 01") + b"message"
CONNECT_QOS2_CLEAN = H("10 1D 00 04 4D 51 54 54 04 02 00 3C 00 11") + b"publish-qos2-test"
CONNECT_QOS2_RESUME = H("10 1D 00 04 4D 51 54 54 04 00 00 3C 00 11") + b"publish-qos2-test"


@pytest.mark.parametrize(
    ("clean", "policy"), [(False, "republish"), (True, "resend")],
    ids=["clean_session=0", "clean_session=1,resend(mosquitto)"],
)
def test_row09_qos2_disconnect(clean: bool, policy: str) -> None:
    client = ClientConnection(clean_session_policy=policy)  # type: ignore[arg-type]
    connect_bytes = CONNECT_QOS2_CLEAN if clean else CONNECT_QOS2_RESUME
    connack = CONNACK if clean else CONNACK_SP
    client.connect("publish-qos2-test", now=0.0, clean_session=clean)
    assert client.data_to_send() == connect_bytes
    client.receive_data(CONNACK, now=0.1)
    token = client.publish("pub/qos2/test", b"message", 2, now=0.2)
    assert client.data_to_send() == PUB_QOS2
    broker_closes(client)
    # Reconnect: PUBLISH again with DUP=1 and the same id.
    assert client.connect("publish-qos2-test", now=1.0, clean_session=clean) == []
    assert client.data_to_send() == connect_bytes
    client.receive_data(connack, now=1.1)
    assert client.data_to_send() == PUB_QOS2_DUP
    assert client.receive_data(H("50 02 00 01"), now=1.2) == []
    assert client.data_to_send() == H("62 02 00 01")
    broker_closes(client)
    # Second reconnect: after PUBREC only PUBREL is re-sent [MQTT-4.3.3-1].
    assert client.connect("publish-qos2-test", now=2.0, clean_session=clean) == []
    assert client.data_to_send() == connect_bytes
    client.receive_data(connack, now=2.1)
    assert client.data_to_send() == H("62 02 00 01")
    assert client.pending() == [token]
    assert client.receive_data(H("70 02 00 01"), now=2.2) == [PublishAcked(token, 1)]
    assert client.pending() == []
    client.disconnect(now=2.3)
    assert client.data_to_send() == DISCONNECT


def test_row09_qos2_disconnect_clean_republish() -> None:
    client = ClientConnection(clean_session_policy="republish")
    client.connect("publish-qos2-test", now=0.0)
    client.data_to_send()
    client.receive_data(CONNACK, now=0.1)
    token = client.publish("pub/qos2/test", b"message", 2, now=0.2)
    assert client.data_to_send() == PUB_QOS2
    broker_closes(client)
    assert client.connect("publish-qos2-test", now=1.0) == []
    assert client.data_to_send() == CONNECT_QOS2_CLEAN
    client.receive_data(CONNACK, now=1.1)
    # New message: new id, DUP=0.
    assert client.data_to_send() == (
        H("34 18 00 0D") + b"pub/qos2/test" + H("00 02") + b"message"
    )
    assert client.receive_data(H("50 02 00 02"), now=1.2) == []
    assert client.data_to_send() == H("62 02 00 02")
    broker_closes(client)
    # PUBREC received: the broker owns the message; a clean session drops the
    # PUBREL state and reports the message delivered.
    assert client.connect("publish-qos2-test", now=2.0) == [PublishAcked(token, 2)]
    assert client.pending() == []
    assert client.data_to_send() == CONNECT_QOS2_CLEAN
    client.receive_data(CONNACK, now=2.1)
    assert client.data_to_send() == b""


def test_row09_qos2_disconnect_clean_fail() -> None:
    client = ClientConnection(clean_session_policy="fail")
    client.connect("publish-qos2-test", now=0.0)
    client.data_to_send()
    client.receive_data(CONNACK, now=0.1)
    token = client.publish("pub/qos2/test", b"message", 2, now=0.2)
    assert client.data_to_send() == PUB_QOS2
    broker_closes(client)
    events = client.connect("publish-qos2-test", now=1.0)
    assert len(events) == 1 and isinstance(events[0], PublishFailed)
    assert events[0].token == token
    assert client.data_to_send() == CONNECT_QOS2_CLEAN
    client.receive_data(CONNACK, now=1.1)
    assert client.data_to_send() == b""
    assert client.pending() == []


@pytest.mark.parametrize("policy", ["republish", "fail"])
def test_qos2_after_pubrec_clean_reconnect_reports_acked(policy: str) -> None:
    client = open_client(clean_session_policy=policy)
    token = client.publish("a/b", b"hi", 2, now=0.0)
    assert client.data_to_send() == H("34 09 00 03 61 2F 62 00 01 68 69")
    client.receive_data(H("50 02 00 01"), now=0.1)
    assert client.data_to_send() == H("62 02 00 01")
    broker_closes(client)
    assert client.connect("c", now=1.0) == [PublishAcked(token, 1)]
    assert client.data_to_send() == CONNECT_C
    client.receive_data(CONNACK, now=1.1)
    assert client.data_to_send() == b""
    assert client.receive_data(H("70 02 00 01"), now=1.2) == []  # unknown now: ignored


def test_row10_publish_c2b_qos2() -> None:
    client = open_client("publish-qos2-test")
    token = client.publish("pub/qos2/test", b"message", 2, now=1.0)
    assert client.data_to_send() == PUB_QOS2
    assert client.receive_data(H("50 02 00 01"), now=1.1) == []
    assert client.data_to_send() == H("62 02 00 01")
    assert client.pending() == [token]  # the id stays busy until PUBCOMP
    assert client.receive_data(H("70 02 00 01"), now=1.2) == [PublishAcked(token, 1)]
    assert client.pending() == []
    client.disconnect(now=1.3)
    assert client.data_to_send() == DISCONNECT


@pytest.mark.parametrize(
    ("topic", "payload", "retain", "expected"),
    [
        ("pub/qos0/test", b"message", False,
         H("30 16 00 0D") + b"pub/qos0/test" + b"message"),
        ("pub/qos0/no-payload/test", b"", False,
         H("30 1A 00 18") + b"pub/qos0/no-payload/test"),
        ("retain/qos0/test", b"retained message", True,
         H("31 22 00 10") + b"retain/qos0/test" + b"retained message"),
    ],
    ids=["03-publish-qos0", "03-publish-qos0-no-payload", "04-retain-qos0"],
)
def test_row11_publish_qos0(topic: str, payload: bytes, retain: bool, expected: bytes) -> None:
    client = open_client("publish-qos0-test")
    client.publish(topic, payload, 0, retain, now=1.0)
    assert client.data_to_send() == expected
    assert client.pending() == []  # QoS 0 is done once its bytes leave
    client.disconnect(now=1.1)
    assert client.data_to_send() == DISCONNECT


def test_row12_publish_b2c_qos1() -> None:
    client = open_client("publish-qos1-test")
    data = H("32 1B 00 10") + b"pub/qos1/receive" + H("00 7B") + b"message"
    assert client.receive_data(data, now=1.0) == [
        MessageReceived("pub/qos1/receive", b"message", 1, False, False, 123)
    ]
    assert client.data_to_send() == H("40 02 00 7B")


@pytest.mark.parametrize(
    "unexpected", [H("40 02 34 6F"), H("70 02 34 6F")],
    ids=["row13-unexpected-puback", "row14-unexpected-pubcomp"],
)
def test_row13_14_unexpected_ack_ignored(unexpected: bytes) -> None:
    client = open_client(keep_alive=5)
    assert client.receive_data(unexpected, now=0.1) == []
    assert client.data_to_send() == b""
    assert client.state is State.CONNECTED
    client.tick(5.0)
    assert client.data_to_send() == PINGREQ  # still alive: the next PINGREQ arrives


PUB_QOS2_RECEIVE = H("34 1B 00 10") + b"pub/qos2/receive" + H("34 6F") + b"message"
MSG_QOS2_RECEIVE = MessageReceived("pub/qos2/receive", b"message", 2, False, False, 13423)


def test_row15_unexpected_pubrel() -> None:
    client = open_client("publish-qos2-test")
    assert client.receive_data(H("62 02 03 E8"), now=1.0) == []
    assert client.data_to_send() == H("70 02 03 E8")
    assert client.receive_data(PUB_QOS2_RECEIVE, now=1.1) == [MSG_QOS2_RECEIVE]
    assert client.data_to_send() == H("50 02 34 6F")
    assert client.receive_data(H("62 02 34 6F"), now=1.2) == []
    assert client.data_to_send() == H("70 02 34 6F")
    quit_ = H("30 0A 00 04") + b"quit" + b"quit"
    assert client.receive_data(quit_, now=1.3) == [
        MessageReceived("quit", b"quit", 0, False, False, None)
    ]
    assert client.data_to_send() == b""


def test_row16_publish_b2c_qos2_with_duplicates() -> None:
    client = open_client("publish-qos2-test")
    assert client.receive_data(PUB_QOS2_RECEIVE, now=1.0) == [MSG_QOS2_RECEIVE]
    assert client.data_to_send() == H("50 02 34 6F")
    # Duplicates before PUBREL: PUBREC again, no second delivery, whether DUP is
    # set or not: de-duplication is keyed on the id state [MQTT-4.3.3-2].
    dup = H("3C 1B 00 10") + b"pub/qos2/receive" + H("34 6F") + b"message"
    assert client.receive_data(dup, now=1.1) == []
    assert client.data_to_send() == H("50 02 34 6F")
    assert client.receive_data(PUB_QOS2_RECEIVE, now=1.2) == []
    assert client.data_to_send() == H("50 02 34 6F")
    assert client.receive_data(H("62 02 34 6F"), now=1.3) == []
    assert client.data_to_send() == H("70 02 34 6F")
    # After PUBREL the id is new again.
    assert client.receive_data(PUB_QOS2_RECEIVE, now=1.4) == [MSG_QOS2_RECEIVE]
    assert client.data_to_send() == H("50 02 34 6F")


def test_row16_qos2_dedup_in_one_receive_call() -> None:
    client = open_client()
    assert client.receive_data(V16 + V16 + H("62 02 FF FF"), now=1.0) == [
        MessageReceived("a/b", b"hi", 2, False, False, 65535)
    ]
    assert client.data_to_send() == H("50 02 FF FF 50 02 FF FF 70 02 FF FF")


def test_row17_unsubscribe() -> None:
    client = open_client("unsubscribe-test")
    assert client.unsubscribe("unsubscribe/test", now=1.0) == 1
    assert client.data_to_send() == H("A2 14 00 01 00 10") + b"unsubscribe/test"
    assert client.receive_data(H("B0 02 00 01"), now=1.1) == [
        Unsubscribed(1, ("unsubscribe/test",))
    ]
    client.disconnect(now=1.2)
    assert client.data_to_send() == DISCONNECT


# ======================================================================
# paho-python extras
# ======================================================================


def test_paho_zero_length_client_id() -> None:
    client = ClientConnection()
    client.connect("", now=0.0)
    assert client.data_to_send() == H("10 0C 00 04 4D 51 54 54 04 02 00 3C 00 00")
    assert client.receive_data(CONNACK, now=0.1) == [Connected(False)]


def test_paho_zero_length_client_id_needs_clean_session() -> None:
    client = ClientConnection()
    with pytest.raises(LocalProtocolError) as info:
        client.connect("", now=0.0, clean_session=False)
    assert info.value.rule == "MQTT-3.1.3-7"
    assert client.state is State.DISCONNECTED
    assert client.data_to_send() == b""
    client.connect("", now=0.0)  # nothing changed: a valid connect still works
    assert client.data_to_send() == H("10 0C 00 04 4D 51 54 54 04 02 00 3C 00 00")


def test_paho_empty_username_and_password() -> None:
    client = ClientConnection()
    client.connect("01-unpwd-empty-set", now=0.0, username="", password=b"")
    assert client.data_to_send() == (
        H("10 22 00 04 4D 51 54 54 04 C2 00 3C 00 12") + b"01-unpwd-empty-set"
        + H("00 00 00 00")
    )


def test_paho_empty_password() -> None:
    client = ClientConnection()
    client.connect("01-unpwd-empty-password-set", now=0.0, username="uname", password=b"")
    assert client.data_to_send() == (
        H("10 30 00 04 4D 51 54 54 04 C2 00 3C 00 1B") + b"01-unpwd-empty-password-set"
        + H("00 05") + b"uname" + H("00 00")
    )


def test_paho_utf8_username_and_str_password_refused() -> None:
    client = ClientConnection()
    with pytest.raises(LocalProtocolError):
        client.connect("c", now=0.0, username="u", password="secret")  # type: ignore[arg-type]
    assert client.state is State.DISCONNECTED
    client.connect("c", now=0.0, username="\u00e9")
    assert client.data_to_send() == H(
        "10 11 00 04 4D 51 54 54 04 82 00 3C 00 01 63 00 02 C3 A9"
    )


def test_paho_connack_refused_stops() -> None:
    client = ClientConnection(connect_timeout=10.0)
    queued = client.publish("a/b", b"hi", 0, now=0.0)
    client.connect("c", now=0.0)
    assert client.data_to_send() == CONNECT_C
    assert client.receive_data(H("20 02 00 01"), now=0.1) == [ConnectRefused(1)]
    assert ConnectRefused(1).reason == "unacceptable protocol version (1)"
    assert client.state is State.CLOSING
    assert client.data_to_send() == b""
    assert client.next_deadline() is None
    assert client.tick(1000.0) == []
    # Nothing more goes out, whatever arrives or is asked for [MQTT-3.2.2-5].
    assert client.receive_data(V14, now=0.2) == []
    later = client.publish("a/b", b"hi", 1, now=0.3)
    assert client.data_to_send() == b""
    assert client.pending() == [queued, later]  # kept for a later connection
    client.connection_lost()
    assert client.state is State.DISCONNECTED


def test_paho_connack_accepted_then_publishes() -> None:
    client = ClientConnection()
    client.connect("c", now=0.0)
    client.publish("a/b", b"hi", 0, now=0.0)
    assert client.data_to_send() == CONNECT_C  # QoS 0 waits for CONNACK too
    assert client.receive_data(CONNACK, now=0.1) == [Connected(False)]
    assert client.data_to_send() == V12


@pytest.mark.parametrize("rc", [2, 3, 4, 5])
def test_connack_refused_codes(rc: int) -> None:
    client = ClientConnection()
    client.connect("c", now=0.0)
    client.data_to_send()
    assert client.receive_data(bytes([0x20, 2, 0, rc]), now=0.1) == [ConnectRefused(rc)]
    assert client.state is State.CLOSING
    assert client.data_to_send() == b""


# ======================================================================
# Inbound QoS rules (sections 4.2 and 7)
# ======================================================================


def test_qos1_id_reuse_after_puback_is_a_new_message() -> None:
    # [MQTT-4.3.2-2]: same id after PUBACK = new message, DUP notwithstanding.
    client = open_client()
    assert client.receive_data(V14, now=1.0) == [
        MessageReceived("a/b", b"hi", 1, False, False, 1)
    ]
    assert client.data_to_send() == H("40 02 00 01")
    assert client.receive_data(H("3A 09 00 03 61 2F 62 00 01 68 69"), now=1.1) == [
        MessageReceived("a/b", b"hi", 1, False, True, 1)
    ]
    assert client.data_to_send() == H("40 02 00 01")


def test_acks_leave_in_receipt_order_with_manual_ack() -> None:
    client = open_client(auto_ack=False)
    events = client.receive_data(V14 + H("32 09 00 03 61 2F 62 00 02 68 69"), now=1.0)
    assert [e.packet_id for e in events] == [1, 2]  # type: ignore[union-attr]
    assert client.data_to_send() == b""
    assert client.ack(2, now=1.1) is True
    assert client.data_to_send() == b""  # PUBACK 2 waits for PUBACK 1
    assert client.ack(1, now=1.2) is True
    assert client.data_to_send() == H("40 02 00 01 40 02 00 02")
    assert client.ack(1, now=1.3) is False  # already acknowledged
    assert client.ack(77, now=1.3) is False  # never received
    assert client.data_to_send() == b""


def test_pubrecs_leave_in_receipt_order_with_manual_ack() -> None:
    # [MQTT-4.6.0-3]: ids 5, 3, 9 in => PUBRECs 5, 3, 9 out.
    client = open_client(auto_ack=False)
    data = b"".join(
        H("34 09 00 03 61 2F 62") + bytes([0, pid]) + b"hi" for pid in (5, 3, 9)
    )
    assert [e.packet_id for e in client.receive_data(data, now=1.0)] == [5, 3, 9]  # type: ignore[union-attr]
    assert client.ack(9, now=1.1) is True
    assert client.ack(3, now=1.1) is True
    assert client.data_to_send() == b""
    assert client.ack(5, now=1.2) is True
    assert client.data_to_send() == H("50 02 00 05 50 02 00 03 50 02 00 09")


def test_mixed_qos_acks_in_receipt_order_with_auto_ack_after_manual() -> None:
    client = open_client(auto_ack=False)
    client.receive_data(V14 + V16, now=1.0)
    assert client.ack(65535, now=1.1) is True
    assert client.data_to_send() == b""
    assert client.ack(1, now=1.2) is True
    assert client.data_to_send() == H("40 02 00 01 50 02 FF FF")


def test_pubrel_before_our_pubrec_is_remote_error() -> None:
    client = open_client(auto_ack=False)
    client.receive_data(V16, now=1.0)
    with pytest.raises(RemoteProtocolError) as info:
        client.receive_data(H("62 02 FF FF"), now=1.1)
    assert info.value.rule == "MQTT-4.3.3-2"
    assert client.state is State.ERROR


def test_qos2_inbound_state_survives_reconnect() -> None:
    # Session resumed: a re-sent PUBLISH (DUP=1) gets PUBREC, no redelivery.
    client = open_client(clean_session=False)
    assert len(client.receive_data(V16, now=1.0)) == 1
    assert client.data_to_send() == H("50 02 FF FF")
    broker_closes(client)
    client.connect("c", now=2.0, clean_session=False)
    assert client.data_to_send() == CONNECT_C_RESUME
    client.receive_data(CONNACK_SP, now=2.1)
    assert client.receive_data(H("3C 09 00 03 61 2F 62 FF FF 68 69"), now=2.2) == []
    assert client.data_to_send() == H("50 02 FF FF")
    assert client.receive_data(H("62 02 FF FF"), now=2.3) == []
    assert client.data_to_send() == H("70 02 FF FF")


def test_qos2_inbound_state_dropped_by_clean_session() -> None:
    client = open_client(clean_session=False)
    client.receive_data(V16, now=1.0)
    assert client.data_to_send() == H("50 02 FF FF")
    broker_closes(client)
    client.connect("c", now=2.0, clean_session=True)
    client.data_to_send()
    client.receive_data(CONNACK, now=2.1)
    # A new session: the id is unknown, the message is a new one.
    assert client.receive_data(V16, now=2.2) == [
        MessageReceived("a/b", b"hi", 2, False, False, 65535)
    ]


def test_unacked_qos2_is_redelivered_after_reconnect() -> None:
    # auto_ack=False: reported but not acked, so no PUBREC left; after the
    # reconnect the server's DUP re-send is delivered again and can be acked.
    client = open_client(auto_ack=False, clean_session=False)
    assert len(client.receive_data(V16, now=1.0)) == 1
    assert client.data_to_send() == b""
    broker_closes(client)
    assert client.ack(65535, now=1.5) is False  # the connection it came on is gone
    assert client.state is State.DISCONNECTED
    client.connect("c", now=2.0, clean_session=False)
    client.data_to_send()
    client.receive_data(CONNACK_SP, now=2.1)
    assert client.receive_data(H("3C 09 00 03 61 2F 62 FF FF 68 69"), now=2.2) == [
        MessageReceived("a/b", b"hi", 2, False, True, 65535)
    ]
    assert client.ack(65535, now=2.3) is True
    assert client.data_to_send() == H("50 02 FF FF")


# ======================================================================
# Outbound ordering, in-flight window, packet identifiers
# ======================================================================


def _pub(pid: int, qos: int = 1, dup: bool = False, payload: bytes = b"hi") -> bytes:
    first = 0x30 | (qos << 1) | (0x08 if dup else 0)
    topic = H("00 03 61 2F 62")  # "a/b"
    return bytes([first, 7 + len(payload)]) + topic + pid.to_bytes(2, "big") + payload


def test_pubrels_leave_in_pubrec_order() -> None:
    # [MQTT-4.6.0-4]
    client = open_client()
    client.publish("a/b", b"hi", 2, now=1.0)
    client.publish("a/b", b"hi", 2, now=1.0)
    assert client.data_to_send() == _pub(1, 2) + _pub(2, 2)
    assert client.receive_data(H("50 02 00 02"), now=1.1) == []
    assert client.receive_data(H("50 02 00 01"), now=1.1) == []
    assert client.data_to_send() == H("62 02 00 02 62 02 00 01")
    assert client.receive_data(H("50 02 00 02 50 02 00 01"), now=1.2) == []
    assert client.data_to_send() == H("62 02 00 02 62 02 00 01")  # duplicates: PUBREL again


def test_resend_on_resume_keeps_original_order() -> None:
    # [MQTT-4.6.0-1]: 1, 2, 3 unacked (2 already PUBREC'd) => PUBLISH 1, PUBREL 2, PUBLISH 3.
    client = open_client(clean_session=False)
    client.publish("a/b", b"hi", 1, now=1.0)
    client.publish("a/b", b"hi", 2, now=1.0)
    client.publish("a/b", b"hi", 2, now=1.0)
    assert client.data_to_send() == _pub(1) + _pub(2, 2) + _pub(3, 2)
    client.receive_data(H("50 02 00 02"), now=1.1)
    assert client.data_to_send() == H("62 02 00 02")
    broker_closes(client)
    client.connect("c", now=2.0, clean_session=False)
    assert client.data_to_send() == CONNECT_C_RESUME
    client.receive_data(CONNACK_SP, now=2.1)
    assert client.data_to_send() == (
        _pub(1, 1, dup=True) + H("62 02 00 02") + _pub(3, 2, dup=True)
    )


def test_inflight_window_queues_fifo() -> None:
    client = open_client(max_inflight=2)
    tokens = [client.publish("a/b", b"hi", 1, now=1.0) for _ in range(3)]
    assert client.data_to_send() == _pub(1) + _pub(2)
    assert client.pending() == tokens  # in flight, then queued
    assert client.receive_data(H("40 02 00 02"), now=1.1) == [PublishAcked(tokens[1], 2)]
    assert client.data_to_send() == _pub(3)  # room again: the queued one leaves
    assert client.receive_data(H("40 02 00 01 40 02 00 03"), now=1.2) == [
        PublishAcked(tokens[0], 1), PublishAcked(tokens[2], 3)
    ]
    assert client.pending() == []



def test_queues_of_two_clients_are_their_own() -> None:
    """Clients start with no queue of their own (a fleet saves one per client):
    the first queued publish gives one to that client only."""
    first, second = open_client(max_inflight=1), open_client(max_inflight=1)
    tokens = [first.publish("a/b", b"hi", 1, now=1.0) for _ in range(2)]
    assert first.pending() == tokens and second.pending() == []
    others = [second.publish("a/b", body, 1, now=1.0) for body in (b"x", b"y")]
    assert second.pending() == others and first.pending() == tokens
    assert second.data_to_send() == _pub(1, payload=b"x")
    assert second.receive_data(H("40 02 00 01"), now=1.1) == [PublishAcked(others[0], 1)]
    assert second.data_to_send() == _pub(2, payload=b"y") and first.pending() == tokens

def test_qos0_behind_queued_qos1_waits_its_turn() -> None:
    client = open_client(max_inflight=1)
    client.publish("a/b", b"A", 1, now=1.0)
    client.publish("a/b", b"B", 1, now=1.0)
    client.publish("a/b", b"C", 0, now=1.0)
    assert client.data_to_send() == _pub(1, payload=b"A")
    client.receive_data(H("40 02 00 01"), now=1.1)
    assert client.data_to_send() == _pub(2, payload=b"B") + H("30 06 00 03 61 2F 62") + b"C"


def test_qos0_alone_is_not_held_by_the_window() -> None:
    client = open_client(max_inflight=1)
    client.publish("a/b", b"A", 1, now=1.0)
    assert client.data_to_send() == _pub(1, payload=b"A")
    client.publish("a/b", b"hi", 0, now=1.0)  # nothing queued ahead of it
    assert client.data_to_send() == V12


def test_window_applies_to_resend_on_resume_queue() -> None:
    client = open_client(max_inflight=1, clean_session=False)
    client.publish("a/b", b"A", 1, now=1.0)
    client.publish("a/b", b"B", 1, now=1.0)
    assert client.data_to_send() == _pub(1, payload=b"A")
    broker_closes(client)
    client.connect("c", now=2.0, clean_session=False)
    client.data_to_send()
    client.receive_data(CONNACK_SP, now=2.1)
    assert client.data_to_send() == _pub(1, dup=True, payload=b"A")
    client.receive_data(H("40 02 00 01"), now=2.2)
    assert client.data_to_send() == _pub(2, payload=b"B")


def test_packet_ids_never_reused_while_in_flight_and_never_zero() -> None:
    # [MQTT-2.3.1-1/2]: 65,535 in flight => the next publish waits in the queue.
    n = 65535
    client = open_client(max_inflight=n, max_queued=10)
    publish = client.publish
    tokens = [publish("t", b"", 1, now=1.0) for _ in range(n)]
    expected = b"".join(b"\x32\x05\x00\x01t" + pid.to_bytes(2, "big") for pid in range(1, n + 1))
    assert client.data_to_send() == expected  # ids 1..65535, each once, in order
    waiting = publish("t", b"", 1, now=1.0)
    assert client.data_to_send() == b""
    assert client.pending()[-1] == waiting and len(client.pending()) == n + 1
    # A SUBSCRIBE cannot get an id either; the engine stays usable.
    with pytest.raises(LocalProtocolError) as info:
        client.subscribe("s", 0, now=1.0)
    assert info.value.rule == "MQTT-2.3.1-2"
    assert client.state is State.CONNECTED
    # Freeing id 300 lets exactly the queued message go, with that id.
    assert client.receive_data(H("40 02 01 2C"), now=2.0) == [PublishAcked(tokens[299], 300)]
    assert client.data_to_send() == b"\x32\x05\x00\x01t\x01\x2c"
    # Full again: another publish waits; freeing id 1 sends it with id 1, never 0.
    later = publish("t", b"", 1, now=2.0)
    assert client.data_to_send() == b""
    assert client.receive_data(H("40 02 00 01"), now=3.0) == [PublishAcked(tokens[0], 1)]
    assert client.data_to_send() == b"\x32\x05\x00\x01t\x00\x01"
    assert later in client.pending()
    assert client.receive_data(H("40 02 FF FF"), now=3.0) == [PublishAcked(tokens[-1], 65535)]
    assert client.subscribe("s", 0, now=3.0) == 65535  # the only free id
    assert client.data_to_send() == H("82 06 FF FF 00 01 73 00")


def test_packet_id_wraps_to_1_not_0() -> None:
    client = open_client()
    # Use ids 1..65535 one at a time (each acked), then the next is 1 again.
    data = b""
    for pid in range(1, 65536):
        client.publish("t", b"", 1, now=1.0)
        data = client.data_to_send()
        assert data[-2:] == pid.to_bytes(2, "big")
        client.receive_data(b"\x40\x02" + data[-2:], now=1.0)
    client.publish("t", b"", 1, now=1.0)
    assert client.data_to_send() == b"\x32\x05\x00\x01t\x00\x01"


@pytest.mark.parametrize(
    ("request_", "ack"),
    [("subscribe", H("90 03 FF FF 00")), ("unsubscribe", H("B0 02 FF FF"))],
)
def test_suback_freeing_the_last_id_sends_the_waiting_publish(
    request_: str, ack: bytes
) -> None:
    n = 65535
    client = open_client(max_inflight=n)
    for _ in range(n - 1):
        client.publish("t", b"", 1, now=1.0)
    client.data_to_send()
    if request_ == "subscribe":
        assert client.subscribe("s", 0, now=1.0) == 65535
        assert client.data_to_send() == H("82 06 FF FF 00 01 73 00")
    else:
        assert client.unsubscribe("s", now=1.0) == 65535
        assert client.data_to_send() == H("A2 05 FF FF 00 01 73")
    waiting = client.publish("t", b"", 1, now=1.0)  # window has room, no id left
    assert client.data_to_send() == b""
    assert len(client.receive_data(ack, now=2.0)) == 1
    assert waiting in client.pending()
    assert client.data_to_send() == b"\x32\x05\x00\x01t\xff\xff"


def test_subscribe_and_publish_share_the_id_space() -> None:
    client = open_client()
    assert client.subscribe("s", 1, now=1.0) == 1
    client.publish("a/b", b"hi", 1, now=1.0)
    assert client.unsubscribe(["s", "t"], now=1.0) == 3
    assert client.data_to_send() == (
        H("82 06 00 01 00 01 73 01") + _pub(2) + H("A2 08 00 03 00 01 73 00 01 74")
    )


def test_subscribe_several_filters() -> None:
    client = open_client()
    pid = client.subscribe([("a/+", 0), ("#", 2), ("+/x/#", 1)], now=1.0)
    assert client.data_to_send() == H(
        "82 14 00 01 00 03 61 2F 2B 00 00 01 23 02 00 05 2B 2F 78 2F 23 01"
    )
    assert client.receive_data(H("90 05 00 01 00 02 80"), now=1.1) == [
        Subscribed(pid, ("a/+", "#", "+/x/#"), (0, 2, 0x80))
    ]


def test_unacked_subscribe_fails_on_connection_loss_unsent_stays() -> None:
    client = open_client()
    assert client.subscribe("s", 0, now=1.0) == 1
    client.data_to_send()
    assert client.receive_data(b"", now=1.1) == []
    events = client.connection_lost()
    assert len(events) == 1 and isinstance(events[0], RequestFailed)
    assert (events[0].packet_id, events[0].packet) == (1, "SUBSCRIBE")
    pid = client.subscribe("t", 0, now=2.0)  # queued while disconnected
    assert client.data_to_send() == b""
    client.connect("c", now=2.0)
    assert client.data_to_send() == CONNECT_C
    client.receive_data(CONNACK, now=2.1)
    assert client.data_to_send() == H("82 06") + pid.to_bytes(2, "big") + H("00 01 74 00")
    assert client.receive_data(H("90 03") + pid.to_bytes(2, "big") + b"\x00", now=2.2) == [
        Subscribed(pid, ("t",), (0,))
    ]


# ======================================================================
# Errors: violations by the server, misuse by the application
# ======================================================================


def test_suback_count_mismatch_is_remote_error() -> None:
    client = open_client()
    client.subscribe([("a", 0), ("b", 1)], now=1.0)
    client.data_to_send()
    with pytest.raises(RemoteProtocolError) as info:
        client.receive_data(H("90 03 00 01 00"), now=1.1)
    assert info.value.rule == "MQTT-3.8.4-5"
    assert client.state is State.ERROR


@pytest.mark.parametrize(
    "data",
    [H("90 03 00 07 00"), H("B0 02 00 07"), H("90 03 00 01 00"), H("B0 02 00 02")],
    ids=["suback-unknown", "unsuback-unknown", "suback-for-unsubscribe",
         "unsuback-for-subscribe"],
)
def test_suback_unsuback_for_unknown_request_is_remote_error(data: bytes) -> None:
    client = open_client()
    client.unsubscribe("u", now=1.0)  # id 1
    client.subscribe("s", 0, now=1.0)  # id 2
    client.data_to_send()
    with pytest.raises(RemoteProtocolError) as info:
        client.receive_data(data, now=1.1)
    assert info.value.rule == "MQTT-2.3.1-7"
    assert client.state is State.ERROR


def test_session_present_after_clean_connect_is_remote_error() -> None:
    client = ClientConnection()
    client.connect("c", now=0.0, clean_session=True)
    client.data_to_send()
    with pytest.raises(RemoteProtocolError) as info:
        client.receive_data(CONNACK_SP, now=0.1)
    assert info.value.rule == "MQTT-3.2.2-1"
    assert client.state is State.ERROR


def test_session_present_after_resume_connect_is_fine() -> None:
    client = ClientConnection()
    client.connect("c", now=0.0, clean_session=False)
    client.data_to_send()
    assert client.receive_data(CONNACK_SP, now=0.1) == [Connected(True)]


@pytest.mark.parametrize(
    "first",
    [V12, V14, H("40 02 00 01"), H("50 02 00 01"), H("62 02 00 01"), H("70 02 00 01"),
     H("90 03 00 01 00"), H("B0 02 00 01"), PINGRESP],
    ids=["publish0", "publish1", "puback", "pubrec", "pubrel", "pubcomp", "suback",
         "unsuback", "pingresp"],
)
def test_server_first_packet_not_connack_is_remote_error(first: bytes) -> None:
    # [MQTT-3.2.0-1]
    client = ClientConnection()
    client.subscribe("s", 0, now=0.0)
    client.connect("c", now=0.0)
    client.data_to_send()
    with pytest.raises(RemoteProtocolError):
        client.receive_data(first + CONNACK, now=0.1)
    assert client.state is State.ERROR


def test_second_connack_is_remote_error() -> None:
    client = open_client()
    with pytest.raises(RemoteProtocolError):
        client.receive_data(CONNACK, now=1.0)
    assert client.state is State.ERROR


def test_nothing_is_sent_after_disconnect() -> None:
    # [MQTT-3.14.4-2]: publishes and requests are queued for a later
    # connection, received packets are ignored, no PINGREQ.
    client = open_client(keep_alive=5, auto_ack=False)
    client.receive_data(V14, now=0.5)
    client.disconnect(now=1.0)
    assert client.data_to_send() == DISCONNECT
    assert client.state is State.CLOSING
    client.publish("a/b", b"hi", 1, now=1.1)
    client.publish("a/b", b"hi", 0, now=1.1)
    client.subscribe("s", 0, now=1.2)
    client.unsubscribe("s", now=1.3)
    client.ack(1, now=1.4)
    assert client.receive_data(V14 + V16 + H("62 02 00 09"), now=1.5) == []
    assert client.tick(100.0) == []
    assert client.next_deadline() is None
    assert client.data_to_send() == b""
    assert client.state is State.CLOSING
    with pytest.raises(LocalProtocolError):
        client.disconnect(now=1.6)  # DISCONNECT once
    assert client.data_to_send() == b""


@pytest.mark.parametrize(
    "violation",
    [
        H("50 02 00 01"),  # PUBREC for a QoS 1 publish
        H("70 02 00 02"),  # PUBCOMP before PUBREC
        H("40 02 00 02"),  # PUBACK for a QoS 2 publish
        H("40 02 00 03"),  # PUBACK for a pending SUBSCRIBE
        H("50 02 00 03"),  # PUBREC for a pending SUBSCRIBE
        H("70 02 00 03"),  # PUBCOMP for a pending SUBSCRIBE
        H("90 03 00 01 00"),  # SUBACK for a publish id
        H("00 00"),  # malformed
    ],
    ids=["pubrec-qos1", "pubcomp-before-pubrec", "puback-qos2", "puback-subscribe",
         "pubrec-subscribe", "pubcomp-subscribe", "suback-publish", "malformed"],
)
def test_remote_error_poisons_until_connection_lost_then_session_resumes(
    violation: bytes,
) -> None:
    client = open_client(clean_session=False, auto_ack=False)
    t1 = client.publish("a/b", b"hi", 1, now=1.0)
    t2 = client.publish("a/b", b"hi", 2, now=1.0)
    assert client.subscribe("s", 0, now=1.0) == 3
    client.data_to_send()
    with pytest.raises(RemoteProtocolError):
        client.receive_data(violation, now=1.1)
    assert client.state is State.ERROR
    calls = [
        lambda: client.connect("c", now=2.0, clean_session=False),
        lambda: client.publish("a/b", b"hi", 1, now=2.0),
        lambda: client.subscribe("x", 0, now=2.0),
        lambda: client.unsubscribe("x", now=2.0),
        lambda: client.ack(1, now=2.0),
        lambda: client.disconnect(now=2.0),
        lambda: client.receive_data(V12, now=2.0),
    ]
    for call in calls:
        with pytest.raises(LocalProtocolError):
            call()
        assert client.state is State.ERROR
    assert client.data_to_send() == b""
    events = client.connection_lost()
    assert [type(e) for e in events] == [RequestFailed]
    assert client.state is State.DISCONNECTED
    assert client.pending() == [t1, t2]
    client.connect("c", now=3.0, clean_session=False)
    assert client.data_to_send() == CONNECT_C_RESUME
    assert client.receive_data(CONNACK_SP, now=3.1) == [Connected(True)]
    assert client.data_to_send() == _pub(1, 1, dup=True) + _pub(2, 2, dup=True)
    assert client.receive_data(H("40 02 00 01"), now=3.2) == [PublishAcked(t1, 1)]


def test_events_before_violation_are_on_the_exception() -> None:
    client = open_client()
    with pytest.raises(RemoteProtocolError) as info:
        client.receive_data(V12 + V14 + CONNACK + V12, now=1.0)
    assert info.value.events == (
        MessageReceived("a/b", b"hi", 0, False, False, None),
        MessageReceived("a/b", b"hi", 1, False, False, 1),
    )
    assert client.state is State.ERROR


def test_events_before_malformed_bytes_are_on_the_exception() -> None:
    client = open_client()
    with pytest.raises(MalformedPacket) as info:
        client.receive_data(V12 + H("36 07 00 03 61 2F 62 68 69"), now=1.0)
    assert info.value.events == (MessageReceived("a/b", b"hi", 0, False, False, None),)
    assert client.state is State.ERROR


def test_no_events_on_the_exception_when_first_packet_violates() -> None:
    client = open_client()
    with pytest.raises(RemoteProtocolError) as info:
        client.receive_data(CONNACK, now=1.0)
    assert info.value.events == ()


@pytest.mark.parametrize(
    ("topic", "payload", "qos"),
    [
        ("a/+", b"x", 1), ("a/#", b"x", 1), ("", b"x", 1), ("a\x00b", b"x", 1),
        ("\ud800", b"x", 1), ("a" * 65536, b"x", 1), (b"a/b", b"x", 1),
        ("a/b", "text", 1), ("a/b", b"x", 3), ("a/b", b"x", -1), ("a/b", b"x", True),
    ],
    ids=["plus", "hash", "empty", "nul", "surrogate", "too-long", "bytes-topic",
         "str-payload", "qos3", "qos-1", "qos-bool"],
)
def test_invalid_publish_raises_and_changes_nothing(
    topic: object, payload: object, qos: object
) -> None:
    client = open_client()
    with pytest.raises(LocalProtocolError):
        client.publish(topic, payload, qos, now=1.0)  # type: ignore[arg-type]
    assert client.state is State.CONNECTED
    assert client.pending() == []
    assert client.data_to_send() == b""
    token = client.publish("a/b", b"hi", 1, now=1.0)
    assert client.data_to_send() == V14  # no id was used up
    assert client.pending() == [token]


def test_invalid_subscribe_raises_and_changes_nothing() -> None:
    client = open_client()
    for bad in (lambda: client.subscribe("a/#/b", 0, now=1.0),
                lambda: client.subscribe("a", 3, now=1.0),
                lambda: client.subscribe([], now=1.0),
                lambda: client.unsubscribe("a+", now=1.0)):
        with pytest.raises(LocalProtocolError):
            bad()
        assert client.state is State.CONNECTED
        assert client.data_to_send() == b""
    assert client.subscribe("s", 0, now=1.0) == 1


def test_queue_full_when_max_queued_is_reached() -> None:
    client = ClientConnection(max_queued=2)
    client.publish("a/b", b"hi", 1, now=0.0)
    client.publish("a/b", b"hi", 0, now=0.0)
    with pytest.raises(QueueFull) as info:
        client.publish("a/b", b"hi", 1, now=0.0)
    assert isinstance(info.value, LocalProtocolError)
    assert client.state is State.DISCONNECTED
    assert len(client.pending()) == 2
    client.connect("c", now=0.0)
    client.data_to_send()
    client.receive_data(CONNACK, now=0.1)
    assert client.data_to_send() == V14 + V12
    client.publish("a/b", b"hi", 1, now=0.2)  # the queue drained: room again
    assert client.data_to_send() == _pub(2)


def test_queue_full_counts_only_waiting_publishes() -> None:
    client = open_client(max_inflight=1, max_queued=1)
    client.publish("a/b", b"A", 1, now=1.0)  # in flight, not queued
    client.publish("a/b", b"B", 1, now=1.0)  # queued (1)
    with pytest.raises(QueueFull):
        client.publish("a/b", b"C", 0, now=1.0)
    assert client.state is State.CONNECTED
    assert client.data_to_send() == _pub(1, payload=b"A")
    client.receive_data(H("40 02 00 01"), now=1.1)
    assert client.data_to_send() == _pub(2, payload=b"B")
    client.publish("a/b", b"C", 0, now=1.2)
    assert client.data_to_send() == H("30 06 00 03 61 2F 62") + b"C"


def test_connect_twice_is_local_error() -> None:
    client = ClientConnection()
    client.connect("c", now=0.0)
    client.data_to_send()
    with pytest.raises(LocalProtocolError):
        client.connect("c", now=1.0)  # CONNECT once per connection [MQTT-3.1.0-2]
    assert client.state is State.ERROR
    assert client.data_to_send() == b""
    client.connection_lost()
    assert client.state is State.DISCONNECTED
    client.connect("c", now=2.0)
    assert client.data_to_send() == CONNECT_C


def test_receive_data_without_connection_is_local_error() -> None:
    client = ClientConnection()
    with pytest.raises(LocalProtocolError):
        client.receive_data(CONNACK, now=0.0)
    assert client.state is State.DISCONNECTED


def test_disconnect_before_connack() -> None:
    client = ClientConnection()
    client.connect("c", now=0.0)
    client.disconnect(now=0.1)
    assert client.data_to_send() == CONNECT_C + DISCONNECT
    assert client.state is State.CLOSING
    assert client.receive_data(CONNACK, now=0.2) == []
    assert client.state is State.CLOSING


STREAM = (
    H("62 02 03 E8") + PUB_QOS2_RECEIVE + PUB_QOS2_RECEIVE + H("62 02 34 6F") + V14 + V12
    + H("D0 00") + H("40 02 12 34") + H("50 02 00 05")
)


def _feed(client: ClientConnection, data: bytes, split: int) -> list[object]:
    events: list[object] = []
    for i in range(0, len(data), split):
        events += client.receive_data(data[i : i + split], now=1.0)
    return events


@pytest.mark.parametrize("split", [1, 2, 3, 5, 7, 64])
def test_any_split_of_the_input_gives_the_same_events_and_bytes(split: int) -> None:
    whole = open_client()
    expected_events = whole.receive_data(STREAM, now=1.0)
    expected_bytes = whole.data_to_send()
    assert expected_bytes == H(
        "70 02 03 E8  50 02 34 6F  50 02 34 6F  70 02 34 6F  40 02 00 01  62 02 00 05"
    )
    client = open_client()
    assert _feed(client, STREAM, split) == expected_events
    assert client.data_to_send() == expected_bytes


@pytest.mark.parametrize("split", [1, 4, 100])
def test_first_violation_in_stream_order_wins(split: int) -> None:
    # An engine-level violation (a second CONNACK) before malformed bytes (type
    # 0): the CONNACK is reported, whatever the split.
    client = open_client()
    with pytest.raises(RemoteProtocolError) as info:
        _feed(client, V12 + CONNACK + H("00 00"), split)
    assert not isinstance(info.value, MalformedPacket)
    assert "CONNACK" in str(info.value)
    assert client.state is State.ERROR
