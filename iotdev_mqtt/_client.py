"""``ClientConnection``: the client role of MQTT 3.1.1, sans-IO.

Bytes in through ``receive_data()``, bytes out through ``data_to_send()``,
time in through ``now`` arguments and ``tick()``.  See ``_flows`` for the QoS
flows and ``_state`` for the state table.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from ._encode import encode
from ._errors import LocalProtocolError, RemoteProtocolError
from ._events import (
    Connected,
    ConnectionLost,
    ConnectRefused,
    Event,
    RequestFailed,
    Subscribed,
    Unsubscribed,
)
from ._flows import _Endpoint
from ._packets import (
    ConnAck,
    Connect,
    Disconnect,
    Packet,
    PingReq,
    PingResp,
    SubAck,
    Subscribe,
    UnsubAck,
    Unsubscribe,
    Will,
)
from ._state import CLIENT_TRANSITIONS, Input, State

__all__ = ["ClientConnection"]

CleanSessionPolicy = Literal["republish", "fail", "resend"]


class _Request:
    """A SUBSCRIBE or UNSUBSCRIBE of ours, queued or awaiting its ack."""

    __slots__ = ("packet", "sent")

    def __init__(self, packet: Subscribe | Unsubscribe) -> None:
        self.packet = packet
        self.sent = False


class ClientConnection(_Endpoint):
    """The client side of one MQTT 3.1.1 session, across reconnections.

    Args:
        max_packet_size: largest packet accepted from the server.
        max_inflight: QoS 1/2 publishes sent and not yet acknowledged, at most;
            more wait in a FIFO queue.
        max_queued: publishes waiting to be sent, at most; one more raises
            ``QueueFull``.
        auto_ack: acknowledge received QoS 1/2 messages at once; with ``False``
            call ``ack(packet_id)`` (acks still leave in receipt order).
        connect_timeout: seconds to wait for CONNACK before ``ConnectionLost``.
        ping_timeout: seconds to wait for PINGRESP before ``ConnectionLost``;
            ``None`` means the keep-alive interval.
        clean_session_policy: what a clean-session connect does with publishes
            the old session still had in flight, which the spec says must not be
            reused [MQTT-3.1.2-6]: ``"republish"`` (default) queues them again as
            new messages (fresh id, DUP=0; at-least-once holds, a QoS 2 message
            may arrive twice), ``"fail"`` reports ``PublishFailed``, ``"resend"``
            re-sends them with DUP=1 and the same ids as the mosquitto and paho
            libraries do.
    """

    _transitions = CLIENT_TRANSITIONS
    _role = "client"

    def __init__(
        self,
        *,
        max_packet_size: int = 1 << 20,
        max_inflight: int = 100,
        max_queued: int = 10_000,
        auto_ack: bool = True,
        connect_timeout: float = 30.0,
        ping_timeout: float | None = None,
        clean_session_policy: CleanSessionPolicy = "republish",
    ) -> None:
        if clean_session_policy not in ("republish", "fail", "resend"):
            raise ValueError(
                "clean_session_policy must be 'republish', 'fail' or 'resend', "
                f"got {clean_session_policy!r}"
            )
        super().__init__(
            max_packet_size=max_packet_size,
            max_inflight=max_inflight,
            max_queued=max_queued,
            auto_ack=auto_ack,
        )
        self._connect_timeout = connect_timeout
        self._ping_timeout = ping_timeout
        self._policy = clean_session_policy
        self._clean_session = True
        self._connect_deadline: float | None = None
        self._ping_sent: float | None = None
        self._requests: dict[int, _Request] = {}
        self._session.requests = self._requests  # type: ignore[assignment]
        self.client_id: str | None = None

    # ----------------------------------------------------------------- commands

    def connect(
        self,
        client_id: str,
        *,
        now: float,
        clean_session: bool = True,
        keep_alive: int = 60,
        username: str | None = None,
        password: bytes | None = None,
        will: Will | None = None,
    ) -> list[Event]:
        """Start a connection: queue CONNECT and wait for CONNACK.

        Call it once the transport is open.  With ``clean_session=False`` the
        session of the previous connection is resumed after CONNACK; with
        ``True`` its in-flight publishes follow ``clean_session_policy``.

        Returns:
            Events produced at once (``PublishFailed`` under the ``"fail"``
            policy, ``PublishAcked`` for QoS 2 messages already PUBREC'd).

        Raises:
            LocalProtocolError: a bad field (names the rule), or not in
                ``DISCONNECTED``.
        """
        if isinstance(password, str):
            raise LocalProtocolError("must be bytes, not str", packet="CONNECT", field="password")
        packet = Connect(client_id, bool(clean_session), keep_alive, username, password, will)
        data = encode(packet)
        self._move(Input.CONNECT)
        events: list[Event] = []
        if clean_session and self._policy != "resend":
            self._drop_inflight(self._policy, events)
        if clean_session:
            self._session.inbound_qos2.clear()
        self._clean_session = bool(clean_session)
        self._keep_alive = keep_alive
        self.client_id = client_id
        self._out.append(data)
        self._last_out = now
        self._last_in = now
        self._wait_from = None
        self._ping_sent = None
        self._connect_deadline = now + self._connect_timeout
        return events

    def publish(
        self, topic: str, payload: bytes = b"", qos: int = 0, retain: bool = False, *, now: float
    ) -> int:
        """Publish an application message (queued until connected and the
        in-flight window has room).

        Returns:
            A token, reported again by ``PublishAcked`` (QoS 1/2) or
            ``PublishFailed``.  QoS 0 messages are done once their bytes leave
            through ``data_to_send()``.

        Raises:
            LocalProtocolError: invalid topic, payload or QoS (the rule is named).
            QueueFull: ``max_queued`` publishes already wait.
        """
        return self._publish(topic, payload, qos, retain, now)

    def subscribe(
        self, subscriptions: Iterable[tuple[str, int]] | str, qos: int = 0, *, now: float
    ) -> int:
        """Subscribe to one filter (``subscribe("a/#", 1, now=...)``) or several
        (``subscribe([("a/#", 1), ("b", 0)], now=...)``).

        Returns:
            The SUBSCRIBE's packet id, reported again by ``Subscribed`` or
            ``RequestFailed``.
        """
        subs = ((subscriptions, qos),) if isinstance(subscriptions, str) else tuple(subscriptions)
        for item in subs:
            if not isinstance(item, tuple) or len(item) != 2:
                raise LocalProtocolError(
                    f"each subscription is (topic filter, qos), got {item!r}",
                    packet="SUBSCRIBE", field="payload",
                )
        return self._request(Subscribe(1, subs), Input.SUBSCRIBE, now)

    def unsubscribe(self, topic_filters: Iterable[str] | str, *, now: float) -> int:
        """Unsubscribe from one filter or several.

        Returns:
            The UNSUBSCRIBE's packet id, reported again by ``Unsubscribed`` or
            ``RequestFailed``.
        """
        filters = (topic_filters,) if isinstance(topic_filters, str) else tuple(topic_filters)
        return self._request(Unsubscribe(1, filters), Input.UNSUBSCRIBE, now)

    def _request(self, packet: Subscribe | Unsubscribe, event: Input, now: float) -> int:
        encode(packet)  # validate every field before anything changes
        pid = self._session.allocate_id()
        if pid is None:
            raise LocalProtocolError("all 65535 packet identifiers are in use",
                                     rule="MQTT-2.3.1-2")
        self._move(event)
        if isinstance(packet, Subscribe):
            packet = Subscribe(pid, packet.subscriptions)
        else:
            packet = Unsubscribe(pid, packet.topic_filters)
        req = _Request(packet)
        self._requests[pid] = req
        if self._state is State.CONNECTED:
            req.sent = True
            self._send(packet, now)
            if self._wait_from is None:
                self._wait_from = now
        return pid

    def ack(self, packet_id: int, *, now: float) -> bool:
        """Acknowledge a received QoS 1/2 message (only with ``auto_ack=False``).

        Returns:
            ``False`` if no such message waits for an ack (for example, the
            connection it came on is gone: the server will send it again).
        """
        return self._ack(packet_id, now)

    def disconnect(self, *, now: float) -> None:
        """Queue DISCONNECT; then close the transport [MQTT-3.14.4-1].  The
        session is kept for a later ``connect(clean_session=False)``."""
        self._move(Input.DISCONNECT)
        self._send(Disconnect(), now)

    # ------------------------------------------------------------------ timers

    def next_deadline(self) -> float | None:
        """When ``tick()`` must next be called, or ``None`` for no timer."""
        state = self._state
        if state is State.CONNECTING:
            return self._connect_deadline
        if state is not State.CONNECTED or not self._keep_alive:
            return None
        if self._ping_sent is not None:
            return self._ping_sent + self._ping_wait()
        return self._ping_due()

    def _ping_due(self) -> float:
        """When the next PINGREQ is due: after keep alive seconds of our own
        silence [MQTT-3.1.2-23], or after keep alive seconds of waiting for an
        ack (PUBACK, SUBACK...) without a packet from the server.  The second
        rule finds a dead (half-open) link while we keep sending: our own
        traffic resets the first timer, so without it a steady sender would
        only notice once the in-flight window is full, which at one message per
        keep-alive period takes ``max_inflight`` periods."""
        due = self._last_out + self._keep_alive
        waiting = self._wait_from
        if waiting is not None and waiting + self._keep_alive < due:
            return waiting + self._keep_alive
        return due

    def _ping_wait(self) -> float:
        return float(self._keep_alive) if self._ping_timeout is None else self._ping_timeout

    def tick(self, now: float) -> list[Event]:
        """Run the timers: PINGREQ when the client has been silent for keep
        alive seconds [MQTT-3.1.2-23]; ``ConnectionLost`` when CONNACK or
        PINGRESP is overdue."""
        self._check_alive()
        state = self._state
        if state is State.CONNECTING:
            if self._connect_deadline is not None and now >= self._connect_deadline:
                self._move(Input.TIMEOUT)
                return [ConnectionLost(
                    f"no CONNACK within {self._connect_timeout:g} s of CONNECT")]
            return []
        if state is not State.CONNECTED or not self._keep_alive:
            return []
        if self._ping_sent is not None:
            if now >= self._ping_sent + self._ping_wait():
                self._move(Input.TIMEOUT)
                return [ConnectionLost(
                    f"no PINGRESP within {self._ping_wait():g} s of PINGREQ (keep alive "
                    f"{self._keep_alive} s)")]
            return []
        if now >= self._ping_due():
            self._move(Input.PING_DUE)
            self._send(PingReq(), now)
            self._ping_sent = now
        return []

    # ---------------------------------------------------------------- receiving

    def receive_data(self, data: bytes, *, now: float) -> list[Event]:
        """Process bytes from the server.

        Args:
            data: received bytes; ``b""`` means the server closed the
                connection (then call ``connection_lost()``).
            now: monotonic seconds.

        Returns:
            Events, in order.

        Raises:
            RemoteProtocolError: the server broke the protocol; the engine is
                now in ``ERROR``: close the transport, then call
                ``connection_lost()``.  Events from packets before the
                violation are on the exception's ``events``.
        """
        state = self._state
        if state is State.CLOSING or not data:
            return []
        if state is State.DISCONNECTED:
            raise LocalProtocolError("receive_data() called with no connection: call connect()")
        if state is State.ERROR:
            self._move(Input.RECV_PUBLISH, remote=True)
        events = self._receive(data, now)
        if self._last_in == now:  # heard from the server: any wait starts over now
            self._wait_from = now if self._awaiting() else None
        return events

    def _awaiting(self) -> bool:
        """Whether something we sent still waits for the server's ack."""
        if self._session.inflight:
            return True
        return any(req.sent for req in self._requests.values())

    def _handle(self, packet: Packet, events: list[Event], now: float) -> None:
        kind = type(packet)
        if self._state is State.CONNECTING and kind is not ConnAck:
            raise RemoteProtocolError(
                f"the server's first packet must be CONNACK, got {kind.__name__.upper()}",
                rule="MQTT-3.2.0-1",
            )
        if self._handle_flow(packet, kind, events, now):
            return
        if kind is ConnAck:
            self._on_connack(packet, events, now)  # type: ignore[arg-type]
        elif kind is SubAck:
            self._move(Input.RECV_SUBACK, remote=True)
            self._on_suback(packet, events, now)  # type: ignore[arg-type]
        elif kind is UnsubAck:
            self._move(Input.RECV_UNSUBACK, remote=True)
            self._on_unsuback(packet, events, now)  # type: ignore[arg-type]
        elif kind is PingResp:
            self._move(Input.RECV_PINGRESP, remote=True)
            self._ping_sent = None
        else:  # pragma: no cover - the client-role reader refuses the rest
            raise RemoteProtocolError(f"unexpected {kind.__name__}", rule="MQTT-4.8.0-1")

    def _on_connack(self, packet: ConnAck, events: list[Event], now: float) -> None:
        if packet.return_code:
            self._move(Input.RECV_CONNACK_REFUSED, remote=True)
            events.append(ConnectRefused(packet.return_code))
            return
        if packet.session_present and self._clean_session:
            raise RemoteProtocolError(
                "session present is 1 after a clean-session CONNECT", packet="CONNACK",
                field="session present", rule="MQTT-3.2.2-1",
            )
        self._move(Input.RECV_CONNACK_ACCEPTED, remote=True)
        self._connect_deadline = None
        events.append(Connected(packet.session_present))
        self._resend_inflight(now)
        for req in self._requests.values():
            if not req.sent:
                req.sent = True
                self._send(req.packet, now)
        self._pump(now)

    def _on_suback(self, packet: SubAck, events: list[Event], now: float) -> None:
        req = self._requests.get(packet.packet_id)
        if req is None or not isinstance(req.packet, Subscribe) or not req.sent:
            raise RemoteProtocolError(
                f"no SUBSCRIBE with packet identifier {packet.packet_id} is pending",
                packet="SUBACK", field="packet identifier", rule="MQTT-2.3.1-7",
            )
        subs = req.packet.subscriptions
        if len(packet.return_codes) != len(subs):
            raise RemoteProtocolError(
                f"{len(packet.return_codes)} return codes for {len(subs)} topic filters",
                packet="SUBACK", field="return codes", rule="MQTT-3.8.4-5",
            )
        del self._requests[packet.packet_id]
        events.append(Subscribed(packet.packet_id, tuple(f for f, _ in subs),
                                 packet.return_codes))
        if self._session.queue:  # the freed id may be the one a publish waits for
            self._pump(now)

    def _on_unsuback(self, packet: UnsubAck, events: list[Event], now: float) -> None:
        req = self._requests.get(packet.packet_id)
        if req is None or not isinstance(req.packet, Unsubscribe) or not req.sent:
            raise RemoteProtocolError(
                f"no UNSUBSCRIBE with packet identifier {packet.packet_id} is pending",
                packet="UNSUBACK", field="packet identifier", rule="MQTT-2.3.1-7",
            )
        del self._requests[packet.packet_id]
        events.append(Unsubscribed(packet.packet_id, req.packet.topic_filters))
        if self._session.queue:
            self._pump(now)

    # ----------------------------------------------------------------- I/O hooks

    def connection_lost(self) -> list[Event]:
        """The transport is closed (by either side, or after an error).

        Moves to ``DISCONNECTED`` and keeps the session: in-flight publishes are
        re-sent after the next ``connect(clean_session=False)``.  SUBSCRIBE /
        UNSUBSCRIBE packets that were sent but not acknowledged are reported as
        ``RequestFailed``; unsent ones stay queued.

        Returns:
            The ``RequestFailed`` events.
        """
        self._move(Input.CONNECTION_LOST)
        self._reset_transport()
        self._ping_sent = None
        self._wait_from = None
        self._connect_deadline = None
        events: list[Event] = []
        for pid, req in list(self._requests.items()):
            if req.sent:
                del self._requests[pid]
                name = "SUBSCRIBE" if isinstance(req.packet, Subscribe) else "UNSUBSCRIBE"
                events.append(RequestFailed(pid, name, "the connection ended before its ack"))
        return events

    send_failed = connection_lost

