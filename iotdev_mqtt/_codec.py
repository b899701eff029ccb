"""Pure MQTT 3.1.1 encoding and incremental, role-aware decoding.

``encode(packet)`` checks every rule that binds a sender and returns the bytes;
it raises ``LocalProtocolError`` naming packet, field and rule.

``PacketReader`` takes bytes as they arrive (any split, down to one byte at a
time) and returns whole packets.  It checks every rule that binds a receiver and
raises ``MalformedPacket``, ``PacketTooLarge`` or, for a well-formed packet that
may not travel towards this role, ``RemoteProtocolError``.  After an error the
reader is dead: every further ``feed()`` raises again.

Parsing is linear: a complete packet is parsed straight out of the caller's
``bytes`` when nothing is buffered; otherwise input is appended to one
``bytearray`` and consumed from the front once per call.  The fixed header is
checked (type, flags, direction, size limit, fixed lengths) as soon as it has
arrived, before the body, so an oversize or impossible packet is refused without
buffering it.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Literal

from ._errors import LocalProtocolError, MalformedPacket, PacketTooLarge, RemoteProtocolError
from ._fast import fast_constructor
from ._packets import (
    ConnAck,
    Connect,
    Disconnect,
    Packet,
    PingReq,
    PingResp,
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
)
from ._topics import filter_levels_problem, string_problem, topic_filter_problem, topic_name_problem

__all__ = ["MAX_REMAINING_LENGTH", "PacketReader", "encode", "encode_remaining_length"]

Role = Literal["client", "server"]

MAX_REMAINING_LENGTH = 268_435_455
DEFAULT_MAX_PACKET_SIZE = 1 << 20

_NAMES = (
    "reserved type 0",
    "CONNECT",
    "CONNACK",
    "PUBLISH",
    "PUBACK",
    "PUBREC",
    "PUBREL",
    "PUBCOMP",
    "SUBSCRIBE",
    "SUBACK",
    "UNSUBSCRIBE",
    "UNSUBACK",
    "PINGREQ",
    "PINGRESP",
    "DISCONNECT",
    "reserved type 15",
)
# Required fixed-header flags per type (None: PUBLISH, checked on its own).
_FLAGS: tuple[int | None, ...] = (0, 0, 0, None, 0, 0, 2, 0, 2, 0, 2, 0, 0, 0, 0, 0)
_FLAG_RULE = {6: "MQTT-3.6.1-1", 8: "MQTT-3.8.1-1", 10: "MQTT-3.10.1-1", 14: "MQTT-3.14.1-1"}
# Exact remaining lengths where 3.1.1 fixes them.
_FIXED_RL: tuple[int | None, ...] = (
    None, None, 2, None, 2, 2, 2, 2, None, None, None, 2, 0, 0, 0, None
)
# Which types a reader of each role accepts (what the *other* side sends).
_FROM_CLIENT = tuple(t in {1, 3, 4, 5, 6, 7, 8, 10, 12, 14} for t in range(16))
_FROM_SERVER = tuple(t in {2, 3, 4, 5, 6, 7, 9, 11, 13} for t in range(16))

_RL1 = [bytes((i,)) for i in range(128)]
_pack_bb = struct.Struct(">BB").pack
_pack_bbb = struct.Struct(">BBB").pack
_pack_bbh = struct.Struct(">BBH").pack


# --------------------------------------------------------------------------- encode


def encode_remaining_length(value: int) -> bytes:
    """The variable byte integer for ``value`` in its minimal form (2.2.3).

    Raises:
        LocalProtocolError: ``value`` is negative or above 268,435,455.
    """
    if value < 128:
        if value < 0:
            raise LocalProtocolError("remaining length is negative", rule="2.2.3")
        return _RL1[value]
    if value > MAX_REMAINING_LENGTH:
        raise LocalProtocolError(
            f"remaining length {value} exceeds {MAX_REMAINING_LENGTH}", rule="2.2.3"
        )
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _fail(packet: str, field: str, problem: tuple[str, str]) -> LocalProtocolError:
    return LocalProtocolError(problem[0], packet=packet, field=field, rule=problem[1])


def _enc_str(value: object, packet: str, field: str) -> bytes:
    if type(value) is not str:
        raise LocalProtocolError(
            f"must be str, not {type(value).__name__}", packet=packet, field=field
        )
    problem = string_problem(value)
    if problem:
        raise _fail(packet, field, problem)
    raw = value.encode("utf-8")
    return len(raw).to_bytes(2, "big") + raw


def _enc_bin(value: object, packet: str, field: str) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise LocalProtocolError(
            f"must be bytes, not {type(value).__name__}", packet=packet, field=field
        )
    raw = bytes(value)
    if len(raw) > 65535:
        raise LocalProtocolError(
            f"is {len(raw)} bytes long, the limit is 65535", packet=packet, field=field,
            rule="1.5.6",
        )
    return len(raw).to_bytes(2, "big") + raw


def _check_pid(pid: object, packet: str) -> int:
    if type(pid) is not int or not 0 < pid < 65536:
        raise LocalProtocolError(
            f"must be an int from 1 to 65535, got {pid!r}",
            packet=packet,
            field="packet identifier",
            rule="MQTT-2.3.1-1",
        )
    return pid


def _check_qos(qos: object, packet: str, field: str, rule: str) -> int:
    if isinstance(qos, bool) or not isinstance(qos, int):
        raise LocalProtocolError(
            f"must be the int 0, 1 or 2, got {qos!r}", packet=packet, field=field
        )
    if not 0 <= qos <= 2:
        raise LocalProtocolError(
            f"must be 0, 1 or 2, got {qos!r}", packet=packet, field=field, rule=rule
        )
    return int(qos)


def _frame(first: int, body: bytes) -> bytes:
    n = len(body)
    if n < 128:
        return bytes((first, n)) + body
    return bytes((first,)) + encode_remaining_length(n) + body


def _enc_connect(p: Connect) -> bytes:
    name = "CONNECT"
    if p.protocol_name != "MQTT":
        raise LocalProtocolError(
            f"must be 'MQTT', got {p.protocol_name!r}", packet=name, field="protocol name",
            rule="MQTT-3.1.2-1",
        )
    if type(p.protocol_level) is not int or not 0 <= p.protocol_level <= 255:
        raise LocalProtocolError("must be a byte", packet=name, field="protocol level")
    ka = p.keep_alive
    if type(ka) is not int or not 0 <= ka <= 65535:
        raise LocalProtocolError(
            f"must be an int from 0 to 65535, got {ka!r}", packet=name, field="keep alive",
            rule="3.1.2.10",
        )
    flags = 0x02 if p.clean_session else 0
    if p.client_id == "" and not p.clean_session:
        raise LocalProtocolError(
            "an empty client identifier needs clean session = 1", packet=name,
            field="client identifier", rule="MQTT-3.1.3-7",
        )
    payload = [_enc_str(p.client_id, name, "client identifier")]
    will = p.will
    if will is not None:
        if not isinstance(will, Will):
            raise LocalProtocolError("must be a Will", packet=name, field="will")
        if type(will.topic) is not str:
            raise LocalProtocolError(
                f"must be str, not {type(will.topic).__name__}", packet=name, field="will topic"
            )
        problem = topic_name_problem(will.topic)
        if problem:
            raise _fail(name, "will topic", problem)
        wqos = _check_qos(will.qos, name, "will QoS", "MQTT-3.1.2-14")
        flags |= 0x04 | (wqos << 3) | (0x20 if will.retain else 0)
        payload.append(_enc_str(will.topic, name, "will topic"))
        payload.append(_enc_bin(will.payload, name, "will message"))
    if p.username is not None:
        flags |= 0x80
        payload.append(_enc_str(p.username, name, "user name"))
    if p.password is not None:
        if p.username is None:
            raise LocalProtocolError(
                "a password needs a user name", packet=name, field="password",
                rule="MQTT-3.1.2-22",
            )
        flags |= 0x40
        payload.append(_enc_bin(p.password, name, "password"))
    head = b"\x00\x04MQTT" + bytes((p.protocol_level, flags)) + ka.to_bytes(2, "big")
    return _frame(0x10, head + b"".join(payload))


def _enc_connack(p: ConnAck) -> bytes:
    rc = p.return_code
    if isinstance(rc, bool) or not isinstance(rc, int) or not 0 <= rc <= 5:
        raise LocalProtocolError(
            f"must be 0 to 5, got {rc!r}", packet="CONNACK", field="return code", rule="3.2.2.3"
        )
    if p.session_present and rc:
        raise LocalProtocolError(
            "session present must be 0 with a non-zero return code", packet="CONNACK",
            field="session present", rule="MQTT-3.2.2-4",
        )
    return bytes((0x20, 2, 1 if p.session_present else 0, rc))


# Validated topic names, encoded with their length prefix.  Telemetry reuses a
# handful of topics, so the checks and the UTF-8 encoding run once per topic.
_TOPIC_PREFIXED: dict[str, bytes] = {}
_TOPIC_DECODED: dict[bytes, str] = {}
_TOPIC_CACHE_MAX = 512


def _prefixed_topic(topic: object) -> bytes:
    if type(topic) is not str:
        raise LocalProtocolError(
            f"must be str, not {type(topic).__name__}", packet="PUBLISH", field="topic name"
        )
    problem = topic_name_problem(topic)
    if problem:
        raise _fail("PUBLISH", "topic name", problem)
    raw = topic.encode("utf-8")
    head = len(raw).to_bytes(2, "big") + raw
    if len(_TOPIC_PREFIXED) >= _TOPIC_CACHE_MAX:
        _TOPIC_PREFIXED.clear()
    _TOPIC_PREFIXED[topic] = head
    return head


def publish_bytes(
    topic: str, payload: bytes, qos: int, retain: bool, dup: bool, pid: int
) -> bytes:
    """PUBLISH bytes from fields the engine has already validated (``pid`` is
    ignored at QoS 0)."""
    try:
        head = _TOPIC_PREFIXED[topic]
    except KeyError:
        head = _prefixed_topic(topic)
    first = 0x30 | (qos << 1) | (0x08 if dup else 0) | (0x01 if retain else 0)
    if qos:
        rl = len(head) + 2 + len(payload)
        mid = pid.to_bytes(2, "big")
    else:
        rl = len(head) + len(payload)
        mid = b""
    if rl < 128:
        return b"".join((_pack_bb(first, rl), head, mid, payload))
    if rl < 16384:
        return b"".join((_pack_bbb(first, (rl & 0x7F) | 0x80, rl >> 7), head, mid, payload))
    return b"".join((bytes((first,)), encode_remaining_length(rl), head, mid, payload))


def _enc_publish(p: Publish) -> bytes:
    topic = p.topic
    try:
        head = _TOPIC_PREFIXED[topic]
    except (KeyError, TypeError):
        head = _prefixed_topic(topic)
    payload = p.payload
    if type(payload) is not bytes:
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise LocalProtocolError(
                f"must be bytes, not {type(payload).__name__}", packet="PUBLISH", field="payload"
            )
        payload = bytes(payload)
    qos = p.qos
    if type(qos) is not int:
        qos = _check_qos(qos, "PUBLISH", "QoS", "MQTT-3.3.1-4")
    if qos == 0:
        if p.dup:
            raise LocalProtocolError(
                "DUP must be 0 at QoS 0", packet="PUBLISH", field="DUP", rule="MQTT-3.3.1-2"
            )
        if p.packet_id is not None:
            raise LocalProtocolError(
                "a QoS 0 PUBLISH has no packet identifier", packet="PUBLISH",
                field="packet identifier", rule="MQTT-2.3.1-5",
            )
        first = 0x31 if p.retain else 0x30
        rl = len(head) + len(payload)
        mid = b""
    else:
        if qos != 1 and qos != 2:
            _check_qos(qos, "PUBLISH", "QoS", "MQTT-3.3.1-4")
        pid = p.packet_id
        if type(pid) is not int or not 0 < pid < 65536:
            _check_pid(pid, "PUBLISH")
        first = 0x30 | (qos << 1) | (0x08 if p.dup else 0) | (0x01 if p.retain else 0)
        rl = len(head) + 2 + len(payload)
        mid = pid.to_bytes(2, "big")  # type: ignore[union-attr]
    if rl < 128:
        return b"".join((_pack_bb(first, rl), head, mid, payload))
    if rl < 16384:
        return b"".join((_pack_bbb(first, (rl & 0x7F) | 0x80, rl >> 7), head, mid, payload))
    return b"".join((bytes((first,)), encode_remaining_length(rl), head, mid, payload))


_IdOnly = PubAck | PubRec | PubRel | PubComp | UnsubAck


def _ack_encoder(first: int, name: str) -> Callable[[_IdOnly], bytes]:
    def enc(p: _IdOnly) -> bytes:
        pid = p.packet_id
        if type(pid) is not int or not 0 < pid < 65536:
            _check_pid(pid, name)
        return _pack_bbh(first, 2, pid)

    return enc


def _enc_subscribe(p: Subscribe) -> bytes:
    name = "SUBSCRIBE"
    pid = _check_pid(p.packet_id, name)
    if not p.subscriptions:
        raise LocalProtocolError(
            "needs at least one topic filter", packet=name, field="payload", rule="MQTT-3.8.3-3"
        )
    parts = [pid.to_bytes(2, "big")]
    for item in p.subscriptions:
        try:
            topic_filter, qos = item
        except (TypeError, ValueError):
            raise LocalProtocolError(
                f"each subscription is (topic filter, qos), got {item!r}", packet=name,
                field="payload",
            ) from None
        _filter_or_fail(topic_filter, name)
        parts.append(_enc_str(topic_filter, name, "topic filter"))
        parts.append(bytes((_check_qos(qos, name, "requested QoS", "MQTT-3-8.3-4"),)))
    return _frame(0x82, b"".join(parts))


def _filter_or_fail(topic_filter: object, name: str) -> None:
    if type(topic_filter) is not str:
        raise LocalProtocolError(
            f"must be str, not {type(topic_filter).__name__}", packet=name, field="topic filter"
        )
    problem = topic_filter_problem(topic_filter)
    if problem:
        raise _fail(name, "topic filter", problem)


def _enc_suback(p: SubAck) -> bytes:
    pid = _check_pid(p.packet_id, "SUBACK")
    if not p.return_codes:
        raise LocalProtocolError(
            "needs one return code per filter", packet="SUBACK", field="return codes",
            rule="MQTT-3.8.4-5",
        )
    for code in p.return_codes:
        if isinstance(code, bool) or not isinstance(code, int) or code not in (0, 1, 2, 0x80):
            raise LocalProtocolError(
                f"must be 0x00, 0x01, 0x02 or 0x80, got {code!r}", packet="SUBACK",
                field="return code", rule="MQTT-3.9.3-2",
            )
    return _frame(0x90, pid.to_bytes(2, "big") + bytes(int(c) for c in p.return_codes))


def _enc_unsubscribe(p: Unsubscribe) -> bytes:
    name = "UNSUBSCRIBE"
    pid = _check_pid(p.packet_id, name)
    if not p.topic_filters or isinstance(p.topic_filters, str):
        raise LocalProtocolError(
            "needs a non-empty tuple of topic filters", packet=name, field="payload",
            rule="MQTT-3.10.3-2",
        )
    parts = [pid.to_bytes(2, "big")]
    for topic_filter in p.topic_filters:
        _filter_or_fail(topic_filter, name)
        parts.append(_enc_str(topic_filter, name, "topic filter"))
    return _frame(0xA2, b"".join(parts))


_ENCODERS: dict[type, Callable[..., bytes]] = {
    Connect: _enc_connect,
    ConnAck: _enc_connack,
    Publish: _enc_publish,
    PubAck: _ack_encoder(0x40, "PUBACK"),
    PubRec: _ack_encoder(0x50, "PUBREC"),
    PubRel: _ack_encoder(0x62, "PUBREL"),
    PubComp: _ack_encoder(0x70, "PUBCOMP"),
    Subscribe: _enc_subscribe,
    SubAck: _enc_suback,
    Unsubscribe: _enc_unsubscribe,
    UnsubAck: _ack_encoder(0xB0, "UNSUBACK"),
    PingReq: lambda p: b"\xc0\x00",
    PingResp: lambda p: b"\xd0\x00",
    Disconnect: lambda p: b"\xe0\x00",
}


def encode(packet: Packet) -> bytes:
    """Encode one control packet.

    Args:
        packet: any of the fourteen packet dataclasses.

    Returns:
        The packet's bytes, fixed header included, remaining length minimal.

    Raises:
        LocalProtocolError: the packet breaks a rule that binds its sender; the
            message names the packet, the field and the rule.
    """
    kind = type(packet)
    if kind is Publish:
        return _enc_publish(packet)  # type: ignore[arg-type]
    enc = _ENCODERS.get(kind)
    if enc is None:
        raise LocalProtocolError(f"cannot encode {kind.__name__!r}: not an MQTT packet")
    result: bytes = enc(packet)
    return result


# --------------------------------------------------------------------------- decode

Buffer = bytes | bytearray


def _bad(packet: str, field: str, reason: str, rule: str) -> MalformedPacket:
    return MalformedPacket(reason, packet=packet, field=field, rule=rule)


def _read_str(buf: Buffer, p: int, end: int, packet: str, field: str) -> tuple[str, int]:
    if p + 2 > end:
        raise _bad(packet, field, "missing (the packet ends first)", "1.5.3")
    q = p + 2 + ((buf[p] << 8) | buf[p + 1])
    if q > end:
        raise _bad(packet, field, "string length runs past the remaining length", "1.5.3")
    try:
        value = str(buf[p + 2 : q], "utf-8")
    except UnicodeDecodeError:
        raise _bad(packet, field, "is not well-formed UTF-8", "MQTT-1.5.3-1") from None
    if "\x00" in value:
        raise _bad(packet, field, "contains U+0000", "MQTT-1.5.3-2")
    return value, q


def _read_bin(buf: Buffer, p: int, end: int, packet: str, field: str) -> tuple[bytes, int]:
    if p + 2 > end:
        raise _bad(packet, field, "missing (the packet ends first)", "1.5.6")
    q = p + 2 + ((buf[p] << 8) | buf[p + 1])
    if q > end:
        raise _bad(packet, field, "length runs past the remaining length", "1.5.6")
    return bytes(buf[p + 2 : q]), q


def _read_pid(buf: Buffer, p: int, end: int, packet: str) -> int:
    if p + 2 > end:
        raise _bad(packet, "packet identifier", "missing", "2.3.1")
    pid = (buf[p] << 8) | buf[p + 1]
    if not pid:
        raise _bad(packet, "packet identifier", "must not be 0", "MQTT-2.3.1-1")
    return pid


def _dec_connect(flags: int, buf: Buffer, p: int, end: int) -> Connect:
    name = "CONNECT"
    proto, p = _read_str(buf, p, end, name, "protocol name")
    if proto != "MQTT":
        raise _bad(name, "protocol name", f"must be 'MQTT', got {proto!r}", "MQTT-3.1.2-1")
    if p + 4 > end:
        raise _bad(name, "variable header", "is truncated", "3.1.2")
    level = buf[p]
    cflags = buf[p + 1]
    keep_alive = (buf[p + 2] << 8) | buf[p + 3]
    p += 4
    if cflags & 0x01:
        raise _bad(name, "connect flags", "reserved bit 0 must be 0", "MQTT-3.1.2-3")
    will_flag = cflags & 0x04
    will_qos = (cflags >> 3) & 3
    will_retain = cflags & 0x20
    if not will_flag:
        if will_qos:
            raise _bad(name, "will QoS", "must be 0 without the will flag", "MQTT-3.1.2-13")
        if will_retain:
            raise _bad(name, "will retain", "must be 0 without the will flag", "MQTT-3.1.2-15")
    elif will_qos == 3:
        raise _bad(name, "will QoS", "must not be 3", "MQTT-3.1.2-14")
    user_flag = cflags & 0x80
    pass_flag = cflags & 0x40
    if pass_flag and not user_flag:
        raise _bad(name, "password flag", "set without the user name flag", "MQTT-3.1.2-22")
    if p >= end:
        raise _bad(name, "client identifier", "missing", "MQTT-3.1.3-3")
    client_id, p = _read_str(buf, p, end, name, "client identifier")
    will = None
    if will_flag:
        if p >= end:
            raise _bad(name, "will topic", "missing with the will flag set", "MQTT-3.1.2-9")
        wtopic, p = _read_str(buf, p, end, name, "will topic")
        problem = topic_name_problem(wtopic)
        if problem:
            raise _bad(name, "will topic", *problem)
        if p >= end:
            raise _bad(name, "will message", "missing with the will flag set", "MQTT-3.1.2-9")
        wmsg, p = _read_bin(buf, p, end, name, "will message")
        will = Will(wtopic, wmsg, will_qos, bool(will_retain))
    username = None
    password = None
    if user_flag:
        if p >= end:
            raise _bad(name, "user name", "missing with the user name flag set", "MQTT-3.1.2-19")
        username, p = _read_str(buf, p, end, name, "user name")
    if pass_flag:
        if p >= end:
            raise _bad(name, "password", "missing with the password flag set", "MQTT-3.1.2-21")
        password, p = _read_bin(buf, p, end, name, "password")
    if p != end:
        if not user_flag:
            raise _bad(name, "payload", "has bytes after the last field (user name flag is 0)",
                       "MQTT-3.1.2-18")
        if not pass_flag:
            raise _bad(name, "payload", "has bytes after the last field (password flag is 0)",
                       "MQTT-3.1.2-20")
        raise _bad(name, "payload", "has bytes after the password", "MQTT-3.1.3-1")
    return Connect(
        client_id, bool(cflags & 0x02), keep_alive, username, password, will, proto, level
    )


def _dec_connack(flags: int, buf: Buffer, p: int, end: int) -> ConnAck:
    ack, rc = buf[p], buf[p + 1]
    if ack & 0xFE:
        raise _bad("CONNACK", "acknowledge flags", "bits 7-1 are reserved and must be 0", "3.2.2.1")
    if rc > 5:
        raise _bad("CONNACK", "return code", f"{rc} is reserved", "3.2.2.3")
    if ack and rc:
        raise _bad("CONNACK", "session present", "must be 0 with a non-zero return code",
                   "MQTT-3.2.2-4")
    return ConnAck(bool(ack), rc)


_new_publish = fast_constructor(Publish)


def _decode_topic(raw: bytes) -> str:
    """Decode and check a received topic name; cache the valid ones."""
    try:
        topic = str(raw, "utf-8")
    except UnicodeDecodeError:
        raise _bad("PUBLISH", "topic name", "is not well-formed UTF-8", "MQTT-1.5.3-1") from None
    problem = topic_name_problem(topic)
    if problem:
        raise _bad("PUBLISH", "topic name", *problem)
    if len(_TOPIC_DECODED) >= _TOPIC_CACHE_MAX:
        _TOPIC_DECODED.clear()
    _TOPIC_DECODED[raw] = topic
    return topic


def _dec_publish(flags: int, buf: Buffer, p: int, end: int) -> Publish:
    if p + 2 > end:
        raise _bad("PUBLISH", "topic name", "missing (the packet ends first)", "3.3.2.1")
    q = p + 2 + ((buf[p] << 8) | buf[p + 1])
    if q > end:
        raise _bad("PUBLISH", "topic name", "string length runs past the remaining length", "1.5.3")
    raw = buf[p + 2 : q]
    if type(raw) is not bytes:
        raw = bytes(raw)
    topic = _TOPIC_DECODED.get(raw)
    if topic is None:
        topic = _decode_topic(raw)
    qos = (flags >> 1) & 3
    if qos:
        if q + 2 > end:
            raise _bad("PUBLISH", "packet identifier", "missing at QoS > 0", "3.3.2.2")
        pid: int | None = (buf[q] << 8) | buf[q + 1]
        if not pid:
            raise _bad("PUBLISH", "packet identifier", "must not be 0", "MQTT-2.3.1-1")
        q += 2
    else:
        pid = None
    payload = buf[q:end]
    if type(payload) is not bytes:
        payload = bytes(payload)
    return _new_publish(topic, payload, qos, flags & 1 == 1, flags & 8 == 8, pid)


def _pid_decoder(cls: type[PubAck | PubRec | PubRel | PubComp | UnsubAck]) -> Callable[
    [int, Buffer, int, int], Packet
]:
    name = cls.__name__.upper()
    new = fast_constructor(cls)

    def dec(flags: int, buf: Buffer, p: int, end: int) -> Packet:
        pid = (buf[p] << 8) | buf[p + 1]
        if not pid:
            raise _bad(name, "packet identifier", "must not be 0", "MQTT-2.3.1-1")
        return new(pid)  # type: ignore[no-any-return,unused-ignore]

    return dec


def _dec_subscribe(flags: int, buf: Buffer, p: int, end: int) -> Subscribe:
    name = "SUBSCRIBE"
    pid = _read_pid(buf, p, end, name)
    p += 2
    if p >= end:
        raise _bad(name, "payload", "needs at least one topic filter", "MQTT-3.8.3-3")
    subs = []
    while p < end:
        topic_filter, p = _read_str(buf, p, end, name, "topic filter")
        if not topic_filter:
            raise _bad(name, "topic filter", "is empty", "MQTT-4.7.3-1")
        problem = filter_levels_problem(topic_filter)
        if problem:
            raise _bad(name, "topic filter", *problem)
        if p >= end:
            raise _bad(name, "requested QoS", f"missing after filter {topic_filter!r}", "3.8.3")
        qos = buf[p]
        if qos > 2:
            raise _bad(name, "requested QoS", f"byte 0x{qos:02X}: reserved bits set or QoS 3",
                       "MQTT-3-8.3-4")
        subs.append((topic_filter, qos))
        p += 1
    return Subscribe(pid, tuple(subs))


def _dec_suback(flags: int, buf: Buffer, p: int, end: int) -> SubAck:
    pid = _read_pid(buf, p, end, "SUBACK")
    codes = bytes(buf[p + 2 : end])
    if not codes:
        raise _bad("SUBACK", "return codes", "missing (one per filter)", "MQTT-3.8.4-5")
    for code in codes:
        if code not in (0, 1, 2, 0x80):
            raise _bad("SUBACK", "return code", f"0x{code:02X} is not allowed", "MQTT-3.9.3-2")
    return SubAck(pid, tuple(codes))


def _dec_unsubscribe(flags: int, buf: Buffer, p: int, end: int) -> Unsubscribe:
    name = "UNSUBSCRIBE"
    pid = _read_pid(buf, p, end, name)
    p += 2
    if p >= end:
        raise _bad(name, "payload", "needs at least one topic filter", "MQTT-3.10.3-2")
    filters = []
    while p < end:
        topic_filter, p = _read_str(buf, p, end, name, "topic filter")
        if not topic_filter:
            raise _bad(name, "topic filter", "is empty", "MQTT-4.7.3-1")
        problem = filter_levels_problem(topic_filter)
        if problem:
            raise _bad(name, "topic filter", *problem)
        filters.append(topic_filter)
    return Unsubscribe(pid, tuple(filters))


_PINGREQ = PingReq()
_PINGRESP = PingResp()
_DISCONNECT = Disconnect()

_DECODERS: tuple[Callable[[int, Buffer, int, int], Packet] | None, ...] = (
    None,
    _dec_connect,
    _dec_connack,
    _dec_publish,
    _pid_decoder(PubAck),
    _pid_decoder(PubRec),
    _pid_decoder(PubRel),
    _pid_decoder(PubComp),
    _dec_subscribe,
    _dec_suback,
    _dec_unsubscribe,
    _pid_decoder(UnsubAck),
    lambda f, b, p, e: _PINGREQ,
    lambda f, b, p, e: _PINGRESP,
    lambda f, b, p, e: _DISCONNECT,
    None,
)


class PacketReader:
    """Incremental decoder for the packets that travel *towards* ``role``.

    ``role="client"`` reads what a server sends; ``role="server"`` reads what a
    client sends.  A packet type that may not travel in that direction is a
    ``RemoteProtocolError`` [MQTT-4.8.0-1].

    Args:
        role: ``"client"`` or ``"server"``.
        max_packet_size: largest whole packet (fixed header included) accepted,
            at least 5; a bigger one raises ``PacketTooLarge`` as soon as its
            header has arrived, so memory stays bounded by this figure.
        strict_remaining_length: also refuse non-minimal remaining lengths such
            as ``80 00`` (legal in 3.1.1, forbidden in MQTT 5).
    """

    __slots__ = ("_accept", "_buf", "_error", "_max", "_strict", "_table", "role")

    def __init__(
        self,
        role: Role,
        max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
        *,
        strict_remaining_length: bool = False,
    ) -> None:
        if role == "client":
            self._accept = _FROM_SERVER
            self._table = _TABLE_CLIENT
        elif role == "server":
            self._accept = _FROM_CLIENT
            self._table = _TABLE_SERVER
        else:
            raise ValueError(f"role must be 'client' or 'server', got {role!r}")
        if type(max_packet_size) is not int or max_packet_size < 5:
            # >= 5 keeps a partial fixed header (at most 4 bytes) under the limit.
            raise ValueError(f"max_packet_size must be an int >= 5, got {max_packet_size!r}")
        self.role: Role = role
        self._max = max_packet_size
        self._strict = strict_remaining_length
        self._buf = bytearray()
        self._error: RemoteProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a whole packet."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Packet]:
        """Add received bytes; return every packet they complete, in order.

        Args:
            data: the next bytes from the peer, any length (``b""`` is allowed).

        Returns:
            The packets completed by ``data`` (possibly none).

        Raises:
            MalformedPacket: the bytes break an encoding rule.
            PacketTooLarge: a packet announces more than ``max_packet_size``.
            RemoteProtocolError: a well-formed packet not allowed towards this
                role, or any call after an earlier error.  Packets decoded
                before the error in this call are on the exception's
                ``packets``.
        """
        if self._error is not None:
            raise RemoteProtocolError(
                f"the reader failed earlier and cannot continue ({self._error})"
            )
        buf: Buffer
        if self._buf:
            self._buf += data
            buf = self._buf
        elif type(data) is bytes:
            buf = data
        else:
            buf = bytes(data)
        out: list[Packet] = []
        n = len(buf)
        pos = 0
        table = self._table
        limit = self._max
        try:
            # The parse loop lives here rather than in a method: one call less per
            # feed() on the hot path.
            while n - pos >= 2:
                first = buf[pos]
                fixed = table[first]
                if fixed < 0:
                    raise self._header_error(first)
                byte = buf[pos + 1]
                if byte < 128:
                    rl = byte
                    start = pos + 2
                elif n - pos > 2 and 0 < buf[pos + 2] < 128:
                    rl = (byte & 0x7F) | (buf[pos + 2] << 7)
                    start = pos + 3
                else:
                    found = self._long_remaining_length(buf, pos, n)
                    if found is None:
                        break
                    rl, start = found
                if fixed < _VARIABLE and rl != fixed:
                    ptype = first >> 4
                    raise MalformedPacket(
                        f"remaining length is {rl}, must be {fixed}", packet=_NAMES[ptype],
                        field="remaining length", rule=f"3.{ptype}.1",
                    )
                end = start + rl
                if end - pos > limit:
                    raise PacketTooLarge(
                        f"is {end - pos} bytes, the limit is {limit}",
                        packet=_NAMES[first >> 4], field="remaining length",
                    )
                if end > n:
                    break
                if first & 0xF0 == 0x30:
                    out.append(_dec_publish(first, buf, start, end))
                else:
                    out.append(_DECODERS[first >> 4](first, buf, start, end))  # type: ignore[misc]
                pos = end
        except RemoteProtocolError as exc:
            exc.packets = tuple(out)
            self._error = exc
            self._buf = bytearray()
            raise
        if buf is self._buf:
            if pos:
                del buf[:pos]
        elif pos < n:
            self._buf = bytearray(buf[pos:])
        return out

    def _long_remaining_length(self, buf: Buffer, pos: int, n: int) -> tuple[int, int] | None:
        """A remaining length of 3 or 4 bytes (or a non-minimal 2-byte one) at
        ``pos + 1``: ``(value, body start)``, or ``None`` if it is incomplete."""
        rl = 0
        i = pos + 1
        shift = 0
        while True:
            if i >= n:
                return None
            byte = buf[i]
            rl |= (byte & 0x7F) << shift
            i += 1
            if byte < 128:
                break
            if shift == 21:
                raise MalformedPacket(
                    "remaining length has a continuation bit in its 4th byte",
                    packet=_NAMES[buf[pos] >> 4], field="remaining length", rule="2.2.3",
                )
            shift += 7
        if byte == 0 and self._strict:
            raise MalformedPacket("remaining length is not minimally encoded",
                                  packet=_NAMES[buf[pos] >> 4], field="remaining length",
                                  rule="2.2.3")
        return rl, i

    def _header_error(self, first: int) -> RemoteProtocolError:
        """The error for a first byte that ``_FIRST_BYTE`` marks as refused."""
        ptype = first >> 4
        flags = first & 0x0F
        name = _NAMES[ptype]
        if ptype == 0 or ptype == 15:
            return MalformedPacket(f"packet type {ptype} is reserved", packet=name, rule="2.2.1")
        if not self._accept[ptype]:
            towards = "a client" if self.role == "client" else "a server"
            return RemoteProtocolError(
                f"may not be sent to {towards}", packet=name, rule="MQTT-4.8.0-1"
            )
        if ptype == 3:
            if flags & 0x06 == 0x06:
                return MalformedPacket("QoS bits are 11 (QoS 3)", packet=name,
                                       field="fixed header", rule="MQTT-3.3.1-4")
            return MalformedPacket("DUP is 1 at QoS 0", packet=name, field="fixed header",
                                   rule="MQTT-3.3.1-2")
        required = _FLAGS[ptype]
        assert required is not None
        return MalformedPacket(
            f"flags are {flags:04b}, must be {required:04b}", packet=name,
            field="fixed header", rule=_FLAG_RULE.get(ptype, "MQTT-2.2.2-2"),
        )


def _first_byte_table(accept: tuple[bool, ...]) -> tuple[int, ...]:
    """Per first byte: -1 if refused (type, direction or flags), else the
    packet's fixed remaining length, or ``_VARIABLE``."""
    table = []
    for first in range(256):
        ptype, flags = first >> 4, first & 0x0F
        if not accept[ptype]:
            table.append(-1)
        elif ptype == 3:
            ok = flags & 0x06 != 0x06 and flags & 0x0E != 0x08
            table.append(_VARIABLE if ok else -1)
        elif flags != _FLAGS[ptype]:
            table.append(-1)
        else:
            fixed = _FIXED_RL[ptype]
            table.append(_VARIABLE if fixed is None else fixed)
    return tuple(table)


_VARIABLE = 1 << 30
_TABLE_CLIENT = _first_byte_table(_FROM_SERVER)
_TABLE_SERVER = _first_byte_table(_FROM_CLIENT)
