"""PUBLISH at QoS 0/1/2 both ways, redelivery, sessions and retained messages."""

from __future__ import annotations

import time

from iotdev_mqtt import PubAck, PubComp, Publish, PubRec, PubRel

from ._checks_connect import subscribe_one
from ._context import Context, Probe
from ._model import Observed, Violation, check

__all__: list[str] = []


def _one(probe: Probe, statement: str, what: str) -> Publish:
    got = probe.publishes(1)
    if not got:
        raise Violation(statement, f"{what} was not delivered")
    if len(got) > 1:
        raise Violation(statement, f"{what} was delivered {len(got)} times")
    return got[0]


def _check_forwarded(p: Publish, qos: int, payload: bytes) -> None:
    if p.payload != payload:
        raise Violation("MQTT-3.3.2-3", f"payload {p.payload!r}, expected {payload!r}")
    if p.qos != qos:
        raise Violation("MQTT-3.3.5-1", f"delivered at QoS {p.qos}, expected {qos}")
    if p.dup:
        raise Violation("MQTT-3.3.1-3" if qos else "MQTT-4.3.1-1",
                        "first delivery carries DUP 1")
    if p.retain:
        raise Violation("MQTT-3.3.1-9", "normal forwarding with RETAIN 1")


def _roundtrip(qos: int) -> None:
    statements = {0: ("MQTT-4.3.1-1", "MQTT-2.3.1-5", "MQTT-3.3.1-9"),
                  1: ("MQTT-4.3.2-1", "MQTT-4.3.2-2", "MQTT-2.3.1-6", "MQTT-3.3.4-1",
                      "MQTT-2.3.1-4"),
                  2: ("MQTT-4.3.3-1", "MQTT-4.3.3-2", "MQTT-2.3.1-6", "MQTT-3.3.4-1",
                      "MQTT-2.3.1-4")}[qos]

    def run(ctx: Context) -> Observed | None:
        if qos == 2:
            ctx.need("qos2")
        topic = ctx.topic()
        sub, _ = ctx.connect("sub")
        granted = subscribe_one(sub, topic, 2)
        pub, _ = ctx.connect("pub")
        pub.publish_qos(topic, b"qos%d" % qos, qos, packet_id=0x1234 if qos else 1)
        if qos == 2:  # receive side of QoS 2 by hand: PUBREC, PUBREL, PUBCOMP
            got = sub.publishes(1, ack=False, settle=False)
            if not got:
                raise Violation("MQTT-3.3.2-3", "the QoS 2 message was not delivered")
            p = got[0]
            _check_forwarded(p, min(2, granted), b"qos2")
            if p.packet_id is not None and p.qos == 2:
                sub.send(PubRec(p.packet_id))
                rel = sub.expect(PubRel, "MQTT-4.3.3-1", what="PUBREL")
                if rel.packet_id != p.packet_id:
                    raise Violation("MQTT-2.3.1-6", f"PUBREL {rel.packet_id} for {p.packet_id}")
                sub.send(PubComp(p.packet_id))
            return None
        p = _one(sub, "MQTT-3.3.2-3", f"the QoS {qos} message")
        _check_forwarded(p, min(qos, granted), b"qos%d" % qos)
        return None

    check(f"publish.qos{qos}", f"QoS {qos} publish is acknowledged and forwarded at QoS {qos}",
          *statements, needs=("any-topic",))(run)


for _qos in (0, 1, 2):
    _roundtrip(_qos)


@check("publish.qos2-duplicate", "a QoS 2 PUBLISH sent twice (DUP) is delivered once",
       "MQTT-4.3.3-2", "MQTT-3.3.1-3", needs=("any-topic", "qos2"))
def _qos2_duplicate(ctx: Context) -> Observed | None:
    topic = ctx.topic()
    sub, _ = ctx.connect("sub")
    subscribe_one(sub, topic, 2)
    pub, _ = ctx.connect("pub")
    pub.send(Publish(topic, b"once", qos=2, packet_id=7))
    pub.expect(PubRec, "MQTT-4.3.3-2", what="PUBREC 7")
    pub.send(Publish(topic, b"once", qos=2, packet_id=7, dup=True))
    pub.expect(PubRec, "MQTT-4.3.3-2", what="a second PUBREC 7 for the duplicate")
    pub.send(PubRel(7))
    comp = pub.expect(PubComp, "MQTT-4.3.3-2", what="PUBCOMP 7")
    if comp.packet_id != 7:
        raise Violation("MQTT-2.3.1-6", f"PUBCOMP {comp.packet_id}")
    got = sub.publishes(1)
    if len(got) != 1:
        raise Violation("MQTT-4.3.3-2", f"delivered {len(got)} times, expected once")
    if got[0].dup:
        raise Violation("MQTT-3.3.1-3", "the DUP flag of the incoming PUBLISH was propagated")
    return None


@check("publish.dup-not-propagated", "an incoming QoS 1 PUBLISH with DUP 1 is forwarded "
       "with DUP 0", "MQTT-3.3.1-3", needs=("any-topic",))
def _dup_not_propagated(ctx: Context) -> Observed | None:
    topic = ctx.topic()
    sub, _ = ctx.connect("sub")
    subscribe_one(sub, topic, 1)
    pub, _ = ctx.connect("pub")
    pub.send(Publish(topic, b"d", qos=1, packet_id=3, dup=True))
    pub.expect(PubAck, "MQTT-4.3.2-1", what="PUBACK 3")
    got = _one(sub, "MQTT-3.3.2-3", "the message")
    if got.dup:
        raise Violation("MQTT-3.3.1-3", "forwarded with DUP 1 on its first delivery")
    return None


@check("publish.pubrel-unknown", "PUBREL for an id never used: PUBCOMP (or a recorded "
       "choice)", "MQTT-4.3.3-2")
def _pubrel_unknown(ctx: Context) -> Observed | None:
    probe, _ = ctx.connect("c1")
    probe.send(PubRel(999))
    packet = probe.next()
    if isinstance(packet, PubComp) and packet.packet_id == 999:
        return None
    if packet is None and probe.conn.closed:
        return Observed("closes")
    if packet is None:
        return Observed("ignores", "no PUBCOMP, connection kept")
    raise Violation("MQTT-2.3.1-6", f"answered {packet!r}")


@check("publish.downgrade", "a QoS 2 message to a QoS 0 subscription arrives at QoS 0, "
       "QoS 1 to a QoS 2 subscription at QoS 1", "MQTT-3.3.5-1", "MQTT-3.8.4-6",
       needs=("any-topic", "qos2"))
def _downgrade(ctx: Context) -> Observed | None:
    low, high = ctx.topic("low"), ctx.topic("high")
    sub, _ = ctx.connect("sub")
    subscribe_one(sub, low, 0, packet_id=1)
    granted = subscribe_one(sub, high, 2, packet_id=2)
    pub, _ = ctx.connect("pub")
    pub.publish_qos(low, b"down", 2, packet_id=1)
    pub.publish_qos(high, b"up", 1, packet_id=2)
    got = {p.topic: p for p in sub.publishes(2)}
    if low not in got or high not in got:
        raise Violation("MQTT-3.3.2-3", f"delivered {sorted(got)}")
    if got[low].qos != 0:
        raise Violation("MQTT-3.3.5-1", f"QoS 2 to a QoS 0 subscription arrived at QoS "
                        f"{got[low].qos}")
    if got[high].qos != min(1, granted):
        raise Violation("MQTT-3.3.5-1", f"QoS 1 to a QoS {granted} subscription arrived at QoS "
                        f"{got[high].qos}")
    return None


@check("publish.order", "five QoS 1 messages to one topic: PUBACKs and delivery in order",
       "MQTT-4.6.0-2", "MQTT-4.6.0-5", "MQTT-4.6.0-6", "MQTT-4.5.0-1", needs=("any-topic",))
def _order(ctx: Context) -> Observed | None:
    topic = ctx.topic()
    sub, _ = ctx.connect("sub")
    subscribe_one(sub, topic, 1)
    pub, _ = ctx.connect("pub")
    ids = [5, 3, 9, 1, 7]
    for i, pid in enumerate(ids):
        pub.send(Publish(topic, b"m%d" % i, qos=1, packet_id=pid))
    acks = [pub.next() for _ in ids]
    got_ids = [getattr(a, "packet_id", None) for a in acks]
    if got_ids != ids:
        raise Violation("MQTT-4.6.0-2", f"PUBACKs for {got_ids}, sent {ids}")
    payloads = [p.payload for p in sub.publishes(len(ids))]
    if payloads != [b"m%d" % i for i in range(len(ids))]:
        raise Violation("MQTT-4.6.0-6", f"delivered {payloads}")
    return None


def _persistent_subscriber(ctx: Context, topic: str, qos: int) -> None:
    sub, _ = ctx.connect("sub", clean_session=False)
    subscribe_one(sub, topic, qos)
    sub.disconnect()


@check("session.offline-queue", "QoS 1 and 2 messages are kept for an offline clean-session-0 "
       "client (QoS 0: a recorded choice)", "MQTT-3.1.2-5", "MQTT-3.1.2-4", "MQTT-4.6.0-6",
       needs=("any-topic", "sessions", "qos2"))
def _offline_queue(ctx: Context) -> Observed | None:
    topic = ctx.topic()
    _persistent_subscriber(ctx, topic, 2)
    pub, _ = ctx.connect("pub")
    pub.publish_qos(topic, b"one", 1, packet_id=1)
    pub.publish_qos(topic, b"zero", 0)
    pub.publish_qos(topic, b"two", 2, packet_id=2)
    sub, ack = ctx.connect("sub", clean_session=False)
    try:
        if not ack.session_present:
            raise Violation("MQTT-3.2.2-2", "session present 0 on return")
        got = [p.payload for p in sub.publishes(3, settle=True)]
    finally:
        sub.disconnect()
        ctx.connect("sub", clean_session=True)[0].disconnect()
    if b"one" not in got or b"two" not in got:
        raise Violation("MQTT-3.1.2-5", f"offline QoS 1/2 messages lost; got {got}")
    kept = [m for m in got if m != b"zero"]
    if kept != [b"one", b"two"]:
        raise Violation("MQTT-4.6.0-6", f"order {got}")
    return Observed("queues-qos0" if b"zero" in got else "drops-qos0")


@check("session.clean-discard", "connecting with clean session 1 discards the subscriptions",
       "MQTT-3.1.2-6", "MQTT-3.2.2-1", needs=("any-topic", "sessions"))
def _clean_discard(ctx: Context) -> Observed | None:
    topic = ctx.topic()
    _persistent_subscriber(ctx, topic, 1)
    sub, ack = ctx.connect("sub", clean_session=True)
    if ack.session_present:
        raise Violation("MQTT-3.2.2-1", "session present 1 after clean session 1")
    pub, _ = ctx.connect("pub")
    pub.publish_qos(topic, b"x", 1)
    if sub.publishes(1, ctx.target.quiet_timeout * 2):
        raise Violation("MQTT-3.1.2-6", "a subscription of the discarded session still delivers")
    return None


@check("session.redelivery-qos1", "unacknowledged QoS 1 messages are resent on resume, in "
       "order, with DUP 1 and the same ids", "MQTT-4.4.0-1", "MQTT-3.3.1-1", "MQTT-2.3.1-3",
       "MQTT-4.6.0-1", needs=("any-topic", "sessions"))
def _redeliver_qos1(ctx: Context) -> Observed | None:
    topic = ctx.topic()
    sub, _ = ctx.connect("sub", clean_session=False)
    subscribe_one(sub, topic, 1)
    pub, _ = ctx.connect("pub")
    pub.publish_qos(topic, b"first", 1, packet_id=1)
    pub.publish_qos(topic, b"second", 1, packet_id=2)
    first = sub.publishes(2, ack=False, settle=False)
    if len(first) != 2:
        raise Violation("MQTT-3.3.2-3", f"{len(first)} of 2 messages delivered")
    sub.drop()
    sub, ack = ctx.connect("sub", clean_session=False)
    if not ack.session_present:
        raise Violation("MQTT-3.2.2-2", "session present 0 on return")
    try:
        again = sub.publishes(2, ack=True, settle=False)
    finally:
        sub.disconnect()
        ctx.connect("sub", clean_session=True)[0].disconnect()
    if len(again) != 2:
        raise Violation("MQTT-4.4.0-1", f"{len(again)} of 2 unacknowledged messages resent")
    if [p.payload for p in again] != [b"first", b"second"]:
        raise Violation("MQTT-4.6.0-1", f"resent as {[p.payload for p in again]}")
    if [p.packet_id for p in again] != [p.packet_id for p in first]:
        raise Violation("MQTT-2.3.1-3", f"resent with ids {[p.packet_id for p in again]}, "
                        f"first {[p.packet_id for p in first]}")
    if not all(p.dup for p in again):
        raise Violation("MQTT-3.3.1-1", "resent with DUP 0")
    return None


@check("publish.order-qos2", "QoS 2 both ways: PUBRECs in the order of the PUBLISHes, "
       "PUBRELs in the order of our PUBRECs", "MQTT-4.6.0-3", "MQTT-4.6.0-4",
       needs=("any-topic", "qos2"))
def _order_qos2(ctx: Context) -> Observed | None:
    topic = ctx.topic()
    sub, _ = ctx.connect("sub")
    subscribe_one(sub, topic, 2)
    pub, _ = ctx.connect("pub")
    ids = [5, 3, 9]
    for i, pid in enumerate(ids):
        pub.send(Publish(topic, b"m%d" % i, qos=2, packet_id=pid))
    recs = [pub.await_packet(PubRec, "MQTT-4.3.3-2", "PUBREC").packet_id for _ in ids]
    if recs != ids:
        raise Violation("MQTT-4.6.0-3", f"PUBRECs for {recs}, PUBLISHes {ids}")
    for pid in ids:
        pub.send(PubRel(pid))
    for _ in ids:
        pub.await_packet(PubComp, "MQTT-4.3.3-2", "PUBCOMP")
    got = sub.publishes(3, ack=False, settle=False)
    if len(got) != 3 or any(p.packet_id is None for p in got):
        raise Violation("MQTT-3.3.5-1", f"{len(got)} of 3 delivered at QoS 2")
    ours = [p.packet_id for p in reversed(got) if p.packet_id is not None]
    for pid in ours:
        sub.send(PubRec(pid))
    rels = [sub.await_packet(PubRel, "MQTT-4.3.3-1", "PUBREL").packet_id for _ in ours]
    for pid in rels:
        sub.send(PubComp(pid))
    if rels != ours:
        raise Violation("MQTT-4.6.0-4", f"PUBRELs for {rels}, our PUBRECs {ours}")
    return None


@check("session.redelivery-pubrel", "after PUBREC, a resumed session gets PUBREL again, not "
       "the PUBLISH", "MQTT-4.4.0-1", "MQTT-4.3.3-1", needs=("any-topic", "sessions", "qos2"))
def _redeliver_pubrel(ctx: Context) -> Observed | None:
    topic = ctx.topic()
    sub, _ = ctx.connect("sub", clean_session=False)
    subscribe_one(sub, topic, 2)
    pub, _ = ctx.connect("pub")
    pub.publish_qos(topic, b"q2", 2)
    first = sub.publishes(1, ack=False, settle=False)
    if not first or first[0].packet_id is None:
        raise Violation("MQTT-3.3.2-3", "not delivered at QoS 2")
    pid = first[0].packet_id
    sub.send(PubRec(pid))
    sub.expect(PubRel, "MQTT-4.3.3-1", what="PUBREL")
    sub.drop()
    sub, _ = ctx.connect("sub", clean_session=False)
    try:
        packet = sub.next()
        if isinstance(packet, PubRel):
            sub.send(PubComp(packet.packet_id))
            if packet.packet_id != pid:
                raise Violation("MQTT-2.3.1-3", f"PUBREL {packet.packet_id}, expected {pid}")
        elif isinstance(packet, Publish):
            raise Violation("MQTT-4.3.3-1", "resent the PUBLISH after PUBREC")
        else:
            raise Violation("MQTT-4.4.0-1", f"PUBREL not resent (got {packet!r})")
    finally:
        sub.disconnect()
        ctx.connect("sub", clean_session=True)[0].disconnect()
    return None


def _retained(probe: Probe, topic: str, qos: int = 0) -> list[Publish]:
    subscribe_one(probe, topic, qos, packet_id=11)
    return probe.publishes(1)


def _settled_retained(ctx: Context, topic: str, want: list[bytes], qos: int = 0
                      ) -> list[Publish]:
    """What new subscribers get, asked again (fresh connections) until it is
    ``want`` or the answer timeout passes: a broker may store retained messages
    a moment after acknowledging them (nothing orders two connections)."""
    deadline = time.monotonic() + ctx.target.answer_timeout
    n = 0
    while True:
        n += 1
        probe, _ = ctx.connect(f"late{n}")
        got = _retained(probe, topic, qos)
        probe.disconnect()
        if [p.payload for p in got] == want or time.monotonic() > deadline:
            return got


def _clear(ctx: Context, topic: str) -> None:
    probe, _ = ctx.connect("clear")
    probe.send(Publish(topic, b"", retain=True))
    probe.ping()


@check("retain.store", "a retained message goes to new subscribers with RETAIN 1, to live "
       "ones with RETAIN 0", "MQTT-3.3.1-5", "MQTT-3.3.1-6", "MQTT-3.3.1-8", "MQTT-3.3.1-9",
       "MQTT-3.1.2-7", needs=("any-topic", "retain"))
def _retain_store(ctx: Context) -> Observed | None:
    topic = ctx.topic()
    live, _ = ctx.connect("live")
    subscribe_one(live, topic, 1)
    pub, _ = ctx.connect("pub")
    try:
        pub.publish_qos(topic, b"kept", 1, retain=True)
        pub.disconnect()  # retained messages outlive the publisher's session
        got = _one(live, "MQTT-3.3.2-3", "the retained message to a live subscriber")
        if got.retain:
            raise Violation("MQTT-3.3.1-9", "forwarded to a live subscriber with RETAIN 1")
        stored = _settled_retained(ctx, topic, [b"kept"], 1)
        if not stored or stored[0].payload != b"kept":
            raise Violation("MQTT-3.3.1-6", f"new subscriber got {stored!r}")
        if not stored[0].retain:
            raise Violation("MQTT-3.3.1-8", "sent on subscribe with RETAIN 0")
    finally:
        _clear(ctx, topic)
    return None


@check("retain.replace-and-keep", "a QoS 0 retained message replaces the previous one; a "
       "non-retained one leaves it", "MQTT-3.3.1-7", "MQTT-3.3.1-12",
       needs=("any-topic", "retain"))
def _retain_replace(ctx: Context) -> Observed | None:
    topic = ctx.topic()
    pub, _ = ctx.connect("pub")
    try:
        pub.publish_qos(topic, b"first", 1, retain=True)
        pub.publish_qos(topic, b"second", 0, retain=True)
        pub.publish_qos(topic, b"plain", 1, retain=False, packet_id=2)
        stored = [p.payload for p in _settled_retained(ctx, topic, [b"second"])]
        if stored != [b"second"]:
            raise Violation("MQTT-3.3.1-7" if b"first" in stored else "MQTT-3.3.1-12",
                            f"a new subscriber got {stored}")
    finally:
        _clear(ctx, topic)
    return None


@check("retain.clear", "an empty retained message clears the topic and is not stored",
       "MQTT-3.3.1-10", "MQTT-3.3.1-11", needs=("any-topic", "retain"))
def _retain_clear(ctx: Context) -> Observed | None:
    topic = ctx.topic()
    pub, _ = ctx.connect("pub")
    pub.publish_qos(topic, b"soon gone", 1, retain=True)
    pub.publish_qos(topic, b"", 1, retain=True, packet_id=2)
    got = _settled_retained(ctx, topic, [], 1)
    if got:
        raise Violation("MQTT-3.3.1-10" if got[0].payload else "MQTT-3.3.1-11",
                        f"a new subscriber got {got[0]!r}")
    return None


@check("retain.qos", "a QoS 1 retained message sent to a QoS 0 subscriber arrives at QoS 0",
       "MQTT-3.3.5-1", needs=("any-topic", "retain"))
def _retain_qos(ctx: Context) -> Observed | None:
    topic = ctx.topic()
    pub, _ = ctx.connect("pub")
    try:
        pub.publish_qos(topic, b"r", 1, retain=True)
        stored = _settled_retained(ctx, topic, [b"r"], 0)
        if not stored:
            raise Violation("MQTT-3.3.1-6", "no retained message on subscribe")
        if stored[0].qos != 0:
            raise Violation("MQTT-3.3.5-1", f"delivered at QoS {stored[0].qos} to a QoS 0 "
                            "subscription")
    finally:
        _clear(ctx, topic)
    return None
