"""SUBSCRIBE/SUBACK, UNSUBSCRIBE/UNSUBACK and topic matching."""

from __future__ import annotations

from iotdev_mqtt import Publish, SubAck, Subscribe, UnsubAck, Unsubscribe

from ._checks_connect import subscribe_one
from ._context import Context, Probe
from ._model import Observed, Skip, Violation, check

__all__: list[str] = []


def _unsubscribe(probe: Probe, filters: tuple[str, ...], packet_id: int) -> None:
    probe.send(Unsubscribe(packet_id, filters))
    ack = probe.await_packet(UnsubAck, "MQTT-3.10.4-4", f"UNSUBACK {packet_id}")
    if ack.packet_id != packet_id:
        raise Violation("MQTT-2.3.1-7", f"UNSUBACK {ack.packet_id} for UNSUBSCRIBE {packet_id}")


@check("subscribe.suback", "SUBSCRIBE with three filters: one SUBACK, same id, one code per "
       "filter in order, none above the request", "MQTT-3.8.4-1", "MQTT-3.8.4-2",
       "MQTT-3.8.4-4", "MQTT-3.8.4-5", "MQTT-3.9.3-1", "MQTT-3.9.3-2", "MQTT-2.3.1-7",
       "MQTT-3.8.4-6", "MQTT-2.2.2-1", needs=("any-topic",))
def _suback(ctx: Context) -> Observed | None:
    probe, _ = ctx.connect("c1")
    requested = ((ctx.topic("a"), 2), (ctx.topic("b"), 0), (ctx.topic("c"), 1))
    probe.send(Subscribe(0x4242, requested))
    ack = probe.expect(SubAck, "MQTT-3.8.4-1", what="SUBACK")
    if ack.packet_id != 0x4242:
        raise Violation("MQTT-3.8.4-2", f"SUBACK id {ack.packet_id}")
    if len(ack.return_codes) != 3:
        raise Violation("MQTT-3.8.4-5", f"{len(ack.return_codes)} codes for 3 filters")
    for (_, want), code in zip(requested, ack.return_codes, strict=True):
        if code != 0x80 and code > want:
            raise Violation("MQTT-3.9.3-1", f"codes {ack.return_codes} for QoS 2, 0, 1 (in "
                            "order, none may exceed its request)")
    if 0x80 in ack.return_codes:
        return Observed("refuses-some", f"codes {ack.return_codes}")
    if ack.return_codes != (2, 0, 1):
        return Observed("downgrades", f"codes {ack.return_codes}")
    return None


@check("subscribe.replace", "subscribing to the same filter again replaces the subscription "
       "(one copy, new QoS)", "MQTT-3.8.4-3", needs=("any-topic",))
def _replace(ctx: Context) -> Observed | None:
    topic = ctx.topic()
    probe, _ = ctx.connect("c1")
    subscribe_one(probe, topic, 1, packet_id=1)
    subscribe_one(probe, topic, 0, packet_id=2)
    pub, _ = ctx.connect("pub")
    pub.publish_qos(topic, b"x", 1)
    got = probe.publishes(1)
    if len(got) != 1:
        raise Violation("MQTT-3.8.4-3", f"{len(got)} copies after re-subscribing")
    if got[0].qos != 0:
        raise Violation("MQTT-3.8.4-3", f"delivered at QoS {got[0].qos}; the new subscription "
                        "has QoS 0")
    return None


@check("subscribe.replace-resends-retained", "re-subscribing to the same filter resends the "
       "retained message", "MQTT-3.8.4-3", needs=("any-topic", "retain"))
def _replace_retained(ctx: Context) -> Observed | None:
    topic = ctx.topic()
    probe, _ = ctx.connect("c1")
    try:
        probe.publish_qos(topic, b"kept", 1, retain=True)
        subscribe_one(probe, topic, 0, packet_id=2)
        first = probe.publishes(1)
        subscribe_one(probe, topic, 0, packet_id=3)
        second = probe.publishes(1)
        if not first or not second:
            raise Violation("MQTT-3.8.4-3", f"retained deliveries: {len(first)} then "
                            f"{len(second)}")
    finally:
        probe.send(Publish(topic, b"", retain=True))
        probe.ping()
    return None


@check("subscribe.overlapping", "overlapping subscriptions: one copy at the highest QoS or one "
       "per subscription", "MQTT-3.3.5-1", needs=("any-topic", "wildcards"))
def _overlapping(ctx: Context) -> Observed | None:
    base = ctx.topic()
    probe, _ = ctx.connect("c1")
    subscribe_one(probe, base + "/#", 0, packet_id=1)
    subscribe_one(probe, base + "/+", 1, packet_id=2)
    pub, _ = ctx.connect("pub")
    pub.publish_qos(base + "/x", b"o", 1)
    got = probe.publishes(2)
    if not got:
        raise Violation("MQTT-3.3.2-3", "not delivered")
    if len(got) == 1:
        if got[0].qos != 1:
            raise Violation("MQTT-3.3.5-1", f"one copy at QoS {got[0].qos}, not the maximum 1")
        return Observed("one-copy")
    return Observed("copy-per-subscription")


@check("subscribe.wildcard-matching", "'#' matches its parent level, '+' one level (even "
       "empty), matching is case-sensitive", "MQTT-4.7.1-2", "MQTT-4.7.1-3", "MQTT-4.7.3-4",
       "MQTT-3.3.2-3", "MQTT-3.8.3-2", needs=("any-topic", "wildcards"))
def _matching(ctx: Context) -> Observed | None:
    base = ctx.topic()
    sub, _ = ctx.connect("c1")
    subscribe_one(sub, base + "/sport/#", 0, packet_id=1)
    subscribe_one(sub, base + "/news/+", 0, packet_id=2)
    pub, _ = ctx.connect("pub")
    cases = {  # topic -> should match
        base + "/sport": True, base + "/sport/tennis/p1": True, base + "/news/": True,
        base + "/news": False, base + "/news/a/b": False, base + "/Sport": False,
    }
    for topic in cases:
        pub.publish_qos(topic, b"m", 0)
    pub.ping()
    got = {p.topic for p in sub.publishes(sum(cases.values()))}
    for topic, should in cases.items():
        if (topic in got) != should:
            rule = "MQTT-4.7.3-4" if "Sport" in topic else (
                "MQTT-4.7.1-2" if "sport" in topic else "MQTT-4.7.1-3")
            raise Violation(rule, f"{topic!r} {'not ' if should else ''}delivered; got "
                            f"{sorted(got)}")
    return None


@check("subscribe.dollar-topics", "filters starting with '#' or '+' do not match '$' topics",
       "MQTT-4.7.2-1", needs=("any-topic", "wildcards", "dollar-topics"))
def _dollar(ctx: Context) -> Observed | None:
    topic = f"${ctx.target.client_id_prefix}-{ctx.new_token()}/x"
    control, _ = ctx.connect("control")
    subscribe_one(control, topic, 0, packet_id=1)
    wild, _ = ctx.connect("wild")
    subscribe_one(wild, "#", 0, packet_id=1)
    subscribe_one(wild, "+/x", 0, packet_id=2)
    pub, _ = ctx.connect("pub")
    pub.publish_qos(topic, b"$", 1)
    if not control.publishes(1):
        raise Skip("the broker does not route client publishes to '$' topics")
    leaked = [p for p in wild.publishes(1, ctx.target.quiet_timeout) if p.topic == topic]
    while wild.pending:  # other traffic on a shared broker matches '#'
        wild.pending.popleft()
    if leaked:
        raise Violation("MQTT-4.7.2-1", f"'#' or '+/x' received {topic!r}")
    return None


@check("subscribe.bom-kept", "a topic starting with U+FEFF is matched and forwarded byte for "
       "byte", "MQTT-1.5.3-3", "MQTT-4.7.3-4", needs=("any-topic",))
def _bom(ctx: Context) -> Observed | None:
    topic = "\ufeff" + ctx.topic()
    probe, _ = ctx.connect("c1")
    subscribe_one(probe, topic, 0)
    probe.publish_qos(topic, b"bom", 0)
    got = probe.publishes(1)
    if not got or got[0].topic != topic:
        raise Violation("MQTT-1.5.3-3", f"got {got!r} for a topic starting with U+FEFF")
    return None


@check("unsubscribe.basic", "UNSUBSCRIBE is answered with the same id and stops delivery",
       "MQTT-3.10.4-1", "MQTT-3.10.4-2", "MQTT-3.10.4-4", "MQTT-2.3.1-7",
       needs=("any-topic",))
def _unsubscribe_basic(ctx: Context) -> Observed | None:
    topic = ctx.topic()
    probe, _ = ctx.connect("c1")
    subscribe_one(probe, topic, 1)
    _unsubscribe(probe, (topic,), 0x0102)
    probe.publish_qos(topic, b"after", 1, packet_id=2)
    if probe.publishes(1, ctx.target.quiet_timeout * 2):
        raise Violation("MQTT-3.10.4-2", "delivered after UNSUBSCRIBE")
    return None


@check("unsubscribe.unknown-filter", "UNSUBSCRIBE of a filter never subscribed still gets "
       "UNSUBACK", "MQTT-3.10.4-5", needs=("any-topic",))
def _unsubscribe_unknown(ctx: Context) -> Observed | None:
    probe, _ = ctx.connect("c1")
    _unsubscribe(probe, (ctx.topic("never"),), 9)
    probe.ping()
    return None


@check("unsubscribe.exact-string", "UNSUBSCRIBE compares filters as strings: 'a/x' does not "
       "remove 'a/+'; two filters get one UNSUBACK", "MQTT-3.10.4-1", "MQTT-3.10.4-6",
       needs=("any-topic", "wildcards"))
def _unsubscribe_exact(ctx: Context) -> Observed | None:
    base = ctx.topic()
    probe, _ = ctx.connect("c1")
    subscribe_one(probe, base + "/+", 1, packet_id=1)
    _unsubscribe(probe, (base + "/x", base + "/other"), 2)
    probe.ping()  # a second UNSUBACK would arrive before the PINGRESP
    extra = [p for p in probe.pending if isinstance(p, UnsubAck)]
    if extra:
        raise Violation("MQTT-3.10.4-6", "more than one UNSUBACK for one UNSUBSCRIBE")
    probe.publish_qos(base + "/x", b"still", 1, packet_id=3)
    if not probe.publishes(1):
        raise Violation("MQTT-3.10.4-1", "'/x' removed the '/+' subscription")
    return None


def _own(ctx: Context, template: str | None, client_id: str) -> str:
    if template is None:
        raise Skip("the profile names no per-client topic (only restricted brokers do)")
    return template.format(client_id=client_id)


@check("profile.publish-own-topic", "QoS 0 and QoS 1 publishes to the client's own topic: "
       "nothing, then PUBACK with the same id", "MQTT-4.3.2-1", "MQTT-2.3.1-6",
       "MQTT-3.3.4-1", "MQTT-4.3.1-1")
def _publish_own(ctx: Context) -> Observed | None:
    probe, _ = ctx.connect("c1")
    topic = _own(ctx, ctx.profile.publish_topic, probe.client_id)
    probe.publish_qos(topic, b"{}", 0)
    probe.publish_qos(topic, b"{}", 1, packet_id=0x2A2A)
    probe.ping()
    return None


@check("profile.subscribe-own-filter", "subscribing to the client's own filter at QoS 1 and "
       "QoS 2: one code each, QoS 2 possibly granted lower", "MQTT-3.8.4-1", "MQTT-3.8.4-5",
       "MQTT-3.8.4-6", "MQTT-3.9.3-2")
def _subscribe_own(ctx: Context) -> Observed | None:
    probe, _ = ctx.connect("c1")
    topic_filter = _own(ctx, ctx.profile.subscribe_filter, probe.client_id)
    granted = subscribe_one(probe, topic_filter, 1, packet_id=1)
    if granted > 1:
        raise Violation("MQTT-3.8.4-6", f"granted QoS {granted} for a QoS 1 request")
    probe.send(Subscribe(2, ((topic_filter, 2),)))
    ack = probe.await_packet(SubAck, "MQTT-3.8.4-1", "SUBACK 2")
    if len(ack.return_codes) != 1:
        raise Violation("MQTT-3.8.4-5", f"{len(ack.return_codes)} codes for one filter")
    if ack.return_codes[0] != 2:
        return Observed(f"qos2-granted-{ack.return_codes[0]:#04x}",
                        "QoS 2 subscription granted lower (allowed by 3.8.4-6)")
    return None
