"""What both engines share: the session, the QoS flows in both directions, the
ordered acks, the outbound buffer and the state table bookkeeping.

Theory of operation
-------------------
``Session`` is the state that outlives one transport [MQTT-3.1.2-4]: outbound
QoS 1/2 publishes in flight (keyed by packet id, in the order they were first
sent), the FIFO queue of publishes not yet sent, and the ids of inbound QoS 2
messages that still wait for their PUBREL.

Outbound: ``_publish()`` validates eagerly, gives the message a *token* (an
int, unique per engine, returned to the application) and queues it.  While
connected, ``_pump()`` moves messages from the queue to the wire in FIFO order:
QoS 0 at once, QoS 1/2 while fewer than ``max_inflight`` are unacknowledged,
each with a fresh id in 1..65535 that is not in use [MQTT-2.3.1-2].  PUBACK
(QoS 1) or PUBCOMP (QoS 2) frees the id and yields ``PublishAcked``; after
PUBREC only PUBREL is ever re-sent [MQTT-4.3.3-1].  On resumption every
message in flight is re-sent in its original order, PUBLISH with DUP=1 and the
same id, or its PUBREL [MQTT-4.4.0-1]; then the queue goes out with DUP=0.

Inbound: each PUBLISH is reported as ``MessageReceived``; its PUBACK / PUBREC
is queued in receipt order [MQTT-4.6.0-2/3] and sent once acknowledged
(at once with ``auto_ack``, else by ``ack()``; a later ack waits for earlier
ones).  QoS 2 is de-duplicated by id state, never by DUP [MQTT-4.3.3-2]; a
QoS 1 id seen again after its PUBACK is a new message [MQTT-4.3.2-2].  Unknown
PUBACK/PUBCOMP are ignored, unknown PUBREL gets PUBCOMP, unknown PUBREC gets
PUBREL (conformance reference 4.1); an ack of the wrong kind for a known flow
is a protocol violation.
"""

from __future__ import annotations

from collections import deque
from typing import Literal

from ._encode import (
    _TOPIC_PREFIXED,
    _check_qos,
    _pack_bbh,
    _prefixed_topic,
    encode,
    publish_bytes,
)
from ._errors import LocalProtocolError, QueueFull, RemoteProtocolError
from ._events import Event, MessageReceived, PublishAcked, PublishFailed
from ._packets import Packet, PubAck, PubComp, Publish, PubRec, PubRel
from ._reader import PacketReader
from ._records import fast_constructor
from ._state import Input, State

_message_received = fast_constructor(MessageReceived)
_publish_acked = fast_constructor(PublishAcked)

__all__ = ["OutboundMessage", "Session"]

_PUBREL = 1  # stage of a QoS 2 message after its PUBREC


class OutboundMessage:
    """A publish of ours: queued, or in flight with a packet id."""

    __slots__ = ("packet_id", "payload", "qos", "released", "retain", "token", "topic")

    def __init__(self, token: int, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        self.token = token
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.packet_id = 0
        self.released = False

    def __repr__(self) -> str:
        return (
            f"OutboundMessage(token={self.token}, topic={self.topic!r}, qos={self.qos}, "
            f"packet_id={self.packet_id}, released={self.released})"
        )


class _NoQueue(deque["OutboundMessage"]):
    """The queue of a session that never queued anything: empty and shared, so
    it refuses to grow (``Session.queue_for_append`` gives the real one).  An
    empty ``deque`` is 760 bytes; fleets hold one per client."""

    __slots__ = ()

    def _refuse(self, *args: object) -> None:
        raise TypeError("the shared empty queue: use Session.queue_for_append()")

    append = appendleft = extend = extendleft = insert = _refuse


_NO_QUEUE = _NoQueue()


class Session:
    """Session state that survives reconnection (clean session = 0).

    Attributes:
        inflight: our QoS 1/2 publishes awaiting acks, by packet id, in send order.
        queue: our publishes not yet sent, FIFO (a shared empty one until the
            first publish is queued: add through ``queue_for_append()``).
        inbound_qos2: ids of the peer's QoS 2 messages awaiting PUBREL, mapped to
            whether their PUBREC was sent.
    """

    __slots__ = ("inbound_qos2", "inflight", "next_id", "next_token", "queue", "requests")

    def __init__(self) -> None:
        self.inflight: dict[int, OutboundMessage] = {}
        self.queue: deque[OutboundMessage] = _NO_QUEUE
        self.inbound_qos2: dict[int, bool] = {}
        self.requests: dict[int, object] = {}
        self.next_id = 1
        self.next_token = 1

    def queue_for_append(self) -> deque[OutboundMessage]:
        """``queue``, made this session's own on first use."""
        queue = self.queue
        if queue is _NO_QUEUE:
            queue = self.queue = deque()
        return queue

    def allocate_id(self) -> int | None:
        """A packet id not in use by a publish or a request, or ``None`` if all
        65,535 are taken (the caller then waits) [MQTT-2.3.1-2]."""
        inflight = self.inflight
        requests = self.requests
        pid = self.next_id
        for _ in range(65535):
            nxt = pid + 1 if pid < 65535 else 1
            if pid not in inflight and pid not in requests:
                self.next_id = nxt
                return pid
            pid = nxt
        return None

    def pending_tokens(self) -> list[int]:
        """Tokens of every publish not yet acknowledged, in order."""
        return [m.token for m in self.inflight.values()] + [m.token for m in self.queue]


class _Endpoint:
    """Shared machinery; ``ClientConnection`` and ``ServerConnection`` add roles."""

    _transitions: dict[tuple[State, Input], State]
    _role: Literal["client", "server"]

    def __init__(
        self,
        *,
        max_packet_size: int,
        max_inflight: int,
        max_queued: int,
        auto_ack: bool,
    ) -> None:
        if type(max_inflight) is not int or not 1 <= max_inflight <= 65535:
            raise ValueError(f"max_inflight must be an int from 1 to 65535, got {max_inflight!r}")
        if type(max_queued) is not int or max_queued < 0:
            raise ValueError(f"max_queued must be an int >= 0, got {max_queued!r}")
        self._max_packet_size = max_packet_size
        self._reader = PacketReader(self._role, max_packet_size)
        self._max_inflight = max_inflight
        self._max_queued = max_queued
        self._auto_ack = auto_ack
        self._state = State.DISCONNECTED
        self._error: Exception | None = None
        self._out: list[bytes] = []
        self._session = Session()
        # [packet_id, kind, ready]; a list (an empty deque is 760 bytes per client)
        self._acks: list[list[object]] = []
        self._keep_alive = 0
        self._last_out = 0.0
        self._last_in = 0.0
        # Since when we have been waiting for an ack without hearing from the
        # peer (None: nothing awaited, or heard since); the client pings on it.
        self._wait_from: float | None = None

    # ------------------------------------------------------------------ basics

    @property
    def state(self) -> State:
        """The connection state (see ``iotdev_mqtt._state``)."""
        return self._state

    @property
    def session(self) -> Session:
        """The session state (in flight, queued, inbound QoS 2 ids)."""
        return self._session

    def data_to_send(self) -> bytes:
        """Drain and return every byte the engine wants written to the transport."""
        out = self._out
        if not out:
            return b""
        if len(out) == 1:
            data = out[0]
        else:
            data = b"".join(out)
        out.clear()
        return data

    def pending(self) -> list[int]:
        """Tokens of our publishes not yet acknowledged (in flight, then queued)."""
        return self._session.pending_tokens()

    def _check_alive(self) -> None:
        if self._state is State.ERROR:
            self._refuse(Input.TIMEOUT, False)

    def _move(self, event: Input, *, remote: bool = False) -> None:
        new = self._transitions.get((self._state, event))
        if new is None:
            self._refuse(event, remote)
        self._state = new  # type: ignore[assignment]

    def _refuse(self, event: Input, remote: bool) -> None:
        state = self._state
        if state is State.ERROR:
            raise LocalProtocolError(
                f"the connection is in ERROR after {self._error}; close the transport and "
                "call connection_lost()"
            )
        self._state = State.ERROR
        text = f"{event.name} is not allowed in state {state.name}"
        self._error = (
            RemoteProtocolError(text, rule="MQTT-4.8.0-1") if remote else LocalProtocolError(text)
        )
        raise self._error

    def _send(self, packet: Packet, now: float) -> None:
        self._out.append(encode(packet))
        self._last_out = now

    def _fail(self, exc: RemoteProtocolError) -> RemoteProtocolError:
        self._state = State.ERROR
        self._error = exc
        return exc

    def _reset_transport(self) -> None:
        """Forget everything that belonged to the transport, keep the session."""
        self._reader = PacketReader(self._role, self._max_packet_size)
        self._out.clear()
        self._acks.clear()
        self._error = None
        # A QoS 2 message reported but not yet acknowledged by the application
        # got no PUBREC: the peer will send it again, and it is delivered again
        # (never stuck behind an ack that can no longer be sent).
        inbound = self._session.inbound_qos2
        for pid in [pid for pid, recorded in inbound.items() if not recorded]:
            del inbound[pid]

    def _receive(self, data: bytes, now: float) -> list[Event]:
        """Decode ``data`` and handle each packet in order.  The first violation
        in stream order wins, whether the reader or the engine finds it, so any
        split of the input gives the same error."""
        events: list[Event] = []
        try:
            packets = self._reader.feed(data)
        except RemoteProtocolError as exc:
            error = exc
            try:
                self._handle_all(exc.packets, events, now)  # type: ignore[arg-type]
            except RemoteProtocolError as earlier:
                error = earlier
            else:
                if self._state is State.CLOSING:  # what follows is ignored anyway
                    self._reader = PacketReader(self._role, self._max_packet_size)
                    return events
                if self._defer(error):
                    return events
            self._fail(error)
            error.events = tuple(events)
            raise error from None
        if packets:  # keep-alive counts whole packets, not a trickle of bytes
            self._last_in = now
        try:
            self._handle_all(packets, events, now)
        except RemoteProtocolError as exc:
            self._fail(exc)
            exc.events = tuple(events)
            raise
        return events

    def _handle_all(self, packets: list[Packet], events: list[Event], now: float) -> None:
        handle = self._handle
        for packet in packets:
            if self._state is State.CLOSING:
                return
            handle(packet, events, now)

    def _handle(self, packet: Packet, events: list[Event], now: float) -> None:
        raise NotImplementedError

    def _handle_flow(self, packet: Packet, kind: type, events: list[Event], now: float) -> bool:
        """PUBLISH and its acks, the same in both roles; ``False`` for others."""
        if kind is Publish:
            self._move(Input.RECV_PUBLISH, remote=True)
            self._on_publish(packet, events, now)  # type: ignore[arg-type]
        elif kind is PubAck:
            self._move(Input.RECV_PUBLISH_ACK, remote=True)
            self._on_puback(packet, events, now)  # type: ignore[arg-type]
        elif kind is PubRec:
            self._move(Input.RECV_PUBLISH_ACK, remote=True)
            self._on_pubrec(packet, events, now)  # type: ignore[arg-type]
        elif kind is PubComp:
            self._move(Input.RECV_PUBLISH_ACK, remote=True)
            self._on_pubcomp(packet, events, now)  # type: ignore[arg-type]
        elif kind is PubRel:
            self._move(Input.RECV_PUBLISH_ACK, remote=True)
            self._on_pubrel(packet, now)  # type: ignore[arg-type]
        else:
            return False
        return True

    def _defer(self, error: RemoteProtocolError) -> bool:
        """Whether a reader error is held back (server: until ``accept()``)."""
        return False

    # ------------------------------------------------------------ outbound flow

    def _publish(
        self, topic: str, payload: bytes, qos: int, retain: bool, now: float
    ) -> int:
        if type(topic) is not str or topic not in _TOPIC_PREFIXED:
            _prefixed_topic(topic)  # validates (raises LocalProtocolError) and caches
        if type(payload) is not bytes:
            if not isinstance(payload, bytes | bytearray | memoryview):
                raise LocalProtocolError(
                    f"must be bytes, not {type(payload).__name__}", packet="PUBLISH",
                    field="payload",
                )
            payload = bytes(payload)
        if type(qos) is not int or not 0 <= qos <= 2:
            qos = _check_qos(qos, "PUBLISH", "QoS", "MQTT-3.3.1-4")
        session = self._session
        if len(session.queue) >= self._max_queued:
            raise QueueFull(
                f"{len(session.queue)} publishes already wait to be sent "
                f"(max_queued={self._max_queued})"
            )
        self._move(Input.PUBLISH)
        token = session.next_token
        session.next_token = token + 1
        session.queue_for_append().append(
            OutboundMessage(token, topic, payload, int(qos), bool(retain)))
        if self._state is State.CONNECTED:
            self._pump(now)
        return token

    def _pump(self, now: float) -> None:
        """Send queued publishes while the in-flight window has room."""
        session = self._session
        queue = session.queue
        inflight = session.inflight
        out = self._out
        sent = False
        while queue:
            msg = queue[0]
            if msg.qos == 0:
                queue.popleft()
                out.append(publish_bytes(msg.topic, msg.payload, 0, msg.retain, False, 0))
                sent = True
                continue
            if len(inflight) >= self._max_inflight:
                break
            pid = session.next_id
            if pid in inflight or pid in session.requests:
                pid = session.allocate_id()  # type: ignore[assignment]
                if pid is None:
                    break
            else:
                session.next_id = pid + 1 if pid < 65535 else 1
            queue.popleft()
            msg.packet_id = pid
            inflight[pid] = msg
            out.append(publish_bytes(msg.topic, msg.payload, msg.qos, msg.retain, False, pid))
            sent = True
            if self._wait_from is None:
                self._wait_from = now
        if sent:
            self._last_out = now

    def _resend_inflight(self, now: float) -> None:
        """Re-send every unacknowledged publish or PUBREL, in original order."""
        for pid, msg in self._session.inflight.items():
            if msg.released:
                self._out.append(encode(PubRel(pid)))
            else:
                self._out.append(
                    publish_bytes(msg.topic, msg.payload, msg.qos, msg.retain, True, pid)
                )
            self._last_out = now

    def _drop_inflight(self, policy: str, events: list[Event]) -> None:
        """Clean session: the old session state must not be reused [MQTT-3.1.2-6]."""
        session = self._session
        old = list(session.inflight.values())
        session.inflight.clear()
        session.inbound_qos2.clear()
        requeue = []
        for msg in old:
            if msg.released:
                # PUBREC received: the peer owns the message already.
                events.append(PublishAcked(msg.token, msg.packet_id))
            elif policy == "fail":
                events.append(PublishFailed(msg.token, "clean session discarded the message "
                                                       "before it was acknowledged"))
            else:
                msg.packet_id = 0
                requeue.append(msg)
        if requeue:
            session.queue_for_append().extendleft(reversed(requeue))

    def _on_puback(self, packet: PubAck, events: list[Event], now: float) -> None:
        inflight = self._session.inflight
        msg = inflight.get(packet.packet_id)
        if msg is None:
            if packet.packet_id in self._session.requests:
                raise self._wrong_ack("PUBACK", packet.packet_id, "a pending (UN)SUBSCRIBE")
            return
        if msg.qos != 1:
            raise self._wrong_ack("PUBACK", packet.packet_id, "a QoS 2 publish")
        del inflight[packet.packet_id]
        events.append(_publish_acked(msg.token, packet.packet_id))
        if self._session.queue:
            self._pump(now)

    def _on_pubrec(self, packet: PubRec, events: list[Event], now: float) -> None:
        msg = self._session.inflight.get(packet.packet_id)
        if msg is not None:
            if msg.qos != 2:
                raise self._wrong_ack("PUBREC", packet.packet_id, "a QoS 1 publish")
            msg.released = True
        elif packet.packet_id in self._session.requests:
            raise self._wrong_ack("PUBREC", packet.packet_id, "a pending (UN)SUBSCRIBE")
        self._send(PubRel(packet.packet_id), now)

    def _on_pubcomp(self, packet: PubComp, events: list[Event], now: float) -> None:
        inflight = self._session.inflight
        msg = inflight.get(packet.packet_id)
        if msg is None:
            if packet.packet_id in self._session.requests:
                raise self._wrong_ack("PUBCOMP", packet.packet_id, "a pending (UN)SUBSCRIBE")
            return
        if msg.qos != 2 or not msg.released:
            raise self._wrong_ack(
                "PUBCOMP", packet.packet_id,
                "a QoS 1 publish" if msg.qos == 1 else "a QoS 2 publish still waiting for PUBREC",
            )
        del inflight[packet.packet_id]
        events.append(PublishAcked(msg.token, packet.packet_id))
        if self._session.queue:
            self._pump(now)

    def _wrong_ack(self, packet: str, pid: int, what: str) -> RemoteProtocolError:
        return RemoteProtocolError(
            f"packet identifier {pid} belongs to {what} in {self._state.name}",
            packet=packet, field="packet identifier", rule="4.3",
        )

    # ------------------------------------------------------------- inbound flow

    def _on_publish(self, packet: Publish, events: list[Event], now: float) -> None:
        qos = packet.qos
        if qos == 0:
            events.append(_message_received(packet.topic, packet.payload, 0, packet.retain,
                                            False, None))
            return
        pid = packet.packet_id
        assert pid is not None
        if qos == 2:
            inbound = self._session.inbound_qos2
            if pid in inbound:
                # A duplicate before PUBREL: PUBREC again, no second delivery.
                if inbound[pid]:
                    self._send(PubRec(pid), now)
                return
            inbound[pid] = False
        events.append(_message_received(packet.topic, packet.payload, qos, packet.retain,
                                        packet.dup, pid))
        if self._auto_ack and not self._acks:
            self._send_ack(pid, qos, now)
        else:
            self._acks.append([pid, qos, self._auto_ack])
            self._flush_acks(now)

    def _send_ack(self, pid: int, qos: int, now: float) -> None:
        if qos == 1:
            self._out.append(_pack_bbh(0x40, 2, pid))  # PUBACK
        else:
            self._session.inbound_qos2[pid] = True
            self._out.append(_pack_bbh(0x50, 2, pid))  # PUBREC
        self._last_out = now

    def _flush_acks(self, now: float) -> None:
        acks = self._acks
        ready = 0
        for pid, qos, done in acks:
            if not done:
                break
            self._send_ack(pid, qos, now)  # type: ignore[arg-type]
            ready += 1
        if ready:
            del acks[:ready]

    def _ack(self, packet_id: int, now: float) -> bool:
        self._move(Input.ACK)
        for entry in self._acks:
            if entry[0] == packet_id and not entry[2]:
                entry[2] = True
                break
        else:
            return False
        if self._state is State.CONNECTED:
            self._flush_acks(now)
        return True

    def _on_pubrel(self, packet: PubRel, now: float) -> None:
        inbound = self._session.inbound_qos2
        pid = packet.packet_id
        if inbound.get(pid) is False:
            raise RemoteProtocolError(
                f"PUBREL for packet identifier {pid} before our PUBREC", packet="PUBREL",
                field="packet identifier", rule="MQTT-4.3.3-2",
            )
        inbound.pop(pid, None)
        self._send(PubComp(pid), now)
