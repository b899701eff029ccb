"""The Device Provisioning Service's MQTT vocabulary, pure: user name, SAS
resource, topics and their parsing.  Shared by the provisioning client
(``_provisioning.py``) and the emulator's DPS (``emulator/_dps.py``).

Facts (Microsoft's "Communicate with DPS using MQTT"; azure-iot-device 2.14):

- client id = registration id; user name
  ``{id_scope}/registrations/{registration_id}/api-version=2019-03-31&ClientVersion={ua}``
  (the query is ``urlencode(..., quote_via=quote)``);
- SAS resource ``{id_scope}/registrations/{registration_id}``;
- subscribe ``$dps/registrations/res/#``; register by publishing to
  ``$dps/registrations/PUT/iotdps-register/?$rid={rid}``; poll with
  ``$dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={op}``;
- answers come on ``$dps/registrations/res/{status}/?$rid={rid}[&retry-after={s}]``.
"""

from __future__ import annotations

import math
from urllib.parse import quote, unquote, urlencode

__all__ = [
    "PROVISIONING_API_VERSION",
    "RESPONSE_SUBSCRIBE_FILTER",
    "build_username",
    "parse_request_topic",
    "parse_response_topic",
    "parse_username",
    "poll_topic",
    "register_topic",
    "response_topic",
    "sas_resource_uri",
]

PROVISIONING_API_VERSION = "2019-03-31"
RESPONSE_SUBSCRIBE_FILTER = "$dps/registrations/res/#"
RESPONSE_PREFIX = "$dps/registrations/res/"
REGISTER_PREFIX = "$dps/registrations/PUT/iotdps-register/"
POLL_PREFIX = "$dps/registrations/GET/iotdps-get-operationstatus/"


def sas_resource_uri(id_scope: str, registration_id: str) -> str:
    """The SAS token's resource: ``{id_scope}/registrations/{registration_id}``."""
    return f"{id_scope}/registrations/{registration_id}"


def build_username(id_scope: str, registration_id: str, client_version: str,
                   api_version: str = PROVISIONING_API_VERSION) -> str:
    """The CONNECT user name, byte for byte as azure-iot-device 2.14 builds it.

    Args:
        id_scope: the DPS instance's id scope.
        registration_id: the device's registration id (not encoded, as v2).
        client_version: the user agent (percent-encoded in the query).
        api_version: the DPS API version.

    Returns:
        ``{id_scope}/registrations/{registration_id}/api-version=...&ClientVersion=...``.
    """
    query = urlencode([("api-version", api_version), ("ClientVersion", client_version)],
                      quote_via=quote)
    return f"{sas_resource_uri(id_scope, registration_id)}/{query}"


def parse_username(text: str) -> tuple[str, str, dict[str, str]]:
    """Split a DPS user name (for the emulator).

    Returns:
        ``(id_scope, registration_id, params)``.

    Raises:
        ValueError: not ``{scope}/registrations/{id}/{query}``.
    """
    scope, sep, rest = text.partition("/registrations/")
    if not scope or not sep or "/" in scope:
        raise ValueError("DPS user name must be {idScope}/registrations/{registrationId}/{query}")
    registration_id, _, query = rest.partition("/")
    if not registration_id:
        raise ValueError("DPS user name: empty registration id")
    params: dict[str, str] = {}
    for entry in query.lstrip("?").split("&"):
        if entry:
            name, _, value = entry.partition("=")
            params[unquote(name)] = unquote(value)
    return scope, registration_id, params


def register_topic(rid: str) -> str:
    """The topic of a registration request with request id ``rid``."""
    return f"{REGISTER_PREFIX}?$rid={quote(rid, safe='')}"


def poll_topic(rid: str, operation_id: str) -> str:
    """The topic of an operation-status request."""
    return (f"{POLL_PREFIX}?$rid={quote(rid, safe='')}"
            f"&operationId={quote(operation_id, safe='')}")


def response_topic(status: int, rid: str, retry_after: float | None = None) -> str:
    """The topic DPS answers on (for the emulator).  ``retry-after`` goes out
    in whole seconds, rounded up, as DPS sends it: azure-iot-device parses it
    with ``int()`` and fails on ``0.5``."""
    topic = f"{RESPONSE_PREFIX}{status}/?$rid={quote(rid, safe='')}"
    if retry_after is not None:
        topic += f"&retry-after={math.ceil(retry_after)}"
    return topic


def _properties(text: str) -> dict[str, str]:
    props: dict[str, str] = {}
    for entry in text.split("&"):
        if not entry:
            continue
        name, _, value = entry.partition("=")
        key = unquote(name)
        if key in props:
            raise ValueError(f"duplicate property {key!r}")
        props[key] = unquote(value)
    return props


def parse_response_topic(topic: str) -> tuple[int, dict[str, str]] | None:
    """Parse an answer's topic.

    Returns:
        ``(status, properties)`` (``$rid``, ``retry-after``...), or ``None`` for
        a topic that is not a DPS answer.

    Raises:
        ValueError: a DPS answer topic with a non-numeric status or a
            duplicate property.
    """
    if not topic.startswith(RESPONSE_PREFIX):
        return None
    status_text, _, rest = topic[len(RESPONSE_PREFIX):].partition("/")
    if not status_text.isdigit():
        raise ValueError(f"DPS answer topic {topic!r}: status {status_text!r} is not a number")
    return int(status_text), _properties(rest.lstrip("?"))


def parse_request_topic(topic: str) -> tuple[str, dict[str, str]] | None:
    """Parse a device's request topic (for the emulator).

    Returns:
        ``("register" | "poll", properties)`` or ``None`` for any other topic.

    Raises:
        ValueError: a duplicate property.
    """
    for kind, prefix in (("register", REGISTER_PREFIX), ("poll", POLL_PREFIX)):
        if topic.startswith(prefix):
            return kind, _properties(topic[len(prefix):].lstrip("?"))
    return None
