"""IoT Hub topics and property bags (reference sections 4.1, 5, 6, 7.1).

Vectors are the reference's worked examples; hypothesis checks round trips with
arbitrary unicode names, values and ids, and that parsers never raise.
"""

from __future__ import annotations

import ast
import uuid
from collections.abc import Callable
from datetime import date, datetime, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import quote, urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st

from iotdev import _hub_topics
from iotdev._hub_topics import (
    C2D_DROPPED_KEYS,
    C2D_SYSTEM_PROPERTIES,
    D2C_SYSTEM_PROPERTIES,
    METHOD_SUBSCRIBE_FILTER,
    TWIN_DESIRED_SUBSCRIBE_FILTER,
    TWIN_RESPONSE_SUBSCRIBE_FILTER,
    c2d_subscribe_filter,
    c2d_topic,
    d2c_system_pairs,
    decode_property_bag,
    encode_property_bag,
    input_subscribe_filter,
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

# ---------------------------------------------------------------------------
# Tables
# ---------------------------------------------------------------------------


def test_d2c_system_property_table_in_v2_order() -> None:
    assert list(D2C_SYSTEM_PROPERTIES.items()) == [
        ("output_name", "$.on"),
        ("message_id", "$.mid"),
        ("correlation_id", "$.cid"),
        ("user_id", "$.uid"),
        ("content_type", "$.ct"),
        ("content_encoding", "$.ce"),
        ("iothub_interface_id", "$.ifid"),
        ("expiry_time_utc", "$.exp"),
    ]


def test_c2d_system_property_table() -> None:
    assert dict(C2D_SYSTEM_PROPERTIES) == {
        "$.mid": "message_id",
        "$.cid": "correlation_id",
        "$.uid": "user_id",
        "$.ct": "content_type",
        "$.ce": "content_encoding",
        "$.exp": "expiry_time_utc",
        "iothub-ack": "ack",
    }
    assert C2D_DROPPED_KEYS == {"$.to"}


def test_tables_are_read_only() -> None:
    with pytest.raises(TypeError):
        D2C_SYSTEM_PROPERTIES["x"] = "y"  # type: ignore[index]
    with pytest.raises(TypeError):
        C2D_SYSTEM_PROPERTIES["x"] = "y"  # type: ignore[index]


# ---------------------------------------------------------------------------
# Property bags: reference 4.1 (encode)
# ---------------------------------------------------------------------------


def _message(**attrs: Any) -> SimpleNamespace:
    base: dict[str, Any] = dict.fromkeys(D2C_SYSTEM_PROPERTIES)
    base["custom_properties"] = {}
    base.update(attrs)
    return SimpleNamespace(**base)


def test_reference_4_1_example() -> None:
    message = _message(
        message_id="msg 1",
        correlation_id="c/1",
        content_type="application/json",
        content_encoding="utf-8",
        expiry_time_utc=datetime(2024, 1, 2, 3, 4, 5, tzinfo=timezone.utc),
        custom_properties={
            "zeta": "a+b",
            "alpha": 1,
            "sp ace": "x&y=z",
            "iothub-creation-time-utc": "2024-01-01T00:00:00Z",
        },
    )
    bag = encode_property_bag(d2c_system_pairs(message), message.custom_properties)
    assert telemetry_topic("dev1", None, bag) == (
        "devices/dev1/messages/events/%24.mid=msg%201&%24.cid=c%2F1&%24.ct=application%2Fjson"
        "&%24.ce=utf-8&%24.exp=2024-01-02T03%3A04%3A05%2B00%3A00&alpha=1"
        "&iothub-creation-time-utc=2024-01-01T00%3A00%3A00Z&sp%20ace=x%26y%3Dz&zeta=a%2Bb"
    )


def test_reference_4_1_module_security_message() -> None:
    message = _message(
        output_name="out1", iothub_interface_id="urn:azureiot:Security:SecurityAgent:1"
    )
    bag = encode_property_bag(d2c_system_pairs(message), message.custom_properties)
    assert telemetry_topic("dev1", "mod1", bag) == (
        "devices/dev1/modules/mod1/messages/events/"
        "%24.on=out1&%24.ifid=urn%3Aazureiot%3ASecurity%3ASecurityAgent%3A1"
    )


def test_d2c_system_pairs_all_in_order() -> None:
    message = _message(**{attr: attr for attr in D2C_SYSTEM_PROPERTIES})
    assert d2c_system_pairs(message) == [
        (wire, attr) for attr, wire in D2C_SYSTEM_PROPERTIES.items()
    ]


@pytest.mark.parametrize("falsy", [None, "", 0, False])
def test_d2c_system_pairs_omit_falsy_values(falsy: object) -> None:
    message = _message(message_id=falsy, correlation_id="c", expiry_time_utc=falsy)
    assert d2c_system_pairs(message) == [("$.cid", "c")]


def test_d2c_system_pairs_conversions() -> None:
    message = _message(message_id=123, expiry_time_utc=date(2024, 5, 6))
    assert d2c_system_pairs(message) == [("$.mid", "123"), ("$.exp", "2024-05-06")]
    naive = _message(expiry_time_utc=datetime(2024, 5, 6, 7, 8, 9))
    assert d2c_system_pairs(naive) == [("$.exp", "2024-05-06T07:08:09")]
    given_as_text = _message(expiry_time_utc="2024-05-06T07:08:09Z")
    assert d2c_system_pairs(given_as_text) == [("$.exp", "2024-05-06T07:08:09Z")]


def test_d2c_system_pairs_missing_attributes() -> None:
    assert d2c_system_pairs(object()) == []


@pytest.mark.parametrize(
    ("system", "custom", "expected"),
    [
        ([], {}, ""),
        ([], None, ""),
        ([("$.mid", "1")], {}, "%24.mid=1"),
        ([], {"a": "1"}, "a=1"),
        ([("$.mid", "1")], {"a": "1"}, "%24.mid=1&a=1"),
        ([("$.ct", "x"), ("$.mid", "1")], {}, "%24.ct=x&%24.mid=1"),  # order kept
        ([("$.mid", "")], {}, "%24.mid="),  # truthiness is d2c_system_pairs' job
        ([], {"b": 2, "a": 1, "B": 3}, "B=3&a=1&b=2"),  # code point order
        ([], {1: True, "x": None, 2.5: b"z"}, "1=True&2.5=b%27z%27&x=None"),
        ([], {"k": "a b+c/d~e_f.g-h"}, "k=a%20b%2Bc%2Fd~e_f.g-h"),
        ([], {"é": "✓"}, "%C3%A9=%E2%9C%93"),
        ([], {"": ""}, "="),
        ([], {"?#&=%": "$"}, "%3F%23%26%3D%25=%24"),
    ],
)
def test_encode_property_bag_rules(
    system: list[tuple[str, str]], custom: dict[object, object] | None, expected: str
) -> None:
    assert encode_property_bag(system, custom) == expected


@pytest.mark.parametrize("custom", [{1: "a", "1": "b"}, {True: 1, "True": 2}, {None: 1, "None": 2}])
def test_encode_property_bag_duplicate_keys_after_str(custom: dict[object, object]) -> None:
    with pytest.raises(ValueError, match=r"^Duplicate keys in custom properties!$"):
        encode_property_bag([], custom)


def test_encode_property_bag_lone_surrogate_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        encode_property_bag([], {"k": "\ud800"})


# ---------------------------------------------------------------------------
# Property bags: reference 5 (decode)
# ---------------------------------------------------------------------------

C2D_EXAMPLE = (
    "devices/dev1/messages/devicebound/%24.mid=123&%24.to=%2Fdevices%2Fdev1%2Fmessages"
    "%2FdeviceBound&%24.ct=text%2Fplain&iothub-ack=full&prop1&prop2=&prop3=a%20b+c"
    "&%24.exp=2024-01-01T00%3A00%3A00Z"
)


def test_reference_5_example() -> None:
    parsed = parse_c2d_topic(C2D_EXAMPLE)
    assert parsed is not None
    device_id, bag = parsed
    assert device_id == "dev1"
    pairs = decode_property_bag(bag)
    assert pairs == [
        ("$.mid", "123"),
        ("$.to", "/devices/dev1/messages/deviceBound"),
        ("$.ct", "text/plain"),
        ("iothub-ack", "full"),
        ("prop1", None),
        ("prop2", ""),
        ("prop3", "a b+c"),
        ("$.exp", "2024-01-01T00:00:00Z"),
    ]
    attributes, custom = split_received_properties(pairs)
    assert attributes == {
        "message_id": "123",
        "content_type": "text/plain",
        "ack": "full",
        "expiry_time_utc": "2024-01-01T00:00:00Z",
    }
    assert custom == {"prop1": None, "prop2": "", "prop3": "a b+c"}


@pytest.mark.parametrize(
    ("bag", "expected"),
    [
        ("", []),
        ("k", [("k", None)]),
        ("k=", [("k", "")]),
        ("k=v", [("k", "v")]),
        ("a=b=c", [("a", "b")]),  # v2 keeps the text between the first and second '='
        ("a=b%3Dc", [("a", "b=c")]),
        ("a+b=c+d", [("a+b", "c+d")]),  # unquote, not unquote_plus
        ("a%2Bb=%20", [("a+b", " ")]),
        ("a&&b", [("a", None), ("", None), ("b", None)]),  # empty entries as v2
        ("a=1&", [("a", "1"), ("", None)]),
        ("=v", [("", "v")]),
        ("a=1&a=2", [("a", "1"), ("a", "2")]),
        ("%C3%A9=%E2%9C%93", [("é", "✓")]),
        ("%ZZ=%C3", [("%ZZ", "\ufffd")]),  # bad escapes are kept / replaced, never raise
    ],
)
def test_decode_property_bag_rules(bag: str, expected: list[tuple[str, str | None]]) -> None:
    assert decode_property_bag(bag) == expected


def test_split_received_properties_rules() -> None:
    attributes, custom = split_received_properties(
        [
            ("$.cid", "c"),
            ("$.uid", "u"),
            ("$.ce", "utf-8"),
            ("$.to", "dropped"),
            ("$.cdid", "other $. keys are custom"),
            ("$.mid", "1"),
            ("$.mid", "2"),  # later wins
            ("iothub-ack", None),
            ("$.on", "custom on C2D"),
        ]
    )
    assert attributes == {
        "correlation_id": "c",
        "user_id": "u",
        "content_encoding": "utf-8",
        "message_id": "2",
        "ack": None,
    }
    assert custom == {"$.cdid": "other $. keys are custom", "$.on": "custom on C2D"}


_text = st.text(st.characters(codec="utf-8"))
_custom = st.dictionaries(_text, _text, max_size=6)
_system = st.lists(st.tuples(st.sampled_from(list(D2C_SYSTEM_PROPERTIES.values())), _text))


@given(system=_system, custom=_custom)
def test_property_bag_round_trip(system: list[tuple[str, str]], custom: dict[str, str]) -> None:
    bag = encode_property_bag(system, custom)
    assert decode_property_bag(bag) == system + sorted(custom.items())


@given(system=_system, custom=_custom)
def test_encode_property_bag_matches_urlencode_oracle(
    system: list[tuple[str, str]], custom: dict[str, str]
) -> None:
    parts = [
        "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in system),
        "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in sorted(custom.items())),
    ]
    assert encode_property_bag(system, custom) == "&".join(p for p in parts if p)
    assert encode_property_bag(system, custom) == "&".join(
        p
        for p in (
            urlencode(system, quote_via=quote),
            urlencode(sorted(custom.items()), quote_via=quote),
        )
        if p
    )


@given(custom=_custom)
def test_canonical_bag_re_encodes_to_itself(custom: dict[str, str]) -> None:
    bag = encode_property_bag([], custom)
    decoded = decode_property_bag(bag)
    assert all(value is not None for _, value in decoded)
    assert encode_property_bag([], dict(decoded)) == bag


@given(st.text())
def test_decode_property_bag_never_raises(bag: str) -> None:
    for key, value in decode_property_bag(bag):
        assert isinstance(key, str)
        assert value is None or isinstance(value, str)


# ---------------------------------------------------------------------------
# Telemetry, C2D, inputs
# ---------------------------------------------------------------------------


def test_telemetry_topics() -> None:
    assert telemetry_topic("dev1") == "devices/dev1/messages/events/"
    assert telemetry_topic("dev1", None, "a=1") == "devices/dev1/messages/events/a=1"
    assert telemetry_topic("dev1", "mod1") == "devices/dev1/modules/mod1/messages/events/"
    assert telemetry_topic("d é?", "m:=@") == "devices/d é?/modules/m:=@/messages/events/"


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("devices/dev1/messages/events/", ("dev1", None, "")),
        ("devices/dev1/messages/events", ("dev1", None, "")),
        ("devices/dev1/messages/events/a=1&b", ("dev1", None, "a=1&b")),
        ("devices/dev1/messages/events/a=1/b", ("dev1", None, "a=1/b")),
        ("devices/dev1/modules/m1/messages/events/", ("dev1", "m1", "")),
        ("devices/dev1/modules/m1/messages/events/%24.on=o", ("dev1", "m1", "%24.on=o")),
        ("devices/modules/modules/x/messages/events/", ("modules", "x", "")),
        ("devices/messages/messages/events/", ("messages", None, "")),
    ],
)
def test_parse_telemetry_topic(topic: str, expected: tuple[str, str | None, str]) -> None:
    assert parse_telemetry_topic(topic) == expected


NOT_TELEMETRY = [
    "",
    "devices",
    "devices/dev1",
    "devices//messages/events/",
    "devices/dev1/messages/devicebound/",
    "devices/dev1/messages/event/",
    "devices/dev1/x/events/",
    "devices/dev1/module/m1/messages/events/",
    "devices/dev1/x/m1/messages/events/",
    "Devices/dev1/messages/events/",
    "/devices/dev1/messages/events/",
    "devices/dev1/modules//messages/events/",
    "devices/dev1/modules/m1/messages/",
    "devices/dev1/modules/m1/inputs/in1/",
    "$iothub/methods/POST/x/?$rid=1",
]


@pytest.mark.parametrize("topic", NOT_TELEMETRY)
def test_parse_telemetry_topic_other_kinds(topic: str) -> None:
    assert parse_telemetry_topic(topic) is None


def test_c2d_topics() -> None:
    assert c2d_subscribe_filter("dev1") == "devices/dev1/messages/devicebound/#"
    assert c2d_topic("dev1") == "devices/dev1/messages/devicebound/"
    assert c2d_topic("dev1", "a=1") == "devices/dev1/messages/devicebound/a=1"
    assert parse_c2d_topic("devices/dev1/messages/devicebound/") == ("dev1", "")
    assert parse_c2d_topic("devices/dev1/messages/devicebound") == ("dev1", "")


@pytest.mark.parametrize(
    "topic",
    [
        "devices/dev1/messages/events/",
        "devices//messages/devicebound/",
        "x/devices/dev1/messages/devicebound/",
        "devices/dev1/modules/m/messages/devicebound/",
        "devices/dev1/messages",
        "devices/dev1/x/devicebound/",
        "devices/dev1/messages/deviceboundx/",
    ],
)
def test_parse_c2d_topic_other_kinds(topic: str) -> None:
    assert parse_c2d_topic(topic) is None


def test_input_topics() -> None:
    assert input_subscribe_filter("dev1", "mod1") == "devices/dev1/modules/mod1/inputs/#"
    assert input_topic("dev1", "mod1", "in 1/x", "a=1") == (
        "devices/dev1/modules/mod1/inputs/in%201%2Fx/a=1"
    )
    assert parse_input_topic("devices/dev1/modules/mod1/inputs/in%201%2Fx/a=1") == (
        "dev1",
        "mod1",
        "in 1/x",
        "a=1",
    )
    assert parse_input_topic("devices/dev1/modules/mod1/inputs/in1") == (
        "dev1",
        "mod1",
        "in1",
        "",
    )


@pytest.mark.parametrize(
    "topic",
    [
        "devices/dev1/modules/mod1/inputs/",
        "devices/dev1/modules/mod1/inputs",
        "devices/dev1/modules//inputs/in1/",
        "devices//modules/mod1/inputs/in1/",
        "devices/dev1/messages/devicebound/",
        "devices/dev1/module/mod1/inputs/in1/",
    ],
)
def test_parse_input_topic_other_kinds(topic: str) -> None:
    assert parse_input_topic(topic) is None


@pytest.mark.parametrize("bad", ["", "a/b", "a+", "#", "a\x00"])
@pytest.mark.parametrize(
    "build",
    [
        lambda v: telemetry_topic(v),
        lambda v: telemetry_topic("d", v),
        lambda v: c2d_topic(v),
        lambda v: c2d_subscribe_filter(v),
        lambda v: input_topic(v, "m", "i"),
        lambda v: input_topic("d", v, "i"),
        lambda v: input_subscribe_filter(v, "m"),
        lambda v: input_subscribe_filter("d", v),
    ],
)
def test_builders_refuse_ids_that_break_topics(bad: str, build: Callable[[str], str]) -> None:
    with pytest.raises(ValueError, match="_id must not"):
        build(bad)


def test_builders_refuse_non_str_ids() -> None:
    with pytest.raises(TypeError, match="device_id must be str"):
        telemetry_topic(5)  # type: ignore[arg-type]


def test_empty_names_are_refused() -> None:
    with pytest.raises(ValueError, match="input_name"):
        input_topic("d", "m", "")
    with pytest.raises(ValueError, match="method name"):
        method_request_topic("", "1")


_ids = st.text(st.characters(codec="utf-8", exclude_characters="/+#\x00"), min_size=1)


@given(device_id=_ids, module_id=st.none() | _ids, custom=_custom)
def test_telemetry_round_trip(
    device_id: str, module_id: str | None, custom: dict[str, str]
) -> None:
    bag = encode_property_bag([], custom)
    topic = telemetry_topic(device_id, module_id, bag)
    assert parse_telemetry_topic(topic) == (device_id, module_id, bag)
    assert parse_c2d_topic(topic) is None
    assert parse_input_topic(topic) is None


@given(device_id=_ids, custom=_custom)
def test_c2d_round_trip(device_id: str, custom: dict[str, str]) -> None:
    bag = encode_property_bag([], custom)
    topic = c2d_topic(device_id, bag)
    assert parse_c2d_topic(topic) == (device_id, bag)
    assert parse_telemetry_topic(topic) is None
    assert c2d_subscribe_filter(device_id) == topic[: -len(bag) or None] + "#"


@given(device_id=_ids, module_id=_ids, input_name=_text.filter(bool), custom=_custom)
def test_input_round_trip(
    device_id: str, module_id: str, input_name: str, custom: dict[str, str]
) -> None:
    bag = encode_property_bag([], custom)
    topic = input_topic(device_id, module_id, input_name, bag)
    assert parse_input_topic(topic) == (device_id, module_id, input_name, bag)
    assert parse_telemetry_topic(topic) is None


# ---------------------------------------------------------------------------
# Direct methods (reference 6)
# ---------------------------------------------------------------------------


def test_reference_6_method_example() -> None:
    assert METHOD_SUBSCRIBE_FILTER == "$iothub/methods/POST/#"
    assert parse_method_request_topic("$iothub/methods/POST/reboot/?$rid=7") == ("reboot", "7")
    assert method_request_topic("reboot", "7") == "$iothub/methods/POST/reboot/?$rid=7"
    assert method_response_topic(200, "7") == "$iothub/methods/res/200/?$rid=7"
    assert parse_method_response_topic("$iothub/methods/res/200/?$rid=7") == (200, "7")


def test_method_topics_quote_name_rid_and_status() -> None:
    assert method_request_topic("do it/now", "a&b=c d") == (
        "$iothub/methods/POST/do%20it%2Fnow/?$rid=a%26b%3Dc%20d"
    )
    assert parse_method_request_topic("$iothub/methods/POST/do%20it%2Fnow/?$rid=a%26b%3Dc%20d") == (
        "do it/now",
        "a&b=c d",
    )
    assert method_response_topic(-1, "x y") == "$iothub/methods/res/-1/?$rid=x%20y"
    assert parse_method_response_topic("$iothub/methods/res/-1/?$rid=x%20y") == (-1, "x y")


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("$iothub/methods/POST/m/?rid=1", ("m", "1")),  # v2 strips '$' from keys
        ("$iothub/methods/POST/m/?$other=x&$rid=1", ("m", "1")),
        ("$iothub/methods/POST/m/?$rid=", ("m", "")),
        ("$iothub/methods/POST/a+b/?$rid=1+2", ("a+b", "1+2")),
    ],
)
def test_parse_method_request_topic_lenient_forms(topic: str, expected: tuple[str, str]) -> None:
    assert parse_method_request_topic(topic) == expected


@pytest.mark.parametrize(
    "topic",
    [
        "$iothub/methods/POST/m/",
        "$iothub/methods/POST/m/?",
        "$iothub/methods/POST/m/?$id=1",
        "$iothub/methods/POST//?$rid=1",
        "$iothub/methods/POST/?$rid=1",
        "$iothub/methods/POST/m?$rid=1",
        "$iothub/methods/POST/a/b/?$rid=1",
        "$iothub/methods/post/m/?$rid=1",
        "x$iothub/methods/POST/m/?$rid=1",
        "$iothub/methods/res/200/?$rid=1",
    ],
)
def test_parse_method_request_topic_other_kinds(topic: str) -> None:
    assert parse_method_request_topic(topic) is None


@pytest.mark.parametrize(
    "topic",
    [
        "$iothub/methods/res/abc/?$rid=1",
        "$iothub/methods/res//?$rid=1",
        "$iothub/methods/res/200?$rid=1",
        "$iothub/methods/res/200/",
        "$iothub/methods/res/2.5/?$rid=1",
        "$iothub/methods/res/\u0661/?$rid=1",
        "$iothub/methods/res/" + "9" * 5000 + "/?$rid=1",
        "$iothub/methods/POST/m/?$rid=1",
    ],
)
def test_parse_method_response_topic_other_kinds(topic: str) -> None:
    assert parse_method_response_topic(topic) is None


@given(name=_text.filter(bool), rid=_text, status=st.integers(-(10**9), 10**9))
def test_method_round_trip(name: str, rid: str, status: int) -> None:
    assert parse_method_request_topic(method_request_topic(name, rid)) == (name, rid)
    assert parse_method_response_topic(method_response_topic(status, rid)) == (status, rid)


# ---------------------------------------------------------------------------
# Twin (reference 7.1)
# ---------------------------------------------------------------------------


def test_twin_topic_vectors() -> None:
    assert TWIN_RESPONSE_SUBSCRIBE_FILTER == "$iothub/twin/res/#"
    assert TWIN_DESIRED_SUBSCRIBE_FILTER == "$iothub/twin/PATCH/properties/desired/#"
    assert twin_get_topic("1") == "$iothub/twin/GET/?$rid=1"
    assert twin_patch_reported_topic("1") == "$iothub/twin/PATCH/properties/reported/?$rid=1"
    assert twin_response_topic(200, "1") == "$iothub/twin/res/200/?$rid=1"
    assert twin_response_topic(204, "1", 7) == "$iothub/twin/res/204/?$rid=1&$version=7"
    assert twin_desired_patch_topic(12) == "$iothub/twin/PATCH/properties/desired/?$version=12"
    assert twin_get_topic("a b&c") == "$iothub/twin/GET/?$rid=a%20b%26c"


def test_twin_rid_is_a_uuid4_unchanged() -> None:
    rid = str(uuid.UUID(int=0x1234567890ABCDEF1234567890ABCDEF, version=4))
    assert twin_get_topic(rid) == f"$iothub/twin/GET/?$rid={rid}"
    assert parse_twin_request_topic(twin_get_topic(rid)) == ("GET", rid)


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("$iothub/twin/GET/?$rid=1", ("GET", "1")),
        ("$iothub/twin/PATCH/properties/reported/?$rid=a%20b", ("PATCH", "a b")),
        ("$iothub/twin/GET/?$x=1&$rid=2", ("GET", "2")),
    ],
)
def test_parse_twin_request_topic(topic: str, expected: tuple[str, str]) -> None:
    assert parse_twin_request_topic(topic) == expected


@pytest.mark.parametrize(
    "topic",
    [
        "$iothub/twin/GET/",
        "$iothub/twin/GET/?",
        "$iothub/twin/GET?$rid=1",
        "$iothub/twin/get/?$rid=1",
        "$iothub/twin/PATCH/properties/desired/?$rid=1",
        "$iothub/twin/PATCH/properties/reported?$rid=1",
        "$iothub/twin/res/200/?$rid=1",
        "$iothub/twin/GET/x?$rid=1",
        "$iothub/twin/GET/x/?$rid=1",
        "$iothub/twin/PATCH/properties/reported/x/?$rid=1",
    ],
)
def test_parse_twin_request_topic_other_kinds(topic: str) -> None:
    assert parse_twin_request_topic(topic) is None


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("$iothub/twin/res/200/?$rid=1", (200, "1", None)),
        ("$iothub/twin/res/204/?$rid=1&$version=5", (204, "1", 5)),
        ("$iothub/twin/res/204/?$version=5&$rid=1", (204, "1", 5)),
        ("$iothub/twin/res/429/?$rid=x%2Fy", (429, "x/y", None)),
        ("$iothub/twin/res/204/?$rid=1&$version=abc", (204, "1", None)),
        ("$iothub/twin/res/204/?$rid=1&$version=", (204, "1", None)),
        ("$iothub/twin/res/%32%30%30/?$rid=1", (200, "1", None)),  # v2 unquotes the status
    ],
)
def test_parse_twin_response_topic(topic: str, expected: tuple[int, str, int | None]) -> None:
    assert parse_twin_response_topic(topic) == expected


@pytest.mark.parametrize(
    "topic",
    [
        "$iothub/twin/res/200/",
        "$iothub/twin/res/200/?$version=1",
        "$iothub/twin/res/ok/?$rid=1",
        "$iothub/twin/res/?$rid=1",
        "$iothub/twin/res/200/x/?$rid=1",
        "$iothub/twin/GET/?$rid=1",
        "$iothub/methods/res/200/?$rid=1",
    ],
)
def test_parse_twin_response_topic_other_kinds(topic: str) -> None:
    assert parse_twin_response_topic(topic) is None


@pytest.mark.parametrize(
    ("topic", "expected"),
    [
        ("$iothub/twin/PATCH/properties/desired/?$version=12", 12),
        ("$iothub/twin/PATCH/properties/desired/?$version=0", 0),
        ("$iothub/twin/PATCH/properties/desired/?$rid=x&$version=3", 3),
        ("$iothub/twin/PATCH/properties/desired/?$version=x", None),
        ("$iothub/twin/PATCH/properties/desired/?$version=-1", None),
        ("$iothub/twin/PATCH/properties/desired/", None),
        ("$iothub/twin/PATCH/properties/desired?$version=1", None),
        ("$iothub/twin/PATCH/properties/reported/?$version=1", None),
        ("$iothub/twin/PATCH/properties/desired/x/?$version=1", None),
    ],
)
def test_parse_twin_desired_patch_topic(topic: str, expected: int | None) -> None:
    assert parse_twin_desired_patch_topic(topic) == expected


def test_is_twin_desired_patch_topic_is_v2s_startswith() -> None:
    assert is_twin_desired_patch_topic("$iothub/twin/PATCH/properties/desired/?$version=1")
    assert is_twin_desired_patch_topic("$iothub/twin/PATCH/properties/desired")
    assert is_twin_desired_patch_topic("$iothub/twin/PATCH/properties/desiredX")
    assert not is_twin_desired_patch_topic("$iothub/twin/PATCH/properties/reported/?$rid=1")
    assert not is_twin_desired_patch_topic(None)  # type: ignore[arg-type]


@given(
    rid=_text,
    status=st.integers(0, 999),
    version=st.none() | st.integers(0, 2**53),
)
def test_twin_round_trip(rid: str, status: int, version: int | None) -> None:
    assert parse_twin_request_topic(twin_get_topic(rid)) == ("GET", rid)
    assert parse_twin_request_topic(twin_patch_reported_topic(rid)) == ("PATCH", rid)
    assert parse_twin_response_topic(twin_response_topic(status, rid, version)) == (
        status,
        rid,
        version,
    )
    if version is not None:
        assert parse_twin_desired_patch_topic(twin_desired_patch_topic(version)) == version


# ---------------------------------------------------------------------------
# Parsers never raise
# ---------------------------------------------------------------------------

PARSERS: list[Callable[[str], object]] = [
    parse_telemetry_topic,
    parse_c2d_topic,
    parse_input_topic,
    parse_method_request_topic,
    parse_method_response_topic,
    parse_twin_request_topic,
    parse_twin_response_topic,
    parse_twin_desired_patch_topic,
    is_twin_desired_patch_topic,
]

_PREFIXES = [
    "",
    "devices/",
    "devices/d/",
    "devices/d/modules/m/",
    "devices/d/modules/m/inputs/",
    "$iothub/methods/POST/",
    "$iothub/methods/res/",
    "$iothub/twin/GET/",
    "$iothub/twin/res/",
    "$iothub/twin/PATCH/properties/reported/",
    "$iothub/twin/PATCH/properties/desired/",
]


@given(prefix=st.sampled_from(_PREFIXES), rest=st.text())
def test_parsers_never_raise(prefix: str, rest: str) -> None:
    for parse in PARSERS:
        parse(prefix + rest)


@pytest.mark.parametrize("parse", PARSERS)
@pytest.mark.parametrize("value", [None, b"devices/d/messages/events/", 5, ["$iothub"]])
def test_parsers_return_none_for_non_str(parse: Callable[[Any], object], value: object) -> None:
    assert parse(value) in (None, False)


# ---------------------------------------------------------------------------
# Purity
# ---------------------------------------------------------------------------


def test_hub_topics_imports_only_pure_standard_library() -> None:
    tree = ast.parse(Path(_hub_topics.__file__).read_text(encoding="utf-8"))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no imports from the rest of iotdev"
            assert node.module
            imported.add(node.module.split(".")[0])
    assert imported == {
        "__future__",
        "collections",
        "datetime",  # for type checking only: is_date() looks in sys.modules
        "re",
        "sys",
        "types",
        "typing",
        "urllib",
        "uuid",  # new_request_id(), on the first call
    }


def test_new_request_ids_are_uuid4_text() -> None:
    import uuid

    first, second = _hub_topics.new_request_id(), _hub_topics.new_request_id()
    assert first != second and uuid.UUID(first).version == 4 and str(uuid.UUID(first)) == first


def test_decoding_a_bag_twice_gives_the_same_pairs() -> None:
    """Unquoted keys and values are remembered: a second message gets equal pairs."""
    bag = "%24.mid=a%26b&%24.to=%2Fdevices%2Fd%2Fmessages%2FdeviceBound&k%3D=v%25"
    expected = [("$.mid", "a&b"), ("$.to", "/devices/d/messages/deviceBound"), ("k=", "v%")]
    assert _hub_topics.decode_property_bag(bag) == expected
    assert _hub_topics.decode_property_bag(bag) == expected
    many = "&".join(f"k{i}%21=v{i}%21" for i in range(600))  # past the caches' bound
    assert _hub_topics.decode_property_bag(many)[599] == ("k599!", "v599!")
    assert _hub_topics.decode_property_bag(bag) == expected
