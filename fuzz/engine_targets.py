"""Fuzz targets for the protocol engines: ``client-connection`` and
``server-connection``.

Invariants, on top of ``check_split_invariance`` (same events, same error, same
bytes sent and same end state whether the input comes whole, byte by byte or in
random chunks):

* ``receive_data`` returns events or raises ``RemoteProtocolError``; in
  ``ERROR`` a further call raises ``ProtocolError``;
* the reader never buffers more than ``max_packet_size``; the window never holds
  more than ``max_inflight`` publishes; inbound QoS 2 ids stay in 1..65535;
* every byte the engine sends decodes, in the peer's role, as valid packets.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from iotdev_mqtt import (
    ClientConnection,
    ConnAck,
    Connect,
    ConnectReceived,
    PacketReader,
    ProtocolError,
    Publish,
    RemoteProtocolError,
    ServerConnection,
    encode,
)

from .checks import Chunk, check_split_invariance, error_label
from .corpus import load_vectors
from .registry import register

LIMIT = 4096
WINDOW = 4


def _decodes(role: str, data: bytes) -> None:
    try:
        PacketReader(role, 1 << 24).feed(data)  # type: ignore[arg-type]
    except RemoteProtocolError as exc:
        raise AssertionError(f"[engine-output] the engine sent bytes a {role} cannot read: "
                             f"{exc}; sent {data.hex()}") from exc


class _Engine:
    def __init__(self, conn: ClientConnection | ServerConnection) -> None:
        self.conn = conn
        self.sent = bytearray()

    def check(self) -> None:
        conn = self.conn
        if conn._reader.buffered > LIMIT:
            raise AssertionError(f"[buffer-bound] {conn._reader.buffered} bytes buffered")
        if len(conn.session.inflight) > WINDOW:
            raise AssertionError(f"[window] {len(conn.session.inflight)} publishes in flight")
        if any(not 0 < pid < 65536 for pid in conn.session.inbound_qos2):
            raise AssertionError("[ids] inbound QoS 2 id out of range")

    def state(self) -> object:
        return (self.conn.state, bytes(self.sent), tuple(self.conn.pending()))


class _Client(_Engine):
    def __init__(self) -> None:
        conn = ClientConnection(max_packet_size=LIMIT, max_inflight=WINDOW)
        conn.connect("fuzz", now=0.0, clean_session=False, keep_alive=30)
        for qos in (1, 2, 1, 2, 0, 1):
            conn.publish("a/b", b"x", qos, now=0.0)
        conn.subscribe([("s/#", 1), ("t", 2)], now=0.0)
        conn.data_to_send()
        super().__init__(conn)
        self.client = conn

    def feed(self, chunk: Chunk) -> Sequence[object]:
        try:
            return self.client.receive_data(bytes(chunk), now=1.0)
        finally:  # what was queued before a violation still goes out
            self.sent += self.client.data_to_send()


class _Server(_Engine):
    def __init__(self) -> None:
        conn = ServerConnection(max_packet_size=LIMIT, max_inflight=WINDOW, now=0.0)
        super().__init__(conn)
        self.server = conn

    def feed(self, chunk: Chunk) -> Sequence[object]:
        try:
            return self._answer(list(self.server.receive_data(bytes(chunk), now=1.0)))
        finally:
            self.sent += self.server.data_to_send()

    def _answer(self, events: list[object]) -> list[object]:
        server = self.server
        i = 0
        # Only CONNECT is answered: an answer to SUBSCRIBE would depend on when
        # the application sees it relative to the bytes that follow (packets
        # pipelined before accept() are handled by accept()), so its bytes
        # would differ between splits for reasons that are not bugs.
        while i < len(events):
            event = events[i]
            if isinstance(event, ConnectReceived):
                for qos in (1, 2, 0):  # queued, sent right after CONNACK
                    server.publish("down/x", b"y", qos, now=1.0)
                try:
                    events += server.accept(now=1.0)
                except RemoteProtocolError as exc:  # a pipelined packet broke a rule
                    exc.events = tuple(events) + exc.events
                    raise
            i += 1
        return events


def _run(fresh: type[_Client] | type[_Server], data: bytes, peer_role: str) -> str:
    run = check_split_invariance(
        fresh, data,
        partial=lambda exc: list(exc.events),
        buffer_types=False, empty_chunks=False,  # b"" means EOF to receive_data
        dead_after_error=b"\xd0\x00", dead_error=ProtocolError,
    )
    state = run.state
    assert isinstance(state, tuple)
    _decodes(peer_role, state[1])
    kinds = "+".join(sorted({type(e).__name__ for e in run.items}))
    return f"{kinds or '-'} | {error_label(run.error)}"


def _client_seeds() -> Iterable[bytes]:
    connack = encode(ConnAck(True, 0))
    for _, direction, data in load_vectors():
        if direction in ("s2c", "both"):
            yield connack + data
    yield connack + bytes.fromhex("40020001 50020002 70020002 90040003 0102 40020004")
    yield connack + encode(Publish("s/1", b"p", 2, packet_id=9)) + bytes.fromhex("6202 0009")


def _server_seeds() -> Iterable[bytes]:
    connect = encode(Connect("fuzz", keep_alive=30))
    for _, direction, data in load_vectors():
        if direction in ("c2s", "both"):
            yield connect + data
    yield connect + bytes.fromhex("40020001 50020002 70020002 82060003 00017300 c000 e000")


@register("client-connection", "ClientConnection.receive_data after CONNECT",
          seeds=_client_seeds)
def client_connection(data: bytes) -> str:
    return _run(_Client, data, "server")


@register("server-connection", "ServerConnection.receive_data from the first byte",
          seeds=_server_seeds)
def server_connection(data: bytes) -> str:
    return _run(_Server, data, "client")
