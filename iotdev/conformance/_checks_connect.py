"""CONNECT and CONNACK, sessions, keep-alive, Will messages, transport and
robustness probes."""

from __future__ import annotations

import time

from iotdev_mqtt import ConnAck, Connect, PingReq, Publish, SubAck, Subscribe, Will, encode

from ._context import Context, Probe
from ._model import Observed, Skip, Violation, check
from ._raw import connect_bytes, frame, hexbytes

__all__: list[str] = []


def subscribe_one(probe: Probe, topic_filter: str, qos: int = 1, packet_id: int = 1) -> int:
    probe.send(Subscribe(packet_id, ((topic_filter, qos),)))
    ack = probe.await_packet(SubAck, "MQTT-3.8.4-1", f"SUBACK {packet_id}")
    if ack.packet_id != packet_id:
        raise Violation("MQTT-3.8.4-2", f"SUBACK id {ack.packet_id} for SUBSCRIBE {packet_id}")
    if len(ack.return_codes) != 1:
        raise Violation("MQTT-3.8.4-5", f"{len(ack.return_codes)} codes for one filter")
    if ack.return_codes[0] == 0x80:
        raise Skip(f"the broker refused the subscription to {topic_filter!r} (0x80)")
    return ack.return_codes[0]


@check("connect.accepted", "a valid CONNECT is answered by CONNACK 0, session present 0",
       "MQTT-3.1.4-4", "MQTT-3.2.0-1", "MQTT-3.2.2-1", "MQTT-3.1.3-1", "MQTT-3.1.4-3")
def _accepted(ctx: Context) -> Observed | None:
    _, ack = ctx.connect("c1", clean_session=True)
    if ack.session_present:
        raise Violation("MQTT-3.2.2-1", "session present 1 after clean session 1")
    return None


@check("connect.protocol-level", "protocol level 3 with name MQTT: CONNACK 0x01, close (S01)",
       "MQTT-3.1.2-2", "MQTT-3.2.2-5")
def _protocol_level(ctx: Context) -> Observed | None:
    probe = ctx.open("c1")
    probe.send(connect_bytes(ctx.client_id("c1"), level=3))
    ack = probe.expect(ConnAck, "MQTT-3.1.2-2", what="CONNACK 0x01")
    if ack.return_code != 1:
        raise Violation("MQTT-3.1.2-2", f"CONNACK return code {ack.return_code}, not 1")
    if not probe.wait_closed():
        raise Violation("MQTT-3.2.2-5", "connection still open after CONNACK 0x01")
    return None


@check("connect.empty-client-id-clean", "zero-length client id with clean session 1",
       "MQTT-3.1.3-6", "MQTT-3.1.3-9", needs=("any-client-id",))
def _empty_id_clean(ctx: Context) -> Observed | None:
    probe = ctx.open("c1")
    probe.send(ctx.connect_packet("c1", client_id="", clean_session=True))
    ack = probe.expect(ConnAck, "MQTT-3.2.0-1", what="CONNACK")
    if ack.return_code == 0:
        return Observed("accepted", "assigns a client id")
    if ack.return_code == 2:
        if not probe.wait_closed():
            raise Violation("MQTT-3.2.2-5", "open after CONNACK 0x02")
        return Observed("rejected", "CONNACK 0x02 (allowed: a server MAY refuse)")
    raise Violation("MQTT-3.1.3-9", f"CONNACK {ack.return_code}, expected 0 or 2")


@check("connect.empty-client-id-persistent",
       "zero-length client id with clean session 0: CONNACK 0x02, close (S02)",
       "MQTT-3.1.3-8", "MQTT-3.2.2-4", "MQTT-3.2.2-5")
def _empty_id_persistent(ctx: Context) -> Observed | None:
    probe = ctx.open("c1")
    probe.send(connect_bytes("", flags=0x00))
    ack = probe.expect(ConnAck, "MQTT-3.1.3-8", what="CONNACK 0x02")
    if ack.return_code != 2:
        raise Violation("MQTT-3.1.3-8", f"CONNACK return code {ack.return_code}, not 2")
    if ack.session_present:
        raise Violation("MQTT-3.2.2-4", "session present 1 with a non-zero return code")
    if not probe.wait_closed():
        raise Violation("MQTT-3.2.2-5", "connection still open after CONNACK 0x02")
    return None


@check("connect.refused-then-nothing",
       "a PINGREQ pipelined after a refused CONNECT gets no answer",
       "MQTT-3.1.4-5")
def _refused_then_nothing(ctx: Context) -> Observed | None:
    probe = ctx.open("c1")
    probe.send(connect_bytes("", flags=0x00) + encode(PingReq()))
    probe.wait_closed()
    if any(not isinstance(p, ConnAck) for p in probe.received):
        raise Violation("MQTT-3.1.4-5", f"answered after refusing: {probe.received!r}")
    return None


@check("connect.client-id-23", "a 23-character [0-9a-zA-Z] client id is accepted",
       "MQTT-3.1.3-5", "MQTT-3.1.3-4", needs=("any-client-id",))
def _client_id_23(ctx: Context) -> Observed | None:
    cid = ("Z" + ctx.new_token() + "0123456789abcdefghijklmn")[:23]
    probe = ctx.open("c1")
    probe.send(ctx.connect_packet("c1", client_id=cid))
    ack = probe.expect(ConnAck, "MQTT-3.2.0-1", what="CONNACK")
    if ack.return_code != 0:
        raise Violation("MQTT-3.1.3-5", f"CONNACK {ack.return_code} for client id {cid!r}")
    return None


@check("connect.credentials", "user name and password fields in order are accepted or "
       "answered with CONNACK 4/5", "MQTT-3.1.2-19", "MQTT-3.1.2-21", "MQTT-3.1.3-1")
def _credentials(ctx: Context) -> Observed | None:
    probe = ctx.open("c1")
    packet = ctx.connect_packet("c1")
    if packet.username is None:
        packet = Connect(packet.client_id, username="iotdev", password=b"check")
    probe.send(packet)
    ack = probe.expect(ConnAck, "MQTT-3.2.0-1", what="CONNACK")
    if ack.return_code not in (0, 4, 5):
        raise Violation("MQTT-3.1.4-4", f"CONNACK {ack.return_code} for a valid CONNECT")
    return Observed("accepted" if ack.return_code == 0 else f"refused-{ack.return_code}")


@check("connect.takeover", "a second client with the same id disconnects the first",
       "MQTT-3.1.4-2")
def _takeover(ctx: Context) -> Observed | None:
    first, _ = ctx.connect("c1")
    second = ctx.open("c1b")
    second.send(ctx.connect_packet("c1"))
    ack = second.expect(ConnAck, "MQTT-3.2.0-1", what="CONNACK")
    if ack.return_code != 0:
        return Observed(f"refuses-new-{ack.return_code}")
    if not first.wait_closed():
        raise Violation("MQTT-3.1.4-2", "the first connection is still open")
    second.ping()
    return None


@check("session.resume", "clean session 0: session present 0 first, 1 on return; clean "
       "session 1 then discards it", "MQTT-3.2.2-2", "MQTT-3.2.2-3", "MQTT-3.1.2-4",
       "MQTT-3.1.2-6", "MQTT-3.1.3-2", needs=("sessions",))
def _session_resume(ctx: Context) -> Observed | None:
    clean, _ = ctx.connect("c1", clean_session=True)  # start from nothing
    clean.disconnect()
    probe, ack = ctx.connect("c1", clean_session=False)
    if ack.session_present:
        raise Violation("MQTT-3.2.2-3", "session present 1 for a client with no session")
    probe.disconnect()
    probe, ack = ctx.connect("c1", clean_session=False)
    if not ack.session_present:
        raise Violation("MQTT-3.2.2-2", "session present 0 for a stored session")
    probe.disconnect()
    probe, ack = ctx.connect("c1", clean_session=True)
    if ack.session_present:
        raise Violation("MQTT-3.2.2-1", "session present 1 after clean session 1")
    probe.disconnect()
    probe, ack = ctx.connect("c1", clean_session=False)
    if ack.session_present:
        raise Violation("MQTT-3.1.2-6", "the session survived a clean-session connection")
    probe.disconnect()
    ctx.connect("c1", clean_session=True)[0].disconnect()
    return None


@check("ping.pingresp", "PINGREQ is answered by PINGRESP", "MQTT-3.12.4-1")
def _ping(ctx: Context) -> Observed | None:
    probe, _ = ctx.connect("c1")
    probe.ping()
    probe.ping()
    return None


KEEPALIVE_SLACK = 1.0
"""Seconds past 1.5 x keep-alive a close may come and still pass (scheduling,
whole-second broker clocks).  A later close fails, with the time it took."""


@check("keepalive.timeout", "1.5 x keep-alive of silence closes the connection and "
       "publishes the Will", "MQTT-3.1.2-24", "MQTT-3.1.2-8", needs=("will", "any-topic"),
       timeout=20.0, serial=True)
def _keepalive(ctx: Context) -> Observed | None:
    topic = ctx.topic("will")
    watcher, _ = ctx.connect("w")
    subscribe_one(watcher, topic, 1)
    silent, _ = ctx.connect("c1", keep_alive=1, will=Will(topic, b"gone", 1))
    start = time.monotonic()
    if not silent.wait_closed(1.5 + KEEPALIVE_SLACK):
        late = silent.wait_closed(10.0)  # measure how late, for the report
        took = time.monotonic() - start
        raise Violation("MQTT-3.1.2-24", (f"closed only after {took:.1f} s" if late else
                                          f"still open after {took:.1f} s")
                        + " of silence with keep-alive 1 s (limit 1.5 s)")
    took = time.monotonic() - start
    wills = watcher.publishes(1)
    if not wills or wills[0].payload != b"gone":
        raise Violation("MQTT-3.1.2-8", f"no Will after the keep-alive close ({took:.1f} s)")
    return None


@check("will.abnormal-close", "a dropped connection publishes its Will, not retained, at "
       "its QoS", "MQTT-3.1.2-8", "MQTT-3.1.2-16", "MQTT-3.3.5-1", needs=("will", "any-topic"))
def _will_abnormal(ctx: Context) -> Observed | None:
    topic = ctx.topic("will")
    watcher, _ = ctx.connect("w")
    subscribe_one(watcher, topic, 1)
    probe, _ = ctx.connect("c1", will=Will(topic, b"bye", 1, False))
    probe.ping()
    probe.drop()
    wills = watcher.publishes(1)
    if not wills:
        raise Violation("MQTT-3.1.2-8", "no Will published after an abnormal close")
    if wills[0].retain:
        raise Violation("MQTT-3.1.2-16", "Will published with RETAIN 1; Will retain was 0")
    if wills[0].qos != 1:
        raise Violation("MQTT-3.3.5-1", f"Will QoS 1 to a QoS 1 subscriber arrived at QoS "
                        f"{wills[0].qos}")
    if wills[0].payload != b"bye":
        raise Violation("MQTT-3.1.2-8", f"Will payload {wills[0].payload!r}")
    return None


@check("will.disconnect", "DISCONNECT discards the Will", "MQTT-3.1.2-10", "MQTT-3.14.4-3",
       needs=("will", "any-topic"))
def _will_disconnect(ctx: Context) -> Observed | None:
    topic = ctx.topic("will")
    watcher, _ = ctx.connect("w")
    subscribe_one(watcher, topic, 1)
    probe, _ = ctx.connect("c1", will=Will(topic, b"bye", 1))
    probe.disconnect()
    got = watcher.publishes(1, ctx.target.quiet_timeout * 2)
    if got:
        raise Violation("MQTT-3.14.4-3", "the Will was published after DISCONNECT")
    return None


@check("will.retained", "a Will with Will retain 1 is published retained",
       "MQTT-3.1.2-17", needs=("will", "retain", "any-topic"))
def _will_retained(ctx: Context) -> Observed | None:
    topic = ctx.topic("will")
    probe, _ = ctx.connect("c1", will=Will(topic, b"retained-will", 0, True))
    probe.ping()
    probe.drop()
    late, _ = ctx.connect("late")
    try:
        deadline = time.monotonic() + ctx.target.answer_timeout
        while True:
            subscribe_one(late, topic, 0)
            got = late.publishes(1, ctx.target.quiet_timeout)
            if got or time.monotonic() > deadline:
                break
        if not got:
            raise Violation("MQTT-3.1.2-17", "no retained Will for a new subscriber")
        if not got[0].retain:
            raise Violation("MQTT-3.3.1-8", "retained Will delivered with RETAIN 0")
    finally:
        late.send(Publish(topic, b"", retain=True))
        late.ping()
    return None


@check("transport.websocket", "MQTT over WebSocket: subprotocol 'mqtt', a packet split "
       "across frames", "MQTT-6.0.0-1", "MQTT-6.0.0-2", "MQTT-6.0.0-4")
def _websocket(ctx: Context) -> Observed | None:
    if not ctx.target.ws_path:
        raise Skip("not a WebSocket target (use --ws PATH)")
    probe = ctx.open("c1")  # the layer refuses an upgrade without 'mqtt'
    raw = encode(ctx.connect_packet("c1"))
    probe.send(raw[:3])
    probe.send(raw[3:])
    ack = probe.expect(ConnAck, "MQTT-6.0.0-2", what="CONNACK for a CONNECT in two frames")
    if ack.return_code != 0:
        raise Violation("MQTT-3.1.4-4", f"CONNACK {ack.return_code}")
    return None


@check("robust.slow-connect", "CONNECT written one byte at a time is accepted",
       "MQTT-4.8.0-1", serial=True)
def _slow_connect(ctx: Context) -> Observed | None:
    probe = ctx.open("c1")
    raw = encode(ctx.connect_packet("c1"))
    for i in range(len(raw)):
        probe.send(raw[i:i + 1])
        time.sleep(0.01)  # pacing the probe itself, not waiting for an event
    ack = probe.expect(ConnAck, "MQTT-3.1.4-4", what="CONNACK")
    if ack.return_code != 0:
        raise Violation("MQTT-3.1.4-4", f"CONNACK {ack.return_code}")
    return None


@check("robust.partial-connect", "half a CONNECT, then silence: what the broker does",
       "MQTT-3.1.0-1")
def _partial_connect(ctx: Context) -> Observed | None:
    probe = ctx.open("c1")
    probe.send(encode(ctx.connect_packet("c1"))[:8])
    if probe.wait_closed(ctx.target.answer_timeout):
        return Observed("closes", "closed the half-open connection within "
                        f"{ctx.target.answer_timeout:g} s")
    return Observed("waits", f"still waiting after {ctx.target.answer_timeout:g} s")


@check("robust.huge-first-packet", "CONNECT announcing 268 MB before any data",
       "MQTT-3.1.0-1")
def _huge_connect(ctx: Context) -> Observed | None:
    probe = ctx.open("c1")
    probe.send(frame(0x10, b"", remaining_length=hexbytes("FF FF FF 7F")) + b"\x00\x04MQTT")
    if probe.wait_closed(ctx.target.answer_timeout):
        return Observed("closes", "refused the announced size at once")
    return Observed("waits", "keeps the connection open waiting for 268 MB")


@check("robust.oversize-payload", "a 2 MB QoS 1 PUBLISH: acknowledged or refused by close",
       "MQTT-4.8.0-1", needs=("any-topic",), timeout=30.0, serial=True)
def _oversize(ctx: Context) -> Observed | None:
    probe, _ = ctx.connect("c1")
    probe.send(Publish(ctx.topic(), b"x" * (2 << 20), qos=1, packet_id=1))
    packet = probe.next(ctx.target.answer_timeout * 3)
    if packet is None and probe.conn.closed:
        return Observed("closes", "closed the connection (a size limit)")
    if packet is None:
        raise Violation("MQTT-4.3.2-1", "neither PUBACK nor a close")
    return Observed("accepts", f"answered {packet!r}")
