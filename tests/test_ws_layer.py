"""MQTT over WebSocket: ``WebSocketLayer`` (client) and ``WebSocketServerLayer``.

Three groups:

* sans-IO: a client layer and a server layer joined in memory (the tests move
  ``data_to_send()`` across by hand), plus hand-made frames and HTTP answers for
  what a well-behaved peer never sends;
* a real mosquitto on its TLS WebSocket listener, under ``Stack([TLSLayer,
  WebSocketLayer])`` over a blocking socket, with ``ClientConnection`` on top;
* refusals from real servers on loopback: ``http.server`` answering 404, and a
  raw socket that reads the request and hangs up.

Every network wait is bounded by a deadline (socket timeouts); nothing sleeps.
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from wsproto import ConnectionType, WSConnection
from wsproto.events import Request

from iotdev._errors import ConnectionDroppedError, WebSocketUpgradeError
from iotdev.transport import Stack, TLSLayer, make_client_context
from iotdev.transport._ws import WebSocketLayer, WebSocketServerLayer
from iotdev_mqtt import (
    ClientConnection,
    ConnAck,
    Connect,
    Connected,
    Disconnect,
    Event,
    MessageReceived,
    Packet,
    PacketReader,
    PingReq,
    PingResp,
    PubAck,
    Publish,
    PublishAcked,
    SubAck,
    Subscribe,
    Subscribed,
    encode,
)
from tests._broker import CertAuthority, Mosquitto, unique_name

TIMEOUT = 10.0

CLIENT_PACKETS: list[Packet] = [
    Connect("dev-ws", keep_alive=30, username="hub/dev-ws", password=b"sas"),
    Subscribe(1, (("devices/dev-ws/messages/devicebound/#", 1),)),
    Publish("devices/dev-ws/messages/events/", b"x" * 300, 1, packet_id=2),
    PingReq(),
    Disconnect(),
]
SERVER_PACKETS: list[Packet] = [
    ConnAck(False, 0),
    SubAck(1, (1,)),
    PubAck(2),
    Publish("devices/dev-ws/messages/devicebound/a", b"\x00\xff" * 100, 1, packet_id=9),
    PingResp(),
]


# ------------------------------------------------------------------ helpers


def pair(
    client_path: str = "/$iothub/websocket", server_path: str | None = "/$iothub/websocket",
) -> tuple[WebSocketLayer, WebSocketServerLayer]:
    return (WebSocketLayer("localhost", path=client_path),
            WebSocketServerLayer(path=server_path))


def handshake(client: WebSocketLayer, server: WebSocketServerLayer) -> None:
    client.start()
    assert server.receive_data(client.data_to_send()) == b""
    assert server.established
    assert client.receive_data(server.data_to_send()) == b""
    assert client.established


def connected_pair() -> tuple[WebSocketLayer, WebSocketServerLayer]:
    client, server = pair()
    handshake(client, server)
    return client, server


def feed(layer: WebSocketLayer | WebSocketServerLayer, data: bytes, step: int = 0) -> bytes:
    """``data`` into ``layer`` whole (``step=0``) or in chunks of ``step`` bytes;
    never an empty chunk (that would be EOF)."""
    if not step:
        return layer.receive_data(data) if data else b""
    return b"".join(layer.receive_data(data[i:i + step]) for i in range(0, len(data), step))


def frame(opcode: int, payload: bytes, *, fin: bool = True, mask: bytes | None = None) -> bytes:
    """One WebSocket frame built by hand (RFC 6455 section 5.2)."""
    out = bytearray([(0x80 if fin else 0) | opcode])
    bit = 0x80 if mask is not None else 0
    n = len(payload)
    if n < 126:
        out.append(bit | n)
    elif n < 1 << 16:
        out += bytes([bit | 126]) + n.to_bytes(2, "big")
    else:
        out += bytes([bit | 127]) + n.to_bytes(8, "big")
    if mask is not None:
        out += mask
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes(out + payload)


def parse_frames(data: bytes) -> list[tuple[bool, int, bool, bytes]]:
    """Whole frames in ``data`` as ``(fin, opcode, masked, unmasked payload)``."""
    frames = []
    i = 0
    while i < len(data):
        fin, opcode = bool(data[i] & 0x80), data[i] & 0x0F
        masked, n = bool(data[i + 1] & 0x80), data[i + 1] & 0x7F
        i += 2
        if n == 126:
            n, i = int.from_bytes(data[i:i + 2], "big"), i + 2
        elif n == 127:
            n, i = int.from_bytes(data[i:i + 8], "big"), i + 8
        key = data[i:i + 4] if masked else b"\0\0\0\0"
        i += 4 if masked else 0
        payload = bytes(b ^ key[j % 4] for j, b in enumerate(data[i:i + n]))
        assert len(payload) == n, f"truncated frame in {data!r}"
        frames.append((fin, opcode, masked, payload))
        i += n
    return frames


def accept_token(request: bytes) -> bytes:
    match = re.search(rb"Sec-WebSocket-Key: (\S+)\r\n", request)
    assert match is not None, request
    digest = hashlib.sha1(match[1] + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
    return base64.b64encode(digest)


def encode_all(packets: list[Packet]) -> bytes:
    return b"".join(encode(p) for p in packets)


# ------------------------------------------------------------------ handshake


def test_handshake_offers_and_selects_mqtt() -> None:
    client = WebSocketLayer("hub.example.net", extra_headers=[(b"User-Agent", b"iotdev-test")])
    server = WebSocketServerLayer(path="/$iothub/websocket")
    assert not client.established and not server.established
    client.start()
    client.start()  # once only
    request = client.data_to_send()
    assert request.startswith(b"GET /$iothub/websocket HTTP/1.1\r\n")
    assert request.count(b"GET ") == 1
    for header in (b"Host: hub.example.net", b"Upgrade: websocket", b"Connection: Upgrade",
                   b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Protocol: mqtt",
                   b"User-Agent: iotdev-test"):
        assert header + b"\r\n" in request, header
    assert server.receive_data(request) == b""
    answer = server.data_to_send()
    assert answer.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"Sec-WebSocket-Protocol: mqtt\r\n" in answer
    assert b"Sec-WebSocket-Accept: " + accept_token(request) + b"\r\n" in answer
    assert server.target == "/$iothub/websocket"
    assert (b"user-agent", b"iotdev-test") in server.headers
    assert client.receive_data(answer) == b""
    assert client.established and (client.status, client.reason) == (101, "Switching Protocols")
    assert not client.closed and not server.closed
    assert client.data_to_send() == server.data_to_send() == b""


def test_server_path_ignores_the_query_and_none_serves_any_path() -> None:
    client, server = pair("/$iothub/websocket?iothub-no-client-cert=true")
    handshake(client, server)
    assert server.target == "/$iothub/websocket?iothub-no-client-cert=true"
    client, server = pair("/anything/at/all", server_path=None)
    handshake(client, server)


def test_send_before_the_handshake_is_held_until_established() -> None:
    client, server = pair()
    client.start()
    client.send(encode(CLIENT_PACKETS[0]))
    request = client.data_to_send()
    assert request.endswith(b"\r\n\r\n")  # nothing but the request so far
    server.receive_data(request)
    assert client.receive_data(server.data_to_send()) == b""
    assert PacketReader("server").feed(server.receive_data(client.data_to_send())) == \
        [CLIENT_PACKETS[0]]


# ------------------------------------------------------------------ data both ways


def test_mqtt_packets_both_ways_masked_up_unmasked_down() -> None:
    client, server = connected_pair()
    up, down = PacketReader("server"), PacketReader("client")
    for packet in CLIENT_PACKETS:
        client.send(encode(packet))
        wire = client.data_to_send()
        [(fin, opcode, masked, payload)] = parse_frames(wire)
        assert (fin, opcode, masked, payload) == (True, 0x2, True, encode(packet))
        assert up.feed(server.receive_data(wire)) == [packet]
    for packet in SERVER_PACKETS:
        server.send(encode(packet))
        wire = server.data_to_send()
        assert wire == frame(0x2, encode(packet))  # servers do not mask: byte-exact
        assert down.feed(client.receive_data(wire)) == [packet]
    client.send(b"")  # no empty frames
    assert client.data_to_send() == b""


def test_several_packets_in_one_frame() -> None:
    client, server = connected_pair()
    client.send(encode_all(CLIENT_PACKETS))
    wire = client.data_to_send()
    assert len(parse_frames(wire)) == 1
    assert PacketReader("server").feed(server.receive_data(wire)) == CLIENT_PACKETS
    server.send(encode_all(SERVER_PACKETS))
    wire = server.data_to_send()
    assert len(parse_frames(wire)) == 1
    assert PacketReader("client").feed(client.receive_data(wire)) == SERVER_PACKETS


def test_one_packet_over_several_frames() -> None:
    big = Publish("t/big", bytes(range(256)) * 300, 1, packet_id=77)  # 76,800-byte payload
    data = encode(big)
    cuts = [0, 1, 2, 5, 126, 127, 65535, 65536 + 7, len(data)]
    client, server = connected_pair()
    reader = PacketReader("server")
    for start, end in itertools.pairwise(cuts):
        client.send(data[start:end])
        got = reader.feed(server.receive_data(client.data_to_send()))
        assert got == ([big] if end == len(data) else []), (start, end)
    reader = PacketReader("client")
    for start, end in itertools.pairwise(cuts):
        server.send(data[start:end])
        wire = server.data_to_send()
        assert wire == frame(0x2, data[start:end])  # 7-bit, 16-bit and 64-bit lengths
        assert reader.feed(client.receive_data(wire)) == ([big] if end == len(data) else [])


def test_frames_and_packets_misaligned_both_ways() -> None:
    """Frames cut across packet boundaries: 3 packets sent in 4-byte slices."""
    client, server = connected_pair()
    data = encode_all(CLIENT_PACKETS[:3])
    for i in range(0, len(data), 4):
        client.send(data[i:i + 4])
    wire = client.data_to_send()
    assert len(parse_frames(wire)) == -(-len(data) // 4)
    assert PacketReader("server").feed(server.receive_data(wire)) == CLIENT_PACKETS[:3]


def test_fragmented_messages_with_a_ping_between_fragments() -> None:
    client, server = connected_pair()
    data = encode_all(SERVER_PACKETS)
    wire = (frame(0x2, data[:10], fin=False) + frame(0x0, data[10:20], fin=False)
            + frame(0x9, b"mid") + frame(0x0, data[20:], fin=True))
    assert PacketReader("client").feed(client.receive_data(wire)) == SERVER_PACKETS
    # The ping between fragments was answered: the server sees the pong.
    assert server.receive_data(client.data_to_send()) == b""
    assert server.last_pong == b"mid"
    # And towards the server: masked fragments.
    data = encode_all(CLIENT_PACKETS)
    key = b"\x01\x02\x03\x04"
    wire = (frame(0x2, data[:3], fin=False, mask=key) + frame(0x0, data[3:50], fin=False, mask=key)
            + frame(0x0, data[50:], mask=key))
    assert PacketReader("server").feed(server.receive_data(wire)) == CLIENT_PACKETS


def test_client_to_server_stream_split_at_every_byte_boundary() -> None:
    """Upgrade request and frames in one stream (the client pipelined them):
    every two-piece split, and byte by byte, gives the server the same packets."""
    client, reference = pair()
    client.start()
    request = client.data_to_send()
    reference.receive_data(request)
    client.receive_data(reference.data_to_send())
    for packet in CLIENT_PACKETS:
        client.send(encode(packet))
    stream = request + client.data_to_send()

    def check(chunks: list[bytes]) -> None:
        server = WebSocketServerLayer(path="/$iothub/websocket")
        out = b"".join(server.receive_data(c) for c in chunks if c)
        assert server.established
        assert PacketReader("server").feed(out) == CLIENT_PACKETS, chunks

    for i in range(len(stream) + 1):
        check([stream[:i], stream[i:]])
    check([stream[i:i + 1] for i in range(len(stream))])


def test_server_to_client_stream_split_at_every_byte_boundary() -> None:
    """The 101 answer with frames right behind it: nothing after the 101 may be
    lost, wherever the reads cut the stream."""

    def answer() -> tuple[WebSocketLayer, bytes]:
        client, server = pair()
        client.start()
        server.receive_data(client.data_to_send())
        for packet in SERVER_PACKETS:
            server.send(encode(packet))
        server.ping(b"early")
        return client, server.data_to_send()

    def check(client: WebSocketLayer, chunks: list[bytes]) -> None:
        out = b"".join(client.receive_data(c) for c in chunks if c)
        assert client.established
        assert PacketReader("client").feed(out) == SERVER_PACKETS, chunks
        assert parse_frames(client.data_to_send())[0][1:] == (0xA, True, b"early")  # pong

    for i in range(len(answer()[1]) + 1):
        client, stream = answer()
        check(client, [stream[:i], stream[i:]])
    client, stream = answer()
    check(client, [stream[i:i + 1] for i in range(len(stream))])


# ------------------------------------------------------------------ ping, close, EOF


def test_ping_pong_both_ways() -> None:
    client, server = connected_pair()
    assert client.last_pong is None
    client.ping(b"c1")
    assert server.receive_data(client.data_to_send()) == b""
    assert client.receive_data(server.data_to_send()) == b""
    assert client.last_pong == b"c1"
    server.ping()
    assert client.receive_data(server.data_to_send()) == b""
    assert server.receive_data(client.data_to_send()) == b""
    assert server.last_pong == b""
    with pytest.raises(ValueError, match="125 bytes"):
        client.ping(b"x" * 126)


def test_ping_before_the_handshake_fails() -> None:
    client, _ = pair()
    client.start()
    with pytest.raises(ConnectionDroppedError, match="cannot ping"):
        client.ping()


@pytest.mark.parametrize("closer", ["client", "server"])
def test_close_handshake(closer: str) -> None:
    client, server = connected_pair()
    first, second = (client, server) if closer == "client" else (server, client)
    first.send(b"\xc0\x00")  # a PINGREQ just before the close, in the same read
    first.close()
    first.close()  # once only
    wire = first.data_to_send()
    assert [f[1] for f in parse_frames(wire)] == [0x2, 0x8]
    assert second.receive_data(wire) == b"\xc0\x00"
    assert second.closed and (second.close_code, second.close_reason) == (1000, "")
    reply = second.data_to_send()
    assert parse_frames(reply)[0][1] == 0x8
    assert not first.closed
    assert first.receive_data(reply) == b""
    assert first.closed and first.close_code == 1000
    for layer in (first, second):
        with pytest.raises(ConnectionDroppedError, match="cannot send"):
            layer.send(b"\xc0\x00")
        layer.close()  # nothing more to say
        assert layer.data_to_send() == b""
        assert layer.receive_data(b"late") == b""  # ignored after the close
        assert layer.receive_data(b"") == b""


def test_eof_after_the_handshake_closes_without_error() -> None:
    client, server = connected_pair()
    server.send(encode(PingResp()))
    assert client.receive_data(server.data_to_send()) == encode(PingResp())
    assert client.receive_data(b"") == b""
    assert client.closed and client.close_code is None
    assert server.receive_data(b"") == b""
    assert server.closed


def test_eof_during_the_handshake() -> None:
    client, _ = pair()
    client.start()
    with pytest.raises(ConnectionDroppedError,
                       match="closed the connection during the WebSocket handshake"):
        client.receive_data(b"")
    assert client.closed and not client.established
    # Part of the 101, then EOF: still a drop, naming what came.
    client, server = pair()
    client.start()
    server.receive_data(client.data_to_send())
    client.receive_data(server.data_to_send()[:40])
    with pytest.raises(ConnectionDroppedError, match=r"handshake .* after 101 Switching"):
        client.receive_data(b"")
    # The server side: EOF in the middle of the request.
    client, server = pair()
    client.start()
    server.receive_data(client.data_to_send()[:30])
    with pytest.raises(ConnectionDroppedError, match="30 bytes of its upgrade request"):
        server.receive_data(b"")
    assert server.closed and server.data_to_send() == b""


# ------------------------------------------------------------------ refusals


def test_wrong_path_is_refused_with_404() -> None:
    client, server = pair("/wrong", server_path="/$iothub/websocket")
    client.start()
    with pytest.raises(WebSocketUpgradeError) as server_side:
        server.receive_data(client.data_to_send())
    assert (server_side.value.status, server_side.value.reason) == (404, "Not Found")
    refusal = server.data_to_send()
    assert refusal.startswith(b"HTTP/1.1 404 Not Found\r\n")
    assert not server.established
    with pytest.raises(WebSocketUpgradeError) as client_side:
        client.receive_data(refusal)
    error = client_side.value
    assert (error.status, error.reason) == (404, "Not Found")
    assert str(error) == ("WebSocket upgrade to wss://localhost/wrong refused: 404 Not Found "
                          "(no WebSocket endpoint at /wrong)")
    assert not client.established
    with pytest.raises(ConnectionDroppedError, match="failed earlier"):
        client.receive_data(b"more")


def test_subprotocol_not_offered_is_refused_with_400() -> None:
    # A client offering another subprotocol: our client sees the 400.
    client = WebSocketLayer("localhost", subprotocol="mqttv5")
    server = WebSocketServerLayer()
    client.start()
    with pytest.raises(WebSocketUpgradeError, match="'mqtt' must be offered") as server_side:
        server.receive_data(client.data_to_send())
    assert server_side.value.status == 400
    with pytest.raises(WebSocketUpgradeError) as client_side:
        client.receive_data(server.data_to_send())
    assert (client_side.value.status, client_side.value.reason) == (400, "Bad Request")
    assert "refused: 400 Bad Request" in str(client_side.value)
    assert "offered: mqttv5" in str(client_side.value)
    # A client offering no subprotocol at all (wsproto directly).
    raw = WSConnection(ConnectionType.CLIENT)
    server = WebSocketServerLayer()
    with pytest.raises(WebSocketUpgradeError, match="offered: none") as server_side:
        server.receive_data(raw.send(Request(host="localhost", target="/$iothub/websocket")))
    assert server_side.value.status == 400
    assert server.data_to_send().startswith(b"HTTP/1.1 400 Bad Request\r\n")


@pytest.mark.parametrize(
    ("request_bytes", "status"),
    [
        (b"POST /mqtt HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        (b"GET /mqtt HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n", 426),
        (b"GET /mqtt HTTP/1.1\r\nHost: h\r\n\r\n", 400),
        (b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00\r\n\r\n", 400),
        (b"GET /mqtt HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
         b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
         b"Sec-WebSocket-Protocol: mqtt\r\nContent-Length: 3\r\n\r\nabc", 400),
        (b"GET /" + b"a" * 20000, 431),
    ],
    ids=["post", "version-8", "plain-get", "mqtt-not-http", "with-body", "huge-head"],
)
def test_server_refuses_bad_upgrade_requests(request_bytes: bytes, status: int) -> None:
    server = WebSocketServerLayer()
    with pytest.raises(WebSocketUpgradeError) as caught:
        server.receive_data(request_bytes)
    assert caught.value.status == status
    refusal = server.data_to_send()
    assert refusal.startswith(f"HTTP/1.1 {status} ".encode())
    if status == 426:
        assert b"Sec-WebSocket-Version: 13\r\n" in refusal
    assert not server.established


@pytest.mark.parametrize(
    ("answer", "status", "reason", "excerpt"),
    [
        (b"HTTP/1.0 403 Forbidden\r\n\r\nGo   away\n", 403, "Forbidden", "(Go away)"),
        (b"HTTP/1.1 404 Nope\r\nContent-Length: 0\r\n\r\n", 404, "Nope", ""),
        (b"HTTP/1.1 401 \r\nContent-Length: 5\r\n\r\nno\nno", 401, "Unauthorized", "(no no)"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
         200, "OK", "(abc)"),
    ],
    ids=["body-to-eof", "own-reason", "no-reason", "chunked-200"],
)
def test_client_reports_refusals(answer: bytes, status: int, reason: str, excerpt: str) -> None:
    for step in (0, 1):
        client = WebSocketLayer("localhost", path="/mqtt")
        client.start()
        with pytest.raises(WebSocketUpgradeError) as caught:
            feed(client, answer, step)
            client.receive_data(b"")  # the refusal's body may run to EOF
        error = caught.value
        assert (error.status, error.reason) == (status, reason)
        assert str(error) == (f"WebSocket upgrade to wss://localhost/mqtt refused: "
                              f"{status} {reason} {excerpt}").rstrip()


def test_client_does_not_wait_for_a_huge_refusal_body() -> None:
    client = WebSocketLayer("localhost")
    client.start()
    head = b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 100000\r\n\r\n"
    with pytest.raises(WebSocketUpgradeError) as caught:
        client.receive_data(head + b"busy " * 1000)  # 5,000 of 100,000 bytes
    assert caught.value.status == 503
    assert str(caught.value).endswith("busy busy...)")


def test_client_rejects_an_answer_that_is_not_a_handshake() -> None:
    client = WebSocketLayer("localhost")
    client.start()
    with pytest.raises(WebSocketUpgradeError, match="not valid HTTP") as caught:
        client.receive_data(encode(ConnAck(False, 0)) * 8 + b"\r\n\r\n")  # an MQTT port
    assert caught.value.status is None
    client = WebSocketLayer("localhost")
    client.start()
    with pytest.raises(WebSocketUpgradeError, match="Bad accept token"):
        client.receive_data(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                            b"Connection: Upgrade\r\nSec-WebSocket-Accept: AAAA\r\n"
                            b"Sec-WebSocket-Protocol: mqtt\r\n\r\n")


@pytest.mark.parametrize(("selected", "shown"), [(None, "none"), ("mqttv3.1", "'mqttv3.1'")])
def test_client_requires_the_server_to_select_mqtt(selected: str | None, shown: str) -> None:
    client = WebSocketLayer("localhost", path="/mqtt")
    client.start()
    request = client.data_to_send()
    answer = (b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Accept: " + accept_token(request) + b"\r\n")
    if selected is not None:
        answer += b"Sec-WebSocket-Protocol: " + selected.encode() + b"\r\n"
    with pytest.raises(WebSocketUpgradeError) as caught:
        client.receive_data(answer + b"\r\n")
    error = caught.value
    assert (error.status, error.reason) == (101, "Switching Protocols")
    assert f"selected {shown}" in str(error) or f"subprotocol {shown}" in str(error)
    assert "MQTT-6.0.0-4" in str(error)
    assert not client.established


# ------------------------------------------------------------------ protocol errors


def test_text_frame_from_the_server_is_refused_with_1003() -> None:
    client, server = connected_pair()
    with pytest.raises(ConnectionDroppedError, match="the server sent a text frame") as caught:
        client.receive_data(frame(0x2, b"\x20\x02") + frame(0x1, b"hello"))
    assert "1003" in str(caught.value)
    assert server.receive_data(client.data_to_send()) == b""
    assert server.closed and server.close_code == 1003
    with pytest.raises(ConnectionDroppedError, match="failed earlier"):
        client.send(b"\xc0\x00")


def test_text_frame_from_the_client_is_refused_with_1003() -> None:
    _, server = connected_pair()
    with pytest.raises(ConnectionDroppedError, match="the client sent a text frame"):
        server.receive_data(frame(0x1, b"{}", mask=b"abcd"))
    [(fin, opcode, masked, payload)] = parse_frames(server.data_to_send())
    assert (fin, opcode, masked, payload[:2]) == (True, 0x8, False, (1003).to_bytes(2, "big"))


def test_unmasked_frame_from_a_client_is_a_protocol_error() -> None:
    client, server = connected_pair()
    with pytest.raises(ConnectionDroppedError, match=r"invalid frame from the client.*1002"):
        server.receive_data(frame(0x2, b"\xc0\x00"))  # clients must mask
    assert client.receive_data(server.data_to_send()) == b""
    assert client.closed and client.close_code == 1002


# ------------------------------------------------------------------ real sockets


class Wire:
    """A blocking socket under a ``Stack``; every wait has a deadline (tests only).

    ``on_app`` receives the application bytes the stack hands up.
    """

    def __init__(self, sock: socket.socket, stack: Stack,
                 on_app: Callable[[bytes], None] | None = None) -> None:
        self.sock = sock
        self.stack = stack
        self.on_app = on_app
        self.eof = False

    def flush(self) -> None:
        # Stack has no public flush: bytes a layer queued on its own (a ping, a
        # close) move down on the next send(); an empty one moves just them.
        self.stack.send(b"")
        data = self.stack.data_to_send()
        if data:
            self.sock.sendall(data)

    def pump(self, done: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        self.flush()
        while not done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            if self.eof:
                raise AssertionError(f"connection ended while waiting for {what}")
            self.sock.settimeout(remaining)
            try:
                raw = self.sock.recv(65536)
            except TimeoutError:
                continue
            self.eof = not raw
            app = self.stack.receive_data(raw)
            if app and self.on_app is not None:
                self.on_app(app)
            self.flush()

    def establish(self, timeout: float = TIMEOUT) -> None:
        self.stack.start()
        self.pump(lambda: self.stack.established, "the TLS and WebSocket handshakes", timeout)


@pytest.fixture
def sockets() -> Iterator[Callable[[str, int], socket.socket]]:
    made: list[socket.socket] = []

    def connect(host: str, port: int) -> socket.socket:
        sock = socket.create_connection((host, port), timeout=TIMEOUT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        made.append(sock)
        return sock

    yield connect
    for sock in made:
        sock.close()


def wss_stack(ca: CertAuthority, path: str, subprotocol: str = "mqtt") -> Stack:
    return Stack([
        TLSLayer(make_client_context(server_verification_cert=ca.ca_cert_pem), "localhost"),
        WebSocketLayer("localhost", path=path, subprotocol=subprotocol),
    ])


@pytest.mark.mosquitto
@pytest.mark.parametrize("path", ["/mqtt", "/$iothub/websocket"])
def test_mqtt_session_with_mosquitto_over_tls_websocket(
    mosquitto: Mosquitto, test_ca: CertAuthority,
    sockets: Callable[[str, int], socket.socket], path: str,
) -> None:
    conn = ClientConnection()
    events: list[Event] = []
    stack = wss_stack(test_ca, path)
    ws = stack.layers[-1]
    assert isinstance(ws, WebSocketLayer)

    def on_app(data: bytes) -> None:
        events.extend(conn.receive_data(data, now=time.monotonic()))
        stack.send(conn.data_to_send())  # acks the engine queued

    wire = Wire(sockets(mosquitto.host, mosquitto.ws_port), stack, on_app)
    wire.establish()
    assert (ws.status, ws.reason) == (101, "Switching Protocols")

    def have(kind: type[Event], n: int = 1) -> Callable[[], bool]:
        return lambda: sum(isinstance(e, kind) for e in events) >= n

    def engine_send() -> None:
        stack.send(conn.data_to_send())

    topic = f"iotdev/ws/{unique_name()}"
    events += conn.connect(unique_name("ws"), now=time.monotonic())
    engine_send()
    wire.pump(have(Connected), "CONNACK")
    conn.subscribe(topic, 1, now=time.monotonic())
    engine_send()
    wire.pump(have(Subscribed), "SUBACK")
    assert [e.return_codes for e in events if isinstance(e, Subscribed)] == [(1,)]
    # The second arrives as one frame in ~4 KB reads, 100 ms apart: mosquitto 2.0.11's
    # libwebsockets writes big frames a piece per service loop (mosquitto #1390).
    payloads = [b"hello over wss", bytes(range(256)) * 48]
    tokens = [conn.publish(topic, p, 1, now=time.monotonic()) for p in payloads]
    engine_send()
    wire.pump(lambda: have(MessageReceived, 2)() and have(PublishAcked, 2)(),
              "both messages back and both PUBACKs")
    received = [e for e in events if isinstance(e, MessageReceived)]
    assert [(m.topic, m.payload, m.qos) for m in received] == [(topic, p, 1) for p in payloads]
    assert sorted(e.token for e in events if isinstance(e, PublishAcked)) == sorted(tokens)

    ws.ping(b"iotdev")
    wire.pump(lambda: ws.last_pong == b"iotdev", "the broker's pong")

    conn.disconnect(now=time.monotonic())
    engine_send()
    wire.pump(lambda: stack.closed, "the broker closing after DISCONNECT")
    conn.connection_lost()


@pytest.mark.mosquitto
def test_close_frame_answered_by_mosquitto(
    mosquitto: Mosquitto, test_ca: CertAuthority, sockets: Callable[[str, int], socket.socket],
) -> None:
    stack = wss_stack(test_ca, "/mqtt")
    ws = stack.layers[-1]
    assert isinstance(ws, WebSocketLayer)
    reader = PacketReader("client")
    packets: list[Packet] = []
    wire = Wire(sockets(mosquitto.host, mosquitto.ws_port), stack,
                lambda data: packets.extend(reader.feed(data)))
    wire.establish()
    stack.send(encode(Connect(unique_name("ws-close"))))
    wire.pump(lambda: bool(packets), "CONNACK")
    assert packets == [ConnAck(False, 0)]
    ws.close()
    wire.pump(lambda: ws.closed, "the broker's close frame")
    assert ws.close_code == 1000


@pytest.mark.mosquitto
def test_mosquitto_hangs_up_on_an_unknown_subprotocol(
    mosquitto: Mosquitto, test_ca: CertAuthority, sockets: Callable[[str, int], socket.socket],
) -> None:
    """libwebsockets answers no HTTP error: it just closes the connection."""
    wire = Wire(sockets(mosquitto.host, mosquitto.ws_port), wss_stack(test_ca, "/mqtt", "foo"))
    with pytest.raises(ConnectionDroppedError, match="during the WebSocket handshake"):
        wire.establish()


class _NotFound(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.server.requests.append(self.requestline)  # type: ignore[attr-defined]
        self.send_error(404)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def http_404() -> Iterator[tuple[int, list[str]]]:
    """An ``http.server`` on loopback answering every GET with 404 Not Found."""
    server = HTTPServer(("127.0.0.1", 0), _NotFound)
    server.requests = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              name="http-404", daemon=True)
    thread.start()
    try:
        yield server.server_address[1], server.requests  # type: ignore[attr-defined]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(TIMEOUT)
        assert not thread.is_alive()


def test_refusal_from_a_real_http_server(
    http_404: tuple[int, list[str]], sockets: Callable[[str, int], socket.socket],
) -> None:
    port, requests = http_404
    wire = Wire(sockets("127.0.0.1", port), Stack([WebSocketLayer("127.0.0.1", path="/mqtt")]))
    with pytest.raises(WebSocketUpgradeError) as caught:
        wire.establish()
    assert (caught.value.status, caught.value.reason) == (404, "Not Found")
    assert str(caught.value).startswith(
        "WebSocket upgrade to wss://127.0.0.1/mqtt refused: 404 Not Found (<!DOCTYPE")
    assert requests == ["GET /mqtt HTTP/1.1"]


@pytest.fixture
def silent_server() -> Iterator[tuple[int, list[bytes]]]:
    """Accepts one connection, reads the request head, hangs up without a word."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(TIMEOUT)
    seen: list[bytes] = []
    failures: list[BaseException] = []

    def serve() -> None:
        try:
            conn, _ = listener.accept()
            with conn:
                conn.settimeout(TIMEOUT)
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    head += chunk
                seen.append(head)
        except BaseException as exc:  # reported by the fixture
            failures.append(exc)

    thread = threading.Thread(target=serve, name="silent-server", daemon=True)
    thread.start()
    try:
        yield listener.getsockname()[1], seen
    finally:
        thread.join(TIMEOUT)
        listener.close()
        assert not thread.is_alive()
        assert not failures, failures


def test_server_hanging_up_during_the_handshake(
    silent_server: tuple[int, list[bytes]], sockets: Callable[[str, int], socket.socket],
) -> None:
    port, seen = silent_server
    wire = Wire(sockets("127.0.0.1", port), Stack([WebSocketLayer("127.0.0.1", path="/mqtt")]))
    with pytest.raises(ConnectionDroppedError) as caught:
        wire.establish()
    assert str(caught.value) == ("WebSocket: the server closed the connection during the "
                                 "WebSocket handshake with wss://127.0.0.1/mqtt")
    assert wire.stack.closed
    [head] = seen
    assert head.startswith(b"GET /mqtt HTTP/1.1\r\n") and b"Sec-WebSocket-Protocol: mqtt" in head
