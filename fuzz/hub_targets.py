"""Fuzz targets for ``iotdev._hub_topics``: ``property-bag`` and ``hub-topics``.

The input is text: UTF-8 with ``surrogateescape``, so bytes that are not UTF-8
become lone surrogates (which no MQTT topic carries, but the functions take any
``str``).

``property-bag`` (the contract of ``decode_property_bag`` /
``encode_property_bag`` / ``split_received_properties``):

1. ``decode_property_bag`` returns ``(str, str | None)`` pairs for any text, one
   per ``&``-separated entry (none for ``""``), never raises;
2. ``split_received_properties`` sorts them as documented: system keys become
   attributes, ``$.to`` is dropped, everything else is custom, a later
   duplicate wins;
3. round trips, for the pairs decode produced (when no value is ``None``: a key
   without ``=`` has no encoding): ``decode(encode(pairs)) == pairs`` and
   ``encode`` is a fixed point on its own output; with the pairs split as the
   hub sends them (``$.`` keys as system pairs, the rest as custom properties)
   ``decode(encode(system, custom)) == system + sorted(custom)``.  Text with
   lone surrogates cannot be encoded: ``encode`` must then raise the
   ``UnicodeEncodeError`` (a ``ValueError``) it documents.

``hub-topics``: the input, alone and behind each IoT Hub prefix, goes through
every topic parser:

1. each returns ``None`` or a tuple of the documented types, never raises;
2. at most one of the C2D, method request, twin response and desired-patch
   parsers (the ones ``_session.HubSession.message`` dispatches on) recognises a
   topic; a strict desired-patch match is also a lenient one;
3. what a parser returns, given to the matching builder, builds a topic that
   parses back to the same values (when the builder accepts it: ids with ``+``,
   ``#`` or U+0000 are refused with ``ValueError``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from iotdev._hub_topics import (
    C2D_DROPPED_KEYS,
    C2D_SYSTEM_PROPERTIES,
    c2d_topic,
    decode_property_bag,
    encode_property_bag,
    input_topic,
    is_twin_desired_patch_topic,
    method_request_topic,
    method_response_topic,
    parse_c2d_topic,
    parse_input_topic,
    parse_method_request_topic,
    parse_method_response_topic,
    parse_telemetry_topic,
    parse_twin_desired_patch_topic,
    parse_twin_request_topic,
    parse_twin_response_topic,
    split_received_properties,
    telemetry_topic,
    twin_desired_patch_topic,
    twin_get_topic,
    twin_patch_reported_topic,
    twin_response_topic,
)

from .checks import breach, short
from .registry import register

__all__ = ["text_of"]


def text_of(data: bytes) -> str:
    """The input as text: UTF-8, other bytes as lone surrogates (``surrogateescape``)."""
    return data.decode("utf-8", "surrogateescape")


def _encodable(*texts: str | None) -> bool:
    return not any(
        t is not None and any(0xD800 <= ord(c) <= 0xDFFF for c in t) for t in texts
    )


def _call(what: str, fn: Callable[..., Any], data: bytes, *args: Any) -> Any:
    try:
        return fn(*args)
    except Exception as exc:
        raise breach("unexpected-exception", f"{what}{short(args)}: {exc!r}", data) from exc


def _encode(system: list[tuple[str, str]], custom: dict[str, str] | None,
            data: bytes) -> str | None:
    """``encode_property_bag``; ``None`` when it (rightly) refused lone surrogates."""
    texts = [t for pair in system for t in pair]
    if custom:
        texts += [t for pair in custom.items() for t in pair]
    try:
        return encode_property_bag(system, custom)
    except UnicodeEncodeError as exc:
        if _encodable(*texts):
            raise breach("bag-encode", f"encode{short((system, custom))}: {exc!r}", data) from exc
        return None
    except Exception as exc:
        raise breach("bag-encode", f"encode{short((system, custom))}: {exc!r}", data) from exc


def _check_split(pairs: list[tuple[str, str | None]], data: bytes) -> str:
    attributes, custom = _call("split_received_properties", split_received_properties, data,
                               pairs)
    want_attributes: dict[str, str | None] = {}
    want_custom: dict[str, str | None] = {}
    for key, value in pairs:
        if key in C2D_DROPPED_KEYS:
            continue
        if key in C2D_SYSTEM_PROPERTIES:
            want_attributes[C2D_SYSTEM_PROPERTIES[key]] = value
        else:
            want_custom[key] = value
    if attributes != want_attributes or custom != want_custom:
        raise breach("bag-split", f"split gave {short((attributes, custom))}, expected "
                     f"{short((want_attributes, want_custom))}", data)
    return "attrs" if attributes else ""


@register(
    "property-bag",
    "decode/encode_property_bag, split_received_properties: any text, round trips",
    shared_seeds=False,
    instrument=("iotdev._hub_topics", "urllib.parse"),
    tokens=("&", "=", "%", "%2", "%26", "%3D", "%24", "%C3%A9", "%ZZ", "%ff", "$.mid=",
            "$.cid=", "$.to=", "$.ct=", "$.ce=", "$.exp=", "iothub-ack=", "+", "\x00"),
    seeds=lambda: [
        b"", b"a=b", b"a", b"a=", b"=", b"&", b"a&&b", b"a=b=c", b"%24.mid=1&%24.to=%2Fx&k=v",
        b"$.mid=12&$.cid=c&$.uid=u&$.ct=application%2Fjson&$.ce=utf-8&$.exp=2025&iothub-ack=full",
        b"k%20ey=v%20al&plus=a+b&pct=%25&bad=%zz&half=%C3&utf=%C3%A9",
        b"k=1&k=2&%24.mid=a&%24.mid=b", b"\xc3\xa9=\xe2\x82\xac", b"a=\xff", b"\xed\xa0\x80=x",
    ],
)
def property_bag(data: bytes) -> str:
    text = text_of(data)
    pairs = _call("decode_property_bag", decode_property_bag, data, text)
    if type(pairs) is not list or not all(
        type(p) is tuple and len(p) == 2 and type(p[0]) is str and (p[1] is None or type(p[1])
                                                                    is str)
        for p in pairs
    ):
        raise breach("bag-types", f"decode_property_bag returned {short(pairs)}", data)
    expected_count = text.count("&") + 1 if text else 0
    if len(pairs) != expected_count:
        raise breach("bag-entries", f"{len(pairs)} pairs for {expected_count} entries", data)
    label = _check_split(pairs, data)
    if any(value is None for _, value in pairs):
        return f"bag {'empty' if not pairs else 'bare keys'} {label}".strip()
    full: list[tuple[str, str]] = [(k, v) for k, v in pairs if v is not None]
    bag = _encode(full, None, data)
    if bag is None:
        return f"bag surrogates {label}".strip()
    again = _call("decode_property_bag", decode_property_bag, data, bag)
    if again != full:
        raise breach("bag-roundtrip", f"{short(full)} encodes to {short(bag)}, which decodes "
                     f"to {short(again)}", data)
    if _encode(full, None, data) != bag or _encode(again, None, data) != bag:
        raise breach("bag-fixed-point", f"encoding {short(full)} is not stable", data)
    system = [(k, v) for k, v in full if k.startswith("$.")]
    custom = {k: v for k, v in full if not k.startswith("$.")}
    mixed = _encode(system, custom, data)
    want = system + sorted(custom.items())
    got = _call("decode_property_bag", decode_property_bag, data, mixed)
    if got != want:
        raise breach("bag-roundtrip", f"system {short(system)} + custom {short(custom)} encode "
                     f"to {short(mixed)}, which decodes to {short(got)}", data)
    kinds = "system+custom" if system and custom else "system" if system else "custom"
    return f"bag {kinds if full else 'empty'} {label}".strip()


# --------------------------------------------------------------------------- topics

_PREFIXES = (
    "",
    "devices/dev1/messages/devicebound/",
    "devices/dev1/modules/m1/inputs/",
    "devices/dev1/messages/events/",
    "$iothub/methods/POST/",
    "$iothub/methods/res/",
    "$iothub/twin/res/",
    "$iothub/twin/GET/",
    "$iothub/twin/PATCH/properties/reported/",
    "$iothub/twin/PATCH/properties/desired/",
)


def _same(what: str, topic: str, parsed: object, build: Callable[[], str],
          parse: Callable[[str], object], data: bytes) -> None:
    """``parse(build())`` gives ``parsed`` back (a builder's ``ValueError`` excused)."""
    try:
        rebuilt = build()
    except ValueError:
        return
    except Exception as exc:
        raise breach("topic-roundtrip", f"building {what} from {short(parsed)}: {exc!r}",
                     data) from exc
    back = _call(f"parse {what}", parse, data, rebuilt)
    if back != parsed:
        raise breach("topic-roundtrip", f"{short(topic)} parses as {what} {short(parsed)}, "
                     f"rebuilt as {short(rebuilt)}, which parses as {short(back)}", data)


def _is(value: object, *types: type) -> bool:
    return type(value) in types


def _check_topic(topic: str, data: bytes) -> list[str]:
    seen: list[str] = []
    c2d = _call("parse_c2d_topic", parse_c2d_topic, data, topic)
    if c2d is not None:
        seen.append("c2d")
        device, bag = c2d
        if not (_is(device, str) and _is(bag, str)) or not device or "/" in device:
            raise breach("topic-types", f"parse_c2d_topic({short(topic)}) = {short(c2d)}", data)
        if topic not in (f"devices/{device}/messages/devicebound/{bag}",
                         f"devices/{device}/messages/devicebound" if not bag else None):
            raise breach("topic-structure", f"{short(topic)} is not C2D {short(c2d)}", data)
        if _encodable(topic):
            _same("c2d", topic, c2d, lambda: c2d_topic(device, bag), parse_c2d_topic, data)
    method = _call("parse_method_request_topic", parse_method_request_topic, data, topic)
    if method is not None:
        seen.append("method")
        name, rid = method
        if not (_is(name, str) and _is(rid, str)) or not name:
            raise breach("topic-types", f"parse_method_request_topic = {short(method)}", data)
        if _encodable(name, rid):
            _same("method", topic, method, lambda: method_request_topic(name, rid),
                  parse_method_request_topic, data)
    twin = _call("parse_twin_response_topic", parse_twin_response_topic, data, topic)
    if twin is not None:
        seen.append("twin-res")
        status, rid, version = twin
        if not (_is(status, int) and _is(rid, str) and (version is None or _is(version, int))):
            raise breach("topic-types", f"parse_twin_response_topic = {short(twin)}", data)
        if version is not None and version < 0:
            raise breach("topic-types", f"negative $version in {short(twin)}", data)
        if _encodable(rid):
            _same("twin response", topic, twin, lambda: twin_response_topic(status, rid, version),
                  parse_twin_response_topic, data)
    desired = _call("parse_twin_desired_patch_topic", parse_twin_desired_patch_topic, data,
                    topic)
    if desired is not None:
        seen.append("desired")
        if not _is(desired, int) or desired < 0:
            raise breach("topic-types", f"parse_twin_desired_patch_topic = {desired!r}", data)
        if not is_twin_desired_patch_topic(topic):
            raise breach("topic-lenient", f"{short(topic)}: strict desired patch, not lenient",
                         data)
        _same("desired patch", topic, desired, lambda: twin_desired_patch_topic(desired),
              parse_twin_desired_patch_topic, data)
    if len(seen) > 1:
        raise breach("topic-kinds", f"{short(topic)} parses as {' and '.join(seen)}", data)
    _check_other_parsers(topic, data, seen)
    return seen


def _check_other_parsers(topic: str, data: bytes, seen: list[str]) -> None:
    """The parsers the emulator uses: no exception, documented types, round trips."""
    encodable = _encodable(topic)
    lenient = _call("is_twin_desired_patch_topic", is_twin_desired_patch_topic, data, topic)
    if lenient is not True and lenient is not False:
        raise breach("topic-types", f"is_twin_desired_patch_topic = {lenient!r}", data)
    telemetry = _call("parse_telemetry_topic", parse_telemetry_topic, data, topic)
    if telemetry is not None:
        seen.append("telemetry")
        device, module, bag = telemetry
        if encodable:
            _same("telemetry", topic, telemetry, lambda: telemetry_topic(device, module, bag),
                  parse_telemetry_topic, data)
    inputs = _call("parse_input_topic", parse_input_topic, data, topic)
    if inputs is not None:
        seen.append("input")
        device, module, name, bag = inputs
        if _encodable(topic, name):
            _same("input", topic, inputs, lambda: input_topic(device, module, name, bag),
                  parse_input_topic, data)
    response = _call("parse_method_response_topic", parse_method_response_topic, data, topic)
    if response is not None:
        seen.append("method-res")
        status, rid = response
        if _encodable(rid):
            _same("method response", topic, response,
                  lambda: method_response_topic(status, rid), parse_method_response_topic, data)
    request = _call("parse_twin_request_topic", parse_twin_request_topic, data, topic)
    if request is not None:
        seen.append("twin-req")
        kind, rid = request
        if _encodable(rid):
            build = twin_get_topic if kind == "GET" else twin_patch_reported_topic
            _same("twin request", topic, request, lambda: build(rid),
                  parse_twin_request_topic, data)


@register(
    "hub-topics",
    "IoT Hub topic parsers (C2D, methods, twin, inputs, telemetry): any text, round trips",
    shared_seeds=False,
    instrument=("iotdev._hub_topics", "urllib.parse"),
    tokens=("/", "?", "&", "=", "$rid=", "$version=", "%24rid=", "devices/", "modules/",
            "messages/", "devicebound", "events", "inputs/", "$iothub/", "methods/", "POST/",
            "res/", "twin/", "GET/", "PATCH/", "properties/", "desired/", "reported/", "%2F",
            "%", "-", "200/", "204/", "\x00", "+", "#"),
    seeds=lambda: [
        b"", b"devices/dev1/messages/devicebound/%24.mid=1&k=v",
        b"devices/dev1/messages/devicebound", b"devices//messages/devicebound/",
        b"$iothub/methods/POST/reboot/?$rid=1", b"$iothub/methods/POST/a%2Fb/?$rid=x&$rid=y",
        b"$iothub/methods/POST//?$rid=1", b"$iothub/methods/POST/m/?rid",
        b"$iothub/twin/res/200/?$rid=7", b"$iothub/twin/res/204/?$rid=7&$version=3",
        b"$iothub/twin/res/-1/?$rid=&$version=x", b"$iothub/twin/res/%32%30%30/?%24rid=1",
        b"$iothub/twin/PATCH/properties/desired/?$version=12",
        b"$iothub/twin/PATCH/properties/desired/?$version=12&$rid=1",
        b"$iothub/twin/PATCH/properties/desiredX", b"$iothub/twin/GET/?$rid=1",
        b"$iothub/twin/PATCH/properties/reported/?$rid=1", b"$iothub/methods/res/200/?$rid=1",
        b"devices/d/modules/m/inputs/in%201/k=v", b"devices/d/modules/m/messages/events/a=b",
        b"?$rid=1", b"reboot/?$rid=1", b"200/?$rid=1&$version=99999999999999999999",
        b"?$version=1", b"d\xff/messages/devicebound/", b"\xed\xa0\x80",
    ],
)
def hub_topics(data: bytes) -> str:
    text = text_of(data)
    kinds: set[str] = set()
    for prefix in _PREFIXES:
        kinds.update(_check_topic(prefix + text, data))
    return "+".join(sorted(kinds)) or "none"
