"""Inputs a server must close the connection on (no answer first).

Each row is one check: the bytes (built per run so the client id is fresh),
whether they replace CONNECT or follow an accepted one, and the statement.
The bytes follow the shared malformed vectors (M-ids in the titles) of the
conformance reference, with our client ids substituted.
"""

from __future__ import annotations

from collections.abc import Callable

from iotdev_mqtt import ConnAck

from ._context import Context
from ._model import Observed, Violation, check
from ._raw import connect_bytes, frame, hexbytes, string

__all__ = ["MALFORMED_INPUTS"]

Build = Callable[[str], bytes]


def _before(statement: str, build: Build) -> Callable[[Context], Observed | None]:
    """Bytes sent instead of a valid CONNECT: the broker must close, no CONNACK."""

    def run(ctx: Context) -> Observed | None:
        probe = ctx.open("c1")
        probe.send(build(ctx.client_id("c1")))
        closed = probe.wait_closed()
        acks = [p for p in probe.received if isinstance(p, ConnAck)]
        if acks and statement == "MQTT-3.1.2-1" and acks[0].return_code != 0:
            return Observed(f"connack-{acks[0].return_code}",
                            "refused with a CONNACK (processing by another specification)")
        if acks:
            raise Violation(statement if acks[0].return_code == 0 else "MQTT-3.1.4-1",
                            f"answered with {acks[0]!r} instead of closing")
        if not closed:
            raise Violation(statement, f"connection still open after "
                            f"{ctx.target.answer_timeout:g} s")
        return None

    return run


def _after(statement: str, build: Build) -> Callable[[Context], Observed | None]:
    """Bytes sent after an accepted CONNECT: the broker must close."""

    def run(ctx: Context) -> Observed | None:
        probe, _ = ctx.connect("c1")
        probe.send(build(probe.client_id))
        if not probe.wait_closed():
            answers = ", ".join(repr(p) for p in probe.received[1:]) or "nothing"
            raise Violation(statement, f"connection still open after "
                            f"{ctx.target.answer_timeout:g} s (answered: {answers})")
        return None

    return run


def _will(topic: bytes, message: bytes = b"m") -> bytes:
    return string(topic) + string(message)


# (id, title, statements, phase, build)
_ROWS: list[tuple[str, str, tuple[str, ...], str, Build]] = [
    ("first-packet-not-connect", "PUBLISH as the first packet (non-CONNECT first)",
     ("MQTT-3.1.0-1",), "before", lambda c: hexbytes("30 07 00 03 61 2F 62 68 69")),
    ("first-packet-pingreq", "PINGREQ as the first packet", ("MQTT-3.1.0-1",), "before",
     lambda c: hexbytes("C0 00")),
    ("first-packet-huge-length", "non-CONNECT first packet announcing 268 MB",
     ("MQTT-3.1.0-1",), "before", lambda c: hexbytes("30 FF FF FF 7F 00")),
    ("protocol-name", "protocol name 'MQTS' (M30)", ("MQTT-3.1.2-1",), "before",
     lambda c: connect_bytes(c, name=b"MQTS")),
    ("reserved-flag", "CONNECT reserved flag bit 0 set (M31)", ("MQTT-3.1.2-3",), "before",
     lambda c: connect_bytes(c, flags=0x03)),
    ("connect-fixed-flags", "CONNECT fixed-header flags 0001 (M03)", ("MQTT-2.2.2-2",),
     "before", lambda c: connect_bytes(c, first=0x11)),
    ("will-qos-without-will", "Will QoS 1 with Will flag 0 (M32)",
     ("MQTT-3.1.2-13", "MQTT-3.1.2-11"), "before", lambda c: connect_bytes(c, flags=0x0A)),
    ("will-retain-without-will", "Will retain with Will flag 0 (M33)",
     ("MQTT-3.1.2-15", "MQTT-3.1.2-11"), "before", lambda c: connect_bytes(c, flags=0x22)),
    ("will-qos-3", "Will QoS 3 (M34)", ("MQTT-3.1.2-14",), "before",
     lambda c: connect_bytes(c, flags=0x1E, rest=_will(b"w"))),
    ("password-without-username", "password flag without user name flag (M35)",
     ("MQTT-3.1.2-22",), "before", lambda c: connect_bytes(c, flags=0x42, rest=string(b"p"))),
    ("username-missing", "user name flag set, no user name (M36)", ("MQTT-3.1.2-19",),
     "before", lambda c: connect_bytes(c, flags=0x82)),
    ("password-missing", "password flag set, no password", ("MQTT-3.1.2-21",), "before",
     lambda c: connect_bytes(c, flags=0xC2, rest=string(b"u"))),
    ("will-message-missing", "Will flag set, Will message missing (M37)", ("MQTT-3.1.2-9",),
     "before", lambda c: connect_bytes(c, flags=0x06, rest=string(b"w"))),
    ("username-unflagged", "user name present with user name flag 0 (M38)",
     ("MQTT-3.1.2-18",), "before", lambda c: connect_bytes(c, rest=string(b"u"))),
    ("password-unflagged", "password present with password flag 0",
     ("MQTT-3.1.2-20",), "before",
     lambda c: connect_bytes(c, flags=0x82, rest=string(b"u") + string(b"p"))),
    ("client-id-missing", "CONNECT without a client id (M39)", ("MQTT-3.1.3-3",), "before",
     lambda c: frame(0x10, string(b"MQTT") + bytes((4, 2, 0, 60)))),
    ("client-id-nul", "client id containing U+0000 (as M40)", ("MQTT-1.5.3-2", "MQTT-3.1.3-4"),
     "before", lambda c: connect_bytes(c.encode() + b"\x00")),
    ("client-id-surrogate", "client id with an encoded surrogate U+D800",
     ("MQTT-1.5.3-1", "MQTT-3.1.3-4"), "before",
     lambda c: connect_bytes(c.encode() + b"\xed\xa0\x80")),
    ("username-not-utf8", "user name not UTF-8 (M41)", ("MQTT-3.1.3-11", "MQTT-1.5.3-1"),
     "before", lambda c: connect_bytes(c, flags=0x82, rest=string(b"a\xffb"))),
    ("will-topic-not-utf8", "Will topic with an encoded surrogate",
     ("MQTT-3.1.3-10", "MQTT-1.5.3-1"), "before",
     lambda c: connect_bytes(c, flags=0x06, rest=_will(b"\xed\xa0\x80"))),
    # The Will Topic is a topic name: wildcards are barred by 4.7.1-1 (the reference's
    # M42 cites 3.3.2-2, which the spec words for PUBLISH's Topic Name field).
    ("will-topic-wildcard", "Will topic 'w/#' (M42)", ("MQTT-4.7.1-1", "MQTT-3.3.2-2"),
     "before", lambda c: connect_bytes(c, flags=0x06, rest=_will(b"w/#"))),
    ("connect-trailing-bytes", "CONNECT with bytes after the last field",
     ("MQTT-3.1.4-1",), "before", lambda c: connect_bytes(c, rest=b"\x00")),
    # after CONNECT
    ("second-connect", "a second CONNECT on the same connection (S04)", ("MQTT-3.1.0-2",),
     "after", lambda c: connect_bytes(c)),
    ("reserved-type-0", "reserved packet type 0 (M01)", ("MQTT-4.8.0-1",), "after",
     lambda c: hexbytes("00 00")),
    ("reserved-type-15", "reserved packet type 15 (M02)", ("MQTT-4.8.0-1",), "after",
     lambda c: hexbytes("F0 00")),
    ("puback-flags", "PUBACK with flags 0010 (M05)", ("MQTT-2.2.2-2",), "after",
     lambda c: hexbytes("42 02 00 01")),
    ("pubrel-flags", "PUBREL with flags 0000 (M06)", ("MQTT-3.6.1-1",), "after",
     lambda c: hexbytes("60 02 00 01")),
    ("subscribe-flags", "SUBSCRIBE with flags 0000 (M07)", ("MQTT-3.8.1-1",), "after",
     lambda c: hexbytes("80 06 00 01 00 01 70 00")),
    ("unsubscribe-flags", "UNSUBSCRIBE with flags 0000 (M08)", ("MQTT-3.10.1-1",), "after",
     lambda c: hexbytes("A0 05 00 01 00 01 70")),
    ("pingreq-flags", "PINGREQ with flags 0001 (M09)", ("MQTT-2.2.2-2",), "after",
     lambda c: hexbytes("C1 00")),
    ("disconnect-flags", "DISCONNECT with flags 0010 (M10)", ("MQTT-3.14.1-1",), "after",
     lambda c: hexbytes("E2 00")),
    ("remaining-length-5-bytes", "remaining length in 5 bytes (M11)", ("MQTT-4.8.0-1",),
     "after", lambda c: hexbytes("30 FF FF FF FF 7F")),
    ("publish-qos-3", "PUBLISH with QoS 3 (M12)", ("MQTT-3.3.1-4",), "after",
     lambda c: hexbytes("36 07 00 03 61 2F 62 68 69")),
    ("publish-qos0-dup", "PUBLISH QoS 0 with DUP 1 (M13)", ("MQTT-3.3.1-2",), "after",
     lambda c: hexbytes("38 07 00 03 61 2F 62 68 69")),
    ("publish-packet-id-0", "PUBLISH QoS 1 with packet id 0 (M14)", ("MQTT-2.3.1-1",),
     "after", lambda c: hexbytes("32 07 00 03 61 2F 62 00 00")),
    ("publish-empty-topic", "PUBLISH with an empty topic (M15)", ("MQTT-4.7.3-1",), "after",
     lambda c: hexbytes("30 04 00 00 68 69")),
    ("publish-topic-plus", "PUBLISH to 'a/+' (M16)", ("MQTT-3.3.2-2", "MQTT-4.7.1-1"),
     "after", lambda c: hexbytes("30 07 00 03 61 2F 2B 68 69")),
    ("publish-topic-hash", "PUBLISH to 'a/#' (M17)", ("MQTT-3.3.2-2", "MQTT-4.7.1-1"),
     "after", lambda c: hexbytes("30 07 00 03 61 2F 23 68 69")),
    ("publish-topic-nul", "topic containing U+0000 (M18)", ("MQTT-4.7.3-2", "MQTT-1.5.3-2"),
     "after", lambda c: hexbytes("30 07 00 03 61 00 62 68 69")),
    ("publish-topic-surrogate", "topic with an encoded surrogate (M19)",
     ("MQTT-1.5.3-1", "MQTT-3.3.2-1"), "after",
     lambda c: hexbytes("30 07 00 03 ED A0 80 68 69")),
    ("publish-topic-overlong", "topic with overlong UTF-8 C0 AF (M20)",
     ("MQTT-1.5.3-1", "MQTT-3.3.2-1"), "after", lambda c: hexbytes("30 06 00 02 C0 AF 68 69")),
    ("string-past-packet", "topic length past the remaining length (M21)", ("MQTT-4.8.0-1",),
     "after", lambda c: hexbytes("30 03 00 05 61 62")),
    ("publish-qos1-no-id", "PUBLISH QoS 1 without a packet id (M22)", ("MQTT-4.8.0-1",),
     "after", lambda c: hexbytes("32 05 00 03 61 2F 62")),
    ("puback-trailing-bytes", "PUBACK with remaining length 3 (M23)", ("MQTT-4.8.0-1",),
     "after", lambda c: hexbytes("40 03 00 01 00")),
    ("puback-short", "PUBACK with remaining length 1 (M24)", ("MQTT-4.8.0-1",), "after",
     lambda c: hexbytes("40 01 01")),
    ("subscribe-no-filters", "SUBSCRIBE without a filter (M43)", ("MQTT-3.8.3-3",), "after",
     lambda c: hexbytes("82 02 00 01")),
    ("subscribe-qos-3", "SUBSCRIBE requesting QoS 3 (M44)", ("MQTT-3-8.3-4",), "after",
     lambda c: hexbytes("82 06 00 01 00 01 70 03")),
    ("subscribe-reserved-bits", "SUBSCRIBE QoS byte with reserved bits (M45)",
     ("MQTT-3-8.3-4",), "after", lambda c: hexbytes("82 06 00 01 00 01 70 04")),
    ("subscribe-packet-id-0", "SUBSCRIBE with packet id 0 (M46)", ("MQTT-2.3.1-1",),
     "after", lambda c: hexbytes("82 06 00 00 00 01 70 00")),
    ("subscribe-empty-filter", "SUBSCRIBE with an empty filter (M47)", ("MQTT-4.7.3-1",),
     "after", lambda c: hexbytes("82 05 00 01 00 00 00")),
    ("subscribe-hash-not-last", "filter 'a/#/b' (M48)", ("MQTT-4.7.1-2",), "after",
     lambda c: hexbytes("82 0A 00 01 00 05 61 2F 23 2F 62 00")),
    ("subscribe-plus-partial", "filter 'a+' (M49)", ("MQTT-4.7.1-3",), "after",
     lambda c: hexbytes("82 07 00 01 00 02 61 2B 00")),
    ("subscribe-no-qos-byte", "SUBSCRIBE filter without its QoS byte (M50)",
     ("MQTT-4.8.0-1",), "after", lambda c: hexbytes("82 05 00 01 00 01 70")),
    ("subscribe-filter-not-utf8", "SUBSCRIBE filter with an encoded surrogate",
     ("MQTT-3.8.3-1", "MQTT-1.5.3-1"), "after",
     lambda c: hexbytes("82 08 00 01 00 03 ED A0 80 00")),
    ("unsubscribe-no-filters", "UNSUBSCRIBE without a filter (M53)", ("MQTT-3.10.3-2",),
     "after", lambda c: hexbytes("A2 02 00 01")),
    ("unsubscribe-packet-id-0", "UNSUBSCRIBE with packet id 0 (M54)", ("MQTT-2.3.1-1",),
     "after", lambda c: hexbytes("A2 05 00 00 00 01 70")),
    ("unsubscribe-empty-filter", "UNSUBSCRIBE with an empty filter (M55)",
     ("MQTT-4.7.3-1",), "after", lambda c: hexbytes("A2 07 00 01 00 00 00 01 71")),
    ("unsubscribe-filter-not-utf8", "UNSUBSCRIBE filter 'a\\xffb'",
     ("MQTT-3.10.3-1", "MQTT-1.5.3-1"), "after", lambda c: hexbytes("A2 07 00 01 00 03 61 FF 62")),
    ("pingreq-length-1", "PINGREQ with remaining length 1 (M57)", ("MQTT-4.8.0-1",), "after",
     lambda c: hexbytes("C0 01 00")),
    ("disconnect-length-1", "DISCONNECT with remaining length 1 (M58)", ("MQTT-4.8.0-1",),
     "after", lambda c: hexbytes("E0 01 00")),
    ("client-sends-connack", "the client sends CONNACK", ("MQTT-4.8.0-1",), "after",
     lambda c: hexbytes("20 02 00 00")),
    ("client-sends-suback", "the client sends SUBACK", ("MQTT-4.8.0-1",), "after",
     lambda c: hexbytes("90 03 00 01 00")),
    ("client-sends-unsuback", "the client sends UNSUBACK", ("MQTT-4.8.0-1",), "after",
     lambda c: hexbytes("B0 02 00 01")),
    ("client-sends-pingresp", "the client sends PINGRESP", ("MQTT-4.8.0-1",), "after",
     lambda c: hexbytes("D0 00")),
]

MALFORMED_INPUTS: dict[str, tuple[str, str, Build]] = {
    f"malformed.{row[0]}": (row[1], row[3], row[4]) for row in _ROWS}
"""``check id -> (title, "before" or "after" CONNECT, client id -> bytes)``."""

for _id, _title, _statements, _phase, _build in _ROWS:
    _runner = (_before if _phase == "before" else _after)(_statements[0], _build)
    check(f"malformed.{_id}", _title, *_statements, "MQTT-4.8.0-1", timeout=10.0)(_runner)


@check("malformed.control-character", "topic containing U+0001 (SHOULD NOT; MAY close, S03)",
       "MQTT-1.5.3-1", needs=("any-topic",))
def _control_character(ctx: Context) -> Observed | None:
    probe, _ = ctx.connect("c1")
    probe.send(frame(0x30, string(ctx.topic("x").encode() + b"\x01") + b"p"))
    probe.send(hexbytes("C0 00"))
    if probe.wait_closed(ctx.target.quiet_timeout * 2):
        return Observed("closes", "closed the connection (allowed: 1.5.3 MAY)")
    return Observed("accepts", "kept the connection open (allowed)")
