"""The emulator's state layer: registry, twins, C2D queues, telemetry, persistence.

Limits are tested at their exact boundaries (the last accepted value and the
first refused one); times are numbers passed in, never the clock.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import tempfile
import uuid
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from iotdev.emulator._store import (
    C2DMessage,
    DeviceNotFoundError,
    QueueFullError,
    Store,
    TelemetryMessage,
    TwinError,
    twin_section_size,
)

NOW = 1_700_000_000.0

# The service's limits, written out (not imported) so that a wrong constant in
# the store cannot pass its own test.
C2D_MAX_BODY = 65536
C2D_MAX_PENDING = 50
C2D_MAX_TTL = 172800
TWIN_INT_MAX = 4503599627370495
TWIN_INT_MIN = -4503599627370496
TWIN_MAX_SECTION_SIZE = 32768
TWIN_MAX_TAGS_SIZE = 8192
KEY16 = base64.b64encode(b"k" * 16).decode()


def telemetry(device_id: str, n: int, enqueued: float = NOW) -> TelemetryMessage:
    return TelemetryMessage(
        device_id=device_id, module_id=None, body=f"m{n}".encode(),
        system_properties={"$.mid": str(n)}, properties={"n": str(n), "flag": None},
        enqueued=enqueued,
    )


@pytest.fixture
def store() -> Store:
    s = Store(None)
    s.add_device("dev1")
    return s


def nested(levels: int, leaf: Any = "v") -> dict[str, Any]:
    """A patch with ``levels`` objects below the root, the innermost holding ``p``."""
    inner: dict[str, Any] = {"p": leaf}
    for level in range(levels, 0, -1):
        inner = {f"l{level}": inner}
    return inner


# ------------------------------------------------------------------ device ids

VALID_IDS = ["a", "A1", "-.%_*?!(),:=@$'", "x" * 128, "Dev-01:room=3@home"]
INVALID_IDS = [
    "", "x" * 129, "a b", "a/b", "a#b", "a+b", "a;b", "a\"b", "a\\b", "é", "a\n", "a\x00",
    "a&b", "a~b", "a<b",
]


@pytest.mark.parametrize("device_id", VALID_IDS)
def test_valid_device_ids_are_accepted(device_id: str) -> None:
    s = Store(None)
    assert s.add_device(device_id).device_id == device_id
    assert s.device(device_id) is not None


@pytest.mark.parametrize("device_id", INVALID_IDS)
def test_invalid_device_ids_are_refused(device_id: str) -> None:
    s = Store(None)
    with pytest.raises(ValueError, match="invalid device id"):
        s.add_device(device_id)
    assert s.devices() == []


def test_duplicate_device_id_is_refused_but_ids_are_case_sensitive(store: Store) -> None:
    with pytest.raises(ValueError, match="already exists"):
        store.add_device("dev1")
    store.add_device("DEV1")
    assert [d.device_id for d in store.devices()] == ["dev1", "DEV1"]


def test_generated_keys_are_base64_of_32_random_bytes() -> None:
    s = Store(None)
    a, b = s.add_device("a"), s.add_device("b")
    keys = [a.primary_key, a.secondary_key, b.primary_key, b.secondary_key]
    assert len(set(keys)) == 4
    for key in keys:
        assert key is not None
        assert len(base64.b64decode(key, validate=True)) == 32


@pytest.mark.parametrize(
    ("raw_len", "ok"), [(15, False), (16, True), (32, True), (64, True), (65, False)]
)
def test_given_keys_must_decode_to_16_to_64_bytes(raw_len: int, ok: bool) -> None:
    key = base64.b64encode(b"\x01" * raw_len).decode()
    s = Store(None)
    if ok:
        device = s.add_device("d", primary_key=key)
        assert device.primary_key == key
        assert device.secondary_key not in (None, key)
    else:
        with pytest.raises(ValueError, match="16 to 64"):
            s.add_device("d", primary_key=key)


def test_given_key_must_be_base64() -> None:
    with pytest.raises(ValueError, match="base64"):
        Store(None).add_device("d", secondary_key="not base64!")


def test_connection_string_and_creation_time() -> None:
    device = Store(None).add_device("dev1", primary_key=KEY16, now=0.0)
    assert device.connection_string("hub.local") == (
        f"HostName=hub.local;DeviceId=dev1;SharedAccessKey={KEY16}"
    )
    assert device.created == "1970-01-01T00:00:00.000Z"
    assert device.enabled is True


def test_x509_device_has_normalised_thumbprints_and_no_keys() -> None:
    sha1 = "ab" * 20
    sha256 = ":".join(["cd"] * 32)
    device = Store(None).add_device("cam", x509_thumbprints=[sha1, sha256, sha1.upper()])
    assert device.x509_thumbprints == ("AB" * 20, "CD" * 32)
    assert device.primary_key is None and device.secondary_key is None
    with pytest.raises(ValueError, match=r"X\.509"):
        device.connection_string("hub.local")


@pytest.mark.parametrize("thumbprint", ["ab" * 19, "ab" * 21, "ab" * 32 + "a", "zz" * 20, ""])
def test_bad_thumbprints_are_refused(thumbprint: str) -> None:
    with pytest.raises(ValueError, match="thumbprint"):
        Store(None).add_device("cam", x509_thumbprints=[thumbprint])


def test_keys_and_thumbprints_together_are_refused() -> None:
    with pytest.raises(ValueError, match="not both"):
        Store(None).add_device("cam", primary_key=KEY16, x509_thumbprints=["AB" * 20])


def test_set_enabled_and_remove_device(store: Store) -> None:
    assert store.set_enabled("dev1", False).enabled is False
    assert store.device("dev1") is not None
    assert store.device("dev1").enabled is False  # type: ignore[union-attr]
    store.patch_reported("dev1", {"a": 1})
    store.enqueue_c2d("dev1", b"x", now=NOW)
    store.record_telemetry(telemetry("dev1", 1))
    store.remove_device("dev1")
    assert store.device("dev1") is None
    assert store.pending_c2d("dev1", NOW) == []
    assert store.telemetry("dev1") == []
    store.add_device("dev1")
    assert store.twin("dev1").reported == {} and store.twin("dev1").reported_version == 1


@pytest.mark.parametrize(
    "call",
    [
        lambda s: s.set_enabled("nope", True),
        lambda s: s.remove_device("nope"),
        lambda s: s.twin("nope"),
        lambda s: s.patch_desired("nope", {}),
        lambda s: s.patch_reported("nope", {}),
        lambda s: s.set_tags("nope", {}),
        lambda s: s.enqueue_c2d("nope", b"", now=NOW),
    ],
)
def test_unknown_device_raises_device_not_found(store: Store, call: Any) -> None:
    with pytest.raises(DeviceNotFoundError, match="'nope'"):
        call(store)


# ------------------------------------------------------------------ twin


def test_new_twin_document_has_versions_one(store: Store) -> None:
    assert store.twin("dev1").properties_document() == {
        "desired": {"$version": 1},
        "reported": {"$version": 1},
    }


def test_reported_patch_merges_recursively_and_null_deletes(store: Store) -> None:
    assert store.patch_reported("dev1", {"a": 1, "b": {"c": 2, "d": {"e": 3, "f": 4}},
                                         "arr": [1, 2, 3], "s": "x"}) == 2
    version = store.patch_reported(
        "dev1",
        {"a": None, "b": {"c": None, "d": {"e": None, "g": {"h": None, "i": 5}}},
         "arr": [9], "s": {"now": "object"}, "missing": None},
    )
    assert version == 3
    twin = store.twin("dev1")
    assert twin.reported == {"b": {"d": {"f": 4, "g": {"i": 5}}}, "arr": [9],
                             "s": {"now": "object"}}
    assert twin.desired_version == 1  # only the reported section moved
    store.patch_reported("dev1", {"b": 7})  # an object replaced by a scalar
    assert store.twin("dev1").reported["b"] == 7


def test_desired_patch_returns_notification_with_nulls_and_version(store: Store) -> None:
    store.patch_desired("dev1", {"freq": "1m", "route": "r1"})
    note = store.patch_desired("dev1", {"freq": "5m", "route": None})
    assert note == {"freq": "5m", "route": None, "$version": 3}
    assert store.twin("dev1").properties_document() == {
        "desired": {"freq": "5m", "$version": 3},
        "reported": {"$version": 1},
    }


def test_empty_patch_still_bumps_the_version(store: Store) -> None:
    assert store.patch_reported("dev1", {}) == 2
    assert store.patch_desired("dev1", {}) == {"$version": 2}


def test_twin_copies_are_isolated_from_the_store(store: Store) -> None:
    patch: dict[str, Any] = {"a": {"b": [1, 2]}}
    store.patch_desired("dev1", patch)
    patch["a"]["b"].append(3)
    patch["a"]["c"] = 1
    twin = store.twin("dev1")
    twin.desired["a"]["b"].append(4)
    doc = twin.properties_document()
    doc["desired"]["x"] = 1
    assert store.twin("dev1").desired == {"a": {"b": [1, 2]}}


def test_tags_are_replaced_nulls_dropped_and_not_in_the_device_document(store: Store) -> None:
    assert store.set_tags("dev1", {"site": "a", "drop": None, "loc": {"x": 1}}) == {
        "site": "a", "loc": {"x": 1}}
    store.set_tags("dev1", {"site": "b"})
    twin = store.twin("dev1")
    assert twin.tags == {"site": "b"}
    assert "tags" not in twin.properties_document()


def test_refused_patch_changes_nothing(store: Store) -> None:
    store.patch_reported("dev1", {"keep": 1})
    with pytest.raises(TwinError):
        store.patch_reported("dev1", {"keep": None, "bad key": 1})
    twin = store.twin("dev1")
    assert twin.reported == {"keep": 1} and twin.reported_version == 2


# Each case: (patch, expected status or None when accepted).
TWIN_LIMIT_CASES: list[tuple[str, Any, int | None]] = [
    ("list document", [1], 400),
    ("string document", "x", 400),
    ("null document", None, 400),
    ("depth 10", nested(10), None),
    ("depth 11", nested(11), 400),
    ("array at depth 10", nested(9, leaf=[1, 2]), None),
    ("object in array at depth 11", nested(9, leaf=[{"x": 1}]), 400),
    ("null leaf at depth 10", nested(10, leaf=None), None),
    ("key of 1024 bytes", {"k" * 1024: 1}, None),
    ("key of 1025 bytes", {"k" * 1025: 1}, 400),
    ("key of 512 two-byte chars", {"é" * 512: 1}, None),
    ("key of 1025 bytes, multibyte", {"é" * 512 + "k": 1}, 400),
    ("key with dot", {"a.b": 1}, 400),
    ("key with dollar", {"$version": 1}, 400),
    ("key with space", {"a b": 1}, 400),
    ("key with NUL", {"a\x00": 1}, 400),
    ("key with unit separator", {"a\x1f": 1}, 400),
    ("key with tab", {"a\tb": 1}, 400),
    ("key with DEL", {"a\x7f": 1}, 400),
    ("key with C1 control", {"a\x85": 1}, 400),
    ("key with other punctuation", {"a-b_c:d/e#f@é": 1}, None),
    ("empty key", {"": 1}, 400),
    ("bad nested key", {"a": {"b.c": 1}}, 400),
    ("non-string key", {1: 1}, 400),
    ("string of 4096 bytes", {"s": "x" * 4096}, None),
    ("string of 4097 bytes", {"s": "x" * 4097}, 400),
    ("string of 4096 bytes, multibyte", {"s": "€" * 1365 + "x"}, None),
    ("string of 4098 bytes, multibyte", {"s": "€" * 1366}, 400),
    ("string in array over limit", {"a": ["x" * 4097]}, 400),
    ("largest integer", {"n": TWIN_INT_MAX}, None),
    ("integer above range", {"n": TWIN_INT_MAX + 1}, 400),
    ("smallest integer", {"n": TWIN_INT_MIN}, None),
    ("integer below range", {"n": TWIN_INT_MIN - 1}, 400),
    ("booleans", {"t": True, "f": False}, None),
    ("big float", {"x": 1e300}, None),
    ("NaN", {"x": float("nan")}, 400),
    ("infinity", {"x": float("inf")}, 400),
    ("bytes value", {"x": b"raw"}, 400),
    ("tuple value", {"x": (1, 2)}, 400),
    ("null inside an array", {"x": [1, None]}, None),
]


@pytest.mark.parametrize(
    ("patch", "status"),
    [pytest.param(p, s, id=name) for name, p, s in TWIN_LIMIT_CASES],
)
@pytest.mark.parametrize("section", ["desired", "reported", "tags"])
def test_twin_limits(store: Store, section: str, patch: Any, status: int | None) -> None:
    apply = {
        "desired": store.patch_desired,
        "reported": store.patch_reported,
        "tags": store.set_tags,
    }[section]
    if status is None:
        apply("dev1", patch)
        return
    with pytest.raises(TwinError) as info:
        apply("dev1", patch)
    assert info.value.status == status
    assert str(info.value).startswith(section)


def test_twin_error_names_the_path() -> None:
    s = Store(None)
    s.add_device("d")
    with pytest.raises(TwinError, match=r"reported\.a\.b: key 'c\.d' contains '\.'"):
        s.patch_reported("d", {"a": {"b": {"c.d": 1}}})
    with pytest.raises(TwinError, match=r"desired\.n: integer"):
        s.patch_desired("d", {"n": 2**60})


@pytest.mark.parametrize(
    ("document", "size"),
    [
        ({}, 0),
        ({"a": 1}, 9),
        ({"a": 1.5}, 9),
        ({"a": True}, 5),
        ({"ab": "cd"}, 4),
        ({"ab": "c\x00d\x9f"}, 4),  # control characters are not counted
        ({"é": "€€"}, 3),  # characters, not UTF-8 bytes
        ({"a": {"b": "cd", "e": False}}, 1 + 3 + 5),
        ({"a": [1, "xy", None, True, {"k": "v"}]}, 1 + 8 + 2 + 0 + 4 + 2),
    ],
)
def test_twin_section_size_follows_the_service_rule(document: dict[str, Any], size: int) -> None:
    assert twin_section_size(document) == size


def filled(total: int, keys: int = 8) -> dict[str, str]:
    """``keys`` two-character keys with string values, sized ``total`` in all."""
    base, extra = divmod(total, keys)
    return {f"k{i}": "x" * (base - 2 + (1 if i < extra else 0)) for i in range(keys)}


@pytest.mark.parametrize(
    ("section", "limit"),
    [("desired", TWIN_MAX_SECTION_SIZE), ("reported", TWIN_MAX_SECTION_SIZE),
     ("tags", TWIN_MAX_TAGS_SIZE)],
)
def test_section_size_limit_boundary(store: Store, section: str, limit: int) -> None:
    apply = {"desired": store.patch_desired, "reported": store.patch_reported,
             "tags": store.set_tags}[section]
    at_limit = filled(limit)
    assert twin_section_size(at_limit) == limit
    apply("dev1", at_limit)
    with pytest.raises(TwinError) as info:
        apply("dev1", filled(limit + 1))
    assert info.value.status == 413


def test_size_limit_applies_to_the_merged_section(store: Store) -> None:
    store.patch_reported("dev1", filled(TWIN_MAX_SECTION_SIZE))
    with pytest.raises(TwinError) as info:
        store.patch_reported("dev1", {"z": True})  # 1 + 4 more
    assert info.value.status == 413
    assert store.twin("dev1").reported_version == 2
    # Deleting a property makes room for a new one in the same patch.
    store.patch_reported("dev1", {"k0": None, "z": True})
    assert "z" in store.twin("dev1").reported


# Valid twin keys and documents, for property tests.
KEYS = st.text(
    alphabet=st.characters(blacklist_categories=("Cc", "Cs"), blacklist_characters=".$ "),
    min_size=1, max_size=8,
)
LEAVES = st.none() | st.booleans() | st.integers(TWIN_INT_MIN, TWIN_INT_MAX) | st.text(
    max_size=10) | st.floats(allow_nan=False, allow_infinity=False)
PATCHES = st.recursive(
    LEAVES, lambda children: st.dictionaries(KEYS, children, max_size=4), max_leaves=20
).filter(lambda d: isinstance(d, dict))


def model_merge(target: dict[str, Any], patch: dict[str, Any]) -> None:
    """In-place reference merge, written independently of the store's."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict):
            if not isinstance(target.get(key), dict):
                target[key] = {}
            model_merge(target[key], value)
        else:
            target[key] = value


@settings(max_examples=100, deadline=None)
@given(st.lists(PATCHES, min_size=1, max_size=5))
def test_patch_sequences_match_a_model_and_survive_reopening(
    patches: list[dict[str, Any]],
) -> None:
    with tempfile.TemporaryDirectory() as folder:
        s = Store(Path(folder))
        s.add_device("d")
        expected: dict[str, Any] = {}
        for patch in patches:
            s.patch_reported("d", patch)
            model_merge(expected, patch)
        assert s.twin("d").reported == expected
        reopened = Store(Path(folder))
        assert reopened.twin("d") == s.twin("d")
        assert reopened.twin("d").reported_version == len(patches) + 1


# ------------------------------------------------------------------ C2D


def test_enqueue_fills_every_field(store: Store) -> None:
    m = store.enqueue_c2d("dev1", b"hello", correlation_id="c1", properties={"k": "v"},
                          ttl=60, ack="full", now=NOW)
    assert uuid.UUID(m.message_id).version == 4
    assert (m.body, m.correlation_id, m.properties, m.ack) == (b"hello", "c1", {"k": "v"}, "full")
    assert (m.enqueued, m.expiry, m.delivery_count) == (NOW, NOW + 60, 0)
    other = store.enqueue_c2d("dev1", b"", message_id="mine", now=NOW)
    assert other.message_id == "mine" and other.lock_token != m.lock_token
    assert other.expiry == NOW + 3600 and other.ack is None  # default TTL 1 h
    assert store.pending_c2d("dev1", NOW) == [m, other]


def test_queue_holds_50_and_refuses_the_51st(store: Store) -> None:
    tokens = [store.enqueue_c2d("dev1", b"%d" % i, now=NOW).lock_token
              for i in range(C2D_MAX_PENDING)]
    with pytest.raises(QueueFullError) as info:
        store.enqueue_c2d("dev1", b"one too many", now=NOW)
    assert (info.value.device_id, info.value.limit) == ("dev1", 50)
    assert len(store.pending_c2d("dev1", NOW)) == 50
    assert store.complete_c2d("dev1", tokens[0])
    store.enqueue_c2d("dev1", b"room again", now=NOW)


def test_expired_messages_do_not_count_against_the_queue(store: Store) -> None:
    for _ in range(C2D_MAX_PENDING):
        store.enqueue_c2d("dev1", b"short", ttl=10, now=NOW)
    with pytest.raises(QueueFullError):
        store.enqueue_c2d("dev1", b"x", now=NOW + 9.999)
    store.enqueue_c2d("dev1", b"x", now=NOW + 10)
    assert [m.body for m in store.pending_c2d("dev1", NOW + 10)] == [b"x"]


def test_queue_limit_is_a_constructor_argument() -> None:
    s = Store(None, c2d_queue_limit=2)
    s.add_device("d")
    s.enqueue_c2d("d", b"1", now=NOW)
    s.enqueue_c2d("d", b"2", now=NOW)
    with pytest.raises(QueueFullError, match=r"\(2 pending"):
        s.enqueue_c2d("d", b"3", now=NOW)


def test_expiry_boundary(store: Store) -> None:
    m = store.enqueue_c2d("dev1", b"x", ttl=30, now=NOW)
    assert store.pending_c2d("dev1", NOW + 29.999) == [m]
    assert store.pending_c2d("dev1", NOW + 30) == []
    assert store.pending_c2d("dev1", NOW) == []  # dropped, not just hidden


@pytest.mark.parametrize(("size", "ok"), [(C2D_MAX_BODY, True), (C2D_MAX_BODY + 1, False)])
def test_body_size_limit(store: Store, size: int, ok: bool) -> None:
    if ok:
        assert len(store.enqueue_c2d("dev1", b"b" * size, now=NOW).body) == 65536
    else:
        with pytest.raises(ValueError, match="over 65536"):
            store.enqueue_c2d("dev1", b"b" * size, now=NOW)


@pytest.mark.parametrize(
    ("kwargs", "ok"),
    [
        ({"ttl": C2D_MAX_TTL}, True),
        ({"ttl": 0.001}, True),
        ({"ttl": C2D_MAX_TTL + 1}, False),
        ({"ttl": 0}, False),
        ({"ttl": -5}, False),
        *[({"ack": a}, True) for a in ("none", "positive", "negative", "full")],
        ({"ack": "all"}, False),
        ({"message_id": "m" * 128}, True),
        ({"message_id": "m" * 129}, False),
        ({"message_id": "-:.+%_#*?!(),=@;$'"}, True),
        ({"message_id": "a b"}, False),
        ({"message_id": ""}, False),
        ({"properties": {"k": 1}}, False),
        ({"properties": {"": "v"}}, False),
        ({"correlation_id": 5}, False),
    ],
)
def test_enqueue_argument_checks(store: Store, kwargs: dict[str, Any], ok: bool) -> None:
    if ok:
        store.enqueue_c2d("dev1", b"x", now=NOW, **kwargs)
        assert len(store.pending_c2d("dev1", NOW)) == 1
    else:
        with pytest.raises(ValueError):
            store.enqueue_c2d("dev1", b"x", now=NOW, **kwargs)
        assert store.pending_c2d("dev1", NOW) == []


def test_body_must_be_bytes(store: Store) -> None:
    with pytest.raises(ValueError, match="bytes"):
        store.enqueue_c2d("dev1", "text", now=NOW)  # type: ignore[arg-type]


def test_complete_and_delivery_count(store: Store) -> None:
    first = store.enqueue_c2d("dev1", b"1", now=NOW)
    second = store.enqueue_c2d("dev1", b"2", now=NOW)
    delivered = store.record_c2d_delivery("dev1", first.lock_token)
    assert delivered is not None and delivered.delivery_count == 1
    assert store.pending_c2d("dev1", NOW)[0].delivery_count == 1
    assert store.complete_c2d("dev1", first.lock_token) is True
    assert store.complete_c2d("dev1", first.lock_token) is False
    assert store.complete_c2d("dev1", "no-such-token") is False
    assert store.complete_c2d("nope", second.lock_token) is False
    assert store.record_c2d_delivery("dev1", first.lock_token) is None
    assert store.pending_c2d("dev1", NOW) == [second]
    assert store.pending_c2d("nope", NOW) == []


def test_returned_messages_are_copies(store: Store) -> None:
    m = store.enqueue_c2d("dev1", b"x", properties={"k": "v"}, now=NOW)
    m.properties["k"] = "changed"
    store.pending_c2d("dev1", NOW)[0].properties["x"] = "y"
    assert store.pending_c2d("dev1", NOW)[0].properties == {"k": "v"}


# ------------------------------------------------------------------ telemetry


def test_telemetry_per_device_all_devices_and_since(store: Store) -> None:
    store.add_device("dev2")
    store.record_telemetry(telemetry("dev1", 1, NOW))
    store.record_telemetry(telemetry("dev2", 2, NOW + 1))
    store.record_telemetry(telemetry("dev1", 3, NOW + 2))
    assert [m.body for m in store.telemetry()] == [b"m1", b"m2", b"m3"]
    assert [m.body for m in store.telemetry("dev1")] == [b"m1", b"m3"]
    assert [m.body for m in store.telemetry(since=NOW + 1)] == [b"m2", b"m3"]
    assert [m.body for m in store.telemetry("dev1", since=NOW + 2.001)] == []
    assert store.telemetry("nobody") == []


def test_telemetry_is_bounded_per_device() -> None:
    s = Store(None, telemetry_limit=3)
    for n in range(5):
        s.record_telemetry(telemetry("a", n))
    s.record_telemetry(telemetry("b", 9))
    assert [m.body for m in s.telemetry("a")] == [b"m2", b"m3", b"m4"]
    assert [m.body for m in s.telemetry()] == [b"m2", b"m3", b"m4", b"m9"]


def test_default_telemetry_bound_is_10000(store: Store) -> None:
    for n in range(10_001):
        store.record_telemetry(telemetry("dev1", n))
    kept = store.telemetry("dev1")
    assert len(kept) == 10_000 and kept[0].body == b"m1"


# ------------------------------------------------------------------ persistence


def populate(s: Store) -> None:
    s.add_device("sym", primary_key=KEY16, now=NOW)
    s.add_device("cam", x509_thumbprints=["AB" * 20], enabled=False, now=NOW)
    s.add_device("gone")
    s.remove_device("gone")
    s.patch_desired("sym", {"freq": "5m", "nested": {"a": [1, 2.5, "x", None, True]}})
    s.patch_reported("sym", {"battery": 55, "unicode": "é€"})
    s.patch_reported("sym", {"battery": 54})
    s.set_tags("sym", {"site": "lab"})
    s.enqueue_c2d("sym", b"\x00\xffbinary", correlation_id="c", properties={"p": "q"},
                  ack="negative", now=NOW)
    done = s.enqueue_c2d("sym", b"done", now=NOW)
    s.complete_c2d("sym", done.lock_token)
    s.enqueue_c2d("cam", b"for the camera", ttl=5, now=NOW)
    s.record_telemetry(telemetry("sym", 1))


def test_devices_twins_and_pending_c2d_survive_a_new_store(tmp_path: Path) -> None:
    first = Store(tmp_path)
    populate(first)
    second = Store(tmp_path)
    assert second.devices() == first.devices()
    assert [d.device_id for d in second.devices()] == ["sym", "cam"]
    for device_id in ("sym", "cam"):
        assert second.twin(device_id) == first.twin(device_id)
    assert second.twin("sym").properties_document() == {
        "desired": {"freq": "5m", "nested": {"a": [1, 2.5, "x", None, True]}, "$version": 2},
        "reported": {"battery": 54, "unicode": "é€", "$version": 3},
    }
    assert second.pending_c2d("sym", NOW) == first.pending_c2d("sym", NOW)
    assert [m.body for m in second.pending_c2d("sym", NOW)] == [b"\x00\xffbinary"]
    assert second.pending_c2d("cam", NOW) == first.pending_c2d("cam", NOW)
    assert first.telemetry() != [] and second.telemetry() == []


def test_changes_after_reopening_are_persisted_too(tmp_path: Path) -> None:
    populate(Store(tmp_path))
    s = Store(tmp_path)
    s.pending_c2d("cam", NOW + 5)  # expires the camera's message
    token = s.pending_c2d("sym", NOW)[0].lock_token
    s.record_c2d_delivery("sym", token)
    s.set_enabled("cam", True)
    third = Store(tmp_path)
    assert third.pending_c2d("cam", NOW) == []
    assert third.pending_c2d("sym", NOW)[0].delivery_count == 1
    assert third.device("cam").enabled is True  # type: ignore[union-attr]


def test_state_file_is_private_json(tmp_path: Path) -> None:
    Store(tmp_path / "new" / "dir").add_device("d")
    path = tmp_path / "new" / "dir" / "state.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    document = json.loads(path.read_text())
    assert document["devices"][0]["device_id"] == "d"


def test_memory_store_writes_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    s = Store(None)
    populate(s)
    assert s.path is None
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "content",
    [b"{not json", b"[]", b'{"format": "other", "version": 1, "devices": []}',
     b'{"format": "iotdev-emulator-state", "version": 1, "devices": [{"device_id": "x"}]}'],
)
def test_unusable_state_file_is_an_error_not_an_empty_hub(tmp_path: Path, content: bytes) -> None:
    (tmp_path / "state.json").write_bytes(content)
    with pytest.raises(ValueError, match="not a usable emulator state file"):
        Store(tmp_path)


def test_failed_replace_leaves_previous_state_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = Store(tmp_path)
    populate(s)
    path = tmp_path / "state.json"
    before = path.read_bytes()
    pending = s.pending_c2d("sym", NOW)

    def crash(src: object, dst: object) -> None:
        raise OSError("simulated crash during rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated crash"):
        s.add_device("new")
    with pytest.raises(OSError, match="simulated crash"):
        s.patch_reported("sym", {"battery": 1})
    with pytest.raises(OSError, match="simulated crash"):
        s.complete_c2d("sym", pending[0].lock_token)
    monkeypatch.undo()

    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]  # no temp files left
    # Memory did not move ahead of the disk.
    assert s.device("new") is None
    assert s.twin("sym").reported == {"battery": 54, "unicode": "é€"}
    assert s.pending_c2d("sym", NOW) == pending
    reopened = Store(tmp_path)
    assert reopened.device("new") is None and reopened.twin("sym") == s.twin("sym")
    # And the store keeps working once the disk does.
    s.add_device("new")
    assert Store(tmp_path).device("new") is not None


def test_failed_fsync_leaves_previous_state_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = Store(tmp_path)
    s.add_device("d")
    before = (tmp_path / "state.json").read_bytes()

    def no_space(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(OSError, match="No space"):
        s.set_enabled("d", False)
    monkeypatch.undo()
    assert (tmp_path / "state.json").read_bytes() == before
    assert s.device("d").enabled is True  # type: ignore[union-attr]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state.json"]


def test_c2d_message_equality_covers_every_field() -> None:
    # Guards the persistence tests, which compare messages with ==.
    a = C2DMessage(b"x", "m", None, {}, 1.0, 0.0, "t", 0, None)
    assert a != C2DMessage(b"x", "m", None, {}, 1.0, 0.0, "t", 1, None)
    assert a != C2DMessage(b"x", "m", None, {}, 1.0, 0.0, "t", 0, "full")
