"""The target, the profile, and the per-check context with its probes.

A ``Probe`` is one client connection to the broker under test: it sends any
bytes (our codec's, or hand-made illegal ones), decodes the broker's answers
with a client-role ``PacketReader`` and records every byte both ways.  Every
wait is bounded by the check's deadline, so a silent broker costs time, never a
hang; a broker that sends bytes our decoder refuses is a ``Violation`` of the
rule the decoder names.
"""

from __future__ import annotations

import os
import ssl
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

from iotdev_mqtt import (
    ConnAck,
    Connect,
    Disconnect,
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
    Will,
    encode,
)

from ..transport._probe import RawConnection
from ._model import Check, Exchange, Skip, Violation
from ._wire import ByteStream, read_recorded, take_first, until_closed

__all__ = ["ByteStream", "Connector", "Context", "Probe", "Profile", "Target"]

P = TypeVar("P")


@dataclass(frozen=True)
class Target:
    """Where the broker is and how to reach it.

    Attributes:
        host, port: the broker.
        tls: use TLS (with ``ca``, a PEM file, or the system's trust store).
        ca: path of the CA certificate(s) that sign the broker's certificate.
        insecure: do not verify the broker's certificate (test brokers only).
        server_hostname: name for SNI and verification, if not ``host``.
        ws_path: MQTT over WebSocket at this path (subprotocol ``mqtt``).
        username, password: sent in every CONNECT (unless the profile gives
            credentials per client id).
        client_id_prefix: every client id starts with it.
        connect_timeout: seconds for TCP, TLS and WebSocket handshakes.
        answer_timeout: seconds to wait for something the broker must send (an
            ack, a close, a routed message).
        quiet_timeout: seconds to wait to be sure something does *not* come.
    """

    host: str
    port: int = 1883
    tls: bool = False
    ca: str | None = None
    insecure: bool = False
    server_hostname: str | None = None
    ws_path: str | None = None
    username: str | None = None
    password: str | None = None
    client_id_prefix: str = "iotdev-check"
    connect_timeout: float = 5.0
    answer_timeout: float = 3.0
    quiet_timeout: float = 0.5

    def describe(self) -> str:
        scheme = ("wss" if self.tls else "ws") if self.ws_path else ("mqtts" if self.tls else
                                                                    "mqtt")
        return f"{scheme}://{self.host}:{self.port}{self.ws_path or ''}"

    def tls_context(self) -> ssl.SSLContext | None:
        if not self.tls:
            return None
        ctx = ssl.create_default_context(cafile=self.ca)
        if self.insecure:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        return ctx


@dataclass(frozen=True)
class Profile:
    """What the broker restricts on purpose, and how clients must look there.

    Attributes:
        name: shown in reports, e.g. ``"mqtt-3.1.1"`` or ``"iothub"``.
        unsupported: check needs (see ``Check.needs``) refused by design, each
            with the reason; such checks are skipped and marked "by design".
        client_ids: fixed client ids to use in turn (IoT Hub: registered
            devices), instead of fresh unique ones.
        credentials: ``client_id -> (username, password)`` when they differ per
            client (IoT Hub SAS tokens).
        publish_topic, subscribe_filter: templates (``{client_id}``) for the
            one topic a client may publish to / filter it may subscribe to.
    """

    name: str = "mqtt-3.1.1"
    unsupported: Mapping[str, str] = field(default_factory=dict)
    client_ids: tuple[str, ...] = ()
    credentials: Callable[[str], tuple[str | None, bytes | None]] | None = None
    publish_topic: str | None = None
    subscribe_filter: str | None = None


Connector = Callable[["Target", float], ByteStream]
"""``(target, timeout) -> ByteStream``: how checks open connections.  The
default dials the target; the fuzz target plugs in scripted answers."""


def dial(target: Target, timeout: float) -> ByteStream:
    """The default ``Connector``: TCP, then TLS and WebSocket as configured."""
    return RawConnection.open(target.host, target.port, tls_context=target.tls_context(),
                              server_hostname=target.server_hostname,
                              ws_path=target.ws_path, timeout=timeout)


class Probe:
    """One connection to the broker, recorded.  Made by ``Context.open()``."""

    def __init__(self, ctx: Context, label: str, conn: ByteStream) -> None:
        self.ctx = ctx
        self.label = label
        self.conn = conn
        self.reader = PacketReader("client", max_packet_size=16 << 20)
        self.pending: deque[Packet] = deque()
        self.received: list[Packet] = []
        self.client_id = ""

    @property
    def closed(self) -> bool:
        return self.conn.closed and not self.pending

    def _record(self, direction: str, data: bytes) -> None:
        self.ctx._record(self.label, direction, data)

    def send(self, data: Packet | bytes) -> None:
        raw = data if isinstance(data, bytes) else encode(data)
        self._record("sent", raw)
        self.conn.send(raw)

    def _fill(self, deadline: float) -> bool:
        """Read once; False when nothing more can come before ``deadline``."""
        if self.conn.closed:
            return False
        data = read_recorded(self.conn, min(deadline, self.ctx.deadline), self._record)
        if data is None:
            return False
        try:
            packets = self.reader.feed(data)
        except RemoteProtocolError as exc:
            rule = exc.rule or "4.8.0-1"
            statement = rule if rule.startswith("MQTT-") else f"section {rule}"
            raise Violation(statement, f"the broker sent bytes that break the protocol: "
                                       f"{exc}") from exc
        self.received.extend(packets)
        self.pending.extend(packets)
        return True

    def next(self, timeout: float | None = None) -> Packet | None:
        """The next packet; ``None`` if the broker closed or went quiet first."""
        deadline = time.monotonic() + (self.ctx.target.answer_timeout if timeout is None
                                       else timeout)
        while not self.pending:
            if not self._fill(deadline):
                return None
        return self.pending.popleft()

    def expect(self, kind: type[P], statement: str, timeout: float | None = None,
               what: str = "") -> P:
        """The next packet, which must be a ``kind``, else ``Violation(statement)``."""
        packet = self.next(timeout)
        if isinstance(packet, kind):
            return packet
        wanted = what or kind.__name__
        if packet is None:
            got = "the connection was closed" if self.conn.closed else "nothing came"
        else:
            got = f"got {packet!r}"
        raise Violation(statement, f"expected {wanted}; {got}")

    def wait_closed(self, timeout: float | None = None) -> bool:
        """Read (and keep) packets until the broker closes; True if it did in time."""
        deadline = time.monotonic() + (self.ctx.target.answer_timeout if timeout is None
                                       else timeout)
        return until_closed(self.conn, self._fill, deadline)

    def publishes(self, count: int, timeout: float | None = None, *, ack: bool = True,
                  settle: bool = True) -> list[Publish]:
        """PUBLISH packets until ``count`` arrived (then ``quiet_timeout`` more if
        ``settle``, to see duplicates); acknowledged when ``ack``.  Other packets
        stay in ``pending``."""
        deadline = time.monotonic() + (self.ctx.target.answer_timeout if timeout is None
                                       else timeout)
        got: list[Publish] = []
        kept: list[Packet] = []
        while True:
            while self.pending:
                packet = self.pending.popleft()
                if isinstance(packet, Publish):
                    got.append(packet)
                    if ack:
                        self.ack(packet)
                elif ack and isinstance(packet, PubRel):
                    self.send(PubComp(packet.packet_id))
                else:
                    kept.append(packet)
            if len(got) >= count:
                if not settle:
                    break
                deadline = min(deadline, time.monotonic() + self.ctx.target.quiet_timeout)
                settle = False
            if not self._fill(deadline):
                break
        self.pending.extendleft(reversed(kept))
        return got

    def ack(self, publish: Publish) -> None:
        """The receiver's answer to ``publish`` (PUBACK or PUBREC)."""
        if publish.qos == 1 and publish.packet_id is not None:
            self.send(PubAck(publish.packet_id))
        elif publish.qos == 2 and publish.packet_id is not None:
            self.send(PubRec(publish.packet_id))

    def await_packet(self, kind: type[P], statement: str, what: str = "",
                     timeout: float | None = None) -> P:
        """The first ``kind`` packet to arrive; packets before it stay pending
        (a client subscribed to its own topic gets its message before the ack)."""
        deadline = time.monotonic() + (self.ctx.target.answer_timeout if timeout is None
                                       else timeout)
        while (found := take_first(self.pending, kind)) is None:
            if not self._fill(deadline):
                state = "the connection was closed" if self.conn.closed else "nothing came"
                raise Violation(statement, f"expected {what or kind.__name__}; {state}")
        return found

    def publish_qos(self, topic: str, payload: bytes, qos: int, *, retain: bool = False,
                    packet_id: int = 1) -> None:
        """Publish and finish the sender's side of the flow (PUBACK, or PUBREC/
        PUBREL/PUBCOMP), checking the broker's acks."""
        self.send(Publish(topic, payload, qos=qos, retain=retain,
                          packet_id=packet_id if qos else None))
        if qos == 1:
            ack = self.await_packet(PubAck, "MQTT-4.3.2-1", f"PUBACK {packet_id}")
            if ack.packet_id != packet_id:
                raise Violation("MQTT-2.3.1-6", f"PUBACK for {ack.packet_id}, sent {packet_id}")
        elif qos == 2:
            rec = self.await_packet(PubRec, "MQTT-4.3.3-2", f"PUBREC {packet_id}")
            if rec.packet_id != packet_id:
                raise Violation("MQTT-2.3.1-6", f"PUBREC for {rec.packet_id}, sent {packet_id}")
            self.send(PubRel(packet_id))
            comp = self.await_packet(PubComp, "MQTT-4.3.3-2", f"PUBCOMP {packet_id}")
            if comp.packet_id != packet_id:
                raise Violation("MQTT-2.3.1-6", f"PUBCOMP for {comp.packet_id}, "
                                f"sent {packet_id}")

    def ping(self, statement: str = "MQTT-3.12.4-1") -> None:
        """PINGREQ; PINGRESP must come (other packets before it stay pending)."""
        self.send(PingReq())
        self.await_packet(PingResp, statement, "PINGRESP")

    def disconnect(self) -> None:
        """DISCONNECT, then close our side once the broker has (or after
        ``quiet_timeout``), so the broker has ended the session's connection
        before the next one for the same client id arrives."""
        self.send(Disconnect())
        self.wait_closed(self.ctx.target.quiet_timeout)
        self.conn.close()

    def drop(self) -> None:
        """Close the socket without DISCONNECT (an abnormal close)."""
        self.conn.close()


class Context:
    """What a check runs with: the target, the profile, fresh names, probes."""

    def __init__(self, target: Target, profile: Profile, check: Check, run_token: str,
                 connector: Connector = dial) -> None:
        self.target = target
        self._connector = connector
        self.profile = profile
        self.check = check
        self.start = time.monotonic()
        self.deadline = self.start + check.timeout
        self.exchanges: list[Exchange] = []
        self.probes: list[Probe] = []
        self._token = run_token
        self._ids: dict[str, str] = {}

    def _record(self, label: str, direction: str, data: bytes) -> None:
        self.exchanges.append(Exchange(label, direction, data, time.monotonic() - self.start))

    def need(self, feature: str) -> None:
        """Skip unless the profile supports ``feature``."""
        reason = self.profile.unsupported.get(feature)
        if reason is not None:
            raise Skip(reason, by_design=self.profile.name)

    def client_id(self, name: str) -> str:
        """A client id for role ``name``: unique per run and check, or the
        profile's fixed ids in turn."""
        if name not in self._ids:
            fixed = self.profile.client_ids
            if fixed:
                if len(self._ids) >= len(fixed):
                    raise Skip(f"the profile has {len(fixed)} client id(s); this check needs more",
                               by_design=self.profile.name)
                self._ids[name] = fixed[len(self._ids)]
            else:
                short = self.check.id.replace(".", "-")[-18:]
                self._ids[name] = f"{self.target.client_id_prefix}-{self._token}-{short}-{name}"
        return self._ids[name]

    def topic(self, name: str = "t") -> str:
        """A topic nobody else uses (``any-topic`` checks only)."""
        return f"{self.target.client_id_prefix}/{self._token}/{self.check.id}/{name}"

    def open(self, label: str) -> Probe:
        """A connection, transport handshakes done, nothing sent yet."""
        remaining = max(0.1, min(self.target.connect_timeout, self.deadline - time.monotonic()))
        conn = self._connector(self.target, remaining)
        probe = Probe(self, label, conn)
        self.probes.append(probe)
        return probe

    def connect_packet(self, name: str, **fields: object) -> Connect:
        """A CONNECT for role ``name`` with the target's or profile's credentials."""
        cid = self.client_id(name) if "client_id" not in fields else str(fields.pop("client_id"))
        username: str | None = self.target.username
        password: bytes | None = (self.target.password.encode()
                                  if self.target.password is not None else None)
        if self.profile.credentials is not None and cid:
            username, password = self.profile.credentials(cid)
        fields.setdefault("username", username)
        fields.setdefault("password", password)
        return Connect(cid, **fields)  # type: ignore[arg-type]

    def connect(self, name: str, *, clean_session: bool = True, keep_alive: int = 60,
                will: Will | None = None, statement: str = "MQTT-3.1.4-4") -> tuple[Probe, ConnAck]:
        """Open a connection as role ``name`` and complete CONNECT/CONNACK(0)."""
        probe = self.open(name)
        packet = self.connect_packet(name, clean_session=clean_session, keep_alive=keep_alive,
                                     will=will)
        probe.client_id = packet.client_id
        probe.send(packet)
        ack = probe.expect(ConnAck, "MQTT-3.2.0-1", what="CONNACK")
        if ack.return_code != 0:
            if ack.return_code in (4, 5):
                raise Skip(f"the broker refused our credentials (CONNACK {ack.return_code}); "
                           f"pass --username/--password")
            raise Violation(statement, f"CONNACK return code {ack.return_code} for a valid "
                            f"CONNECT")
        return probe, ack

    def new_token(self) -> str:
        return os.urandom(3).hex()

    def close_all(self) -> None:
        for probe in self.probes:
            probe.conn.close()
