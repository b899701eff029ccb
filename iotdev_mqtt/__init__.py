"""iotdev_mqtt: a sans-IO MQTT 3.1.1 codec and protocol engine (standard library only)."""

from __future__ import annotations

from ._codec import MAX_REMAINING_LENGTH, PacketReader, encode, encode_remaining_length
from ._errors import (
    ConnectionRefused,
    LocalProtocolError,
    MalformedPacket,
    MQTTError,
    PacketTooLarge,
    ProtocolError,
    QueueFull,
    RemoteProtocolError,
)
from ._packets import (
    ConnAck,
    Connect,
    Disconnect,
    Packet,
    PingReq,
    PingResp,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    SubAck,
    Subscribe,
    UnsubAck,
    Unsubscribe,
    Will,
)
from ._topics import topic_matches, validate_topic_filter, validate_topic_name
from ._types import ConnAckCode, PacketType, QoS, SubAckCode

__all__ = [
    "MAX_REMAINING_LENGTH",
    "ConnAck",
    "ConnAckCode",
    "Connect",
    "ConnectionRefused",
    "Disconnect",
    "LocalProtocolError",
    "MQTTError",
    "MalformedPacket",
    "Packet",
    "PacketReader",
    "PacketTooLarge",
    "PacketType",
    "PingReq",
    "PingResp",
    "ProtocolError",
    "PubAck",
    "PubComp",
    "PubRec",
    "PubRel",
    "Publish",
    "QoS",
    "QueueFull",
    "RemoteProtocolError",
    "SubAck",
    "SubAckCode",
    "Subscribe",
    "UnsubAck",
    "Unsubscribe",
    "Will",
    "encode",
    "encode_remaining_length",
    "topic_matches",
    "validate_topic_filter",
    "validate_topic_name",
]
