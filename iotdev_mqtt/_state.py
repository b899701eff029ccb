"""The connection state machines of both engines, as tables.

Theory of operation
-------------------
Each engine has one ``State`` and feeds every input (a command from the
application, a packet from the peer, a timer, the transport's end) through
``transition(table, state, input)``.  A pair that is not in the table is an
error: the engine moves to ``ERROR`` and raises (``LocalProtocolError`` for a
command, ``RemoteProtocolError`` for a packet).  In ``ERROR`` every call raises
except ``connection_lost()``, which the I/O layer calls once the transport is
closed; it moves to ``DISCONNECTED`` and keeps the session, so that a new
connection can resume it.

States (shared by both roles):

* ``DISCONNECTED``: no transport.  Client: ``connect()`` starts one; publishes,
  subscribes and unsubscribes are queued for it.  Server: the initial state,
  waiting for CONNECT.
* ``CONNECTING``: client: CONNECT sent, waiting for CONNACK.  Server: CONNECT
  received and reported, waiting for the application's ``accept()`` or
  ``refuse()``.  Packets the client pipelines meanwhile (and a decoding error
  among them) are held, not fed through the table: ``accept()`` feeds them in
  order, ``refuse()`` drops them [MQTT-3.1.4-5].
* ``CONNECTED``: the session is live.
* ``CLOSING``: this side has decided to end the transport (DISCONNECT sent or
  received, CONNACK refused, keep-alive or CONNACK timeout).  Nothing more is
  sent [MQTT-3.14.4-2]; received bytes are ignored [MQTT-3.1.4-5].
* ``ERROR``: a protocol violation.  Close the transport.
"""

from __future__ import annotations

from enum import Enum, auto

__all__ = ["CLIENT_TRANSITIONS", "SERVER_TRANSITIONS", "Input", "State"]


class State(Enum):
    # Identity hashing: Enum's own __hash__ is Python code, and the engines
    # look up (state, input) pairs on every packet.  Members are singletons
    # compared by identity, so this is equivalent.
    __hash__ = object.__hash__

    DISCONNECTED = auto()
    CONNECTING = auto()
    CONNECTED = auto()
    CLOSING = auto()
    ERROR = auto()


class Input(Enum):
    __hash__ = object.__hash__

    # commands from the application
    CONNECT = auto()
    ACCEPT = auto()
    REFUSE = auto()
    PUBLISH = auto()
    SUBSCRIBE = auto()
    UNSUBSCRIBE = auto()
    SUBACK = auto()
    ACK = auto()
    DISCONNECT = auto()
    # packets from the peer
    RECV_CONNECT = auto()
    RECV_CONNACK_ACCEPTED = auto()
    RECV_CONNACK_REFUSED = auto()
    RECV_PUBLISH = auto()
    RECV_PUBLISH_ACK = auto()
    RECV_SUBSCRIBE = auto()
    RECV_SUBACK = auto()
    RECV_UNSUBSCRIBE = auto()
    RECV_UNSUBACK = auto()
    RECV_PINGREQ = auto()
    RECV_PINGRESP = auto()
    RECV_DISCONNECT = auto()
    # time and transport
    PING_DUE = auto()
    TIMEOUT = auto()
    CONNECTION_LOST = auto()


S = State
I = Input  # noqa: E741

_QUEUEING = (I.PUBLISH, I.SUBSCRIBE, I.UNSUBSCRIBE)

CLIENT_TRANSITIONS: dict[tuple[State, Input], State] = {
    (S.DISCONNECTED, I.CONNECT): S.CONNECTING,
    (S.DISCONNECTED, I.CONNECTION_LOST): S.DISCONNECTED,
    (S.DISCONNECTED, I.ACK): S.DISCONNECTED,
    **{(S.DISCONNECTED, i): S.DISCONNECTED for i in _QUEUEING},
    (S.CONNECTING, I.RECV_CONNACK_ACCEPTED): S.CONNECTED,
    (S.CONNECTING, I.RECV_CONNACK_REFUSED): S.CLOSING,
    (S.CONNECTING, I.DISCONNECT): S.CLOSING,
    (S.CONNECTING, I.TIMEOUT): S.CLOSING,
    (S.CONNECTING, I.CONNECTION_LOST): S.DISCONNECTED,
    (S.CONNECTING, I.ACK): S.CONNECTING,
    **{(S.CONNECTING, i): S.CONNECTING for i in _QUEUEING},
    **{(S.CONNECTED, i): S.CONNECTED for i in _QUEUEING},
    (S.CONNECTED, I.ACK): S.CONNECTED,
    (S.CONNECTED, I.RECV_PUBLISH): S.CONNECTED,
    (S.CONNECTED, I.RECV_PUBLISH_ACK): S.CONNECTED,
    (S.CONNECTED, I.RECV_SUBACK): S.CONNECTED,
    (S.CONNECTED, I.RECV_UNSUBACK): S.CONNECTED,
    (S.CONNECTED, I.RECV_PINGRESP): S.CONNECTED,
    (S.CONNECTED, I.PING_DUE): S.CONNECTED,
    (S.CONNECTED, I.DISCONNECT): S.CLOSING,
    (S.CONNECTED, I.TIMEOUT): S.CLOSING,
    (S.CONNECTED, I.CONNECTION_LOST): S.DISCONNECTED,
    **{(S.CLOSING, i): S.CLOSING for i in _QUEUEING},
    (S.CLOSING, I.ACK): S.CLOSING,
    (S.CLOSING, I.CONNECTION_LOST): S.DISCONNECTED,
    (S.ERROR, I.CONNECTION_LOST): S.DISCONNECTED,
}

SERVER_TRANSITIONS: dict[tuple[State, Input], State] = {
    (S.DISCONNECTED, I.RECV_CONNECT): S.CONNECTING,
    (S.DISCONNECTED, I.REFUSE): S.CLOSING,
    (S.DISCONNECTED, I.DISCONNECT): S.CLOSING,
    (S.DISCONNECTED, I.TIMEOUT): S.CLOSING,
    (S.DISCONNECTED, I.CONNECTION_LOST): S.DISCONNECTED,
    (S.DISCONNECTED, I.ACK): S.DISCONNECTED,
    (S.CONNECTING, I.ACCEPT): S.CONNECTED,
    (S.CONNECTING, I.REFUSE): S.CLOSING,
    (S.CONNECTING, I.DISCONNECT): S.CLOSING,
    (S.CONNECTING, I.PUBLISH): S.CONNECTING,
    (S.CONNECTING, I.TIMEOUT): S.CLOSING,
    (S.CONNECTING, I.CONNECTION_LOST): S.DISCONNECTED,
    (S.CONNECTED, I.PUBLISH): S.CONNECTED,
    (S.CONNECTED, I.SUBACK): S.CONNECTED,
    (S.CONNECTED, I.ACK): S.CONNECTED,
    (S.CONNECTED, I.RECV_PUBLISH): S.CONNECTED,
    (S.CONNECTED, I.RECV_PUBLISH_ACK): S.CONNECTED,
    (S.CONNECTED, I.RECV_SUBSCRIBE): S.CONNECTED,
    (S.CONNECTED, I.RECV_UNSUBSCRIBE): S.CONNECTED,
    (S.CONNECTED, I.RECV_PINGREQ): S.CONNECTED,
    (S.CONNECTED, I.RECV_DISCONNECT): S.CLOSING,
    (S.CONNECTED, I.DISCONNECT): S.CLOSING,
    (S.CONNECTED, I.TIMEOUT): S.CLOSING,
    (S.CONNECTED, I.CONNECTION_LOST): S.DISCONNECTED,
    (S.CLOSING, I.PUBLISH): S.CLOSING,
    (S.CLOSING, I.ACK): S.CLOSING,
    (S.CLOSING, I.SUBACK): S.CLOSING,
    (S.CLOSING, I.CONNECTION_LOST): S.DISCONNECTED,
    (S.ERROR, I.CONNECTION_LOST): S.DISCONNECTED,
}
