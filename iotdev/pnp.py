"""IoT Plug and Play conventions, as small pure helpers.

A Plug and Play device announces its model id when it connects
(``IoTHubDeviceClient.create_from_...(..., model_id="dtmi:com:example:Thermostat;1")``,
or v2's ``product_info="dtmi:..."``) and, when provisioned, in the DPS payload
(``{"modelId": ...}``, see ``model_payload``).  Its data then follows the
conventions of Microsoft's "IoT Plug and Play conventions":

- telemetry from a component carries the ``$.sub`` property (``telemetry``);
- reported properties of a component are wrapped as
  ``{"<component>": {"__t": "c", ...}}`` (``reported_properties``);
- a device answers a writable (desired) property with
  ``{"<name>": {"value": ..., "ac": <code>, "av": <desired $version>, "ad": "..."}}``
  inside the component wrapper (``writable_property_ack``); codes: 200
  accepted, 202 in progress, 203 a device default (``av`` 0), 400 rejected,
  500 error;
- a command of a component arrives as the direct method ``component*command``
  (``split_command_name``).

Example::

    from iotdev import pnp

    client.send_message(pnp.telemetry({"temperature": 21.5}, component="thermostat1"))
    client.patch_twin_reported_properties(
        pnp.reported_properties({"maxTempSinceLastReboot": 30}, component="thermostat1"))
    for component, name, value in pnp.writable_properties(patch):
        ...
        client.patch_twin_reported_properties(pnp.writable_property_ack(
            name, value, ac=200, av=patch["$version"], component=component))
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from typing import Any

from ._models import Message

__all__ = [
    "COMPONENT_MARKER",
    "command_name",
    "model_payload",
    "reported_properties",
    "split_command_name",
    "telemetry",
    "writable_properties",
    "writable_property_ack",
]

COMPONENT_MARKER = {"__t": "c"}
"""What marks a twin section as a component's."""


def model_payload(model_id: str, **extra: Any) -> dict[str, Any]:
    """The DPS ``provisioning_payload`` announcing a model: ``{"modelId": ...}``.

    Raises:
        ValueError: ``model_id`` is not a DTMI (``dtmi:...;N``).
    """
    if not model_id.startswith("dtmi:"):
        raise ValueError(f"model_id must be a DTMI ('dtmi:...;1'), got {model_id!r}")
    return {"modelId": model_id, **extra}


def telemetry(values: Mapping[str, Any], component: str | None = None) -> Message:
    """A telemetry message: the values as UTF-8 JSON, and for a component the
    ``$.sub`` property (sent as an application property, as v2's sample does;
    IoT Hub then stamps ``dt-subject``).  Send one message per component.

    Raises:
        TypeError: the values are not JSON serializable.
    """
    message = Message(json.dumps(dict(values)), content_encoding="utf-8",
                      content_type="application/json")
    if component is not None:
        message.custom_properties["$.sub"] = component
    return message


def reported_properties(values: Mapping[str, Any],
                        component: str | None = None) -> dict[str, Any]:
    """A reported-properties patch; wrapped with the ``__t`` marker for a component."""
    if component is None:
        return dict(values)
    return {component: {**COMPONENT_MARKER, **values}}


def writable_property_ack(name: str, value: Any, *, ac: int, av: int, ad: str | None = None,
                          component: str | None = None) -> dict[str, Any]:
    """The reported-properties patch acknowledging a writable property.

    Args:
        name: the property.
        value: the value the device now uses.
        ac: an HTTP-like status (200, 202, 203, 400, 500).
        av: the desired ``$version`` acknowledged (0 for a device default).
        ad: an optional description.
        component: the component, or ``None`` for the default one.

    Returns:
        ``{name: {"value", "ac", "av"[, "ad"]}}``, wrapped for a component.
    """
    ack: dict[str, Any] = {"value": value, "ac": ac, "av": av}
    if ad is not None:
        ack["ad"] = ad
    return reported_properties({name: ack}, component)


def writable_properties(patch: Mapping[str, Any],
                        components: frozenset[str] | set[str] | None = None,
                        ) -> Iterator[tuple[str | None, str, Any]]:
    """The ``(component, name, value)`` of each property in a desired patch
    (or the ``desired`` section of a twin), skipping ``$version``,
    ``$metadata`` and the ``__t`` markers.

    Args:
        patch: the desired properties.
        components: the names that are components; ``None`` takes any
            object with the ``"__t": "c"`` marker as a component.
    """
    for key, value in patch.items():
        if key.startswith("$"):
            continue
        is_component = isinstance(value, Mapping) and (
            key in components if components is not None else value.get("__t") == "c")
        if is_component:
            for name, inner in value.items():
                if name != "__t" and not name.startswith("$"):
                    yield key, name, inner
        else:
            yield None, key, value


def command_name(command: str, component: str | None = None) -> str:
    """The direct method name of a command: ``component*command`` or ``command``."""
    return command if component is None else f"{component}*{command}"


def split_command_name(method_name: str) -> tuple[str | None, str]:
    """Split a direct method name into ``(component, command)``;
    ``component`` is ``None`` for the default component."""
    component, star, command = method_name.partition("*")
    return (component, command) if star else (None, method_name)
