"""The fake-broker mode: scripted scenarios that make a client under test meet
what a broker may legally (or illegally) do, and record how it reacts.

Each connection is served by ``iotdev_mqtt.ServerConnection`` (CONNECT checks,
CONNACK, SUBACK, PINGRESP, acks); a scenario steers it and injects raw bytes
where a real broker would misbehave or choose: a session present flag, a
redelivery with DUP, a downgraded SUBACK, acks out of order, a PINGRESP that
never comes, a close in the middle of a flow, a malformed packet.  Outgoing
packets of the kinds listed in ``Peer.withhold`` are dropped on the way out.

Usage (the client connects to ``broker.port`` on its own thread)::

    with FakeBroker(SCENARIOS["acks-out-of-order"]) as broker:
        ... run the client against 127.0.0.1:broker.port ...
        result = broker.result(timeout=10)
    assert result.passed, result.observations
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from iotdev_mqtt import (
    Connect,
    ConnectReceived,
    Event,
    Packet,
    PacketReader,
    PingReq,
    PingResp,
    PubAck,
    PubComp,
    Publish,
    PubRec,
    PubRel,
    RemoteProtocolError,
    ServerConnection,
    SubscribeReceived,
    encode,
)

from ..transport._probe import RawConnection, RawListener
from ._model import Exchange
from ._wire import read_recorded, take_first, until_closed

__all__ = ["SCENARIOS", "FakeBroker", "Peer", "Scenario", "ScenarioResult"]

P = TypeVar("P")


@dataclass
class ScenarioResult:
    """How the client reacted.

    Attributes:
        scenario: its name.
        passed: the client did what the statements require.
        observations: what happened, in order, in words.
        exchanges: every byte both ways.
        error: set if the scenario could not run (no client came...).
    """

    scenario: str
    passed: bool = False
    observations: list[str] = field(default_factory=list)
    exchanges: list[Exchange] = field(default_factory=list)
    error: str = ""


class Peer:
    """One client connection as the fake broker sees it."""

    def __init__(self, conn: RawConnection, result: ScenarioResult, label: str,
                 start: float, *, auto_ack: bool = True) -> None:
        self.conn = conn
        self.result = result
        self.label = label
        self._start = start
        self.engine = ServerConnection(auto_ack=auto_ack, now=time.monotonic())
        self.reader = PacketReader("server")  # what the client sent, packet by packet
        self.inbox: deque[Packet] = deque()
        self.events: deque[Event] = deque()
        self.withhold: set[type] = set()
        self.grant: Callable[[int], int] = lambda qos: qos
        self.protocol_error = ""

    def _record(self, direction: str, data: bytes) -> None:
        self.result.exchanges.append(
            Exchange(self.label, direction, data, time.monotonic() - self._start))

    def note(self, text: str) -> None:
        self.result.observations.append(text)

    def send_raw(self, data: bytes) -> None:
        self._record("sent", data)
        self.conn.send(data)

    def _flush(self) -> None:
        data = self.engine.data_to_send()
        if not data:
            return
        if self.withhold:
            kept = b""
            for packet in PacketReader("client", 1 << 24).feed(data):
                if type(packet) in self.withhold:
                    self.note(f"withheld {type(packet).__name__}")
                else:
                    kept += encode(packet)
            data = kept
        if data:
            self.send_raw(data)

    def pump(self, deadline: float) -> bool:
        """Read once, run the engine, answer; False at the deadline or on close."""
        data = read_recorded(self.conn, deadline, self._record)
        if data is None:
            return False
        try:
            self.inbox.extend(self.reader.feed(data))
        except RemoteProtocolError as exc:
            self.protocol_error = str(exc)
            self.note(f"client sent bytes that break the protocol: {exc}")
        try:
            events = self.engine.receive_data(data, now=time.monotonic())
        except RemoteProtocolError as exc:
            events = [e for e in exc.events if isinstance(e, Event)]
            if not self.protocol_error:
                self.protocol_error = str(exc)
                self.note(f"client broke the protocol: {exc}")
        for event in events:
            if isinstance(event, SubscribeReceived):
                codes = [self.grant(qos) for _, qos in event.subscriptions]
                self.engine.suback(event.packet_id, codes, now=time.monotonic())
        self.events.extend(events)
        self._flush()
        return True

    def wait(self, kind: type[P], timeout: float) -> P | None:
        """The next packet of ``kind`` the client sends (others are kept)."""
        deadline = time.monotonic() + timeout
        while (found := take_first(self.inbox, kind)) is None:
            if not self.pump(deadline):
                return None
        return found

    def wait_closed(self, timeout: float) -> bool:
        """Keep serving until the client closes; True if it did in time."""
        return until_closed(self.conn, self.pump, time.monotonic() + timeout)

    def handshake(self, timeout: float, *, session_present: bool = False) -> Connect | None:
        """Wait for CONNECT and accept it (CONNACK 0 with ``session_present``)."""
        deadline = time.monotonic() + timeout
        while not any(isinstance(e, ConnectReceived) for e in self.events):
            if not self.pump(deadline):
                return None
        connect = self.engine.connect_packet
        now = time.monotonic()
        if session_present and connect is not None and connect.clean_session:
            self.send_raw(bytes.fromhex("20 02 01 00"))  # what the engine will not write
            self.engine.accept(now=now)
            self.engine.data_to_send()  # drop the engine's own CONNACK
        else:
            self.engine.accept(now=now, session_present=session_present)
        self._flush()
        return connect

    def close(self) -> None:
        self.conn.close()


Scenario = Callable[["FakeBroker"], bool]
"""A script: serves one or more connections through ``broker.next_peer()``,
records observations, returns whether the client behaved."""


class FakeBroker:
    """Serve ``scenario`` on a fresh loopback port, on a background thread.

    Args:
        scenario: one of ``SCENARIOS`` (or your own ``Scenario``).
        host: listen address.
        timeout: seconds any step waits for the client.
        name: for the result (default: the scenario's ``__name__``).
    """

    def __init__(self, scenario: Scenario, host: str = "127.0.0.1", *,
                 timeout: float = 10.0, name: str = "") -> None:
        self.scenario = scenario
        self.timeout = timeout
        self.listener = RawListener(host, 0)
        self.host, self.port = self.listener.host, self.listener.port
        self.outcome = ScenarioResult(name or getattr(scenario, "__name__", "scenario"))
        self._start = time.monotonic()
        self._done = threading.Event()
        self._peers: list[Peer] = []
        self._thread = threading.Thread(target=self._run, name=f"fake-broker {self.port}",
                                        daemon=True)

    def start(self) -> FakeBroker:
        self._thread.start()
        return self

    def next_peer(self, *, auto_ack: bool = True) -> Peer | None:
        """The next client connection (``None`` if none comes in time)."""
        conn = self.listener.accept(time.monotonic() + self.timeout)
        if conn is None:
            self.outcome.observations.append("no connection from the client")
            return None
        peer = Peer(conn, self.outcome, f"c{len(self._peers) + 1}", self._start,
                    auto_ack=auto_ack)
        self._peers.append(peer)
        return peer

    def _run(self) -> None:
        try:
            self.outcome.passed = bool(self.scenario(self))
        except Exception as exc:  # a scenario bug must end in a result, not a dead thread
            self.outcome.error = f"{type(exc).__name__}: {exc}"
            self.outcome.passed = False
        finally:
            for peer in self._peers:
                peer.close()
            self.listener.close()
            self._done.set()

    def result(self, timeout: float | None = None) -> ScenarioResult:
        """Wait for the scenario to end and return what it recorded.

        Raises:
            TimeoutError: the scenario is still running after ``timeout``.
        """
        if not self._done.wait(timeout):
            raise TimeoutError(f"scenario {self.outcome.scenario} still running")
        return self.outcome

    def close(self) -> None:
        self.listener.close()
        for peer in self._peers:
            peer.close()
        self._thread.join(self.timeout * 3)

    def __enter__(self) -> FakeBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


# ------------------------------------------------------------------ scenarios
# Each names the statements it exercises in its docstring.


def session_present_after_clean(broker: FakeBroker) -> bool:
    """CONNACK with session present 1 to a clean-session client: a server
    violation [MQTT-3.2.2-1]; the client should close [MQTT-4.8.0-1]."""
    peer = broker.next_peer()
    if peer is None or peer.handshake(broker.timeout, session_present=True) is None:
        return False
    closed = peer.wait_closed(broker.timeout / 2)
    peer.note("client closed the connection" if closed else "client stayed connected")
    return closed


def redelivery_with_dup(broker: FakeBroker) -> bool:
    """QoS 1 id 7 twice (the second with DUP, after the client's PUBACK): two
    deliveries, two PUBACKs [MQTT-4.3.2-2]; QoS 2 id 9 twice before PUBREL: two
    PUBRECs, one delivery; PUBREL gets PUBCOMP [MQTT-4.3.3-2]."""
    peer = broker.next_peer()
    if peer is None or peer.handshake(broker.timeout) is None:
        return False
    peer.withhold.add(PubRel)  # the engine would answer the client's PUBREC at once
    ok = True
    for dup in (False, True):
        peer.send_raw(encode(Publish("fake/dup", b"q1", qos=1, packet_id=7, dup=dup)))
        ack = peer.wait(PubAck, broker.timeout / 2)
        peer.note(f"PUBLISH id 7 dup={dup}: {'PUBACK' if ack else 'no PUBACK'}")
        ok = ok and ack is not None and ack.packet_id == 7
    for dup in (False, True):
        peer.send_raw(encode(Publish("fake/dup", b"q2", qos=2, packet_id=9, dup=dup)))
        rec = peer.wait(PubRec, broker.timeout / 2)
        peer.note(f"QoS 2 PUBLISH id 9 dup={dup}: {'PUBREC' if rec else 'no PUBREC'}")
        ok = ok and rec is not None and rec.packet_id == 9
    peer.send_raw(encode(PubRel(9)))
    comp = peer.wait(PubComp, broker.timeout / 2)
    peer.note("PUBCOMP 9" if comp else "no PUBCOMP for PUBREL 9")
    return ok and comp is not None


def qos_downgrade(broker: FakeBroker) -> bool:
    """Every subscription granted QoS 0 [MQTT-3.8.4-6]; then a QoS 0 message on
    "fake/down": the client must not acknowledge a QoS 0 message."""
    peer = broker.next_peer()
    if peer is None:
        return False
    peer.grant = lambda qos: 0
    if peer.handshake(broker.timeout) is None:
        return False
    deadline = time.monotonic() + broker.timeout
    while not any(isinstance(e, SubscribeReceived) for e in peer.events):
        if not peer.pump(deadline):
            peer.note("no SUBSCRIBE")
            return False
    peer.note("SUBACK granted QoS 0")
    peer.send_raw(encode(Publish("fake/down", b"downgraded")))
    stray = peer.wait(PubAck, 0.5)
    peer.note("client acknowledged a QoS 0 message" if stray else "no ack for QoS 0 (right)")
    return stray is None and not peer.protocol_error


def acks_out_of_order(broker: FakeBroker) -> bool:
    """The client's three QoS 1 publishes acknowledged in the order 3rd, 1st,
    2nd: acks of distinct ids may come in any order; all complete."""
    peer = broker.next_peer(auto_ack=False)
    if peer is None or peer.handshake(broker.timeout) is None:
        return False
    publishes: list[Publish] = []
    for _ in range(3):
        p = peer.wait(Publish, broker.timeout)
        if p is None or p.packet_id is None:
            peer.note(f"only {len(publishes)} QoS 1 publishes came")
            return False
        publishes.append(p)
    order = [publishes[2], publishes[0], publishes[1]]
    for p in order:
        assert p.packet_id is not None
        peer.send_raw(encode(PubAck(p.packet_id)))
    peer.note(f"acked ids {[p.packet_id for p in order]}")
    closed = peer.wait_closed(0.5)
    peer.note("client closed after the acks" if closed else "client kept the connection")
    return not closed and not peer.protocol_error


def pingresp_withheld(broker: FakeBroker) -> bool:
    """PINGRESP never sent: the client should close the connection "within a
    reasonable amount of time" [MQTT-3.1.2-24 counterpart, 3.1.2.10]."""
    peer = broker.next_peer()
    if peer is None:
        return False
    peer.withhold.add(PingResp)
    connect = peer.handshake(broker.timeout)
    if connect is None:
        return False
    ping = peer.wait(PingReq, connect.keep_alive * 1.5 + 2)
    peer.note("PINGREQ sent" if ping else "no PINGREQ within 1.5 x keep-alive")
    started = time.monotonic()
    closed = peer.wait_closed(connect.keep_alive * 2 + 2)
    peer.note(f"client closed {time.monotonic() - started:.1f} s after its PINGREQ"
              if closed else "client never closed")
    return ping is not None and closed


def disconnect_mid_flow(broker: FakeBroker) -> bool:
    """The connection drops after the client's QoS 1 PUBLISH, before PUBACK.
    Clean session 0: on reconnect the client resends it with DUP 1 and the same
    id [MQTT-4.4.0-1] [MQTT-3.3.1-1] [MQTT-2.3.1-3].  Clean session 1 discards
    the session [MQTT-3.1.2-6]: publishing the message again as a new one
    (any id, DUP 0) is the client's choice, and so is dropping it."""
    peer = broker.next_peer(auto_ack=False)  # no PUBACK
    if peer is None:
        return False
    connect = peer.handshake(broker.timeout)
    if connect is None:
        return False
    first = peer.wait(Publish, broker.timeout)
    peer.close()
    if first is None:
        peer.note("no PUBLISH before the drop")
        return False
    peer.note(f"dropped after PUBLISH id {first.packet_id}")
    again = broker.next_peer()
    if again is None or again.handshake(broker.timeout) is None:
        peer.note("client did not reconnect")
        return False
    resent = again.wait(Publish, broker.timeout)
    if resent is None:
        again.note("PUBLISH not resent")
        return connect.clean_session
    again.note(f"resent id {resent.packet_id} dup={resent.dup} "
               f"(clean session {int(connect.clean_session)})")
    if connect.clean_session:
        return not resent.dup or resent.packet_id == first.packet_id
    return resent.packet_id == first.packet_id and resent.dup


def malformed_packet(broker: FakeBroker) -> bool:
    """A QoS 0 PUBLISH with DUP 1 (malformed [MQTT-3.3.1-2]): the client must
    close the connection [MQTT-4.8.0-1]."""
    peer = broker.next_peer()
    if peer is None or peer.handshake(broker.timeout) is None:
        return False
    peer.send_raw(bytes.fromhex("38 0B 00 08 66 61 6B 65 2F 62 61 64 68 69"))
    closed = peer.wait_closed(broker.timeout / 2)
    peer.note("client closed" if closed else "client kept the connection")
    return closed


def unexpected_acks(broker: FakeBroker) -> bool:
    """PUBACK and PUBCOMP for ids never used, and a PUBREL for one: ignore the
    first two, answer PUBCOMP to the PUBREL, stay connected (mosquitto's
    lib tests 03-publish-b2c-*-unexpected-*)."""
    peer = broker.next_peer()
    if peer is None or peer.handshake(broker.timeout) is None:
        return False
    peer.send_raw(bytes.fromhex("40 02 34 6F 70 02 34 6F 62 02 03 E8"))
    comp = peer.wait(PubComp, broker.timeout / 2)
    peer.note("PUBCOMP 1000" if comp and comp.packet_id == 1000 else "no PUBCOMP for PUBREL")
    closed = peer.wait_closed(0.5)
    peer.note("client closed" if closed else "client stayed connected")
    return comp is not None and not closed


SCENARIOS: dict[str, Scenario] = {
    "session-present-after-clean": session_present_after_clean,
    "redelivery-with-dup": redelivery_with_dup,
    "qos-downgrade": qos_downgrade,
    "acks-out-of-order": acks_out_of_order,
    "pingresp-withheld": pingresp_withheld,
    "disconnect-mid-flow": disconnect_mid_flow,
    "malformed-packet": malformed_packet,
    "unexpected-acks": unexpected_acks,
}
