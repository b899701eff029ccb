"""The fourteen MQTT 3.1.1 control packets: frozen, slotted value classes.

Each behaves as the ``@dataclass(frozen=True, slots=True)`` it is declared as
in ``scripts/records/packets.py`` (keyword or positional construction with the
same defaults, ``==``, ``hash``, ``repr``, ``__match_args__``, pickling, and
``dataclasses.FrozenInstanceError`` on assignment), without the cost of
building dataclasses at import time; ``copy.replace()`` (Python 3.13+) makes a
changed copy.

Field names follow the spec.  Packets are plain values: building one does not
validate it (the decoder only builds valid ones; ``encode()`` checks every rule
before writing a byte), so a test can describe an illegal packet and see the
encoder refuse it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ._types import PacketType

__all__ = [
    "ConnAck",
    "Connect",
    "Disconnect",
    "Packet",
    "PingReq",
    "PingResp",
    "PubAck",
    "PubComp",
    "PubRec",
    "PubRel",
    "Publish",
    "SubAck",
    "Subscribe",
    "UnsubAck",
    "Unsubscribe",
    "Will",
]


@dataclass(frozen=True, slots=True)
class Will:
    """The Will message carried by CONNECT (section 3.1.2.5)."""

    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False


@dataclass(frozen=True, slots=True)
class Connect:
    """CONNECT: client to server, first packet of every connection (3.1)."""

    packet_type: ClassVar[PacketType] = PacketType.CONNECT
    client_id: str
    clean_session: bool = True
    keep_alive: int = 60
    username: str | None = None
    password: bytes | None = None
    will: Will | None = None
    protocol_name: str = "MQTT"
    protocol_level: int = 4


@dataclass(frozen=True, slots=True)
class ConnAck:
    """CONNACK: the server's answer to CONNECT (3.2)."""

    packet_type: ClassVar[PacketType] = PacketType.CONNACK
    session_present: bool = False
    return_code: int = 0


@dataclass(frozen=True, slots=True)
class Publish:
    """PUBLISH: an application message, either direction (3.3).

    ``packet_id`` is ``None`` exactly when ``qos`` is 0.
    """

    packet_type: ClassVar[PacketType] = PacketType.PUBLISH
    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None


@dataclass(frozen=True, slots=True)
class PubAck:
    """PUBACK: QoS 1 acknowledgement (3.4)."""

    packet_type: ClassVar[PacketType] = PacketType.PUBACK
    packet_id: int


@dataclass(frozen=True, slots=True)
class PubRec:
    """PUBREC: QoS 2, part 1 (3.5)."""

    packet_type: ClassVar[PacketType] = PacketType.PUBREC
    packet_id: int


@dataclass(frozen=True, slots=True)
class PubRel:
    """PUBREL: QoS 2, part 2 (3.6); fixed-header flags are always 0010."""

    packet_type: ClassVar[PacketType] = PacketType.PUBREL
    packet_id: int


@dataclass(frozen=True, slots=True)
class PubComp:
    """PUBCOMP: QoS 2, part 3 (3.7)."""

    packet_type: ClassVar[PacketType] = PacketType.PUBCOMP
    packet_id: int


@dataclass(frozen=True, slots=True)
class Subscribe:
    """SUBSCRIBE: client to server; ``subscriptions`` is ``((filter, qos), ...)`` (3.8)."""

    packet_type: ClassVar[PacketType] = PacketType.SUBSCRIBE
    packet_id: int
    subscriptions: tuple[tuple[str, int], ...]


@dataclass(frozen=True, slots=True)
class SubAck:
    """SUBACK: one return code per requested filter, in order (3.9)."""

    packet_type: ClassVar[PacketType] = PacketType.SUBACK
    packet_id: int
    return_codes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    """UNSUBSCRIBE: client to server (3.10)."""

    packet_type: ClassVar[PacketType] = PacketType.UNSUBSCRIBE
    packet_id: int
    topic_filters: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class UnsubAck:
    """UNSUBACK (3.11)."""

    packet_type: ClassVar[PacketType] = PacketType.UNSUBACK
    packet_id: int


@dataclass(frozen=True, slots=True)
class PingReq:
    """PINGREQ: client to server (3.12)."""

    packet_type: ClassVar[PacketType] = PacketType.PINGREQ


@dataclass(frozen=True, slots=True)
class PingResp:
    """PINGRESP: server to client (3.13)."""

    packet_type: ClassVar[PacketType] = PacketType.PINGRESP


@dataclass(frozen=True, slots=True)
class Disconnect:
    """DISCONNECT: client to server, the clean end of a connection (3.14)."""

    packet_type: ClassVar[PacketType] = PacketType.DISCONNECT


Packet = (
    Connect
    | ConnAck
    | Publish
    | PubAck
    | PubRec
    | PubRel
    | PubComp
    | Subscribe
    | SubAck
    | Unsubscribe
    | UnsubAck
    | PingReq
    | PingResp
    | Disconnect
)
