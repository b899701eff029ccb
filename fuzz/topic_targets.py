"""Fuzz target ``mqtt-topics``: topic-name and topic-filter validation and matching.

The input is ``filter 0xFF topic`` (no ``0xFF``: the same bytes are both), each
part decoded as UTF-8 with ``surrogateescape`` so that bytes which are not
UTF-8 become lone surrogates (which MQTT forbids).  For any input:

1. ``validate_topic_filter`` / ``validate_topic_name`` raise ``LocalProtocolError``
   exactly when the oracle below says the string is invalid, naming one of the
   rules it breaks; nothing else escapes;
2. the decoder agrees: a PUBLISH, SUBSCRIBE and UNSUBSCRIBE framed by hand
   around the raw bytes decode to that string when it is valid and raise
   ``RemoteProtocolError`` when not (twice in a row: valid topic names are
   cached by their bytes); the encoder produces the same bytes or raises
   ``LocalProtocolError``;
3. for a valid filter and a valid name, ``topic_matches`` does not raise and
   agrees with a regular-expression matcher written here; every valid name
   matches itself, and filters made from the name by turning levels into ``+``
   or cutting it with ``#`` match it (unless the name starts with ``$`` and the
   filter with a wildcard, MQTT-4.7.2-1).
"""

from __future__ import annotations

import re

from iotdev_mqtt import (
    LocalProtocolError,
    PacketReader,
    Publish,
    RemoteProtocolError,
    Subscribe,
    Unsubscribe,
    encode,
    topic_matches,
    validate_topic_filter,
    validate_topic_name,
)

from .checks import breach, input_rng, short
from .registry import register
from .wire import minimal_remaining_length

__all__ = ["filter_problems", "name_problems", "oracle_matches"]

_MAX = 65535
_SEPARATOR = b"\xff"


def _string_problems(text: str) -> set[str]:
    rules = set()
    if "\x00" in text:
        rules.add("MQTT-1.5.3-2")
    if any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        rules.add("MQTT-1.5.3-1")
    elif len(text.encode("utf-8")) > _MAX:
        rules.add("MQTT-4.7.3-3")
    return rules


def name_problems(name: str) -> set[str]:
    """The rules a topic name breaks (empty set: valid), by the spec's text."""
    if name == "":
        return {"MQTT-4.7.3-1"}
    rules = _string_problems(name)
    if "+" in name or "#" in name:
        rules.add("MQTT-3.3.2-2")
    return rules


def filter_problems(topic_filter: str) -> set[str]:
    """The rules a topic filter breaks (empty set: valid), by the spec's text."""
    if topic_filter == "":
        return {"MQTT-4.7.3-1"}
    rules = _string_problems(topic_filter)
    levels = topic_filter.split("/")
    for index, level in enumerate(levels):
        if "#" in level and (level != "#" or index != len(levels) - 1):
            rules.add("MQTT-4.7.1-2")
        if "+" in level and level != "+":
            rules.add("MQTT-4.7.1-3")
    return rules


def oracle_matches(topic_filter: str, name: str) -> bool:
    """Matching (4.7.1, 4.7.2) as a regular expression; both arguments valid."""
    if name.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    levels = topic_filter.split("/")
    tail = ""
    if levels[-1] == "#":
        levels.pop()
        # "#" alone matches everything; "a/#" matches "a" and "a/<anything>".
        tail = "(?:/.*)?" if levels else ".*"
    parts = ["[^/]*" if level == "+" else re.escape(level) for level in levels]
    pattern = "/".join(parts) + tail
    return re.fullmatch(pattern, name, re.DOTALL) is not None


def _frame(first: int, body: bytes) -> bytes:
    return bytes((first,)) + minimal_remaining_length(len(body)) + body


def _string(raw: bytes) -> bytes:
    return len(raw).to_bytes(2, "big") + raw


def _check_validator(kind: str, text: str, expected: set[str], data: bytes) -> str:
    validate = validate_topic_filter if kind == "filter" else validate_topic_name
    try:
        validate(text)
    except LocalProtocolError as exc:
        if not expected:
            raise breach("validator", f"valid {kind} {short(text)} refused: {exc}", data) from exc
        if exc.rule not in expected:
            raise breach(
                "validator",
                f"{kind} {short(text)} refused under rule {exc.rule}, but it breaks "
                f"{sorted(expected)}",
                data,
            ) from exc
        return str(exc.rule)
    except Exception as exc:
        raise breach(
            "unexpected-exception", f"validate {kind} {short(text)}: {exc!r}", data
        ) from exc
    if expected:
        raise breach("validator", f"invalid {kind} {short(text)} ({sorted(expected)}) "
                     "accepted", data)
    return "ok"


def _decode(role: str, frame: bytes, data: bytes) -> list[object] | RemoteProtocolError:
    reader = PacketReader(role)  # type: ignore[arg-type]
    try:
        return list(reader.feed(frame + frame))
    except RemoteProtocolError as exc:
        return exc
    except Exception as exc:
        raise breach(
            "unexpected-exception", f"decoding {frame[:40].hex()}: {exc!r}", data
        ) from exc


def _check_codec(kind: str, raw: bytes, text: str, valid: bool, data: bytes) -> None:
    if len(raw) > _MAX:
        return
    if kind == "name":
        frame = _frame(0x30, _string(raw) + b"p")
        packets: list[object] = [Publish(text, b"p")]
        role = "client"
    else:
        frame = _frame(0x82, b"\x00\x01" + _string(raw) + b"\x01")
        packets = [Subscribe(1, ((text, 1),))]
        role = "server"
    frames = [(role, frame, packets)]
    if kind == "filter":
        frames.append(("server", _frame(0xA2, b"\x00\x01" + _string(raw)),
                       [Unsubscribe(1, (text,))]))
    for who, wire, want in frames:
        got = _decode(who, wire, data)
        if valid:
            if got != want + want:
                raise breach("decoder", f"valid {kind} {short(text)} decodes to {short(got)}",
                             data)
            try:
                again = encode(want[0])  # type: ignore[arg-type]
            except Exception as exc:
                raise breach("encoder", f"valid {kind} {short(text)}: {exc!r}", data) from exc
            if again != wire:
                raise breach("encoder", f"{short(want[0])} encodes to {again[:60].hex()}, "
                             f"not {wire[:60].hex()}", data)
        else:
            if not isinstance(got, RemoteProtocolError) or got.packets:
                raise breach("decoder", f"invalid {kind} {short(text)} decodes to {short(got)}",
                             data)
            try:
                encode(want[0])  # type: ignore[arg-type]
            except LocalProtocolError:
                pass
            except Exception as exc:
                raise breach("encoder", f"invalid {kind} {short(text)}: {exc!r}", data) from exc
            else:
                raise breach("encoder", f"invalid {kind} {short(text)} encoded", data)


def _matches(topic_filter: str, name: str, data: bytes) -> bool:
    try:
        got = topic_matches(topic_filter, name)
    except Exception as exc:
        raise breach("match-raises", f"topic_matches({topic_filter!r}, {name!r}): {exc!r}",
                     data) from exc
    want = oracle_matches(topic_filter, name)
    if got is not want:
        raise breach("match-oracle", f"topic_matches({short(topic_filter)}, {short(name)}) is "
                     f"{got}, the oracle says {want}", data)
    return got


def _derived_filters(name: str, data: bytes) -> list[str]:
    """Filters that must match ``name``: levels made ``+``, a ``#`` tail."""
    rng = input_rng(data, 3)
    levels = name.split("/")
    out = ["#", "/".join("+" for _ in levels)]
    for _ in range(3):
        plus = [("+" if rng.random() < 0.4 else level) for level in levels]
        cut = rng.randint(0, len(levels))
        out.append("/".join(plus))
        out.append("/".join([*plus[:cut], "#"]))
    return out


@register(
    "mqtt-topics",
    "validate_topic_filter/_name and topic_matches against an oracle and the codec",
    shared_seeds=False,
    instrument=("iotdev_mqtt._topics", "iotdev_mqtt._encode", "iotdev_mqtt._decode",
                "iotdev_mqtt._reader"),
    tokens=("/", "+", "#", "/#", "+/", "$SYS/", "$", "\x00", "\xff", "\xed\xa0\x80", "\ufeff"),
    seeds=lambda: [
        b"a/b\xffa/b", b"a/+\xffa/b", b"a/#\xffa", b"#\xff$SYS/x", b"+/+\xff/x", b"sport/#",
        b"a/+/#\xffa//b/c", b"+\xff", b"\xff", b"a#\xffa", b"a/b+\xffa/b", b"#/a\xffa",
        b"a\x00b\xffa", b"\xed\xa0\x80\xffx", b"/\xff/", b"+/#\xff$x/y", b"\xef\xbb\xbf/#",
    ],
)
def mqtt_topics(data: bytes) -> str:
    raw_filter, sep, raw_name = data.partition(_SEPARATOR)
    if not sep:
        raw_name = raw_filter
    topic_filter = raw_filter.decode("utf-8", "surrogateescape")
    name = raw_name.decode("utf-8", "surrogateescape")
    fbad, nbad = filter_problems(topic_filter), name_problems(name)
    flabel = _check_validator("filter", topic_filter, fbad, data)
    nlabel = _check_validator("name", name, nbad, data)
    _check_codec("filter", raw_filter, topic_filter, not fbad, data)
    _check_codec("name", raw_name, name, not nbad, data)
    match = "-"
    if not fbad and not nbad:
        match = str(_matches(topic_filter, name, data))
    if not nbad:
        if not _matches(name, name, data):
            raise breach("match-self", f"topic name {short(name)} does not match itself", data)
        for derived in _derived_filters(name, data):
            excused = name.startswith("$") and derived[:1] in ("+", "#")  # MQTT-4.7.2-1
            if not _matches(derived, name, data) and not excused:
                raise breach("match-derived", f"{short(derived)} does not match {short(name)}",
                             data)
    wild = "wild" if ("+" in topic_filter or "#" in topic_filter) else "plain"
    dollar = " $" if name.startswith("$") else ""
    return f"filter {flabel} {wild} | name {nlabel}{dollar} | match {match}"
