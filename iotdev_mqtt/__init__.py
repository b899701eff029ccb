"""iotdev_mqtt: a sans-IO MQTT 3.1.1 codec and protocol engine (standard library only)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._client import ClientConnection
from ._encode import encode, encode_remaining_length
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
from ._events import (
    ClientDisconnected,
    Connected,
    ConnectionLost,
    ConnectReceived,
    ConnectRefused,
    Event,
    MessageReceived,
    PublishAcked,
    PublishFailed,
    RequestFailed,
    Subscribed,
    SubscribeReceived,
    Unsubscribed,
    UnsubscribeReceived,
)
from ._flows import OutboundMessage, Session
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
from ._reader import PacketReader
from ._rules import MAX_REMAINING_LENGTH
from ._state import State
from ._topics import topic_matches, validate_topic_filter, validate_topic_name
from ._types import ConnAckCode, PacketType, QoS, SubAckCode

if TYPE_CHECKING:
    from ._server import ServerConnection


def __getattr__(name: str) -> Any:
    # The server role loads on first use: a device client never needs it.
    if name == "ServerConnection":
        from ._server import ServerConnection

        return ServerConnection
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "MAX_REMAINING_LENGTH",
    "ClientConnection",
    "ClientDisconnected",
    "ConnAck",
    "ConnAckCode",
    "Connect",
    "ConnectReceived",
    "ConnectRefused",
    "Connected",
    "ConnectionLost",
    "ConnectionRefused",
    "Disconnect",
    "Event",
    "LocalProtocolError",
    "MQTTError",
    "MalformedPacket",
    "MessageReceived",
    "OutboundMessage",
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
    "PublishAcked",
    "PublishFailed",
    "QoS",
    "QueueFull",
    "RemoteProtocolError",
    "RequestFailed",
    "ServerConnection",
    "Session",
    "State",
    "SubAck",
    "SubAckCode",
    "Subscribe",
    "SubscribeReceived",
    "Subscribed",
    "UnsubAck",
    "Unsubscribe",
    "UnsubscribeReceived",
    "Unsubscribed",
    "Will",
    "encode",
    "encode_remaining_length",
    "topic_matches",
    "validate_topic_filter",
    "validate_topic_name",
]
