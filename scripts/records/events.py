"""Events: what the engines report back from ``receive_data()``, ``tick()`` and
``connection_lost()``.  Named as facts; frozen, slotted value classes that
behave as the ``@dataclass(frozen=True, slots=True)`` declared in
``scripts/records/events.py``."""

from __future__ import annotations

from dataclasses import dataclass

from ._packets import Connect
from ._types import ConnAckCode

__all__ = [
    "ClientDisconnected",
    "ConnectReceived",
    "ConnectRefused",
    "Connected",
    "ConnectionLost",
    "Event",
    "MessageReceived",
    "PublishAcked",
    "PublishFailed",
    "RequestFailed",
    "SubscribeReceived",
    "Subscribed",
    "UnsubscribeReceived",
    "Unsubscribed",
]


@dataclass(frozen=True, slots=True)
class Connected:
    """The server accepted CONNECT (client role) or we accepted it (server role)."""

    session_present: bool


@dataclass(frozen=True, slots=True)
class ConnectRefused:
    """CONNECT was refused with a non-zero return code; the connection must close."""

    return_code: int

    @property
    def reason(self) -> str:
        try:
            text = ConnAckCode(self.return_code).description
        except ValueError:
            text = "reserved return code"
        return f"{text} ({self.return_code})"


@dataclass(frozen=True, slots=True)
class ConnectionLost:
    """The engine declared the connection dead (a timeout); close the transport,
    then call ``connection_lost()``."""

    reason: str


@dataclass(frozen=True, slots=True)
class MessageReceived:
    """An application message from the peer.

    ``packet_id`` is ``None`` at QoS 0; with ``auto_ack=False`` pass it to
    ``ack()`` once the message is safe.
    """

    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    packet_id: int | None


@dataclass(frozen=True, slots=True)
class PublishAcked:
    """Our QoS 1 publish got its PUBACK, or our QoS 2 publish its PUBCOMP.

    ``token`` is what ``publish()`` returned.
    """

    token: int
    packet_id: int


@dataclass(frozen=True, slots=True)
class PublishFailed:
    """Our publish will never be acknowledged (``clean_session_policy="fail"``)."""

    token: int
    reason: str


@dataclass(frozen=True, slots=True)
class Subscribed:
    """SUBACK for our SUBSCRIBE: one return code per filter, in order."""

    packet_id: int
    topic_filters: tuple[str, ...]
    return_codes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Unsubscribed:
    """UNSUBACK for our UNSUBSCRIBE."""

    packet_id: int
    topic_filters: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RequestFailed:
    """A SUBSCRIBE or UNSUBSCRIBE was sent but the connection ended before its ack."""

    packet_id: int
    packet: str
    reason: str


@dataclass(frozen=True, slots=True)
class ConnectReceived:
    """Server role: a valid CONNECT arrived; answer with ``accept()`` or ``refuse()``."""

    connect: Connect


@dataclass(frozen=True, slots=True)
class SubscribeReceived:
    """Server role: answer with ``suback(packet_id, return_codes)``."""

    packet_id: int
    subscriptions: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class UnsubscribeReceived:
    """Server role: the UNSUBACK has already been queued [MQTT-3.10.4-4]."""

    packet_id: int
    topic_filters: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ClientDisconnected:
    """Server role: the client sent DISCONNECT; discard its Will [MQTT-3.14.4-3]."""


Event = (
    Connected
    | ConnectRefused
    | ConnectionLost
    | MessageReceived
    | PublishAcked
    | PublishFailed
    | Subscribed
    | Unsubscribed
    | RequestFailed
    | ConnectReceived
    | SubscribeReceived
    | UnsubscribeReceived
    | ClientDisconnected
)
