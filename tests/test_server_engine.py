"""The server role: ``ServerConnection`` driven byte-exactly with a fake clock.

CONNECT validation (S01, S02, S04 of the conformance reference section 5.2,
[MQTT-3.1.0-1/2]), accept / refuse, the automatic replies (UNSUBACK, PINGRESP),
SUBSCRIBE answered through ``suback()``, the keep-alive (1.5 x) and CONNECT
timers, server-to-client QoS flows and session hand-over between connections.
Expected bytes are written out by hand.
"""

from __future__ import annotations

import pytest

from iotdev_mqtt import (
    ClientDisconnected,
    Connect,
    Connected,
    ConnectionLost,
    ConnectReceived,
    ConnectRefused,
    LocalProtocolError,
    MalformedPacket,
    MessageReceived,
    PublishAcked,
    RemoteProtocolError,
    ServerConnection,
    Session,
    State,
    SubscribeReceived,
    UnsubscribeReceived,
    Will,
)

H = bytes.fromhex

# V01: CONNECT cs=1 ka=10 cid=p; the same with cs=0; with ka=0.
CONNECT_P = H("10 0D 00 04 4D 51 54 54 04 02 00 0A 00 01 70")
CONNECT_P_RESUME = H("10 0D 00 04 4D 51 54 54 04 00 00 0A 00 01 70")
CONNECT_P_KA0 = H("10 0D 00 04 4D 51 54 54 04 02 00 00 00 01 70")
S01 = H("10 0D 00 04 4D 51 54 54 03 02 00 0A 00 01 70")
S02 = H("10 0C 00 04 4D 51 54 54 04 00 00 0A 00 00")

V12 = H("30 07 00 03 61 2F 62 68 69")
V14 = H("32 09 00 03 61 2F 62 00 01 68 69")
V16 = H("34 09 00 03 61 2F 62 FF FF 68 69")
V26 = H("82 08 00 01 00 03 61 2F 62 01")
V27 = H("82 14 00 02 00 03 61 2F 2B 00 00 01 23 02 00 05 2B 2F 78 2F 23 01")
V30 = H("A2 07 00 03 00 03 61 2F 62")
V31 = H("A2 0A 00 04 00 03 61 2F 2B 00 01 23")
PINGREQ = H("C0 00")
PINGRESP = H("D0 00")
DISCONNECT = H("E0 00")


def _pub(pid: int, qos: int = 1, dup: bool = False, payload: bytes = b"hi") -> bytes:
    first = 0x30 | (qos << 1) | (0x08 if dup else 0)
    topic = H("00 03 61 2F 62")  # "a/b"
    return bytes([first, 7 + len(payload)]) + topic + pid.to_bytes(2, "big") + payload


def accepted(
    connect: bytes = CONNECT_P, *, now: float = 0.0, **options: object
) -> ServerConnection:
    server = ServerConnection(now=now, **options)  # type: ignore[arg-type]
    events = server.receive_data(connect, now=now)
    assert [type(e) for e in events] == [ConnectReceived]
    assert server.accept(now=now) == [Connected(False)]
    assert server.data_to_send() == H("20 02 00 00")
    assert server.state is State.CONNECTED
    return server


# ---------------------------------------------------------------- CONNECT


def test_connect_then_accept() -> None:
    server = ServerConnection(now=0.0)
    assert server.state is State.DISCONNECTED
    assert server.receive_data(CONNECT_P, now=0.1) == [
        ConnectReceived(Connect("p", clean_session=True, keep_alive=10))
    ]
    assert server.state is State.CONNECTING
    assert server.connect_packet == Connect("p", True, 10)
    assert server.data_to_send() == b""  # the application decides
    assert server.accept(now=0.2) == [Connected(False)]
    assert server.data_to_send() == H("20 02 00 00")
    assert server.state is State.CONNECTED


def test_connect_reports_will_and_credentials() -> None:
    server = ServerConnection()
    v06 = H(
        "10 1A 00 04 4D 51 54 54 04 D4 FF FF 00 02 63 31 00 01 77 00 00 00 01 75 00 02 00 FF"
    )
    assert server.receive_data(v06, now=0.0) == [
        ConnectReceived(Connect("c1", False, 65535, "u", b"\x00\xff", Will("w", b"", 2, False)))
    ]


def test_connect_byte_by_byte() -> None:
    server = ServerConnection()
    events = []
    for i in range(len(CONNECT_P)):
        events += server.receive_data(CONNECT_P[i : i + 1], now=0.0)
    assert events == [ConnectReceived(Connect("p", True, 10))]


def test_s01_protocol_level_3_is_refused_with_rc_1() -> None:
    # [MQTT-3.1.2-2]
    server = ServerConnection(now=0.0)
    assert server.receive_data(S01, now=0.1) == [ConnectRefused(1)]
    assert server.data_to_send() == H("20 02 00 01")
    assert server.state is State.CLOSING
    assert server.next_deadline() is None
    assert server.receive_data(PINGREQ + V14, now=0.2) == []  # ignored [MQTT-3.1.4-5]
    assert server.data_to_send() == b""
    assert server.connection_lost() == []
    assert server.state is State.DISCONNECTED


def test_s02_empty_client_id_without_clean_session_is_refused_with_rc_2() -> None:
    # [MQTT-3.1.3-8]
    server = ServerConnection(now=0.0)
    assert server.receive_data(S02, now=0.1) == [ConnectRefused(2)]
    assert server.data_to_send() == H("20 02 00 02")
    assert server.state is State.CLOSING


def test_s01_with_pipelined_packets_answers_only_connack() -> None:
    server = ServerConnection()
    assert server.receive_data(S01 + PINGREQ + V14, now=0.0) == [ConnectRefused(1)]
    assert server.data_to_send() == H("20 02 00 01")


def test_empty_client_id_with_clean_session_is_reported() -> None:
    server = ServerConnection()
    v02 = H("10 0C 00 04 4D 51 54 54 04 02 00 3C 00 00")
    assert server.receive_data(v02, now=0.0) == [ConnectReceived(Connect("", True, 60))]
    assert server.data_to_send() == b""


@pytest.mark.parametrize(
    "first",
    [V12, V14, H("40 02 00 01"), H("62 02 00 01"), V26, V30, PINGREQ, DISCONNECT],
    ids=["publish0", "publish1", "puback", "pubrel", "subscribe", "unsubscribe", "pingreq",
         "disconnect"],
)
def test_first_packet_not_connect_is_remote_error(first: bytes) -> None:
    server = ServerConnection(now=0.0)
    with pytest.raises(RemoteProtocolError) as info:
        server.receive_data(first + CONNECT_P, now=0.1)
    assert info.value.rule == "MQTT-3.1.0-1"
    assert server.state is State.ERROR
    assert server.data_to_send() == b""


@pytest.mark.parametrize(
    "packet",
    [H("20 02 00 00"), H("90 03 00 01 00"), H("B0 02 00 01"), PINGRESP],
    ids=["connack", "suback", "unsuback", "pingresp"],
)
def test_server_to_client_packets_from_the_client_are_remote_errors(packet: bytes) -> None:
    for server in (ServerConnection(), accepted()):
        with pytest.raises(RemoteProtocolError):
            server.receive_data(packet, now=1.0)
        assert server.state is State.ERROR


def test_second_connect_after_accept_is_remote_error() -> None:
    # S04 [MQTT-3.1.0-2]
    server = accepted()
    with pytest.raises(RemoteProtocolError) as info:
        server.receive_data(CONNECT_P, now=1.0)
    assert info.value.rule == "MQTT-3.1.0-2"
    assert server.state is State.ERROR
    assert server.data_to_send() == b""


def test_second_connect_before_accept_is_raised_by_accept() -> None:
    """A second CONNECT pipelined behind the first is held like any packet after
    CONNECT; accept() handles the held packets in order and raises on it."""
    server = ServerConnection()
    events = server.receive_data(CONNECT_P + CONNECT_P, now=0.0)
    assert events == [ConnectReceived(Connect("p", True, 10))]
    assert server.state is State.CONNECTING
    with pytest.raises(RemoteProtocolError) as info:
        server.accept(now=0.0)
    assert info.value.rule == "MQTT-3.1.0-2"
    assert info.value.events == (Connected(False),)
    assert server.state is State.ERROR


def test_malformed_bytes_before_accept_are_raised_by_accept() -> None:
    server = ServerConnection()
    events = server.receive_data(CONNECT_P + PINGREQ + bytes.fromhex("38070003612f626869"),
                                 now=0.0)
    assert events == [ConnectReceived(Connect("p", True, 10))]
    assert server.receive_data(PINGREQ, now=0.1) == []  # ignored after the error
    with pytest.raises(MalformedPacket) as info:
        server.accept(now=0.2)
    assert info.value.rule == "MQTT-3.3.1-2"
    assert server.data_to_send() == bytes.fromhex("20020000 d000")
    assert server.state is State.ERROR


def test_refuse_discards_a_held_error() -> None:
    server = ServerConnection()
    server.receive_data(CONNECT_P + bytes.fromhex("38070003612f626869"), now=0.0)
    server.refuse(5, now=0.1)
    assert server.state is State.CLOSING
    assert server.data_to_send() == bytes.fromhex("20020005")


@pytest.mark.parametrize("rc", [1, 2, 3, 4, 5])
def test_refuse_sends_connack_and_ignores_later_bytes(rc: int) -> None:
    server = ServerConnection()
    server.receive_data(CONNECT_P, now=0.0)
    server.refuse(rc, now=0.1)
    assert server.data_to_send() == bytes([0x20, 0x02, 0x00, rc])
    assert server.state is State.CLOSING
    assert server.receive_data(V14 + PINGREQ + V26 + CONNECT_P, now=0.2) == []
    assert server.data_to_send() == b""
    assert server.tick(1000.0) == []
    assert server.data_to_send() == b""
    with pytest.raises(LocalProtocolError):
        server.accept(now=0.3)


def test_refuse_drops_pipelined_packets() -> None:
    server = ServerConnection()
    assert server.receive_data(CONNECT_P + PINGREQ + V14, now=0.0) == [
        ConnectReceived(Connect("p", True, 10))
    ]
    server.refuse(5, now=0.1)
    assert server.data_to_send() == H("20 02 00 05")


@pytest.mark.parametrize("rc", [0, 6, -1, 128])
def test_refuse_with_invalid_code_is_local_error_and_changes_nothing(rc: int) -> None:
    server = ServerConnection()
    server.receive_data(CONNECT_P, now=0.0)
    with pytest.raises(LocalProtocolError):
        server.refuse(rc, now=0.1)
    assert server.state is State.CONNECTING
    assert server.data_to_send() == b""
    assert server.accept(now=0.2) == [Connected(False)]
    assert server.data_to_send() == H("20 02 00 00")


def test_refuse_before_connect_closes() -> None:
    # e.g. the server is overloaded: CONNACK 3 without waiting.
    server = ServerConnection()
    server.refuse(3, now=0.0)
    assert server.data_to_send() == H("20 02 00 03")
    assert server.state is State.CLOSING
    assert server.receive_data(CONNECT_P, now=0.1) == []


def test_accept_with_session_present_for_resumed_session() -> None:
    server = ServerConnection()
    server.receive_data(CONNECT_P_RESUME, now=0.0)
    assert server.accept(now=0.1, session_present=True) == [Connected(True)]
    assert server.data_to_send() == H("20 02 01 00")


@pytest.mark.parametrize(
    "kwargs", [{"session_present": True}, {"session": Session()},
               {"session_present": True, "session": Session()}],
    ids=["session_present", "session", "both"],
)
def test_clean_session_accept_cannot_resume(kwargs: dict[str, object]) -> None:
    # [MQTT-3.2.2-1]
    server = ServerConnection()
    server.receive_data(CONNECT_P, now=0.0)
    with pytest.raises(LocalProtocolError) as info:
        server.accept(now=0.1, **kwargs)  # type: ignore[arg-type]
    assert info.value.rule == "MQTT-3.2.2-1"
    assert server.state is State.CONNECTING
    assert server.data_to_send() == b""
    assert server.accept(now=0.2) == [Connected(False)]
    assert server.data_to_send() == H("20 02 00 00")


def test_accept_before_connect_is_local_error() -> None:
    server = ServerConnection()
    with pytest.raises(LocalProtocolError):
        server.accept(now=0.0)
    assert server.state is State.ERROR


def test_pipelined_packets_are_reported_by_accept() -> None:
    server = ServerConnection()
    data = CONNECT_P + V26 + V14 + PINGREQ + V30 + V12
    assert server.receive_data(data, now=0.0) == [ConnectReceived(Connect("p", True, 10))]
    assert server.data_to_send() == b""  # nothing is answered before CONNACK
    assert server.receive_data(V16, now=0.1) == []  # still held
    assert server.data_to_send() == b""
    assert server.accept(now=0.2) == [
        Connected(False),
        SubscribeReceived(1, (("a/b", 1),)),
        MessageReceived("a/b", b"hi", 1, False, False, 1),
        UnsubscribeReceived(3, ("a/b",)),
        MessageReceived("a/b", b"hi", 0, False, False, None),
        MessageReceived("a/b", b"hi", 2, False, False, 65535),
    ]
    assert server.data_to_send() == H(
        "20 02 00 00  40 02 00 01  D0 00  B0 02 00 03  50 02 FF FF"
    )
    server.suback(1, [1], now=0.3)
    assert server.data_to_send() == H("90 03 00 01 01")


def test_pipelined_disconnect_is_reported_by_accept() -> None:
    server = ServerConnection()
    server.receive_data(CONNECT_P + V12 + DISCONNECT + V14, now=0.0)
    assert server.accept(now=0.1) == [
        Connected(False), MessageReceived("a/b", b"hi", 0, False, False, None),
        ClientDisconnected(),
    ]
    assert server.state is State.CLOSING
    assert server.data_to_send() == H("20 02 00 00")  # nothing after DISCONNECT


def test_pipelined_violation_is_raised_by_accept_with_events() -> None:
    # The resumed session has a QoS 2 publish in flight; the client pipelines
    # a PUBACK for it (wrong ack kind).
    first = accepted(CONNECT_P_RESUME)
    first.publish("a/b", b"hi", 2, now=0.0)
    first.data_to_send()
    first.connection_lost()
    server = ServerConnection()
    server.receive_data(CONNECT_P_RESUME + V12 + H("40 02 00 01"), now=1.0)
    with pytest.raises(RemoteProtocolError) as info:
        server.accept(now=1.1, session_present=True, session=first.session)
    assert info.value.events == (
        Connected(True), MessageReceived("a/b", b"hi", 0, False, False, None)
    )
    assert server.state is State.ERROR


# ---------------------------------------------------------- requests, pings


def test_subscribe_answered_by_suback() -> None:
    server = accepted()
    assert server.receive_data(V26, now=1.0) == [SubscribeReceived(1, (("a/b", 1),))]
    assert server.data_to_send() == b""  # SUBACK is the application's decision
    server.suback(1, [1], now=1.1)
    assert server.data_to_send() == H("90 03 00 01 01")


def test_subscribe_several_filters_with_failure_code() -> None:
    server = accepted()
    assert server.receive_data(V27, now=1.0) == [
        SubscribeReceived(2, (("a/+", 0), ("#", 2), ("+/x/#", 1)))
    ]
    server.suback(2, (0, 2, 0x80), now=1.1)
    assert server.data_to_send() == H("90 05 00 02 00 02 80")


@pytest.mark.parametrize("codes", [[3], [], [0x81]])
def test_suback_with_invalid_codes_is_local_error(codes: list[int]) -> None:
    server = accepted()
    server.receive_data(V26, now=1.0)
    with pytest.raises(LocalProtocolError):
        server.suback(1, codes, now=1.1)
    assert server.state is State.CONNECTED
    assert server.data_to_send() == b""


def test_unsubscribe_is_acknowledged_automatically() -> None:
    server = accepted()
    assert server.receive_data(V30, now=1.0) == [UnsubscribeReceived(3, ("a/b",))]
    assert server.data_to_send() == H("B0 02 00 03")
    assert server.receive_data(V31, now=1.1) == [UnsubscribeReceived(4, ("a/+", "#"))]
    assert server.data_to_send() == H("B0 02 00 04")


def test_pingreq_answered_with_pingresp() -> None:
    server = accepted()
    assert server.receive_data(PINGREQ, now=1.0) == []
    assert server.data_to_send() == PINGRESP
    assert server.receive_data(PINGREQ + PINGREQ, now=1.1) == []
    assert server.data_to_send() == PINGRESP + PINGRESP


def test_disconnect_reported_then_bytes_ignored() -> None:
    server = accepted()
    assert server.receive_data(DISCONNECT + V14, now=1.0) == [ClientDisconnected()]
    assert server.state is State.CLOSING
    assert server.data_to_send() == b""
    assert server.receive_data(PINGREQ, now=1.1) == []
    assert server.data_to_send() == b""
    assert server.next_deadline() is None
    server.publish("a/b", b"hi", 1, now=1.2)  # queued in the session, never sent here
    assert server.data_to_send() == b""
    assert server.connection_lost() == []
    assert server.state is State.DISCONNECTED
    assert len(server.session.queue) == 1


def test_close_stops_sending() -> None:
    server = accepted()
    server.close()
    assert server.state is State.CLOSING
    server.publish("a/b", b"hi", 0, now=1.0)
    assert server.receive_data(PINGREQ, now=1.0) == []
    assert server.data_to_send() == b""


# ---------------------------------------------------------------- timers


def test_keep_alive_expires_after_one_and_a_half_intervals() -> None:
    # [MQTT-3.1.2-24]: ka 10 => closed after 15 s without a packet, not before.
    server = ServerConnection(now=0.0)
    server.receive_data(CONNECT_P, now=0.0)
    server.accept(now=1.0)
    assert server.next_deadline() == 15.0
    assert server.tick(14.999) == []
    assert server.state is State.CONNECTED
    events = server.tick(15.0)
    assert len(events) == 1 and isinstance(events[0], ConnectionLost)
    assert server.state is State.CLOSING
    assert server.data_to_send() == H("20 02 00 00")
    assert server.next_deadline() is None


def test_keep_alive_is_reset_by_inbound_packets_only() -> None:
    server = ServerConnection(now=0.0)
    server.receive_data(CONNECT_P, now=0.0)
    server.accept(now=0.0)
    server.receive_data(PINGREQ, now=10.0)
    assert server.next_deadline() == 25.0
    server.publish("a/b", b"hi", 1, now=12.0)  # the server's own sends do not count
    server.data_to_send()
    assert server.next_deadline() == 25.0
    assert server.tick(24.999) == []
    assert [type(e) for e in server.tick(25.0)] == [ConnectionLost]


def test_keep_alive_factor_is_configurable() -> None:
    server = accepted(keep_alive_factor=2.0)
    assert server.next_deadline() == 20.0
    assert server.tick(19.999) == []
    assert [type(e) for e in server.tick(20.0)] == [ConnectionLost]


def test_keep_alive_zero_has_no_timer() -> None:
    server = accepted(CONNECT_P_KA0)
    assert server.next_deadline() is None
    assert server.tick(1e9) == []
    assert server.state is State.CONNECTED


def test_keep_alive_runs_while_waiting_for_accept() -> None:
    server = ServerConnection(now=0.0)
    server.receive_data(CONNECT_P, now=0.0)
    assert server.next_deadline() == 15.0
    assert server.tick(14.0) == []
    assert [type(e) for e in server.tick(15.0)] == [ConnectionLost]
    assert server.state is State.CLOSING


def test_connect_timeout() -> None:
    server = ServerConnection(now=100.0, connect_timeout=10.0)
    assert server.next_deadline() == 110.0
    assert server.tick(109.999) == []
    assert server.state is State.DISCONNECTED
    events = server.tick(110.0)
    assert len(events) == 1 and isinstance(events[0], ConnectionLost)
    assert "CONNECT" in events[0].reason
    assert server.state is State.CLOSING
    assert server.receive_data(CONNECT_P, now=111.0) == []  # too late: ignored


def test_connect_timeout_not_reset_by_a_partial_connect() -> None:
    server = ServerConnection(now=0.0, connect_timeout=10.0)
    assert server.receive_data(CONNECT_P[:5], now=9.0) == []
    assert server.next_deadline() == 10.0
    assert [type(e) for e in server.tick(10.0)] == [ConnectionLost]


def test_connect_ends_the_connect_timer() -> None:
    server = ServerConnection(now=0.0, connect_timeout=10.0)
    server.receive_data(CONNECT_P_KA0, now=5.0)
    assert server.next_deadline() is None
    assert server.tick(1000.0) == []
    assert server.state is State.CONNECTING


def test_no_connect_timer_without_now() -> None:
    server = ServerConnection()
    assert server.next_deadline() is None
    assert server.tick(1e9) == []
    assert server.state is State.DISCONNECTED


# -------------------------------------------------------------- QoS flows


def test_server_to_client_qos0() -> None:
    server = accepted()
    server.publish("a/b", b"hi", 0, now=1.0)
    assert server.data_to_send() == V12
    assert server.pending() == []


def test_server_to_client_qos1() -> None:
    server = accepted()
    token = server.publish("a/b", b"hi", 1, now=1.0)
    assert server.data_to_send() == V14
    assert server.pending() == [token]
    assert server.receive_data(H("40 02 00 01"), now=1.1) == [PublishAcked(token, 1)]
    assert server.pending() == []
    assert server.receive_data(H("40 02 00 01"), now=1.2) == []  # unknown now: ignored


def test_server_to_client_qos2() -> None:
    server = accepted()
    token = server.publish("a/b", b"hi", 2, now=1.0)
    assert server.data_to_send() == _pub(1, 2)
    assert server.receive_data(H("50 02 00 01"), now=1.1) == []
    assert server.data_to_send() == H("62 02 00 01")
    assert server.receive_data(H("50 02 00 01"), now=1.15) == []  # duplicate PUBREC
    assert server.data_to_send() == H("62 02 00 01")
    assert server.receive_data(H("70 02 00 01"), now=1.2) == [PublishAcked(token, 1)]
    assert server.pending() == []


@pytest.mark.parametrize(
    ("qos", "wrong"),
    [(1, H("50 02 00 01")), (1, H("70 02 00 01")), (2, H("40 02 00 01")),
     (2, H("70 02 00 01"))],
    ids=["pubrec-for-qos1", "pubcomp-for-qos1", "puback-for-qos2", "pubcomp-before-pubrec"],
)
def test_wrong_ack_kind_from_the_client_is_remote_error(qos: int, wrong: bytes) -> None:
    server = accepted()
    server.publish("a/b", b"hi", qos, now=1.0)
    server.data_to_send()
    with pytest.raises(RemoteProtocolError):
        server.receive_data(wrong, now=1.1)
    assert server.state is State.ERROR


def test_publish_before_accept_is_sent_after_connack() -> None:
    server = ServerConnection()
    server.receive_data(CONNECT_P, now=0.0)
    token = server.publish("a/b", b"hi", 1, now=0.1)
    assert server.data_to_send() == b""
    server.accept(now=0.2)
    assert server.data_to_send() == H("20 02 00 00") + V14
    assert server.receive_data(H("40 02 00 01"), now=0.3) == [PublishAcked(token, 1)]


def test_publish_before_connect_is_local_error() -> None:
    server = ServerConnection()
    with pytest.raises(LocalProtocolError):
        server.publish("a/b", b"hi", 1, now=0.0)
    assert server.state is State.ERROR


def test_server_inflight_window() -> None:
    server = accepted(max_inflight=1)
    t1 = server.publish("a/b", b"A", 1, now=1.0)
    t2 = server.publish("a/b", b"B", 1, now=1.0)
    assert server.data_to_send() == _pub(1, payload=b"A")
    assert server.receive_data(H("40 02 00 01"), now=1.1) == [PublishAcked(t1, 1)]
    assert server.data_to_send() == _pub(2, payload=b"B")
    assert server.receive_data(H("40 02 00 02"), now=1.2) == [PublishAcked(t2, 2)]


def test_client_to_server_qos1_and_qos2() -> None:
    server = accepted()
    assert server.receive_data(V14, now=1.0) == [
        MessageReceived("a/b", b"hi", 1, False, False, 1)
    ]
    assert server.data_to_send() == H("40 02 00 01")
    assert server.receive_data(V16, now=1.1) == [
        MessageReceived("a/b", b"hi", 2, False, False, 65535)
    ]
    assert server.data_to_send() == H("50 02 FF FF")
    assert server.receive_data(H("3C 09 00 03 61 2F 62 FF FF 68 69"), now=1.2) == []
    assert server.data_to_send() == H("50 02 FF FF")  # duplicate: PUBREC, no delivery
    assert server.receive_data(H("62 02 FF FF"), now=1.3) == []
    assert server.data_to_send() == H("70 02 FF FF")
    assert server.receive_data(H("62 02 12 34"), now=1.4) == []  # unknown PUBREL
    assert server.data_to_send() == H("70 02 12 34")


def test_client_to_server_manual_ack_order() -> None:
    server = accepted(auto_ack=False)
    server.receive_data(V14 + V16, now=1.0)
    assert server.data_to_send() == b""
    assert server.ack(65535, now=1.1) is True
    assert server.data_to_send() == b""
    assert server.ack(1, now=1.2) is True
    assert server.data_to_send() == H("40 02 00 01 50 02 FF FF")


def test_events_before_violation_are_on_the_exception() -> None:
    server = accepted()
    with pytest.raises(RemoteProtocolError) as info:
        server.receive_data(V12 + V30 + H("20 02 00 00"), now=1.0)
    assert info.value.events == (
        MessageReceived("a/b", b"hi", 0, False, False, None), UnsubscribeReceived(3, ("a/b",)),
    )
    assert server.state is State.ERROR


def test_error_poisons_until_connection_lost() -> None:
    server = accepted(auto_ack=False)
    server.receive_data(V14, now=1.0)
    with pytest.raises(RemoteProtocolError):
        server.receive_data(CONNECT_P, now=1.1)
    for call in (
        lambda: server.accept(now=2.0),
        lambda: server.refuse(1, now=2.0),
        lambda: server.publish("a/b", b"hi", 1, now=2.0),
        lambda: server.suback(1, [0], now=2.0),
        lambda: server.ack(1, now=2.0),
        lambda: server.close(),
        lambda: server.receive_data(PINGREQ, now=2.0),
    ):
        with pytest.raises(LocalProtocolError):
            call()
        assert server.state is State.ERROR
    assert server.data_to_send() == b""
    assert server.connection_lost() == []
    assert server.state is State.DISCONNECTED


# ------------------------------------------------------ session hand-over


def _first_connection() -> tuple[ServerConnection, list[int]]:
    """cs=0 connection with: QoS 1 id 1 unacked, QoS 2 id 2 PUBREC'd (PUBREL
    sent), QoS 2 id 3 unacked, and the client's QoS 2 id 7 PUBREC'd."""
    server = accepted(CONNECT_P_RESUME, max_inflight=3)
    tokens = [
        server.publish("a/b", b"hi", 1, now=1.0),
        server.publish("a/b", b"hi", 2, now=1.0),
        server.publish("a/b", b"hi", 2, now=1.0),
        server.publish("a/b", b"Q", 1, now=1.0),  # queued behind the window
    ]
    assert server.data_to_send() == _pub(1) + _pub(2, 2) + _pub(3, 2)
    server.receive_data(H("50 02 00 02"), now=1.1)
    assert server.data_to_send() == H("62 02 00 02")
    incoming = H("34 09 00 03 61 2F 62 00 07 68 69")
    assert len(server.receive_data(incoming, now=1.2)) == 1
    assert server.data_to_send() == H("50 02 00 07")
    server.connection_lost()
    assert server.state is State.DISCONNECTED
    return server, tokens


def test_session_hand_over_resends_inflight_and_pubrel() -> None:
    first, tokens = _first_connection()
    session = first.session
    server = ServerConnection(now=10.0, max_inflight=3)
    server.receive_data(CONNECT_P_RESUME, now=10.0)
    assert server.accept(now=10.1, session_present=True, session=session) == [Connected(True)]
    assert server.session is session
    # CONNACK, then in original order: PUBLISH 1 (DUP), PUBREL 2, PUBLISH 3 (DUP);
    # the queued message waits for room in the window.
    assert server.data_to_send() == (
        H("20 02 01 00") + _pub(1, dup=True) + H("62 02 00 02") + _pub(3, 2, dup=True)
    )
    # The client re-sends its QoS 2 message: PUBREC again, not delivered twice.
    assert server.receive_data(H("3C 09 00 03 61 2F 62 00 07 68 69"), now=10.2) == []
    assert server.data_to_send() == H("50 02 00 07")
    assert server.receive_data(H("62 02 00 07"), now=10.3) == []
    assert server.data_to_send() == H("70 02 00 07")
    assert server.receive_data(H("40 02 00 01"), now=10.4) == [PublishAcked(tokens[0], 1)]
    assert server.data_to_send() == _pub(4, payload=b"Q")
    assert server.receive_data(H("70 02 00 02"), now=10.5) == [PublishAcked(tokens[1], 2)]
    assert server.receive_data(H("50 02 00 03"), now=10.6) == []
    assert server.data_to_send() == H("62 02 00 03")
    assert server.receive_data(H("70 02 00 03 40 02 00 04"), now=10.7) == [
        PublishAcked(tokens[2], 3), PublishAcked(tokens[3], 4)
    ]
    assert server.pending() == []


def test_session_hand_over_keeps_publishes_made_before_accept() -> None:
    first, _ = _first_connection()
    server = ServerConnection(max_inflight=3)
    server.receive_data(CONNECT_P_RESUME, now=10.0)
    server.publish("a/b", b"new", 0, now=10.0)
    server.accept(now=10.1, session_present=True, session=first.session)
    # In-flight re-sends first, then the queue: the old queued QoS 1 (window
    # full: 3 in flight) blocks the new QoS 0 behind it.
    assert server.data_to_send() == (
        H("20 02 01 00") + _pub(1, dup=True) + H("62 02 00 02") + _pub(3, 2, dup=True)
    )
    server.receive_data(H("40 02 00 01"), now=10.2)
    assert server.data_to_send() == _pub(4, payload=b"Q") + H("30 08 00 03 61 2F 62") + b"new"


def test_tokens_stay_unique_after_session_hand_over() -> None:
    first = accepted(CONNECT_P_RESUME)
    old = first.publish("a/b", b"hi", 1, now=1.0)
    first.connection_lost()
    server = ServerConnection()
    server.receive_data(CONNECT_P_RESUME, now=2.0)
    server.accept(now=2.0, session_present=True, session=first.session)
    new = server.publish("a/b", b"hi", 1, now=2.0)
    assert server.pending() == [old, new]
    assert new != old


def test_clean_session_connection_does_not_resend() -> None:
    server = accepted()  # cs=1
    server.publish("a/b", b"hi", 1, now=1.0)
    server.data_to_send()
    server.connection_lost()
    # The application drops the session of a clean-session client; a new one is fresh.
    fresh = accepted()
    assert fresh.data_to_send() == b""
    assert fresh.pending() == []
