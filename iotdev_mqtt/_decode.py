"""Body decoding: one function per packet type, from the bytes after the fixed
header to a packet, checking every rule that binds a receiver.

Each ``_DECODERS[type](first_byte, buf, start, end)`` reads ``buf[start:end]``
(the framing reader has already checked the first byte and the remaining
length) and raises ``MalformedPacket`` naming packet, field and rule.
"""

from __future__ import annotations

from collections.abc import Callable

from ._errors import MalformedPacket
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
from ._records import fast_constructor
from ._rules import TOPIC_CACHE_LONGEST, TOPIC_CACHE_MAX
from ._topics import filter_levels_problem, topic_name_problem

__all__ = ["DECODERS", "Buffer", "decode_publish"]

# Received topic names already checked, by their raw bytes.
_TOPIC_DECODED: dict[bytes, str] = {}

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
    if len(raw) <= TOPIC_CACHE_LONGEST:
        if len(_TOPIC_DECODED) >= TOPIC_CACHE_MAX:
            _TOPIC_DECODED.clear()
        _TOPIC_DECODED[raw] = topic
    return topic


def decode_publish(flags: int, buf: Buffer, p: int, end: int) -> Publish:
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

DECODERS: tuple[Callable[[int, Buffer, int, int], Packet] | None, ...] = (
    None,
    _dec_connect,
    _dec_connack,
    decode_publish,
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
