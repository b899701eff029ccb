"""Encoding: ``encode(packet)`` checks every rule that binds a sender and
returns the bytes; it raises ``LocalProtocolError`` naming packet, field and
rule.  ``publish_bytes()`` is the engines' fast path for PUBLISH fields they
have already validated.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from ._errors import LocalProtocolError
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
from ._rules import MAX_REMAINING_LENGTH, TOPIC_CACHE_LONGEST, TOPIC_CACHE_MAX
from ._topics import string_problem, topic_filter_problem, topic_name_problem

__all__ = ["encode", "encode_remaining_length", "publish_bytes"]

_RL1 = [bytes((i,)) for i in range(128)]
_pack_bb = struct.Struct(">BB").pack
_pack_bbb = struct.Struct(">BBB").pack
_pack_bbh = struct.Struct(">BBH").pack


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
    if len(raw) <= TOPIC_CACHE_LONGEST:
        if len(_TOPIC_PREFIXED) >= TOPIC_CACHE_MAX:
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
