"""Byte-exact MQTT 3.1.1 vectors through the codec (conformance reference section 5).

Every vector of ``mqtt-3.1.1-vectors.json`` is used:

* ``valid``: decoded with each role it may travel towards (c2s -> a server-role
  reader, s2c -> a client-role reader, both -> both), compared field by field
  with the JSON, re-encoded byte-exactly, and fed four ways (whole, byte by byte,
  with trailing data, every truncated prefix) [STYLE 6].
* ``malformed``: refused whole and byte by byte with ``MalformedPacket`` (or a
  plain ``RemoteProtocolError`` when the vector travels the wrong way for the
  reader's role), the message naming the rule.
* ``semantic``: codec-valid packets that a server must react to.
* ``remaining_length``: Table 2.4 boundaries, encoded and decoded.

The JSON is a copy of shared/reference/mqtt-3.1.1-vectors.json in tests/data;
``IOTDEV_MQTT_VECTORS`` overrides its path.
A missing file fails the collection on purpose (no silent skip).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest

from iotdev_mqtt import (
    ConnAck,
    Connect,
    Disconnect,
    LocalProtocolError,
    MalformedPacket,
    PacketReader,
    PacketTooLarge,
    PingReq,
    PingResp,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    RemoteProtocolError,
    SubAck,
    Subscribe,
    UnsubAck,
    Unsubscribe,
    Will,
    encode,
    encode_remaining_length,
)

VECTORS_PATH = Path(
    os.environ.get(
        "IOTDEV_MQTT_VECTORS", str(Path(__file__).with_name("data") / "mqtt-3.1.1-vectors.json")
    )
)
VECTORS: dict[str, Any] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))

VALID = VECTORS["valid"]
MALFORMED = VECTORS["malformed"]
SEMANTIC = {v["id"]: v for v in VECTORS["semantic"]}
REMAINING_LENGTH = VECTORS["remaining_length"]

ROLES = {"c2s": ("server",), "s2c": ("client",), "both": ("server", "client")}
ALL_ROLES = ("server", "client")

NAMES = {
    1: "CONNECT",
    2: "CONNACK",
    3: "PUBLISH",
    4: "PUBACK",
    5: "PUBREC",
    6: "PUBREL",
    7: "PUBCOMP",
    8: "SUBSCRIBE",
    9: "SUBACK",
    10: "UNSUBSCRIBE",
    11: "UNSUBACK",
    12: "PINGREQ",
    13: "PINGRESP",
    14: "DISCONNECT",
}
CLASSES: dict[str, type] = {
    "CONNECT": Connect,
    "CONNACK": ConnAck,
    "PUBLISH": Publish,
    "PUBACK": PubAck,
    "PUBREC": PubRec,
    "PUBREL": PubRel,
    "PUBCOMP": PubComp,
    "SUBSCRIBE": Subscribe,
    "SUBACK": SubAck,
    "UNSUBSCRIBE": Unsubscribe,
    "UNSUBACK": UnsubAck,
    "PINGREQ": PingReq,
    "PINGRESP": PingResp,
    "DISCONNECT": Disconnect,
}

# A packet each role accepts, used as trailing data after a vector.
TRAILER = {"server": bytes.fromhex("C0 00"), "client": bytes.fromhex("D0 00")}
TRAILER_PACKET = {"server": PingReq(), "client": PingResp()}
# V14, a PUBLISH either role accepts, used as a partial packet after a vector.
PARTIAL_SOURCE = bytes.fromhex("32 09 00 03 61 2F 62 00 01 68 69")
PARTIAL_PACKET = Publish("a/b", b"hi", qos=1, packet_id=1)

# Rule ids the codec may cite beyond the ones a vector lists.
# M25 (PUBACK with Packet Identifier 0): the vectors cite MQTT-2.3.1-6 (an ack
# carries the PUBLISH's id); the codec cites MQTT-2.3.1-1 (ids are non-zero),
# which is the statement that makes 0 impossible.  Both are defensible.
EXTRA_RULES = {"M25": {"MQTT-2.3.1-1"}}

_RULE_RE = re.compile(r"\[(MQTT-[0-9.-]+|[0-9]+(?:\.[0-9]+)*)")


def unhex(text: str) -> bytes:
    return bytes.fromhex(text)


def vector_id(v: dict[str, Any]) -> str:
    return str(v["id"])


def role_cases(vectors: list[dict[str, Any]], roles: dict[str, tuple[str, ...]]) -> list[Any]:
    return [
        pytest.param(v, role, id=f"{v['id']}-{role}") for v in vectors for role in roles[v["dir"]]
    ]


# Extra malformed packets: the "how to test" column of the reference's section 2
# table, which the JSON does not carry, plus a Will Flag without a Will Topic.
EXTRA_MALFORMED = [
    {
        "id": "X-3.1.2-20",
        "dir": "c2s",
        "hex": "10 13 00 04 4D 51 54 54 04 82 00 0A 00 01 70 00 01 75 00 01 70",
        "ref": "[MQTT-3.1.2-20]",
        "ref_decoder": "password present with Password Flag 0",
    },
    {
        "id": "X-3.1.2-21",
        "dir": "c2s",
        "hex": "10 10 00 04 4D 51 54 54 04 C2 00 0A 00 01 70 00 01 70",
        "ref": "[MQTT-3.1.2-21]",
        "ref_decoder": "Password Flag 1, password missing",
    },
    {
        "id": "X-3.1.2-9",
        "dir": "c2s",
        "hex": "10 0D 00 04 4D 51 54 54 04 06 00 0A 00 01 70",
        "ref": "[MQTT-3.1.2-9]",
        "ref_decoder": "Will Flag 1, Will Topic missing",
    },
    {
        "id": "X-3.1.3-10",
        "dir": "c2s",
        "hex": "10 15 00 04 4D 51 54 54 04 06 00 0A 00 01 70 00 03 ED A0 80 00 01 6D",
        "ref": "[MQTT-3.1.3-10]",
        "ref_decoder": "Will Topic ill-formed UTF-8 [MQTT-1.5.3-1]",
    },
    {
        "id": "X-3.8.3-1",
        "dir": "c2s",
        "hex": "82 08 00 01 00 03 ED A0 80 00",
        "ref": "[MQTT-3.8.3-1]",
        "ref_decoder": "Topic Filter ill-formed UTF-8 [MQTT-1.5.3-1]",
    },
    {
        "id": "X-3.10.3-1",
        "dir": "c2s",
        "hex": "A2 07 00 01 00 03 61 FF 62",
        "ref": "[MQTT-3.10.3-1]",
        "ref_decoder": "Topic Filter ill-formed UTF-8 [MQTT-1.5.3-1]",
    },
    {
        "id": "X-3.8.3-1-nul",
        "dir": "c2s",
        "hex": "82 08 00 01 00 03 61 00 62 00",
        "ref": "[MQTT-1.5.3-2]",
        "ref_decoder": "Topic Filter contains U+0000 [MQTT-4.7.3-2]",
    },
    {
        "id": "X-3.1.2-11",
        "dir": "c2s",
        "hex": "10 0D 00 04 4D 51 54 54 04 12 00 0A 00 01 70",
        "ref": "[MQTT-3.1.2-13]",
        "ref_decoder": "Will QoS 2 with Will Flag 0 [MQTT-3.1.2-11]",
    },
    {
        "id": "X-2.2.2-2-publish-qos3-dup",
        "dir": "both",
        "hex": "3F 07 00 03 61 2F 62 68 69",
        "ref": "[MQTT-3.3.1-4]",
        "ref_decoder": "PUBLISH QoS 3 [MQTT-3.3.1-4]",
    },
    {
        "id": "X-2.2.2-2-pubrel-dup",
        "dir": "both",
        "hex": "6A 02 00 01",
        "ref": "[MQTT-3.6.1-1]",
        "ref_decoder": "3.1-style DUP on PUBREL [MQTT-3.6.1-1]",
    },
    {
        "id": "X-2.2.2-2-subscribe-dup",
        "dir": "c2s",
        "hex": "8A 06 00 01 00 01 70 00",
        "ref": "[MQTT-3.8.1-1]",
        "ref_decoder": "3.1-style DUP on SUBSCRIBE [MQTT-3.8.1-1]",
    },
    {
        "id": "X-2.2.2-2-unsubscribe-dup",
        "dir": "c2s",
        "hex": "AA 05 00 01 00 01 70",
        "ref": "[MQTT-3.10.1-1]",
        "ref_decoder": "3.1-style DUP on UNSUBSCRIBE [MQTT-3.10.1-1]",
    },
    {
        "id": "X-2.3.1-1-unsuback",
        "dir": "s2c",
        "hex": "B0 02 00 00",
        "ref": "[MQTT-2.3.1-1]",
        "ref_decoder": "UNSUBACK Packet Identifier 0",
    },
    {
        "id": "X-2.3.1-1-suback",
        "dir": "s2c",
        "hex": "90 03 00 00 00",
        "ref": "[MQTT-2.3.1-1]",
        "ref_decoder": "SUBACK Packet Identifier 0",
    },
]

VALID_CASES = role_cases(VALID, ROLES)
MALFORMED_CASES = role_cases(MALFORMED + EXTRA_MALFORMED, {d: ALL_ROLES for d in ROLES})


def expected_packet(fields: dict[str, Any]) -> Any:
    """Build the dataclass the JSON ``fields`` describe, consuming every key."""
    f = dict(fields)
    kind = f.pop("type")
    cls = CLASSES[kind]
    if kind == "CONNECT":
        will = f.pop("will", None)
        password = f.pop("password_hex", None)
        packet = Connect(
            client_id=f.pop("client_id"),
            clean_session=f.pop("clean_session"),
            keep_alive=f.pop("keep_alive"),
            username=f.pop("username", None),
            password=None if password is None else unhex(password),
            will=None
            if will is None
            else Will(will["topic"], unhex(will["payload_hex"]), will["qos"], will["retain"]),
            protocol_name="MQTT",
            protocol_level=f.pop("protocol_level"),
        )
    elif kind == "CONNACK":
        packet = ConnAck(f.pop("session_present"), f.pop("return_code"))
    elif kind == "PUBLISH":
        packet = Publish(
            topic=f.pop("topic"),
            payload=unhex(f.pop("payload_hex")),
            qos=f.pop("qos"),
            retain=f.pop("retain"),
            dup=f.pop("dup"),
            packet_id=f.pop("packet_id", None),
        )
    elif kind == "SUBSCRIBE":
        packet = Subscribe(f.pop("packet_id"), tuple((t, q) for t, q in f.pop("subscriptions")))
    elif kind == "SUBACK":
        packet = SubAck(f.pop("packet_id"), tuple(f.pop("return_codes")))
    elif kind == "UNSUBSCRIBE":
        packet = Unsubscribe(f.pop("packet_id"), tuple(f.pop("topic_filters")))
    elif kind in ("PUBACK", "PUBREC", "PUBREL", "PUBCOMP", "UNSUBACK"):
        packet = cls(f.pop("packet_id"))
    else:
        packet = cls()
    assert not f, f"vector fields not understood by this test: {sorted(f)}"
    return packet


def assert_same_value(actual: Any, expected: Any, where: str) -> None:
    """Equal *and* of the same type, recursively (``True`` is not ``1``)."""
    assert type(actual) is type(expected), (
        f"{where}: type {type(actual).__name__}, expected {type(expected).__name__}"
    )
    if isinstance(expected, tuple):
        assert len(actual) == len(expected), f"{where}: {actual!r} != {expected!r}"
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            assert_same_value(a, e, f"{where}[{i}]")
    elif hasattr(expected, "__match_args__"):  # a packet (or Will)
        assert_fields_equal(actual, expected, where)
    else:
        assert actual == expected, f"{where}: {actual!r} != {expected!r}"


def assert_fields_equal(actual: Any, expected: Any, where: str = "") -> None:
    assert type(actual) is type(expected), (
        f"{where}: decoded {type(actual).__name__}, expected {type(expected).__name__}"
    )
    for name in expected.__match_args__:
        assert_same_value(
            getattr(actual, name),
            getattr(expected, name),
            f"{where}.{name}" if where else name,
        )
    assert actual == expected


def allowed_rules(v: dict[str, Any]) -> set[str]:
    rules = set(_RULE_RE.findall(v["ref"])) | set(_RULE_RE.findall(v["ref_decoder"]))
    return rules | EXTRA_RULES.get(v["id"], set())


def check_rule_in_message(exc: Exception, rule: str | None) -> None:
    assert rule, f"error without a rule: {exc}"
    assert f"[{rule}]" in str(exc), f"message does not cite [{rule}]: {exc}"


def check_packet_name(exc: Any, data: bytes) -> None:
    ptype = data[0] >> 4
    if ptype in NAMES:
        assert exc.packet == NAMES[ptype], f"packet {exc.packet!r}, expected {NAMES[ptype]}"
        assert NAMES[ptype] in str(exc)
    else:
        # Reserved types 0 and 15: no real packet may be claimed.
        assert exc.packet not in NAMES.values()


def feed_bytewise(reader: PacketReader, data: bytes) -> list[Any]:
    out: list[Any] = []
    for i in range(len(data)):
        out.extend(reader.feed(data[i : i + 1]))
    return out


# --------------------------------------------------------------------------- valid


def test_vector_file_is_complete() -> None:
    """Guards the parametrisation: the reference lists 35 + 4 + 58 + 8 + 36 vectors."""
    assert len(VALID) == 35
    assert len(SEMANTIC) == 4
    assert len(MALFORMED) == 58
    assert len(REMAINING_LENGTH) == 8
    assert len(VECTORS["topic_match"]) == 36
    assert len({v["id"] for v in VALID + MALFORMED}) == 35 + 58


@pytest.mark.parametrize(("v", "role"), VALID_CASES)
def test_valid_whole(v: dict[str, Any], role: str) -> None:
    data = unhex(v["hex"])
    reader = PacketReader(role)  # type: ignore[arg-type]
    out = reader.feed(data)
    assert len(out) == 1, out
    assert_fields_equal(out[0], expected_packet(v["fields"]))
    assert reader.buffered == 0


@pytest.mark.parametrize("v", VALID, ids=vector_id)
def test_valid_encode_is_byte_exact(v: dict[str, Any]) -> None:
    data = unhex(v["hex"])
    assert encode(expected_packet(v["fields"])) == data
    role = ROLES[v["dir"]][0]
    (decoded,) = PacketReader(role).feed(data)  # type: ignore[arg-type]
    assert encode(decoded) == data


@pytest.mark.parametrize(("v", "role"), VALID_CASES)
def test_valid_byte_by_byte(v: dict[str, Any], role: str) -> None:
    data = unhex(v["hex"])
    reader = PacketReader(role)  # type: ignore[arg-type]
    for i in range(len(data) - 1):
        assert reader.feed(data[i : i + 1]) == [], f"packet completed early at byte {i}"
        assert reader.buffered == i + 1
    out = reader.feed(data[-1:])
    assert len(out) == 1
    assert_fields_equal(out[0], expected_packet(v["fields"]))
    assert reader.buffered == 0


@pytest.mark.parametrize(("v", "role"), VALID_CASES)
def test_valid_with_trailing_packet(v: dict[str, Any], role: str) -> None:
    data = unhex(v["hex"])
    reader = PacketReader(role)  # type: ignore[arg-type]
    out = reader.feed(data + TRAILER[role])
    assert len(out) == 2, out
    assert_fields_equal(out[0], expected_packet(v["fields"]))
    assert out[1] == TRAILER_PACKET[role]
    assert reader.buffered == 0


@pytest.mark.parametrize("cut", [1, 2, 5, len(PARTIAL_SOURCE) - 1])
@pytest.mark.parametrize(("v", "role"), VALID_CASES)
def test_valid_with_trailing_partial_packet(v: dict[str, Any], role: str, cut: int) -> None:
    data = unhex(v["hex"])
    reader = PacketReader(role)  # type: ignore[arg-type]
    out = reader.feed(data + PARTIAL_SOURCE[:cut])
    assert len(out) == 1, out
    assert_fields_equal(out[0], expected_packet(v["fields"]))
    assert reader.buffered == cut
    assert reader.feed(PARTIAL_SOURCE[cut:]) == [PARTIAL_PACKET]
    assert reader.buffered == 0


@pytest.mark.parametrize(("v", "role"), VALID_CASES)
def test_valid_truncated_prefixes_need_more_data(v: dict[str, Any], role: str) -> None:
    data = unhex(v["hex"])
    for k in range(len(data)):
        reader = PacketReader(role)  # type: ignore[arg-type]
        assert reader.feed(data[:k]) == [], f"prefix of {k} bytes produced a packet"
        assert reader.buffered == k
        # The rest completes the packet: the prefix was kept, not dropped.
        out = reader.feed(data[k:])
        assert len(out) == 1
        assert_fields_equal(out[0], expected_packet(v["fields"]))


@pytest.mark.parametrize(("v", "role"), VALID_CASES)
def test_valid_accepts_bytearray_and_memoryview(v: dict[str, Any], role: str) -> None:
    data = unhex(v["hex"])
    expected = expected_packet(v["fields"])
    for chunk in (bytearray(data), memoryview(data)):
        reader = PacketReader(role)  # type: ignore[arg-type]
        assert reader.feed(chunk) == [expected]


# --------------------------------------------------------------------------- malformed


@pytest.mark.parametrize(("v", "role"), MALFORMED_CASES)
def test_malformed_whole(v: dict[str, Any], role: str) -> None:
    data = unhex(v["hex"])
    reader = PacketReader(role)  # type: ignore[arg-type]
    with pytest.raises(RemoteProtocolError) as info:
        reader.feed(data)
    exc = info.value
    if role in ROLES[v["dir"]]:
        assert isinstance(exc, MalformedPacket), f"{type(exc).__name__}: {exc}"
        assert exc.rule in allowed_rules(v), f"rule {exc.rule!r} not in {allowed_rules(v)}"
    else:
        assert exc.rule == "MQTT-4.8.0-1", exc
    check_rule_in_message(exc, exc.rule)
    check_packet_name(exc, data)
    assert exc.packets == ()


@pytest.mark.parametrize(("v", "role"), MALFORMED_CASES)
def test_malformed_byte_by_byte(v: dict[str, Any], role: str) -> None:
    data = unhex(v["hex"])
    whole_reader = PacketReader(role)  # type: ignore[arg-type]
    with pytest.raises(RemoteProtocolError) as whole:
        whole_reader.feed(data)
    reader = PacketReader(role)  # type: ignore[arg-type]
    for i in range(len(data)):
        try:
            out = reader.feed(data[i : i + 1])
        except RemoteProtocolError as exc:
            assert type(exc) is type(whole.value)
            assert exc.rule == whole.value.rule
            assert exc.packet == whole.value.packet
            assert exc.packets == ()
            check_rule_in_message(exc, exc.rule)
            break
        assert out == [], f"packet invented at byte {i}: {out}"
    else:
        pytest.fail("no error after the last byte")


@pytest.mark.parametrize(("v", "role"), MALFORMED_CASES)
def test_reader_is_dead_after_an_error(v: dict[str, Any], role: str) -> None:
    reader = PacketReader(role)  # type: ignore[arg-type]
    with pytest.raises(RemoteProtocolError):
        reader.feed(unhex(v["hex"]))
    # A packet this role would normally accept must not revive the reader.
    with pytest.raises(RemoteProtocolError) as again:
        reader.feed(TRAILER[role])
    assert again.value.packets == ()
    with pytest.raises(RemoteProtocolError):
        reader.feed(b"")
    assert reader.buffered == 0


# --------------------------------------------------------------------------- direction

# c2s-only packets a client-role reader refuses, s2c-only ones a server refuses [MQTT-4.8.0-1].
CLIENT_REFUSES = {
    "CONNECT": "10 0D 00 04 4D 51 54 54 04 02 00 0A 00 01 70",
    "SUBSCRIBE": "82 08 00 01 00 03 61 2F 62 01",
    "UNSUBSCRIBE": "A2 07 00 03 00 03 61 2F 62",
    "PINGREQ": "C0 00",
    "DISCONNECT": "E0 00",
}
SERVER_REFUSES = {
    "CONNACK": "20 02 00 00",
    "SUBACK": "90 03 00 01 01",
    "UNSUBACK": "B0 02 00 03",
    "PINGRESP": "D0 00",
}
DIRECTION_CASES = [
    pytest.param("client", name, hx, id=f"client-{name}") for name, hx in CLIENT_REFUSES.items()
] + [pytest.param("server", name, hx, id=f"server-{name}") for name, hx in SERVER_REFUSES.items()]


@pytest.mark.parametrize(("role", "name", "hx"), DIRECTION_CASES)
def test_wrong_direction_is_a_protocol_error_not_malformed(role: str, name: str, hx: str) -> None:
    data = unhex(hx)
    reader = PacketReader(role)  # type: ignore[arg-type]
    with pytest.raises(RemoteProtocolError) as info:
        reader.feed(data)
    exc = info.value
    assert not isinstance(exc, MalformedPacket)
    assert not isinstance(exc, PacketTooLarge)
    assert exc.packet == name
    assert exc.rule == "MQTT-4.8.0-1"
    check_rule_in_message(exc, exc.rule)
    # The same bytes are fine for the other role.
    other = "server" if role == "client" else "client"
    assert len(PacketReader(other).feed(data)) == 1  # type: ignore[arg-type]


@pytest.mark.parametrize(("role", "name", "hx"), DIRECTION_CASES)
def test_wrong_direction_refused_once_the_fixed_header_arrives(
    role: str, name: str, hx: str
) -> None:
    data = unhex(hx)
    reader = PacketReader(role)  # type: ignore[arg-type]
    with pytest.raises(RemoteProtocolError) as info:
        reader.feed(data[:2])  # first byte + one-byte remaining length
    assert info.value.rule == "MQTT-4.8.0-1"


# One valid example of every type; a reader accepts exactly the table 1.1 directions.
ONE_OF_EACH = {
    "CONNECT": ("c2s", "10 0C 00 04 4D 51 54 54 04 02 00 3C 00 00"),
    "CONNACK": ("s2c", "20 02 00 00"),
    "PUBLISH": ("both", "30 07 00 03 61 2F 62 68 69"),
    "PUBACK": ("both", "40 02 00 01"),
    "PUBREC": ("both", "50 02 12 34"),
    "PUBREL": ("both", "62 02 12 34"),
    "PUBCOMP": ("both", "70 02 FF FF"),
    "SUBSCRIBE": ("c2s", "82 08 00 01 00 03 61 2F 62 01"),
    "SUBACK": ("s2c", "90 03 00 01 01"),
    "UNSUBSCRIBE": ("c2s", "A2 07 00 03 00 03 61 2F 62"),
    "UNSUBACK": ("s2c", "B0 02 00 03"),
    "PINGREQ": ("c2s", "C0 00"),
    "PINGRESP": ("s2c", "D0 00"),
    "DISCONNECT": ("c2s", "E0 00"),
}


@pytest.mark.parametrize("role", ALL_ROLES)
@pytest.mark.parametrize("name", list(ONE_OF_EACH))
def test_direction_table(name: str, role: str) -> None:
    direction, hx = ONE_OF_EACH[name]
    reader = PacketReader(role)  # type: ignore[arg-type]
    if role in ROLES[direction]:
        (packet,) = reader.feed(unhex(hx))
        assert isinstance(packet, CLASSES[name])
    else:
        with pytest.raises(RemoteProtocolError) as info:
            reader.feed(unhex(hx))
        assert type(info.value) is RemoteProtocolError
        assert info.value.packet == name


def test_reader_rejects_unknown_role_and_tiny_limit() -> None:
    with pytest.raises(ValueError):
        PacketReader("broker")  # type: ignore[arg-type]
    # At least 5, so that a partial fixed header always fits under the limit.
    with pytest.raises(ValueError):
        PacketReader("client", 4)
    with pytest.raises(ValueError):
        PacketReader("client", 5.0)  # type: ignore[arg-type]
    assert PacketReader("client", 5).feed(b"\x40\x02\x00\x01") == [PubAck(1)]


# --------------------------------------------------------------------------- remaining length


@pytest.mark.parametrize("row", REMAINING_LENGTH, ids=lambda r: str(r["value"]))
def test_encode_remaining_length_table(row: dict[str, Any]) -> None:
    assert encode_remaining_length(row["value"]) == unhex(row["hex"])


@pytest.mark.parametrize("value", [-1, 268_435_456, 1 << 40])
def test_encode_remaining_length_refuses_out_of_range(value: int) -> None:
    with pytest.raises(LocalProtocolError) as info:
        encode_remaining_length(value)
    assert "[2.2.3]" in str(info.value)


def publish_with_remaining_length(rl: int) -> bytes:
    """A QoS 0 PUBLISH to topic ``t`` whose remaining length is ``rl`` (>= 3)."""
    return b"\x30" + encode_remaining_length(rl) + b"\x00\x01t" + bytes(rl - 3)


# Whole packets up to 2,097,152 + 5 bytes; 268,435,455 only through its header.
PRACTICAL_RL = [r for r in REMAINING_LENGTH if 3 <= r["value"] <= 2_097_152]


@pytest.mark.parametrize("row", PRACTICAL_RL, ids=lambda r: str(r["value"]))
@pytest.mark.parametrize("role", ALL_ROLES)
def test_decode_publish_with_table_remaining_length(row: dict[str, Any], role: str) -> None:
    rl = row["value"]
    rl_bytes = unhex(row["hex"])
    data = publish_with_remaining_length(rl)
    assert data[1 : 1 + len(rl_bytes)] == rl_bytes
    expected = Publish("t", bytes(rl - 3))
    big = len(data)
    assert PacketReader(role, big).feed(data) == [expected]  # type: ignore[arg-type]
    # Header byte by byte, then the body in one piece.
    reader = PacketReader(role, big)  # type: ignore[arg-type]
    for i in range(1 + len(rl_bytes)):
        assert reader.feed(data[i : i + 1]) == []
    assert reader.feed(data[1 + len(rl_bytes) :]) == [expected]
    assert encode(expected) == data


def test_decode_remaining_length_zero() -> None:
    assert REMAINING_LENGTH[0] == {"value": 0, "hex": "00"}
    assert PacketReader("server").feed(b"\xc0\x00") == [PingReq()]


@pytest.mark.parametrize(
    "row", [r for r in REMAINING_LENGTH if r["value"] >= 3], ids=lambda r: str(r["value"])
)
def test_remaining_length_header_against_size_limit(row: dict[str, Any]) -> None:
    """Only the header is fed: the decoded length shows in the size check."""
    header = b"\x30" + unhex(row["hex"])
    total = len(header) + row["value"]
    reader = PacketReader("client", total)
    assert reader.feed(header) == []
    assert reader.buffered == len(header)
    with pytest.raises(PacketTooLarge) as info:
        PacketReader("client", total - 1).feed(header)
    assert f"is {total} bytes" in str(info.value)
    assert info.value.packet == "PUBLISH"


NON_MINIMAL = [
    # (role, bytes, packet): remaining length with a redundant zero continuation.
    pytest.param("server", "C0 80 00", PingReq(), id="pingreq-80-00"),
    pytest.param("client", "D0 80 80 00", PingResp(), id="pingresp-80-80-00"),
    pytest.param("client", "40 82 00 00 01", PubAck(1), id="puback-82-00"),
    pytest.param(
        "server",
        "30 87 00 00 03 61 2F 62 68 69",
        Publish("a/b", b"hi"),
        id="publish-87-00",
    ),
    pytest.param(
        "client",
        "30 87 80 80 00 00 03 61 2F 62 68 69",
        Publish("a/b", b"hi"),
        id="publish-87-80-80-00",
    ),
]


@pytest.mark.parametrize(("role", "hx", "packet"), NON_MINIMAL)
def test_non_minimal_remaining_length_accepted_by_default(role: str, hx: str, packet: Any) -> None:
    data = unhex(hx)
    assert PacketReader(role).feed(data) == [packet]  # type: ignore[arg-type]
    assert feed_bytewise(PacketReader(role), data) == [packet]  # type: ignore[arg-type]
    # The encoder never produces the non-minimal form.
    assert encode(packet) != data
    assert len(encode(packet)) < len(data)


@pytest.mark.parametrize(("role", "hx", "packet"), NON_MINIMAL)
def test_non_minimal_remaining_length_refused_when_strict(role: str, hx: str, packet: Any) -> None:
    data = unhex(hx)
    for feed in ("whole", "bytewise"):
        reader = PacketReader(role, strict_remaining_length=True)  # type: ignore[arg-type]
        with pytest.raises(MalformedPacket) as info:
            if feed == "whole":
                reader.feed(data)
            else:
                feed_bytewise(reader, data)
        assert info.value.rule == "2.2.3"
        check_rule_in_message(info.value, "2.2.3")


def test_strict_mode_accepts_minimal_multibyte_remaining_length() -> None:
    v = by_id("V18")
    data = unhex(v["hex"])
    assert data[1:3] == b"\xcb\x01"
    reader = PacketReader("client", strict_remaining_length=True)
    assert reader.feed(data) == [expected_packet(v["fields"])]
    data_16384 = publish_with_remaining_length(16_384)
    assert PacketReader("server", strict_remaining_length=True).feed(data_16384) == [
        Publish("t", bytes(16_381))
    ]


@pytest.mark.parametrize("strict", [False, True])
@pytest.mark.parametrize("hx", ["30 FF FF FF FF 7F", "30 80 80 80 80 00", "C0 80 80 80 80 01"])
def test_five_byte_remaining_length_refused(hx: str, strict: bool) -> None:
    data = unhex(hx)
    for role in ALL_ROLES:
        if data[0] == 0xC0 and role == "client":
            continue
        with pytest.raises(MalformedPacket) as info:
            PacketReader(
                role,
                1 << 30,
                strict_remaining_length=strict,  # type: ignore[arg-type]
            ).feed(data)
        assert info.value.rule == "2.2.3"
        reader = PacketReader(role, 1 << 30)  # type: ignore[arg-type]
        for i in range(4):
            assert reader.feed(data[i : i + 1]) == []
        with pytest.raises(MalformedPacket):
            reader.feed(data[4:5])  # the 4th length byte still has its continuation bit


# --------------------------------------------------------------------------- size limit


def test_packet_too_large_raised_as_soon_as_the_header_arrives() -> None:
    rl = 10 * 1024 * 1024
    header = b"\x30" + encode_remaining_length(rl)
    assert len(header) == 5
    with pytest.raises(PacketTooLarge) as info:
        PacketReader("client", 1 << 20).feed(header)
    assert info.value.packet == "PUBLISH"
    assert isinstance(info.value, RemoteProtocolError)
    reader = PacketReader("server", 1 << 20)
    for i in range(4):
        assert reader.feed(header[i : i + 1]) == []
    with pytest.raises(PacketTooLarge):
        reader.feed(header[4:5])
    with pytest.raises(RemoteProtocolError):
        reader.feed(b"\x00" * 16)


def publish_of_total_size(total: int) -> bytes:
    """A QoS 0 PUBLISH to ``t`` that is exactly ``total`` bytes long, header included."""
    for rl_len in (1, 2, 3, 4):
        rl = total - 1 - rl_len
        if rl >= 3 and len(encode_remaining_length(rl)) == rl_len:
            return publish_with_remaining_length(rl)
    raise AssertionError(f"no PUBLISH is exactly {total} bytes")


@pytest.mark.parametrize("limit", [16, 200, 16_390])
def test_max_packet_size_counts_the_whole_packet(limit: int) -> None:
    fits = publish_of_total_size(limit)
    assert len(fits) == limit
    (packet,) = PacketReader("client", limit).feed(fits)
    assert isinstance(packet, Publish) and packet.topic == "t"
    assert encode(packet) == fits
    too_big = publish_of_total_size(limit + 1)
    with pytest.raises(PacketTooLarge) as info:
        PacketReader("client", limit).feed(too_big)
    assert f"is {limit + 1} bytes, the limit is {limit}" in str(info.value)


def test_max_packet_size_smallest_limit() -> None:
    reader = PacketReader("client", 5)
    assert reader.feed(b"\xd0\x00\x40\x02\x00\x01\x30\x03\x00\x01t") == [
        PingResp(),
        PubAck(1),
        Publish("t"),
    ]
    with pytest.raises(PacketTooLarge):
        PacketReader("client", 5).feed(b"\x30\x04\x00\x01t")  # announces 6 bytes


# --------------------------------------------------------------------------- streams


def by_id(vid: str) -> dict[str, Any]:
    (v,) = [v for v in VALID + MALFORMED if v["id"] == vid]
    return v


def test_concatenated_v12_v22_v34_yield_three_packets() -> None:
    parts = [by_id(i) for i in ("V12", "V22", "V34")]
    data = b"".join(unhex(v["hex"]) for v in parts)
    expected = [expected_packet(v["fields"]) for v in parts]
    assert PacketReader("client").feed(data) == expected
    assert feed_bytewise(PacketReader("client"), data) == expected
    for a in range(len(data) + 1):
        for b in range(a, len(data) + 1):
            reader = PacketReader("client")
            out = reader.feed(data[:a]) + reader.feed(data[a:b]) + reader.feed(data[b:])
            assert out == expected, (a, b)
            assert reader.buffered == 0


def test_error_carries_packets_decoded_earlier_in_the_same_feed() -> None:
    parts = [by_id(i) for i in ("V12", "V22", "V34")]
    data = b"".join(unhex(v["hex"]) for v in parts)
    # A server refuses PINGRESP; the PUBLISH and PUBACK before it are not lost.
    with pytest.raises(RemoteProtocolError) as info:
        PacketReader("server").feed(data)
    assert info.value.packets == tuple(expected_packet(v["fields"]) for v in parts[:2])

    reader = PacketReader("client")
    assert reader.feed(unhex(by_id("V12")["hex"])) == [expected_packet(by_id("V12")["fields"])]
    with pytest.raises(MalformedPacket) as info2:
        reader.feed(unhex(by_id("V22")["hex"]) + unhex(by_id("M05")["hex"]))
    # Only this call's packets: the PUBLISH came out of the previous call.
    assert info2.value.packets == (PubAck(1),)


def test_error_after_buffered_partial_packet() -> None:
    v14 = unhex(by_id("V14")["hex"])
    reader = PacketReader("server")
    assert reader.feed(v14[:4]) == []
    with pytest.raises(MalformedPacket) as info:
        reader.feed(v14[4:] + unhex(by_id("M12")["hex"]))
    assert info.value.packets == (Publish("a/b", b"hi", qos=1, packet_id=1),)
    assert info.value.rule == "MQTT-3.3.1-4"


# --------------------------------------------------------------------------- semantic


def test_semantic_s01_protocol_level_3_decodes() -> None:
    data = unhex(SEMANTIC["S01"]["hex"])
    (packet,) = PacketReader("server").feed(data)
    assert packet == Connect("p", clean_session=True, keep_alive=10, protocol_level=3)
    assert packet.protocol_level == 3
    assert encode(packet) == data


def test_semantic_s02_empty_client_id_without_clean_session_decodes() -> None:
    data = unhex(SEMANTIC["S02"]["hex"])
    (packet,) = PacketReader("server").feed(data)
    assert packet == Connect("", clean_session=False, keep_alive=10)
    # A server must be able to see it (to answer 0x02); a client must never send it.
    with pytest.raises(LocalProtocolError) as info:
        encode(packet)
    assert info.value.rule == "MQTT-3.1.3-7"


def test_semantic_s04_second_connect_decodes() -> None:
    data = unhex(SEMANTIC["S04"]["hex"])
    assert PacketReader("server").feed(data + data) == [Connect("p", keep_alive=10)] * 2


def test_semantic_s03_as_stored_is_a_truncated_packet() -> None:
    # The S03 vector in the JSON announces Remaining Length 0x08 but only 7 bytes
    # follow, so it is a truncated packet ("need more data"), not a decodable one.
    # If the JSON is ever corrected this assertion fails: update the test then.
    data = unhex(SEMANTIC["S03"]["hex"])
    assert data[1] == 0x08 and len(data) - 2 == 7
    reader = PacketReader("server")
    assert reader.feed(data) == []
    assert reader.buffered == len(data)
    # One more byte completes it: the 8th byte is payload.
    assert reader.feed(b"!") == [Publish("top\x01p", b"!")]


@pytest.mark.parametrize("role", ALL_ROLES)
def test_semantic_s03_intended_packet_control_character_is_legal(role: str) -> None:
    # The packet S03 means: topic "top\x01p" (U+0001 is SHOULD NOT, not MUST NOT, 1.5.3).
    data = unhex("30 07 00 05 74 6F 70 01 70")
    expected = Publish("top\x01p", b"")
    assert PacketReader(role).feed(data) == [expected]  # type: ignore[arg-type]
    assert feed_bytewise(PacketReader(role), data) == [expected]  # type: ignore[arg-type]
    assert encode(expected) == data
