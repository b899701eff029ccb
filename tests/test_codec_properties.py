"""Property tests for the codec (hypothesis, test-only).

* ``decode(encode(p)) == p`` for every packet type, read with each role it may
  travel towards.
* ``encode(decode(b)) == b`` for wire bytes assembled here straight from the
  spec's layouts (not through ``encode``), so a symmetric encoder/decoder bug
  does not cancel out.
* Any chunking of a stream of packets decodes to the same packets.
* Arbitrary or mutated bytes never raise anything but ``RemoteProtocolError``
  (and its subclasses), whole or byte by byte, and both feeds agree.
"""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from iotdev_mqtt import (
    ConnAck,
    Connect,
    Disconnect,
    PacketReader,
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
)

PROPERTY = settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PER_TYPE = settings(PROPERTY, max_examples=200)

# --------------------------------------------------------------------------- fields

# Any code point a string may carry: no U+0000 [MQTT-1.5.3-2], no surrogates [MQTT-1.5.3-1].
string_char = st.characters(exclude_categories=("Cs",), exclude_characters="\x00")
level_char = st.characters(exclude_categories=("Cs",), exclude_characters="\x00/+#")

# Topic levels: unicode, '$', spaces, control characters, U+FEFF, empty levels.
topic_level = st.one_of(
    st.text(level_char, max_size=6),
    st.sampled_from(
        ["", "", " ", "a b", "$SYS", "$", "\ufeff", "A\U0002a6d4", "\x01", "é", "sport", "t"]
    ),
)
topic_name = (
    st.lists(topic_level, min_size=1, max_size=5).map("/".join).filter(bool)
)  # "" alone is not a topic [MQTT-4.7.3-1]


@st.composite
def topic_filter(draw: st.DrawFn) -> str:
    levels = draw(st.lists(st.one_of(topic_level, st.just("+")), min_size=0, max_size=5))
    if draw(st.booleans()) or not levels:
        levels.append("#")
    result = "/".join(levels)
    return result or "#"


packet_id = st.integers(1, 65535)
qos = st.sampled_from([0, 1, 2])
text = st.text(string_char, max_size=12)
small_binary = st.binary(max_size=40)
# Payloads: mostly short; some long enough for 2- and 3-byte remaining lengths.
payload = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda n, b: bytes([b]) * n, st.integers(100, 20_000), st.integers(0, 255)),
)


@st.composite
def publish(draw: st.DrawFn) -> Publish:
    q = draw(qos)
    return Publish(
        topic=draw(topic_name),
        payload=draw(payload),
        qos=q,
        retain=draw(st.booleans()),
        dup=draw(st.booleans()) if q else False,  # [MQTT-3.3.1-2]
        packet_id=draw(packet_id) if q else None,  # [MQTT-2.3.1-5]
    )


@st.composite
def connect(draw: st.DrawFn) -> Connect:
    client_id = draw(st.one_of(st.just(""), text))
    username = draw(st.one_of(st.none(), text))
    will = draw(
        st.one_of(
            st.none(),
            st.builds(Will, topic_name, small_binary, qos, st.booleans()),
        )
    )
    return Connect(
        client_id=client_id,
        clean_session=True if client_id == "" else draw(st.booleans()),  # [MQTT-3.1.3-7]
        keep_alive=draw(st.integers(0, 65535)),
        username=username,
        password=None if username is None else draw(st.one_of(st.none(), small_binary)),
        will=will,
        protocol_level=draw(st.one_of(st.just(4), st.integers(0, 255))),
    )


@st.composite
def connack(draw: st.DrawFn) -> ConnAck:
    rc = draw(st.integers(0, 5))
    return ConnAck(session_present=draw(st.booleans()) if rc == 0 else False, return_code=rc)


STRATEGIES: dict[str, st.SearchStrategy[Any]] = {
    "CONNECT": connect(),
    "CONNACK": connack(),
    "PUBLISH": publish(),
    "PUBACK": st.builds(PubAck, packet_id),
    "PUBREC": st.builds(PubRec, packet_id),
    "PUBREL": st.builds(PubRel, packet_id),
    "PUBCOMP": st.builds(PubComp, packet_id),
    "SUBSCRIBE": st.builds(
        Subscribe,
        packet_id,
        st.lists(st.tuples(topic_filter(), qos), min_size=1, max_size=5).map(tuple),
    ),
    "SUBACK": st.builds(
        SubAck, packet_id, st.lists(st.sampled_from([0, 1, 2, 0x80]), min_size=1).map(tuple)
    ),
    "UNSUBSCRIBE": st.builds(
        Unsubscribe, packet_id, st.lists(topic_filter(), min_size=1, max_size=5).map(tuple)
    ),
    "UNSUBACK": st.builds(UnsubAck, packet_id),
    "PINGREQ": st.just(PingReq()),
    "PINGRESP": st.just(PingResp()),
    "DISCONNECT": st.just(Disconnect()),
}
C2S_ONLY = {"CONNECT", "SUBSCRIBE", "UNSUBSCRIBE", "PINGREQ", "DISCONNECT"}
S2C_ONLY = {"CONNACK", "SUBACK", "UNSUBACK", "PINGRESP"}
ROLES_OF = {
    name: ("server",)
    if name in C2S_ONLY
    else ("client",)
    if name in S2C_ONLY
    else (
        "server",
        "client",
    )
    for name in STRATEGIES
}
TOWARDS = {
    role: st.one_of([STRATEGIES[n] for n in STRATEGIES if role in ROLES_OF[n]])
    for role in ("server", "client")
}
any_packet = st.one_of(list(STRATEGIES.values()))


def assert_identical(actual: Any, expected: Any) -> None:
    """Equal, and of the same types all the way down (``bytearray`` is not ``bytes``)."""
    assert type(actual) is type(expected), (actual, expected)
    if isinstance(expected, tuple):
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected, strict=True):
            assert_identical(a, e)
    elif hasattr(expected, "__match_args__"):  # a packet: compare field by field
        for name in expected.__match_args__:
            assert_identical(getattr(actual, name), getattr(expected, name))
    else:
        assert actual == expected


def test_strategies_cover_all_fourteen_types() -> None:
    assert len(STRATEGIES) == 14
    assert sum(len(r) for r in ROLES_OF.values()) == 5 + 4 + 2 * 5


# --------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("name", list(STRATEGIES))
@PER_TYPE
@given(data=st.data())
def test_decode_encode_round_trip_per_type(name: str, data: st.DataObject) -> None:
    packet = data.draw(STRATEGIES[name])
    wire = encode(packet)
    for role in ROLES_OF[name]:
        reader = PacketReader(role, 1 << 20)  # type: ignore[arg-type]
        (decoded,) = reader.feed(wire)
        assert_identical(decoded, packet)
        assert reader.buffered == 0


@PROPERTY
@given(packet=any_packet)
def test_decode_encode_round_trip(packet: Any) -> None:
    wire = encode(packet)
    name = type(packet).__name__.upper()
    for role in ROLES_OF[name]:
        (decoded,) = PacketReader(role, 1 << 20).feed(wire)  # type: ignore[arg-type]
        assert decoded == packet
        assert type(decoded) is type(packet)
        assert encode(decoded) == wire


# Wire bytes from the spec layouts, independent of ``encode``.


def vbi(n: int) -> bytes:
    out = bytearray()
    while True:
        n, digit = divmod(n, 128)
        out.append(digit | (0x80 if n else 0))
        if not n:
            return bytes(out)


def frame(first: int, body: bytes) -> bytes:
    return bytes([first]) + vbi(len(body)) + body


def mqtt_str(s: str) -> bytes:
    raw = s.encode("utf-8")
    return len(raw).to_bytes(2, "big") + raw


def mqtt_bin(b: bytes) -> bytes:
    return len(b).to_bytes(2, "big") + b


def u16(n: int) -> bytes:
    return n.to_bytes(2, "big")


@st.composite
def raw_connect(draw: st.DrawFn) -> bytes:
    client_id = draw(st.one_of(st.just(""), text))
    clean = 1 if client_id == "" else draw(st.integers(0, 1))
    will = draw(st.booleans())
    will_qos = draw(qos) if will else 0
    will_retain = draw(st.integers(0, 1)) if will else 0
    user = draw(st.booleans())
    pw = draw(st.booleans()) if user else False
    flags = (user << 7) | (pw << 6) | (will_retain << 5) | (will_qos << 3) | (will << 2)
    flags |= clean << 1
    body = mqtt_str("MQTT") + bytes([draw(st.integers(0, 255)), flags])
    body += u16(draw(st.integers(0, 65535))) + mqtt_str(client_id)
    if will:
        body += mqtt_str(draw(topic_name)) + mqtt_bin(draw(small_binary))
    if user:
        body += mqtt_str(draw(text))
    if pw:
        body += mqtt_bin(draw(small_binary))
    return frame(0x10, body)


@st.composite
def raw_connack(draw: st.DrawFn) -> bytes:
    rc = draw(st.integers(0, 5))
    return bytes([0x20, 2, draw(st.integers(0, 1)) if rc == 0 else 0, rc])


@st.composite
def raw_publish(draw: st.DrawFn) -> bytes:
    q = draw(qos)
    dup = draw(st.integers(0, 1)) if q else 0
    first = 0x30 | (dup << 3) | (q << 1) | draw(st.integers(0, 1))
    body = mqtt_str(draw(topic_name)) + (u16(draw(packet_id)) if q else b"") + draw(payload)
    return frame(first, body)


@st.composite
def raw_id_only(draw: st.DrawFn) -> bytes:
    first = draw(st.sampled_from([0x40, 0x50, 0x62, 0x70, 0xB0]))
    return bytes([first, 2]) + u16(draw(packet_id))


@st.composite
def raw_subscribe(draw: st.DrawFn) -> bytes:
    pairs = draw(st.lists(st.tuples(topic_filter(), qos), min_size=1, max_size=5))
    body = u16(draw(packet_id)) + b"".join(mqtt_str(f) + bytes([q]) for f, q in pairs)
    return frame(0x82, body)


@st.composite
def raw_suback(draw: st.DrawFn) -> bytes:
    codes = draw(st.lists(st.sampled_from([0, 1, 2, 0x80]), min_size=1, max_size=300))
    return frame(0x90, u16(draw(packet_id)) + bytes(codes))


@st.composite
def raw_unsubscribe(draw: st.DrawFn) -> bytes:
    filters = draw(st.lists(topic_filter(), min_size=1, max_size=5))
    return frame(0xA2, u16(draw(packet_id)) + b"".join(mqtt_str(f) for f in filters))


RAW_TOWARDS = {
    "server": st.one_of(
        raw_connect(),
        raw_publish(),
        raw_id_only().filter(lambda b: b[0] != 0xB0),
        raw_subscribe(),
        raw_unsubscribe(),
        st.sampled_from([b"\xc0\x00", b"\xe0\x00"]),
    ),
    "client": st.one_of(
        raw_connack(),
        raw_publish(),
        raw_id_only(),
        raw_suback(),
        st.just(b"\xd0\x00"),
    ),
}


@pytest.mark.parametrize("role", ["server", "client"])
@PROPERTY
@given(data=st.data())
def test_encode_decode_round_trip_from_raw_bytes(role: str, data: st.DataObject) -> None:
    wire = data.draw(RAW_TOWARDS[role])
    reader = PacketReader(role, 1 << 20)  # type: ignore[arg-type]
    (packet,) = reader.feed(wire)
    assert encode(packet) == wire


# --------------------------------------------------------------------------- streaming


@st.composite
def stream_and_chunks(draw: st.DrawFn, role: str) -> tuple[list[Any], list[bytes]]:
    packets = draw(st.lists(TOWARDS[role], min_size=1, max_size=6))
    wire = b"".join(encode(p) for p in packets)
    cuts = sorted(draw(st.lists(st.integers(0, len(wire)), max_size=12)))
    bounds = [0, *cuts, len(wire)]
    chunks = [wire[a:b] for a, b in itertools.pairwise(bounds)]
    return packets, chunks


@pytest.mark.parametrize("role", ["server", "client"])
@PROPERTY
@given(data=st.data())
def test_any_chunking_gives_the_same_packets(role: str, data: st.DataObject) -> None:
    packets, chunks = data.draw(stream_and_chunks(role))
    assert b"".join(chunks) == b"".join(encode(p) for p in packets)
    reader = PacketReader(role, 1 << 20)  # type: ignore[arg-type]
    out: list[Any] = []
    fed = 0
    for chunk in chunks:
        out.extend(reader.feed(chunk))
        fed += len(chunk)
        # Everything fed is either in a packet that came out or still buffered.
        assert reader.buffered == fed - sum(len(encode(p)) for p in out)
    assert out == packets
    for decoded, packet in zip(out, packets, strict=True):
        assert_identical(decoded, packet)
    assert reader.buffered == 0


# --------------------------------------------------------------------------- hostile input


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """Valid packets (either direction) with a few bytes changed, cut or inserted."""
    packets = draw(st.lists(any_packet, min_size=1, max_size=3))
    wire = bytearray(b"".join(encode(p) for p in packets))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["set", "insert", "delete", "truncate", "flip"]))
        i = draw(st.integers(0, max(len(wire) - 1, 0)))
        if op == "set" and wire:
            wire[i] = draw(st.integers(0, 255))
        elif op == "flip" and wire:
            wire[i] ^= 1 << draw(st.integers(0, 7))
        elif op == "insert":
            wire[i:i] = draw(st.binary(min_size=1, max_size=4))
        elif op == "delete" and wire:
            del wire[i]
        elif op == "truncate":
            del wire[i:]
    return bytes(wire)


hostile = st.one_of(
    st.binary(max_size=64),
    # a plausible first byte, then anything
    st.builds(lambda a, b: a + b, st.binary(min_size=1, max_size=1), st.binary(max_size=40)),
    mutated(),
)


def feed_whole(role: str, data: bytes, limit: int, strict: bool) -> tuple[list[Any], Any]:
    reader = PacketReader(role, limit, strict_remaining_length=strict)  # type: ignore[arg-type]
    try:
        return reader.feed(data), None
    except RemoteProtocolError as exc:
        with pytest.raises(RemoteProtocolError):
            reader.feed(b"\xc0\x00")
        return list(exc.packets), exc


def feed_bytes(role: str, data: bytes, limit: int, strict: bool) -> tuple[list[Any], Any]:
    reader = PacketReader(role, limit, strict_remaining_length=strict)  # type: ignore[arg-type]
    out: list[Any] = []
    for i in range(len(data)):
        try:
            out.extend(reader.feed(data[i : i + 1]))
        except RemoteProtocolError as exc:
            assert exc.packets == ()
            return out, exc
    return out, None


@pytest.mark.parametrize("role", ["server", "client"])
@PROPERTY
@given(
    data=hostile,
    limit=st.sampled_from([5, 16, 64, 1 << 20]),
    strict=st.booleans(),
)
def test_hostile_bytes_only_raise_remote_protocol_errors(
    role: str, data: bytes, limit: int, strict: bool
) -> None:
    # Anything but RemoteProtocolError escapes and fails the test.
    whole_packets, whole_exc = feed_whole(role, data, limit, strict)
    byte_packets, byte_exc = feed_bytes(role, data, limit, strict)
    # Whole and byte-by-byte feeding agree on packets and on the error.
    assert byte_packets == whole_packets
    assert type(byte_exc) is type(whole_exc)
    if whole_exc is not None:
        assert byte_exc.rule == whole_exc.rule
        assert byte_exc.packet == whole_exc.packet
    # Whatever was decoded is a legal packet: it re-encodes and decodes again.
    # (Except an empty ClientId with CleanSession 0: a server decodes it to
    # answer 0x02, but a client may never send it [MQTT-3.1.3-7].)
    for packet in whole_packets:
        if isinstance(packet, Connect) and packet.client_id == "" and not packet.clean_session:
            continue
        again = PacketReader(role, 1 << 20).feed(encode(packet))  # type: ignore[arg-type]
        assert again == [packet]
