"""Topic names, topic filters and matching (MQTT 3.1.1 section 4.7; reference section 3).

The 36 match rows come from ``mqtt-3.1.1-vectors.json`` (``IOTDEV_MQTT_VECTORS``
overrides its path; a missing file fails the collection on purpose).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from iotdev_mqtt import (
    LocalProtocolError,
    topic_matches,
    validate_topic_filter,
    validate_topic_name,
)

VECTORS_PATH = Path(
    os.environ.get(
        "IOTDEV_MQTT_VECTORS", str(Path(__file__).with_name("data") / "mqtt-3.1.1-vectors.json")
    )
)
TOPIC_MATCH: list[dict[str, Any]] = json.loads(VECTORS_PATH.read_text(encoding="utf-8"))[
    "topic_match"
]


def row_id(row: dict[str, Any]) -> str:
    return f"{row['filter']!r}-{row['topic']!r}"


def test_match_table_has_36_rows_with_both_outcomes() -> None:
    assert len(TOPIC_MATCH) == 36
    assert {row["match"] for row in TOPIC_MATCH} == {True, False}


@pytest.mark.parametrize("row", TOPIC_MATCH, ids=row_id)
def test_topic_match_table(row: dict[str, Any]) -> None:
    assert topic_matches(row["filter"], row["topic"]) is row["match"]


@pytest.mark.parametrize("row", TOPIC_MATCH, ids=row_id)
def test_topic_match_table_rows_are_valid_inputs(row: dict[str, Any]) -> None:
    # topic_matches assumes valid arguments; every row of the table is valid.
    validate_topic_filter(row["filter"])
    validate_topic_name(row["topic"])


@pytest.mark.parametrize(
    ("topic_filter", "topic", "expected"),
    [
        # Exact comparison, no normalisation [MQTT-4.7.3-4].
        ("sport", "Sport", False),
        ("caf\u00e9", "cafe\u0301", False),
        ("a/b", "a/b", True),
        # '$' rule only looks at the first character [MQTT-4.7.2-1].
        ("+/$x", "a/$x", True),
        ("a/#", "a/$x", True),
        ("$", "$", True),
        ("#", "$", False),
        ("+", "$", False),
        # '#' also matches the parent level; '+' exactly one (possibly empty) level.
        ("#", "/", True),
        ("+/+", "a/", True),
        ("+/+", "/", True),
        ("+/+/+", "/", False),
        ("a/+/#", "a/b/c/d", True),
        ("a/+/#", "a", False),
    ],
)
def test_topic_match_edges(topic_filter: str, topic: str, expected: bool) -> None:
    assert topic_matches(topic_filter, topic) is expected


VALID_NAMES = [
    "/",
    "//",
    "/finance",
    "finance/",
    "a//b",
    "sport/tennis/player1",
    "Sport/Tennis",
    " ",
    "a b/c d",
    "$SYS/monitor/Clients",
    "$",
    "\ufeff/",
    "A\U0002a6d4",
    "top\x01p",
    "é" * 32767 + "a",  # 65,535 UTF-8 bytes
    "a" * 65535,
]


@pytest.mark.parametrize("name", VALID_NAMES, ids=lambda n: repr(n[:20]))
def test_valid_topic_names(name: str) -> None:
    assert validate_topic_name(name) is None


INVALID_NAMES = [
    ("", "MQTT-4.7.3-1"),
    ("+", "MQTT-3.3.2-2"),
    ("#", "MQTT-3.3.2-2"),
    ("a/+", "MQTT-3.3.2-2"),
    ("a/#", "MQTT-3.3.2-2"),
    ("sport/tennis#", "MQTT-3.3.2-2"),
    ("sport+", "MQTT-3.3.2-2"),
    ("a\x00", ("MQTT-1.5.3-2", "MQTT-4.7.3-2")),
    ("\x00", ("MQTT-1.5.3-2", "MQTT-4.7.3-2")),
    ("a/\ud800", "MQTT-1.5.3-1"),
    ("\udc00b", "MQTT-1.5.3-1"),
    ("a" * 65536, "MQTT-4.7.3-3"),
    ("é" * 32768, "MQTT-4.7.3-3"),
]


@pytest.mark.parametrize(("name", "rules"), INVALID_NAMES, ids=lambda x: repr(x)[:20])
def test_invalid_topic_names(name: str, rules: str | tuple[str, ...]) -> None:
    with pytest.raises(LocalProtocolError) as info:
        validate_topic_name(name)
    exc = info.value
    allowed = (rules,) if isinstance(rules, str) else rules
    assert exc.rule in allowed
    assert exc.field == "topic name"
    assert f"[{exc.rule}]" in str(exc)


VALID_FILTERS = [
    "#",
    "+",
    "a/#",
    "/#",
    "+/+",
    "/+",
    "+/",
    "a/+/b",
    "+/#",
    "+/+/#",
    "sport/tennis/player1/#",
    "$SYS/#",
    "$SYS/+/Clients",
    "/",
    "a//b",
    "a b/+",
    "\ufeff/#",
    "a" * 65535,
    *VALID_NAMES,
]


@pytest.mark.parametrize("topic_filter", VALID_FILTERS, ids=lambda f: repr(f[:20]))
def test_valid_topic_filters(topic_filter: str) -> None:
    assert validate_topic_filter(topic_filter) is None


INVALID_FILTERS = [
    ("", "MQTT-4.7.3-1"),
    ("a#", "MQTT-4.7.1-2"),
    ("sport/tennis#", "MQTT-4.7.1-2"),
    ("a/#/b", "MQTT-4.7.1-2"),
    ("#/a", "MQTT-4.7.1-2"),
    ("#/", "MQTT-4.7.1-2"),
    ("##", "MQTT-4.7.1-2"),
    ("#+", "MQTT-4.7.1-2"),
    ("a+", "MQTT-4.7.1-3"),
    ("+a", "MQTT-4.7.1-3"),
    ("a/b+", "MQTT-4.7.1-3"),
    ("sport+", "MQTT-4.7.1-3"),
    ("++", "MQTT-4.7.1-3"),
    ("+/a+/b", "MQTT-4.7.1-3"),
    ("a/\x00", ("MQTT-1.5.3-2", "MQTT-4.7.3-2")),
    ("\ud800/#", "MQTT-1.5.3-1"),
    ("a" * 65536, "MQTT-4.7.3-3"),
    ("+/" + "é" * 32767, "MQTT-4.7.3-3"),
]


@pytest.mark.parametrize(("topic_filter", "rules"), INVALID_FILTERS, ids=lambda x: repr(x)[:20])
def test_invalid_topic_filters(topic_filter: str, rules: str | tuple[str, ...]) -> None:
    with pytest.raises(LocalProtocolError) as info:
        validate_topic_filter(topic_filter)
    exc = info.value
    allowed = (rules,) if isinstance(rules, str) else rules
    assert exc.rule in allowed
    assert exc.field == "topic filter"
    assert f"[{exc.rule}]" in str(exc)


@pytest.mark.parametrize("value", [b"a/b", 5, None, ["a"]], ids=repr)
def test_validators_refuse_non_strings(value: Any) -> None:
    with pytest.raises(LocalProtocolError) as name_info:
        validate_topic_name(value)
    assert name_info.value.field == "topic name"
    assert type(value).__name__ in str(name_info.value)
    with pytest.raises(LocalProtocolError) as filter_info:
        validate_topic_filter(value)
    assert filter_info.value.field == "topic filter"
    assert type(value).__name__ in str(filter_info.value)
