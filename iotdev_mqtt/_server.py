"""``ServerConnection``: the server role of MQTT 3.1.1, sans-IO, enough to build
a broker or a test hub on.

One instance per transport.  The session lives in a ``Session`` object that the
application keeps by client id and hands to the next connection's ``accept()``
(clean session = 0).  CONNECT is validated as far as the protocol allows
(protocol level, empty client id with clean session 0 answer CONNACK 1 or 2 on
their own); everything else (authentication, takeover of an existing client id,
granting subscriptions, routing) is the application's decision, reported by
events and answered with calls.
"""

from __future__ import annotations

from collections.abc import Iterable

from ._encode import encode
from ._errors import LocalProtocolError, PacketTooLarge, RemoteProtocolError
from ._events import (
    ClientDisconnected,
    Connected,
    ConnectionLost,
    ConnectReceived,
    ConnectRefused,
    Event,
    SubscribeReceived,
    UnsubscribeReceived,
)
from ._flows import Session, _Endpoint
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
)
from ._state import SERVER_TRANSITIONS, Input, State

__all__ = ["ServerConnection"]


class ServerConnection(_Endpoint):
    """The server side of one client connection.

    Args:
        max_packet_size: largest packet accepted from the client.
        max_inflight: QoS 1/2 publishes to the client in flight, at most.
        max_queued: publishes waiting to be sent to the client, at most.
        auto_ack: acknowledge the client's QoS 1/2 publishes at once; with
            ``False`` call ``ack(packet_id)``.
        connect_timeout: seconds from ``now`` (if given) to the CONNECT.
        keep_alive_factor: the client is dropped after this many keep-alive
            intervals without a packet [MQTT-3.1.2-24].
        max_early_packets: packets the client may pipeline after CONNECT
            before ``accept()``; one more is a ``RemoteProtocolError``.
        max_connect_size: if set, a client that has sent more than this many
            bytes of an incomplete first packet gets ``PacketTooLarge`` (what an
            unauthenticated socket may make the server buffer), while packets
            after CONNECT may be up to ``max_packet_size``.
        now: when the transport was opened (starts the CONNECT timer).
    """

    _transitions = SERVER_TRANSITIONS
    _role = "server"

    def __init__(
        self,
        *,
        max_packet_size: int = 1 << 20,
        max_inflight: int = 100,
        max_queued: int = 10_000,
        auto_ack: bool = True,
        connect_timeout: float = 10.0,
        keep_alive_factor: float = 1.5,
        max_early_packets: int = 1000,
        max_connect_size: int | None = None,
        now: float | None = None,
    ) -> None:
        super().__init__(
            max_packet_size=max_packet_size,
            max_inflight=max_inflight,
            max_queued=max_queued,
            auto_ack=auto_ack,
        )
        self._connect_timeout = connect_timeout
        self._factor = keep_alive_factor
        self._connect_deadline = None if now is None else now + connect_timeout
        self._early: list[Packet] = []
        self._early_error: RemoteProtocolError | None = None
        self._max_early = max_early_packets
        if max_connect_size is not None and (type(max_connect_size) is not int
                                             or max_connect_size < 5):
            raise ValueError(f"max_connect_size must be an int >= 5, got {max_connect_size!r}")
        self._max_connect = max_connect_size
        self._subscribes: dict[int, int] = {}  # SUBSCRIBE id -> number of filters
        self.connect_packet: Connect | None = None

    # ---------------------------------------------------------------- receiving

    def receive_data(self, data: bytes, *, now: float) -> list[Event]:
        """Process bytes from the client.

        Returns:
            Events in order.  Packets the client pipelines after CONNECT are held
            until ``accept()`` and reported by it.

        Raises:
            RemoteProtocolError: the client broke the protocol (first packet not
                CONNECT [MQTT-3.1.0-1], a second CONNECT [MQTT-3.1.0-2], malformed
                bytes...); close the transport, then call ``connection_lost()``.
                Events from packets before the violation are on ``events``.
                A violation after CONNECT and before ``accept()`` is raised by
                ``accept()``, after the packets before it.
        """
        state = self._state
        if state is State.CLOSING or not data or self._early_error is not None:
            return []
        if state is State.ERROR:
            self._move(Input.RECV_PUBLISH, remote=True)
        events = self._receive(data, now)
        limit = self._max_connect
        if limit is not None and self.connect_packet is None and self._reader.buffered > limit:
            # An unauthenticated peer may not make us buffer more than this.
            error = self._fail(PacketTooLarge(
                f"the first packet is over {limit} bytes (the limit before CONNECT)",
                packet="CONNECT"))
            error.events = tuple(events)
            raise error
        return events

    def _defer(self, error: RemoteProtocolError) -> bool:
        if self._state is State.CONNECTING:
            self._early_error = error  # raised by accept(), after the packets before it
            return True
        return False

    def _handle(self, packet: Packet, events: list[Event], now: float) -> None:
        state = self._state
        kind = type(packet)
        if state is State.CONNECTING:
            # Pipelined after CONNECT: held, and handled in order by accept().
            if len(self._early) >= self._max_early:
                raise RemoteProtocolError(
                    f"more than {self._max_early} packets sent before CONNACK",
                    packet=kind.__name__.upper(), rule="MQTT-4.8.0-1",
                )
            self._early.append(packet)
            return
        if kind is Connect:
            if state is not State.DISCONNECTED:
                raise RemoteProtocolError("a second CONNECT on one connection",
                                          packet="CONNECT", rule="MQTT-3.1.0-2")
            self._on_connect(packet, events, now)  # type: ignore[arg-type]
            return
        if state is State.DISCONNECTED:
            raise RemoteProtocolError(
                f"the first packet must be CONNECT, got {kind.__name__.upper()}",
                rule="MQTT-3.1.0-1",
            )
        if self._handle_flow(packet, kind, events, now):
            return
        if isinstance(packet, Subscribe):
            self._move(Input.RECV_SUBSCRIBE, remote=True)
            self._subscribes[packet.packet_id] = len(packet.subscriptions)
            events.append(SubscribeReceived(packet.packet_id, packet.subscriptions))
        elif isinstance(packet, Unsubscribe):
            self._move(Input.RECV_UNSUBSCRIBE, remote=True)
            self._send(UnsubAck(packet.packet_id), now)
            events.append(UnsubscribeReceived(packet.packet_id, packet.topic_filters))
        elif kind is PingReq:
            self._move(Input.RECV_PINGREQ, remote=True)
            self._send(PingResp(), now)
        elif kind is Disconnect:
            self._move(Input.RECV_DISCONNECT, remote=True)
            events.append(ClientDisconnected())
        else:  # pragma: no cover - the server-role reader refuses the rest
            raise RemoteProtocolError(f"unexpected {kind.__name__}", rule="MQTT-4.8.0-1")

    def _on_connect(self, packet: Connect, events: list[Event], now: float) -> None:
        self.connect_packet = packet
        self._keep_alive = packet.keep_alive
        if packet.protocol_level != 4:
            self._refuse_now(1, events, now)  # [MQTT-3.1.2-2]
            return
        if not packet.client_id and not packet.clean_session:
            self._refuse_now(2, events, now)  # [MQTT-3.1.3-8]
            return
        self._move(Input.RECV_CONNECT, remote=True)
        self._connect_deadline = None
        events.append(ConnectReceived(packet))

    def _refuse_now(self, code: int, events: list[Event], now: float) -> None:
        self._move(Input.REFUSE)
        self._send(ConnAck(False, code), now)
        events.append(ConnectRefused(code))

    # ----------------------------------------------------------------- commands

    def accept(
        self, *, now: float, session_present: bool = False, session: Session | None = None
    ) -> list[Event]:
        """Answer the CONNECT with CONNACK 0.

        Args:
            session_present: whether a stored session is resumed; must be
                ``False`` for a clean-session CONNECT [MQTT-3.2.2-1].
            session: the stored ``Session`` of this client id to resume (clean
                session 0); its in-flight publishes are re-sent with DUP=1.

        Returns:
            ``Connected``, then the events of packets the client pipelined
            after its CONNECT.
        """
        connect = self.connect_packet
        if connect is not None and connect.clean_session and (session_present or session):
            raise LocalProtocolError(
                "a clean-session CONNECT cannot resume a session", packet="CONNACK",
                field="session present", rule="MQTT-3.2.2-1",
            )
        self._move(Input.ACCEPT)
        if session is not None:
            queued = self._session.queue
            self._session = session
            if queued:
                session.queue_for_append().extend(queued)
        self._send(ConnAck(bool(session_present), 0), now)
        events: list[Event] = [Connected(bool(session_present))]
        self._resend_inflight(now)
        self._pump(now)
        early, self._early = self._early, []
        error, self._early_error = self._early_error, None
        try:
            self._handle_all(early, events, now)
            if error is not None and self._state is not State.CLOSING:
                raise error
        except RemoteProtocolError as exc:
            self._fail(exc)
            exc.events = tuple(events)
            raise
        return events

    def refuse(self, return_code: int, *, now: float) -> None:
        """Answer the CONNECT with a non-zero return code (1 to 5); then close
        the transport.  Later bytes from the client are ignored [MQTT-3.1.4-5]."""
        if return_code not in (1, 2, 3, 4, 5):
            raise LocalProtocolError(f"must be 1 to 5, got {return_code!r}", packet="CONNACK",
                                     field="return code", rule="3.2.2.3")
        self._move(Input.REFUSE)
        self._early.clear()
        self._early_error = None
        self._send(ConnAck(False, return_code), now)

    def publish(
        self, topic: str, payload: bytes = b"", qos: int = 0, retain: bool = False, *, now: float
    ) -> int:
        """Send an application message to the client (queued until accepted
        and the in-flight window has room).

        Returns:
            A token, reported again by ``PublishAcked``.
        """
        return self._publish(topic, payload, qos, retain, now)

    def suback(self, packet_id: int, return_codes: Iterable[int], *, now: float) -> None:
        """Answer a ``SubscribeReceived`` with one return code per filter, in
        order: the granted QoS (0, 1, 2) or 0x80 for a refused filter."""
        packet = SubAck(packet_id, tuple(return_codes))
        data = encode(packet)
        self._move(Input.SUBACK)
        if self._state is not State.CONNECTED:
            return  # the connection is closing: nothing more is sent
        expected = self._subscribes.get(packet_id)
        if expected is None:
            raise LocalProtocolError(f"no SUBSCRIBE with packet identifier {packet_id} waits "
                                     "for an answer", packet="SUBACK", rule="MQTT-3.8.4-1")
        if expected != len(packet.return_codes):
            raise LocalProtocolError(
                f"{len(packet.return_codes)} return codes for {expected} topic filters",
                packet="SUBACK", field="return codes", rule="MQTT-3.8.4-5",
            )
        del self._subscribes[packet_id]
        self._out.append(data)
        self._last_out = now

    def ack(self, packet_id: int, *, now: float) -> bool:
        """Acknowledge a client's QoS 1/2 message (with ``auto_ack=False``)."""
        return self._ack(packet_id, now)

    def close(self) -> None:
        """Decide to end the connection (e.g. credentials expired, or no CONNECT
        worth answering); close the transport, then call ``connection_lost()``.
        Publish the Will."""
        self._move(Input.DISCONNECT)

    # ------------------------------------------------------------------ timers

    def next_deadline(self) -> float | None:
        """When ``tick()`` must next be called, or ``None``."""
        state = self._state
        if state is State.DISCONNECTED:
            return self._connect_deadline
        if state in (State.CONNECTING, State.CONNECTED) and self._keep_alive:
            return self._last_in + self._keep_alive * self._factor
        return None

    def tick(self, now: float) -> list[Event]:
        """Run the timers: ``ConnectionLost`` when CONNECT is overdue or the
        client has been silent for ``keep_alive_factor`` x keep alive."""
        self._check_alive()
        deadline = self.next_deadline()
        if deadline is None or now < deadline:
            return []
        self._move(Input.TIMEOUT)
        if self.connect_packet is None:
            return [ConnectionLost(f"no CONNECT within {self._connect_timeout:g} s")]
        return [ConnectionLost(
            f"no packet from the client for {self._factor:g} x keep alive "
            f"({self._keep_alive} s)")]

    # ----------------------------------------------------------------- I/O hook

    def connection_lost(self) -> list[Event]:
        """The transport is closed.  The session stays on ``session`` for the
        application to store (clean session 0) or drop."""
        self._move(Input.CONNECTION_LOST)
        self._reset_transport()
        self._early.clear()
        self._early_error = None
        self._subscribes.clear()
        self._connect_deadline = None
        return []

    send_failed = connection_lost
