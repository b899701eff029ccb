"""The exception tree of ``iotdev_mqtt``.

``MQTTError`` is the root.  ``ProtocolError`` covers everything that breaks the
MQTT 3.1.1 rules; it splits by *who* broke them:

* ``LocalProtocolError``: this side asked for something illegal (encode a topic
  name with ``+``, publish before ``connect()``, use a dead connection).
* ``RemoteProtocolError``: the peer sent something illegal.  Its subclasses
  ``MalformedPacket`` (bytes that do not follow the encoding rules) and
  ``PacketTooLarge`` (over the reader's ``max_packet_size``) come from the
  codec; a plain ``RemoteProtocolError`` means a well-formed packet that is not
  allowed in this role or state.

Every error carries ``packet`` (the control packet name, e.g. ``"PUBLISH"``),
``field`` and ``rule`` (a spec id such as ``"MQTT-3.3.1-2"`` or a section such
as ``"2.2.3"``) when they are known; the message names all three.
"""

from __future__ import annotations

__all__ = [
    "ConnectionRefused",
    "LocalProtocolError",
    "MQTTError",
    "MalformedPacket",
    "PacketTooLarge",
    "ProtocolError",
    "QueueFull",
    "RemoteProtocolError",
]


class MQTTError(Exception):
    """Root of every exception raised by ``iotdev_mqtt``."""


class ProtocolError(MQTTError):
    """A breach of the MQTT 3.1.1 rules.

    Attributes:
        packet: control packet name (``"CONNECT"`` ...) or ``None``.
        field: the field at fault (``"topic name"`` ...) or ``None``.
        rule: the spec clause, e.g. ``"MQTT-3.3.1-2"`` or ``"2.2.3"``, or ``None``.
        reason: the bare explanation, without packet, field and rule.
    """

    def __init__(
        self,
        reason: str,
        *,
        packet: str | None = None,
        field: str | None = None,
        rule: str | None = None,
    ) -> None:
        self.reason = reason
        self.packet = packet
        self.field = field
        self.rule = rule
        parts = []
        if packet:
            parts.append(packet)
        if field:
            parts.append(field)
        head = " ".join(parts)
        text = f"{head}: {reason}" if head else reason
        if rule:
            text = f"{text} [{rule}]"
        super().__init__(text)


class LocalProtocolError(ProtocolError):
    """This side asked for something the protocol or the engine's state forbids."""


class QueueFull(LocalProtocolError):
    """A publish was refused because the engine's outbound queue is at its limit."""


class RemoteProtocolError(ProtocolError):
    """The peer sent something the protocol forbids; the connection must be closed.

    Nothing that arrived before the violation is lost: ``packets`` holds the
    packets that the same ``PacketReader.feed()`` call decoded before it, and
    ``events`` the events that the same engine ``receive_data()`` call produced
    from them (both in order, both empty when there were none).
    """

    packets: tuple[object, ...] = ()
    events: tuple[object, ...] = ()


class MalformedPacket(RemoteProtocolError):
    """Received bytes that do not follow MQTT 3.1.1's encoding rules."""


class PacketTooLarge(RemoteProtocolError):
    """A received packet announces a size above the reader's ``max_packet_size``."""


class ConnectionRefused(MQTTError):
    """The server answered CONNECT with a non-zero return code.

    Attributes:
        return_code: the CONNACK return code (1 to 5).
    """

    def __init__(self, return_code: int, message: str) -> None:
        self.return_code = return_code
        super().__init__(message)
