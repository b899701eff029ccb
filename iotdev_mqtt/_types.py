"""Small enumerations shared by the codec and the engines."""

from __future__ import annotations

from enum import IntEnum

__all__ = ["ConnAckCode", "PacketType", "QoS", "SubAckCode"]


class PacketType(IntEnum):
    """MQTT 3.1.1 control packet types (the high nibble of the first byte)."""

    CONNECT = 1
    CONNACK = 2
    PUBLISH = 3
    PUBACK = 4
    PUBREC = 5
    PUBREL = 6
    PUBCOMP = 7
    SUBSCRIBE = 8
    SUBACK = 9
    UNSUBSCRIBE = 10
    UNSUBACK = 11
    PINGREQ = 12
    PINGRESP = 13
    DISCONNECT = 14


class QoS(IntEnum):
    """Quality of service levels."""

    AT_MOST_ONCE = 0
    AT_LEAST_ONCE = 1
    EXACTLY_ONCE = 2


class ConnAckCode(IntEnum):
    """CONNACK return codes (section 3.2.2.3)."""

    ACCEPTED = 0
    UNACCEPTABLE_PROTOCOL_VERSION = 1
    IDENTIFIER_REJECTED = 2
    SERVER_UNAVAILABLE = 3
    BAD_USERNAME_OR_PASSWORD = 4
    NOT_AUTHORIZED = 5

    @property
    def description(self) -> str:
        return _CONNACK_TEXT[self]


_CONNACK_TEXT = {
    ConnAckCode.ACCEPTED: "connection accepted",
    ConnAckCode.UNACCEPTABLE_PROTOCOL_VERSION: "unacceptable protocol version",
    ConnAckCode.IDENTIFIER_REJECTED: "identifier rejected",
    ConnAckCode.SERVER_UNAVAILABLE: "server unavailable",
    ConnAckCode.BAD_USERNAME_OR_PASSWORD: "bad user name or password",
    ConnAckCode.NOT_AUTHORIZED: "not authorized",
}


class SubAckCode(IntEnum):
    """SUBACK return codes (section 3.9.3)."""

    GRANTED_QOS_0 = 0x00
    GRANTED_QOS_1 = 0x01
    GRANTED_QOS_2 = 0x02
    FAILURE = 0x80
