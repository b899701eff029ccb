"""The encoder refuses every packet that breaks a rule binding its sender.

Each refusal is a ``LocalProtocolError`` whose message names the packet, the
field and (where the spec has one) the rule.  Also: the first byte of every
packet type equals Table 2.2 [MQTT-2.2.2-1].
"""

from __future__ import annotations

from typing import Any

import pytest

from iotdev_mqtt import (
    ConnAck,
    ConnAckCode,
    Connect,
    Disconnect,
    LocalProtocolError,
    PacketReader,
    PacketType,
    PingReq,
    PingResp,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    QoS,
    SubAck,
    SubAckCode,
    Subscribe,
    UnsubAck,
    Unsubscribe,
    Will,
    encode,
)


def refusal(
    packet: Any, name: str | None, field: str | None, rules: str | tuple[str, ...] | None, id: str
) -> Any:
    if isinstance(rules, str):
        rules = (rules,)
    return pytest.param(packet, name, field, rules, id=id)


ID_ONLY = [
    (PubAck, "PUBACK"),
    (PubRec, "PUBREC"),
    (PubRel, "PUBREL"),
    (PubComp, "PUBCOMP"),
    (UnsubAck, "UNSUBACK"),
]
BAD_FILTERS = [
    ("a#", "MQTT-4.7.1-2"),
    ("a/#/b", "MQTT-4.7.1-2"),
    ("#/a", "MQTT-4.7.1-2"),
    ("sport/tennis#", "MQTT-4.7.1-2"),
    ("##", "MQTT-4.7.1-2"),
    ("a+", "MQTT-4.7.1-3"),
    ("+a", "MQTT-4.7.1-3"),
    ("a/b+", "MQTT-4.7.1-3"),
    ("++", "MQTT-4.7.1-3"),
    ("", "MQTT-4.7.3-1"),
    ("a/\x00", ("MQTT-1.5.3-2", "MQTT-4.7.3-2")),
    ("a/\ud800", "MQTT-1.5.3-1"),
    ("a" * 65536, "MQTT-4.7.3-3"),
]
NUL_RULES = ("MQTT-1.5.3-2", "MQTT-4.7.3-2")

REFUSALS = [
    # PUBLISH topic name [4.7]
    refusal(Publish("a/+"), "PUBLISH", "topic name", "MQTT-3.3.2-2", "publish-topic-plus"),
    refusal(Publish("a/#"), "PUBLISH", "topic name", "MQTT-3.3.2-2", "publish-topic-hash"),
    refusal(Publish("+"), "PUBLISH", "topic name", "MQTT-3.3.2-2", "publish-topic-only-plus"),
    refusal(Publish("#"), "PUBLISH", "topic name", "MQTT-3.3.2-2", "publish-topic-only-hash"),
    refusal(Publish(""), "PUBLISH", "topic name", "MQTT-4.7.3-1", "publish-topic-empty"),
    refusal(Publish("a\x00b"), "PUBLISH", "topic name", NUL_RULES, "publish-topic-nul"),
    refusal(Publish("a/\ud800"), "PUBLISH", "topic name", "MQTT-1.5.3-1", "publish-surrogate"),
    refusal(Publish("\udfff"), "PUBLISH", "topic name", "MQTT-1.5.3-1", "publish-low-surrogate"),
    refusal(Publish("a" * 65536), "PUBLISH", "topic name", "MQTT-4.7.3-3", "publish-topic-65536"),
    # 32,768 characters but 65,536 UTF-8 bytes: the limit counts bytes.
    refusal(Publish("é" * 32768), "PUBLISH", "topic name", "MQTT-4.7.3-3", "publish-topic-bytes"),
    # PUBLISH flags and packet identifier
    refusal(Publish("a", dup=True), "PUBLISH", "DUP", "MQTT-3.3.1-2", "publish-dup-qos0"),
    refusal(
        Publish("a", dup=True, packet_id=1),
        "PUBLISH",
        None,
        ("MQTT-3.3.1-2", "MQTT-2.3.1-5"),
        "publish-dup-qos0-with-id",
    ),
    refusal(
        Publish("a", packet_id=1),
        "PUBLISH",
        "packet identifier",
        "MQTT-2.3.1-5",
        "publish-id-qos0",
    ),
    refusal(
        Publish("a", qos=1), "PUBLISH", "packet identifier", "MQTT-2.3.1-1", "publish-qos1-no-id"
    ),
    refusal(
        Publish("a", qos=2), "PUBLISH", "packet identifier", "MQTT-2.3.1-1", "publish-qos2-no-id"
    ),
    refusal(
        Publish("a", qos=1, packet_id=0),
        "PUBLISH",
        "packet identifier",
        "MQTT-2.3.1-1",
        "publish-id-0",
    ),
    refusal(
        Publish("a", qos=2, packet_id=65536),
        "PUBLISH",
        "packet identifier",
        "MQTT-2.3.1-1",
        "publish-id-65536",
    ),
    refusal(
        Publish("a", qos=1, packet_id=-1),
        "PUBLISH",
        "packet identifier",
        "MQTT-2.3.1-1",
        "publish-id-negative",
    ),
    refusal(
        Publish("a", qos=1, packet_id=True),
        "PUBLISH",
        "packet identifier",
        None,
        "publish-id-bool",
    ),
    refusal(Publish("a", qos=3, packet_id=1), "PUBLISH", "QoS", "MQTT-3.3.1-4", "publish-qos3"),
    refusal(Publish("a", qos=-1, packet_id=1), "PUBLISH", "QoS", "MQTT-3.3.1-4", "publish-qos-1"),
    refusal(Publish("a", qos=True, packet_id=1), "PUBLISH", "QoS", None, "publish-qos-bool"),
    # PUBLISH wrong Python types
    refusal(Publish(5), "PUBLISH", "topic name", None, "publish-int-topic"),  # type: ignore[arg-type]
    refusal(Publish(b"a/b"), "PUBLISH", "topic name", None, "publish-bytes-topic"),  # type: ignore[arg-type]
    refusal(Publish("a", "x"), "PUBLISH", "payload", None, "publish-str-payload"),  # type: ignore[arg-type]
    refusal(Publish("a", None), "PUBLISH", "payload", None, "publish-none-payload"),  # type: ignore[arg-type]
    # SUBSCRIBE / UNSUBSCRIBE
    refusal(Subscribe(1, ()), "SUBSCRIBE", "payload", "MQTT-3.8.3-3", "subscribe-empty"),
    refusal(Unsubscribe(1, ()), "UNSUBSCRIBE", "payload", "MQTT-3.10.3-2", "unsubscribe-empty"),
    refusal(
        Unsubscribe(1, "a/b"),  # type: ignore[arg-type]
        "UNSUBSCRIBE",
        "payload",
        "MQTT-3.10.3-2",
        "unsubscribe-str-not-tuple",
    ),
    refusal(
        Subscribe(1, (("a", 3),)), "SUBSCRIBE", "requested QoS", "MQTT-3-8.3-4", "subscribe-qos3"
    ),
    refusal(
        Subscribe(1, (("a", -1),)),
        "SUBSCRIBE",
        "requested QoS",
        "MQTT-3-8.3-4",
        "subscribe-qos-negative",
    ),
    refusal(
        Subscribe(0, (("a", 0),)),
        "SUBSCRIBE",
        "packet identifier",
        "MQTT-2.3.1-1",
        "subscribe-id-0",
    ),
    refusal(
        Subscribe(65536, (("a", 0),)),
        "SUBSCRIBE",
        "packet identifier",
        "MQTT-2.3.1-1",
        "subscribe-id-65536",
    ),
    refusal(
        Unsubscribe(0, ("a",)),
        "UNSUBSCRIBE",
        "packet identifier",
        "MQTT-2.3.1-1",
        "unsubscribe-id-0",
    ),
    refusal(
        Subscribe(1, ((5, 0),)),  # type: ignore[arg-type]
        "SUBSCRIBE",
        "topic filter",
        None,
        "subscribe-int-filter",
    ),
    refusal(
        Subscribe(1, ("a",)),  # type: ignore[arg-type]
        "SUBSCRIBE",
        "payload",
        None,
        "subscribe-not-a-pair",
    ),
    refusal(
        Unsubscribe(1, (b"a",)),  # type: ignore[arg-type]
        "UNSUBSCRIBE",
        "topic filter",
        None,
        "unsubscribe-bytes-filter",
    ),
    *[
        refusal(Subscribe(1, (("ok", 0), (f, 1))), "SUBSCRIBE", "topic filter", r, f"subscribe-{i}")
        for i, (f, r) in enumerate(BAD_FILTERS)
    ],
    *[
        refusal(Unsubscribe(1, ("ok", f)), "UNSUBSCRIBE", "topic filter", r, f"unsubscribe-{i}")
        for i, (f, r) in enumerate(BAD_FILTERS)
    ],
    # SUBACK
    refusal(SubAck(1, (3,)), "SUBACK", "return code", "MQTT-3.9.3-2", "suback-code-3"),
    refusal(SubAck(1, (0, 0x81)), "SUBACK", "return code", "MQTT-3.9.3-2", "suback-code-81"),
    refusal(SubAck(1, (True,)), "SUBACK", "return code", "MQTT-3.9.3-2", "suback-code-bool"),
    refusal(SubAck(1, ()), "SUBACK", "return codes", "MQTT-3.8.4-5", "suback-empty"),
    refusal(SubAck(0, (0,)), "SUBACK", "packet identifier", "MQTT-2.3.1-1", "suback-id-0"),
    # CONNACK
    refusal(ConnAck(False, 6), "CONNACK", "return code", "3.2.2.3", "connack-rc-6"),
    refusal(ConnAck(False, -1), "CONNACK", "return code", "3.2.2.3", "connack-rc-negative"),
    refusal(ConnAck(True, 5), "CONNACK", "session present", "MQTT-3.2.2-4", "connack-sp-rc"),
    # CONNECT
    refusal(
        Connect("c", password=b"pw"), "CONNECT", "password", "MQTT-3.1.2-22", "connect-pw-no-user"
    ),
    refusal(
        Connect("", clean_session=False),
        "CONNECT",
        "client identifier",
        "MQTT-3.1.3-7",
        "connect-empty-id-cs0",
    ),
    refusal(Connect("c", keep_alive=70000), "CONNECT", "keep alive", "3.1.2.10", "ka-70000"),
    refusal(Connect("c", keep_alive=65536), "CONNECT", "keep alive", "3.1.2.10", "ka-65536"),
    refusal(Connect("c", keep_alive=-1), "CONNECT", "keep alive", "3.1.2.10", "ka-negative"),
    refusal(
        Connect("c", protocol_name="MQIsdp"),
        "CONNECT",
        "protocol name",
        "MQTT-3.1.2-1",
        "connect-protocol-name",
    ),
    refusal(
        Connect("c", will=Will("w/#")), "CONNECT", "will topic", "MQTT-3.3.2-2", "will-topic-hash"
    ),
    refusal(
        Connect("c", will=Will("w/+")), "CONNECT", "will topic", "MQTT-3.3.2-2", "will-topic-plus"
    ),
    refusal(Connect("c", will=Will("")), "CONNECT", "will topic", "MQTT-4.7.3-1", "will-empty"),
    refusal(Connect("c", will=Will("w", qos=3)), "CONNECT", "will QoS", "MQTT-3.1.2-14", "will-q3"),
    refusal(
        Connect("c", will=Will("w", "x")),  # type: ignore[arg-type]
        "CONNECT",
        "will message",
        None,
        "will-str-message",
    ),
    refusal(
        Connect("c", will=Will("w", bytes(65536))),
        "CONNECT",
        "will message",
        "1.5.6",
        "will-message-65536",
    ),
    refusal(
        Connect("c", will=("w", b"")),  # type: ignore[arg-type]
        "CONNECT",
        "will",
        None,
        "will-not-a-will",
    ),
    refusal(Connect("c\x00"), "CONNECT", "client identifier", NUL_RULES, "connect-id-nul"),
    refusal(Connect("\ud800"), "CONNECT", "client identifier", "MQTT-1.5.3-1", "connect-id-surr"),
    refusal(Connect(5), "CONNECT", "client identifier", None, "connect-int-id"),  # type: ignore[arg-type]
    refusal(
        Connect("c", username=b"u"),  # type: ignore[arg-type]
        "CONNECT",
        "user name",
        None,
        "connect-bytes-user",
    ),
    refusal(
        Connect("c", username="u", password="pw"),  # type: ignore[arg-type]
        "CONNECT",
        "password",
        None,
        "connect-str-password",
    ),
    refusal(
        Connect("c", username="u", password=bytes(65536)),
        "CONNECT",
        "password",
        "1.5.6",
        "connect-password-65536",
    ),
    # Packet-identifier-only packets
    *[
        refusal(cls(pid), name, "packet identifier", "MQTT-2.3.1-1", f"{name.lower()}-id-{pid}")
        for cls, name in ID_ONLY
        for pid in (0, 65536, -1)
    ],
    *[
        refusal(cls(None), name, "packet identifier", "MQTT-2.3.1-1", f"{name.lower()}-id-none")
        for cls, name in ID_ONLY
    ],
    # Not packets at all
    refusal(object(), None, None, None, "object"),
    refusal(Will("a"), None, None, None, "will-is-not-a-packet"),
    refusal(b"\xc0\x00", None, None, None, "bytes"),
    refusal(None, None, None, None, "none"),
    refusal({"type": "PINGREQ"}, None, None, None, "dict"),
]


@pytest.mark.parametrize(("packet", "name", "field", "rules"), REFUSALS)
def test_encoder_refuses(
    packet: Any, name: str | None, field: str | None, rules: tuple[str, ...] | None
) -> None:
    with pytest.raises(LocalProtocolError) as info:
        encode(packet)
    exc = info.value
    text = str(exc)
    if name is None:
        # Not a packet: the message names what it got instead.
        assert exc.packet is None
        assert type(packet).__name__ in text
        assert "not an MQTT packet" in text
        return
    assert exc.packet == name
    assert text.startswith(name), text
    if field is not None:
        assert exc.field == field
        assert f"{name} {field}:" in text, text
    else:
        assert exc.field
    if rules is not None:
        assert exc.rule in rules, f"rule {exc.rule!r}, expected one of {rules}"
        assert text.endswith(f"[{exc.rule}]"), text


# --------------------------------------------------------------------------- QoS types

# Regression tests: before commit 05ded3e the encoder tested ``type(qos) is int``
# for QoS 0, so the library's own ``QoS.AT_MOST_ONCE`` (an IntEnum) took the
# QoS>0 branch (demanding a packet id, then writing it, or DUP, into a QoS 0
# PUBLISH), and a float QoS of 1.0/2.0 crashed with TypeError.


def test_publish_with_qos_enum_zero_encodes_like_qos_zero() -> None:
    assert encode(Publish("a", b"x", qos=QoS.AT_MOST_ONCE)) == encode(Publish("a", b"x"))
    assert encode(Publish("a", b"x", qos=QoS.AT_MOST_ONCE, retain=True)) == bytes.fromhex(
        "31 04 00 01 61 78"
    )


def test_publish_with_qos_enum_zero_refuses_packet_id() -> None:
    with pytest.raises(LocalProtocolError) as info:
        encode(Publish("a", b"x", qos=QoS.AT_MOST_ONCE, packet_id=5))
    assert info.value.rule == "MQTT-2.3.1-5"


def test_publish_with_qos_enum_zero_refuses_dup() -> None:
    for packet_id in (None, 5):
        with pytest.raises(LocalProtocolError) as info:
            encode(Publish("a", b"x", qos=QoS.AT_MOST_ONCE, dup=True, packet_id=packet_id))
        assert info.value.rule in ("MQTT-3.3.1-2", "MQTT-2.3.1-5")


@pytest.mark.parametrize("qos", [0.0, 1.0, 2.0, "1", None])
def test_publish_with_non_int_qos_is_a_local_protocol_error(qos: object) -> None:
    with pytest.raises(LocalProtocolError) as info:
        encode(Publish("a", b"x", qos=qos, packet_id=1))  # type: ignore[arg-type]
    assert info.value.packet == "PUBLISH"
    assert info.value.field == "QoS"


def test_suback_refuses_float_return_code() -> None:
    with pytest.raises(LocalProtocolError) as info:
        encode(SubAck(1, (1.0,)))  # type: ignore[arg-type]
    assert info.value.field == "return code"


def test_connack_refuses_bool_return_code() -> None:
    with pytest.raises(LocalProtocolError) as info:
        encode(ConnAck(False, True))  # type: ignore[arg-type]
    assert info.value.field == "return code"


def test_return_code_enums_are_accepted() -> None:
    assert encode(SubAck(1, (SubAckCode.FAILURE, SubAckCode.GRANTED_QOS_2))) == bytes.fromhex(
        "90 04 00 01 80 02"
    )
    assert encode(ConnAck(False, ConnAckCode.NOT_AUTHORIZED)) == bytes.fromhex("20 02 00 05")


def test_qos_enum_accepted_where_it_works() -> None:
    """The QoS enum is fine for QoS 1/2, SUBSCRIBE and the Will (only QoS 0 PUBLISH breaks)."""
    assert encode(Publish("a", b"x", qos=QoS.AT_LEAST_ONCE, packet_id=5)) == encode(
        Publish("a", b"x", qos=1, packet_id=5)
    )
    assert encode(Publish("a", b"x", qos=QoS.EXACTLY_ONCE, packet_id=5)) == encode(
        Publish("a", b"x", qos=2, packet_id=5)
    )
    assert encode(Subscribe(1, (("a", QoS.AT_MOST_ONCE),))) == encode(Subscribe(1, (("a", 0),)))
    assert encode(Connect("c", will=Will("w", qos=QoS.EXACTLY_ONCE))) == encode(
        Connect("c", will=Will("w", qos=2))
    )


# --------------------------------------------------------------------------- boundaries


def test_longest_topic_name_is_accepted() -> None:
    for topic in ("a" * 65535, "é" * 32767 + "a"):
        packet = Publish(topic, b"p")
        data = encode(packet)
        assert data[:1] == b"\x30"
        assert data[-65538:-1] == b"\xff\xff" + topic.encode("utf-8")
        assert PacketReader("client", 1 << 20).feed(data) == [packet]


def test_largest_binary_fields_are_accepted() -> None:
    packet = Connect("c", username="u", password=bytes(65535), will=Will("w", bytes(65535)))
    data = encode(packet)
    assert PacketReader("server", 1 << 20).feed(data) == [packet]


def test_encoder_leaves_other_encodes_working_after_a_refusal() -> None:
    with pytest.raises(LocalProtocolError):
        encode(Publish("a/+", b"x"))
    assert encode(Publish("a/b", b"hi")) == bytes.fromhex("30 07 00 03 61 2F 62 68 69")


# --------------------------------------------------------------------------- Table 2.2

FIRST_BYTES = [
    pytest.param(Connect("c"), 0x10, id="CONNECT"),
    pytest.param(ConnAck(), 0x20, id="CONNACK"),
    pytest.param(Publish("a"), 0x30, id="PUBLISH-qos0"),
    pytest.param(Publish("a", retain=True), 0x31, id="PUBLISH-qos0-retain"),
    pytest.param(Publish("a", qos=1, packet_id=1), 0x32, id="PUBLISH-qos1"),
    pytest.param(Publish("a", qos=2, packet_id=1), 0x34, id="PUBLISH-qos2"),
    pytest.param(Publish("a", qos=1, packet_id=1, dup=True), 0x3A, id="PUBLISH-qos1-dup"),
    pytest.param(
        Publish("a", qos=2, packet_id=1, dup=True, retain=True), 0x3D, id="PUBLISH-qos2-dup-retain"
    ),
    pytest.param(PubAck(1), 0x40, id="PUBACK"),
    pytest.param(PubRec(1), 0x50, id="PUBREC"),
    pytest.param(PubRel(1), 0x62, id="PUBREL"),
    pytest.param(PubComp(1), 0x70, id="PUBCOMP"),
    pytest.param(Subscribe(1, (("a", 0),)), 0x82, id="SUBSCRIBE"),
    pytest.param(SubAck(1, (0,)), 0x90, id="SUBACK"),
    pytest.param(Unsubscribe(1, ("a",)), 0xA2, id="UNSUBSCRIBE"),
    pytest.param(UnsubAck(1), 0xB0, id="UNSUBACK"),
    pytest.param(PingReq(), 0xC0, id="PINGREQ"),
    pytest.param(PingResp(), 0xD0, id="PINGRESP"),
    pytest.param(Disconnect(), 0xE0, id="DISCONNECT"),
]


@pytest.mark.parametrize(("packet", "first"), FIRST_BYTES)
def test_first_byte_matches_table_2_2(packet: Any, first: int) -> None:
    data = encode(packet)
    assert data[0] == first, f"0x{data[0]:02X} != 0x{first:02X}"
    assert data[0] >> 4 == packet.packet_type
    assert data[0] >> 4 == PacketType[type(packet).__name__.upper()]


def test_first_byte_table_covers_all_fourteen_types() -> None:
    covered = {p.values[0].packet_type for p in FIRST_BYTES}
    assert covered == set(PacketType)
    assert len(covered) == 14


@pytest.mark.parametrize(
    ("packet", "data"),
    [
        (PubAck(0x1234), "40 02 12 34"),
        (PubRec(0xFFFF), "50 02 FF FF"),
        (PubRel(1), "62 02 00 01"),
        (PubComp(0x0100), "70 02 01 00"),
        (UnsubAck(3), "B0 02 00 03"),
        (ConnAck(True, 0), "20 02 01 00"),
        (PingReq(), "C0 00"),
        (PingResp(), "D0 00"),
        (Disconnect(), "E0 00"),
    ],
)
def test_fixed_size_packets_are_byte_exact(packet: Any, data: str) -> None:
    assert encode(packet) == bytes.fromhex(data)
