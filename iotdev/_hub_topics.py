"""IoT Hub MQTT topics and property bags (reference sections 4.1, 5, 6, 7.1).

Pure string functions.  Builders produce what azure-iot-device v2 (2.14) puts on
the wire, byte for byte; parsers return ``None`` for a topic that is not of
their kind and never raise, whatever the input.

Encoding rules, as in v2:

* Device and module ids are **not** encoded in topics; builders refuse ids that
  would break the topic structure (empty, or containing ``/``, ``+``, ``#`` or
  U+0000).
* Property bags use ``urlencode(pairs, quote_via=quote)``: every key and value
  quoted with ``safe=""`` (space is ``%20``, ``$`` is ``%24``); decoding uses
  ``unquote``, never ``unquote_plus`` (a literal ``+`` stays ``+``).
* Request ids, method names, statuses and input names are quoted in topics and
  unquoted when parsed; ``$rid`` and ``$version`` keys are literal.

Where parsing is stricter than v2's ``contains`` / ``startswith`` tests, the
topic must have the exact structure, and the property bag is everything after
the fixed levels (v2 took one level only; the hub quotes ``/`` in bags, so the
two agree on what the hub sends).
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal, TypeGuard
from urllib.parse import quote, unquote, urlencode

if TYPE_CHECKING:
    import datetime

__all__ = [
    "C2D_DROPPED_KEYS",
    "C2D_SYSTEM_PROPERTIES",
    "D2C_SYSTEM_PROPERTIES",
    "METHOD_SUBSCRIBE_FILTER",
    "TWIN_DESIRED_SUBSCRIBE_FILTER",
    "TWIN_RESPONSE_SUBSCRIBE_FILTER",
    "c2d_subscribe_filter",
    "c2d_topic",
    "d2c_system_pairs",
    "decode_property_bag",
    "encode_property_bag",
    "input_subscribe_filter",
    "input_topic",
    "is_twin_desired_patch_topic",
    "method_request_topic",
    "method_response_topic",
    "new_request_id",
    "parse_c2d_topic",
    "parse_input_topic",
    "parse_method_request_topic",
    "parse_method_response_topic",
    "parse_telemetry_topic",
    "parse_twin_desired_patch_topic",
    "parse_twin_request_topic",
    "parse_twin_response_topic",
    "split_received_properties",
    "telemetry_topic",
    "twin_desired_patch_topic",
    "twin_get_topic",
    "twin_patch_reported_topic",
    "twin_response_topic",
]

#: ``Message`` attribute -> wire key of the D2C system properties, in v2's order.
D2C_SYSTEM_PROPERTIES: Mapping[str, str] = MappingProxyType(
    {
        "output_name": "$.on",
        "message_id": "$.mid",
        "correlation_id": "$.cid",
        "user_id": "$.uid",
        "content_type": "$.ct",
        "content_encoding": "$.ce",
        "iothub_interface_id": "$.ifid",
        "expiry_time_utc": "$.exp",
    }
)

#: Wire key -> ``Message`` attribute for received (C2D, input) messages.
C2D_SYSTEM_PROPERTIES: Mapping[str, str] = MappingProxyType(
    {
        "$.mid": "message_id",
        "$.cid": "correlation_id",
        "$.uid": "user_id",
        "$.ct": "content_type",
        "$.ce": "content_encoding",
        "$.exp": "expiry_time_utc",
        "iothub-ack": "ack",
    }
)

#: Wire keys of received messages that v2 drops.
C2D_DROPPED_KEYS: frozenset[str] = frozenset({"$.to"})

METHOD_SUBSCRIBE_FILTER = "$iothub/methods/POST/#"
TWIN_RESPONSE_SUBSCRIBE_FILTER = "$iothub/twin/res/#"
TWIN_DESIRED_SUBSCRIBE_FILTER = "$iothub/twin/PATCH/properties/desired/#"

_METHODS_POST = "$iothub/methods/POST/"
_METHODS_RES = "$iothub/methods/res/"
_TWIN_GET = "$iothub/twin/GET/"
_TWIN_PATCH_REPORTED = "$iothub/twin/PATCH/properties/reported/"
_TWIN_RES = "$iothub/twin/res/"
_TWIN_PATCH_DESIRED = "$iothub/twin/PATCH/properties/desired/"

# Statuses and versions: ASCII digits only (``int()`` would also take "١" or
# "1_0"), bounded so that ``int()`` never hits its digit limit.
_STATUS = re.compile(r"-?[0-9]{1,18}")
_VERSION = re.compile(r"[0-9]{1,18}")


# ---------------------------------------------------------------------------
# Property bags
# ---------------------------------------------------------------------------


def is_date(value: object) -> TypeGuard[datetime.date]:
    """Whether ``value`` is a ``datetime.date`` (or ``datetime``), without
    importing ``datetime``: none can exist before that module is loaded."""
    module = sys.modules.get("datetime")
    return module is not None and isinstance(value, module.date)


def d2c_system_pairs(message: object) -> list[tuple[str, str]]:
    """The system properties of an outgoing message, as v2 selects them.

    Each attribute of ``D2C_SYSTEM_PROPERTIES`` that is present and truthy
    (``message_id=0`` or ``""`` is left out), in that order, converted with
    ``str()``; ``expiry_time_utc`` uses ``.isoformat()`` when it is a ``date``
    or ``datetime``.

    Args:
        message: any object with (some of) those attributes, e.g. ``Message``.

    Returns:
        ``(wire key, value)`` pairs for ``encode_property_bag``.
    """
    pairs: list[tuple[str, str]] = []
    for attribute, wire_key in D2C_SYSTEM_PROPERTIES.items():
        value = getattr(message, attribute, None)
        if not value:
            continue
        if is_date(value):
            pairs.append((wire_key, value.isoformat()))
        else:
            pairs.append((wire_key, str(value)))
    return pairs


def encode_property_bag(
    system: Iterable[tuple[str, str]],
    custom: Mapping[Any, object] | None = None,
) -> str:
    """Encode a property bag as v2's ``encode_message_properties_in_topic``.

    System pairs come first in the given order; custom properties follow,
    key and value converted with ``str()`` and sorted; both parts use
    ``urlencode(..., quote_via=quote)``; ``&`` joins them only when both are
    non-empty.

    Args:
        system: ``(wire key, value)`` pairs, e.g. from ``d2c_system_pairs``.
        custom: application properties.

    Returns:
        The bag (possibly ``""``), to append to the topic.

    Raises:
        ValueError: "Duplicate keys in custom properties!" when two keys are equal
            after ``str()``; ``UnicodeEncodeError`` (a ``ValueError``) for text
            with lone surrogates.
    """
    system_pairs = list(system)
    bag = urlencode(system_pairs, quote_via=quote)
    if custom:
        custom_pairs = sorted((str(k), str(v)) for k, v in custom.items())
        keys = {k for k, _ in custom_pairs}
        if len(keys) != len(custom_pairs):
            raise ValueError("Duplicate keys in custom properties!")
        if system_pairs:
            bag += "&"
        bag += urlencode(custom_pairs, quote_via=quote)
    return bag


def decode_property_bag(bag: str) -> list[tuple[str, str | None]]:
    """Decode a property bag as v2's ``extract_message_properties_from_topic``.

    Entries are split on ``&``; each on ``=``; the key is ``unquote(first)``, the
    value ``unquote(second)`` or ``None`` when there is no ``=`` (``k`` -> ``None``,
    ``k=`` -> ``""``).  Only the text between the first and second ``=`` is the
    value (the hub quotes ``=``).  Like v2, an empty entry (``a&&b``, a trailing
    ``&``) yields ``("", None)``; an empty bag yields nothing.

    Args:
        bag: the text after the topic's fixed levels.

    Returns:
        ``(key, value)`` pairs in wire order, duplicates kept.
    """
    if not bag:
        return []
    pairs: list[tuple[str, str | None]] = []
    for entry in bag.split("&"):
        parts = entry.split("=")
        value = _unquote(parts[1], _VALUES) if len(parts) > 1 else None
        pairs.append((_unquote(parts[0], _KEYS), value))
    return pairs


# Quoted keys (``%24.mid``) and values (``$.to``: ``%2Fdevices%2F...``) repeat
# from message to message: unquoted once (``unquote`` is ~2 us a call on the
# C2D delivery path), at most _UNQUOTED_MAX of each kept.
_KEYS: dict[str, str] = {}
_VALUES: dict[str, str] = {}
_UNQUOTED_MAX = 256


def _unquote(text: str, cache: dict[str, str]) -> str:
    if "%" not in text:
        return text
    done = cache.get(text)
    if done is None:
        done = unquote(text)
        if len(cache) >= _UNQUOTED_MAX:
            cache.clear()
        cache[text] = done
    return done


def split_received_properties(
    pairs: Iterable[tuple[str, str | None]],
) -> tuple[dict[str, str | None], dict[str, str | None]]:
    """Sort decoded pairs of a received message into attributes and custom properties.

    Keys of ``C2D_SYSTEM_PROPERTIES`` become attributes, ``C2D_DROPPED_KEYS`` are
    dropped, every other key (other ``$.`` keys included) is a custom property.
    A later duplicate wins, as in v2.

    Args:
        pairs: the output of ``decode_property_bag``.

    Returns:
        ``(attributes, custom_properties)``, e.g.
        ``({"message_id": "123"}, {"prop1": None})``.
    """
    attributes: dict[str, str | None] = {}
    custom: dict[str, str | None] = {}
    for key, value in pairs:
        if key in C2D_DROPPED_KEYS:
            continue
        attribute = C2D_SYSTEM_PROPERTIES.get(key)
        if attribute is None:
            custom[key] = value
        else:
            attributes[attribute] = value
    return attributes, custom


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def _check_id(value: str, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be str, not {type(value).__name__}")
    if not value:
        raise ValueError(f"{what} must not be empty")
    for char in ("/", "+", "#", "\x00"):
        if char in value:
            raise ValueError(f"{what} must not contain {char!r}: it would break the topic")
    return value


def _q(value: object) -> str:
    return quote(str(value), safe="")


def _query(query: str) -> dict[str, str]:
    """``$rid``/``$version`` style parameters: keys unquoted, ``$`` stripped (v2)."""
    params: dict[str, str] = {}
    for entry in query.split("&"):
        name, _, value = entry.partition("=")
        params[unquote(name).lstrip("$")] = unquote(value)
    return params


def _split_query(topic: object, path: str) -> dict[str, str] | None:
    """The query parameters when ``topic`` is exactly ``{path}?{query}``."""
    if not isinstance(topic, str):
        return None
    head, sep, query = topic.partition("?")
    if head != path or not sep:
        return None
    return _query(query)


def _levels(topic: object) -> list[str] | None:
    return topic.split("/") if isinstance(topic, str) else None


# ---------------------------------------------------------------------------
# Telemetry, C2D and module inputs
# ---------------------------------------------------------------------------


def telemetry_topic(device_id: str, module_id: str | None = None, bag: str = "") -> str:
    """The D2C topic (``send_message``, ``send_message_to_output``).

    Args:
        device_id: the device id (not encoded).
        module_id: the module id for a module, else ``None``.
        bag: the encoded property bag (``encode_property_bag``).

    Returns:
        ``devices/{device_id}/messages/events/{bag}`` or
        ``devices/{device_id}/modules/{module_id}/messages/events/{bag}``.

    Raises:
        ValueError: an id is empty or contains ``/``, ``+``, ``#`` or U+0000.
    """
    base = f"devices/{_check_id(device_id, 'device_id')}"
    if module_id is not None:
        base += f"/modules/{_check_id(module_id, 'module_id')}"
    return f"{base}/messages/events/{bag}"


def parse_telemetry_topic(topic: str) -> tuple[str, str | None, str] | None:
    """Recognise a D2C topic (for the emulator).

    ``devices/{id}/messages/events`` without the trailing ``/`` is accepted
    with an empty bag.

    Args:
        topic: a PUBLISH topic.

    Returns:
        ``(device_id, module_id or None, bag)``, or ``None``.
    """
    levels = _levels(topic)
    if levels is None or len(levels) < 4 or levels[0] != "devices" or not levels[1]:
        return None
    device_id = levels[1]
    if levels[2:4] == ["messages", "events"]:
        return device_id, None, "/".join(levels[4:])
    if (
        len(levels) >= 6
        and levels[2] == "modules"
        and levels[3]
        and levels[4:6] == ["messages", "events"]
    ):
        return device_id, levels[3], "/".join(levels[6:])
    return None


def c2d_topic(device_id: str, bag: str = "") -> str:
    """The topic on which the hub delivers a C2D message (for the emulator).

    Args:
        device_id: the device id (not encoded).
        bag: the encoded property bag.

    Returns:
        ``devices/{device_id}/messages/devicebound/{bag}``.

    Raises:
        ValueError: a bad ``device_id`` (see ``telemetry_topic``).
    """
    return f"devices/{_check_id(device_id, 'device_id')}/messages/devicebound/{bag}"


def c2d_subscribe_filter(device_id: str) -> str:
    """The C2D subscription of a device.

    Args:
        device_id: the device id (not encoded).

    Returns:
        ``devices/{device_id}/messages/devicebound/#``.

    Raises:
        ValueError: a bad ``device_id`` (see ``telemetry_topic``).
    """
    return f"devices/{_check_id(device_id, 'device_id')}/messages/devicebound/#"


def parse_c2d_topic(topic: str) -> tuple[str, str] | None:
    """Recognise a C2D delivery topic.

    Args:
        topic: a PUBLISH topic.

    Returns:
        ``(device_id, bag)`` (bag possibly ``""``), or ``None``.
    """
    levels = _levels(topic)
    if (
        levels is None
        or len(levels) < 4
        or levels[0] != "devices"
        or not levels[1]
        or levels[2:4] != ["messages", "devicebound"]
    ):
        return None
    return levels[1], "/".join(levels[4:])


def input_topic(device_id: str, module_id: str, input_name: str, bag: str = "") -> str:
    """The topic on which a module receives a message on an input (for the emulator).

    Args:
        device_id: the device id (not encoded).
        module_id: the module id (not encoded).
        input_name: the input's name (quoted; v2 unquotes it).
        bag: the encoded property bag.

    Returns:
        ``devices/{device_id}/modules/{module_id}/inputs/{input_name}/{bag}``.

    Raises:
        ValueError: a bad id (see ``telemetry_topic``) or an empty ``input_name``.
    """
    if not input_name:
        raise ValueError("input_name must not be empty")
    return (
        f"devices/{_check_id(device_id, 'device_id')}/modules/"
        f"{_check_id(module_id, 'module_id')}/inputs/{_q(input_name)}/{bag}"
    )


def input_subscribe_filter(device_id: str, module_id: str) -> str:
    """The input subscription of a module.

    Args:
        device_id: the device id (not encoded).
        module_id: the module id (not encoded).

    Returns:
        ``devices/{device_id}/modules/{module_id}/inputs/#``.

    Raises:
        ValueError: a bad id (see ``telemetry_topic``).
    """
    return (
        f"devices/{_check_id(device_id, 'device_id')}/modules/"
        f"{_check_id(module_id, 'module_id')}/inputs/#"
    )


def parse_input_topic(topic: str) -> tuple[str, str, str, str] | None:
    """Recognise a module input topic.

    Args:
        topic: a PUBLISH topic.

    Returns:
        ``(device_id, module_id, input_name unquoted, bag)``, or ``None``.
    """
    levels = _levels(topic)
    if (
        levels is None
        or len(levels) < 6
        or levels[0] != "devices"
        or levels[2] != "modules"
        or levels[4] != "inputs"
        or not (levels[1] and levels[3] and levels[5])
    ):
        return None
    return levels[1], levels[3], unquote(levels[5]), "/".join(levels[6:])


# ---------------------------------------------------------------------------
# Direct methods
# ---------------------------------------------------------------------------


def method_request_topic(name: str, rid: str) -> str:
    """The topic of a method request (for the emulator).

    Args:
        name: the method name (quoted).
        rid: the request id (quoted).

    Returns:
        ``$iothub/methods/POST/{name}/?$rid={rid}``.

    Raises:
        ValueError: an empty ``name``.
    """
    if not name:
        raise ValueError("method name must not be empty")
    return f"{_METHODS_POST}{_q(name)}/?$rid={_q(rid)}"


def parse_method_request_topic(topic: str) -> tuple[str, str] | None:
    """Recognise a method request.

    Args:
        topic: a PUBLISH topic.

    Returns:
        ``(method name, rid)``, both unquoted, or ``None`` (also when there
        is no ``$rid``).
    """
    if not isinstance(topic, str) or not topic.startswith(_METHODS_POST):
        return None
    head, _, _ = topic.partition("?")
    name = head[len(_METHODS_POST) :]
    if not name.endswith("/") or name.count("/") != 1 or name == "/":
        return None
    params = _split_query(topic, head)
    if params is None or "rid" not in params:
        return None
    return unquote(name[:-1]), params["rid"]


def method_response_topic(status: int, rid: str) -> str:
    """The topic of a method response.

    Args:
        status: the status code.
        rid: the request id of the request (quoted).

    Returns:
        ``$iothub/methods/res/{status}/?$rid={rid}``.
    """
    return f"{_METHODS_RES}{_q(status)}/?$rid={_q(rid)}"


def _status_and_params(topic: object, prefix: str) -> tuple[int, dict[str, str]] | None:
    if not isinstance(topic, str) or not topic.startswith(prefix):
        return None
    head, _, _ = topic.partition("?")
    status_text = head[len(prefix) :]
    if not status_text.endswith("/"):
        return None
    status = unquote(status_text[:-1])
    if not _STATUS.fullmatch(status):
        return None
    params = _split_query(topic, head)
    if params is None or "rid" not in params:
        return None
    return int(status), params


def parse_method_response_topic(topic: str) -> tuple[int, str] | None:
    """Recognise a method response (for the emulator).

    Args:
        topic: a PUBLISH topic.

    Returns:
        ``(status, rid)``, or ``None``.
    """
    parsed = _status_and_params(topic, _METHODS_RES)
    if parsed is None:
        return None
    return parsed[0], parsed[1]["rid"]


# ---------------------------------------------------------------------------
# Twin
# ---------------------------------------------------------------------------


def twin_get_topic(rid: str) -> str:
    """The topic of a GET twin request.

    Args:
        rid: the request id (quoted).

    Returns:
        ``$iothub/twin/GET/?$rid={rid}``.
    """
    return f"{_TWIN_GET}?$rid={_q(rid)}"


def twin_patch_reported_topic(rid: str) -> str:
    """The topic of a reported-properties patch.

    Args:
        rid: the request id (quoted).

    Returns:
        ``$iothub/twin/PATCH/properties/reported/?$rid={rid}``.
    """
    return f"{_TWIN_PATCH_REPORTED}?$rid={_q(rid)}"


def parse_twin_request_topic(topic: str) -> tuple[Literal["GET", "PATCH"], str] | None:
    """Recognise a twin request (for the emulator).

    Args:
        topic: a PUBLISH topic.

    Returns:
        ``("GET", rid)`` or ``("PATCH", rid)`` (a reported patch), or ``None``.
    """
    params = _split_query(topic, _TWIN_GET)
    if params is not None and "rid" in params:
        return "GET", params["rid"]
    params = _split_query(topic, _TWIN_PATCH_REPORTED)
    if params is not None and "rid" in params:
        return "PATCH", params["rid"]
    return None


def twin_response_topic(status: int, rid: str, version: int | None = None) -> str:
    """The topic of a twin response (for the emulator).

    Args:
        status: the status code (200 for GET, 204 for PATCH...).
        rid: the request id of the request (quoted).
        version: the twin's reported version after a PATCH, if any.

    Returns:
        ``$iothub/twin/res/{status}/?$rid={rid}[&$version={version}]``.
    """
    topic = f"{_TWIN_RES}{_q(status)}/?$rid={_q(rid)}"
    if version is not None:
        topic += f"&$version={int(version)}"
    return topic


def parse_twin_response_topic(topic: str) -> tuple[int, str, int | None] | None:
    """Recognise a twin response.

    Args:
        topic: a PUBLISH topic.

    Returns:
        ``(status, rid, version or None)``, or ``None``.  A ``$version`` that is
        not a number counts as absent (v2 ignores it anyway).
    """
    parsed = _status_and_params(topic, _TWIN_RES)
    if parsed is None:
        return None
    status, params = parsed
    version_text = params.get("version", "")
    version = int(version_text) if _VERSION.fullmatch(version_text) else None
    return status, params["rid"], version


def twin_desired_patch_topic(version: int) -> str:
    """The topic of a desired-properties patch notification (for the emulator).

    Args:
        version: the desired properties' new ``$version``.

    Returns:
        ``$iothub/twin/PATCH/properties/desired/?$version={version}``.
    """
    return f"{_TWIN_PATCH_DESIRED}?$version={int(version)}"


def is_twin_desired_patch_topic(topic: str) -> bool:
    """v2's lenient test: the topic starts with ``$iothub/twin/PATCH/properties/desired``.

    Args:
        topic: a PUBLISH topic.

    Returns:
        Whether v2 would treat it as a desired-properties patch.
    """
    return isinstance(topic, str) and topic.startswith(_TWIN_PATCH_DESIRED[:-1])


def parse_twin_desired_patch_topic(topic: str) -> int | None:
    """Recognise a desired-properties patch and read its version.

    Args:
        topic: a PUBLISH topic.

    Returns:
        The ``$version``, or ``None`` when the topic is not exactly
        ``$iothub/twin/PATCH/properties/desired/?$version={n}`` (extra
        parameters allowed).  See ``is_twin_desired_patch_topic`` for v2's test.
    """
    params = _split_query(topic, _TWIN_PATCH_DESIRED)
    if params is None:
        return None
    version_text = params.get("version", "")
    return int(version_text) if _VERSION.fullmatch(version_text) else None


def new_request_id() -> str:
    """A fresh ``$rid``: a random UUID4 as text (``uuid`` loads ``platform``
    and ``_uuid``: imported on the first request, not with the client)."""
    from uuid import uuid4

    return str(uuid4())
