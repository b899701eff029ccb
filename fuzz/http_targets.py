"""Fuzz target ``http-response``: ``HTTPConnection.request()`` reading what a server sends.

``iotdev/transport/_http.py`` runs "flows": generators that yield I/O
operations.  This target is the driver: it answers ``Connect``, ``Send``,
``Close``, ``Progress`` and ``Deadline`` with ``None`` (keeping
``conn.handle`` as the real drivers do, so the keep-alive path runs), and
``Receive`` with the next chunk of the server's bytes, then ``b""`` (EOF)
forever.  The first connection carries the whole byte stream; a connection
opened after it reads EOF at once.

Input: byte 0 is the set-up (bits 0-1: ``max_body`` of 1 MiB, 0, 10 or 100;
bit 2: two requests on the same ``HTTPConnection``, the second reading where
the first stopped; bit 3: POST with a body instead of GET); the rest is what
the server sends.

For any input:

1. every request ends with an ``HTTPResponse`` or raises
   ``MalformedResponseError`` / ``ConnectionDroppedError``, nothing else, and
   the flow yields only the operations of the module, a bounded number of them;
2. whole, byte by byte and in random chunks (sizes from the input) give the
   same responses, the same error class, the same bytes sent and the same
   connects and closes;
3. a response body is never over ``max_body``; after a response the
   connection is either closed or ready for the next request (h11 ``IDLE`` on
   both sides).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

import h11

from iotdev._errors import ConnectionDroppedError
from iotdev.transport._endpoint import Endpoint
from iotdev.transport._http import (
    DEFAULT_MAX_BODY,
    Close,
    Connect,
    Deadline,
    HTTPConnection,
    HTTPRequest,
    HTTPResponse,
    MalformedResponseError,
    Progress,
    Receive,
    Send,
)

from .checks import Chunk, breach, short, splits
from .registry import register

__all__: list[str] = []

_LIMITS = (DEFAULT_MAX_BODY, 0, 10, 100)
_MAX_STEPS = 100_000
_HOST = "hub.example.net"


@dataclass
class _Outcome:
    responses: list[tuple[int, str, list[tuple[str, str]], bytes]] = field(default_factory=list)
    error: tuple[str, str] | None = None
    sent: bytearray = field(default_factory=bytearray)
    ops: list[str] = field(default_factory=list)


def _requests(config: int) -> list[HTTPRequest]:
    count = 2 if config & 4 else 1
    out = []
    for index in range(count):
        if config & 8:
            out.append(HTTPRequest("POST", f"/devices/d/files?api-version=1&n={index}", _HOST,
                                   [("Content-Type", "application/json")],
                                   b'{"blobName": "x"}', progress=(0, 17)))
        else:
            out.append(HTTPRequest("GET", f"/twins/d?sig=secret&n={index}", _HOST))
    return out


class _Network:
    """The server side: the chunks on the first connection, EOF on any other."""

    def __init__(self, chunks: Sequence[Chunk]) -> None:
        self.chunks = list(chunks)
        self.next = 0
        self.connections = 0

    def receive(self) -> bytes:
        if self.connections != 1 or self.next >= len(self.chunks):
            return b""
        chunk = self.chunks[self.next]
        self.next += 1
        return bytes(chunk)


def _drive(config: int, chunks: Sequence[Chunk], data: bytes) -> _Outcome:
    limit = _LIMITS[config & 3]
    conn = HTTPConnection(Endpoint(_HOST, 443), max_body=limit)
    net = _Network(chunks)
    out = _Outcome()
    steps = 0
    for request in _requests(config):
        flow = conn.request(request)
        value: object = None
        while True:
            try:
                op = flow.send(value)
            except StopIteration as stop:
                response = stop.value
                break
            except (MalformedResponseError, ConnectionDroppedError) as exc:
                out.error = (type(exc).__name__, str(exc))
                return out
            except Exception as exc:
                raise breach("unexpected-exception",
                             f"{type(exc).__name__} escaped the flow: {exc}", data) from exc
            steps += 1
            if steps > _MAX_STEPS:
                raise breach("flow-loop", f"over {_MAX_STEPS} operations; last {op!r}", data)
            value = None
            if isinstance(op, Receive):
                # Not logged: how many reads a response takes depends on the split.
                value = net.receive()
                continue
            if isinstance(op, Send):
                out.sent += op.data
            elif isinstance(op, Connect):
                net.connections += 1
                conn.handle = ("fake socket", net.connections)
            elif isinstance(op, Close):
                conn.handle = None
            elif not isinstance(op, Progress | Deadline):
                raise breach("operation", f"the flow yielded {op!r}", data)
            out.ops.append(type(op).__name__.lower())
        _check_response(conn, response, limit, data)
        out.responses.append((response.status, response.reason, response.headers,
                              response.body))
    return out


def _check_response(conn: HTTPConnection, response: object, limit: int, data: bytes) -> None:
    if not isinstance(response, HTTPResponse):
        raise breach("result-type", f"the flow returned {short(response)}", data)
    if len(response.body) > limit:
        raise breach("body-bound", f"a body of {len(response.body)} bytes, max_body is {limit}",
                     data)
    if not 200 <= response.status <= 999 or not all(
        type(k) is str and type(v) is str and k == k.lower() for k, v in response.headers
    ):
        raise breach("response", f"{short(response)}", data)
    if conn.handle is not None:
        h = conn.h11
        if h is None or h.our_state is not h11.IDLE or h.their_state is not h11.IDLE:
            raise breach("keepalive-state", "the connection stays open but h11 is in "
                         f"{h and (h.our_state, h.their_state)}", data)


def _part(outcome: _Outcome, what: str) -> object:
    """What must not depend on the split.  Of an error, the class only: h11's
    wording differs with where the bytes break (``b"\\r\\n"`` then EOF is "no
    response line received" whole, "illegal request line" byte by byte)."""
    if what == "error class":
        return outcome.error and outcome.error[0]
    return getattr(outcome, what)


def _label(config: int, outcome: _Outcome) -> str:
    statuses = "+".join(str(r[0] // 100) + "xx" for r in outcome.responses) or "-"
    text = f"{'POST' if config & 8 else 'GET'} x{2 if config & 4 else 1} {statuses}"
    if outcome.error is not None:
        # "<request>: bad response from <host>: <h11's words>: <the bytes>", or
        # "<request>: <our words>": keep the words, not the bytes or numbers.
        message = outcome.error[1]
        reason = message.split(f"{_HOST}:443: ", 1)[1] if "bad response from" in message \
            else message.split(": ", 1)[-1]
        reason = re.split(r"[:(\[']", reason)[0].strip()
        reason = re.sub(r"[0-9]+", "#", reason)[:60]
        text += f" | {outcome.error[0]}: {reason}"
    if "close" in outcome.ops:
        text += " close"
    return text


_RESPONSES = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
    b"HTTP/1.1 204 No Content\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX: y\r\n\r\n",
    b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 3\r\n\r\nabc",
    b"HTTP/1.0 200 OK\r\n\r\nbody until the connection closes",
    b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx",
    b"HTTP/1.1 429 Too Many Requests\r\nRetry-After: 3\r\nContent-Length: 0\r\n\r\n",
    b"HTTP/1.1 404 Not Found\r\nContent-Length: 38\r\n\r\n"
    b'{"Message":"ErrorCode:DeviceNotFound"}',
    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nab",
    b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab",
    b"HTTP/1.1 200 OK\r\nContent-Length: x\r\n\r\n",
    b"HTTP/1.1 200\r\n\r\n", b"HTTP/1.1 20 OK\r\n\r\n", b"HTTP/2 200\r\n\r\n", b"garbage\r\n\r\n",
    b"HTTP/1.1 200 OK\nContent-Length: 0\n\n", b"HTTP/1.1 200 OK\r\nX:\x00\r\n\r\n",
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n",
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nfffffffffffffffff\r\n",
)


def _seeds() -> list[bytes]:
    out = []
    for config in (0, 1, 2, 3, 8):
        out += [bytes((config,)) + r for r in _RESPONSES]
    keep = _RESPONSES[0] + _RESPONSES[2]
    for config in (4, 6, 12):
        out += [bytes((config,)) + keep, bytes((config,)) + _RESPONSES[0],
                bytes((config,)) + _RESPONSES[6] + _RESPONSES[0],
                bytes((config,)) + _RESPONSES[0] + b"HTTP/1.1 200 OK\r\nContent-Le"]
    return out


@register(
    "http-response",
    "HTTPConnection.request() flow fed a server's bytes: response or typed error",
    shared_seeds=False,
    seeds=_seeds,
    instrument=("iotdev.transport._http", "iotdev.transport._layer", "h11"),
    tokens=(b"HTTP/1.1 ", b"HTTP/1.0 ", b" 200 OK", b"\r\n", b"\r\n\r\n", b"Content-Length: ",
            b"Transfer-Encoding: chunked", b"Connection: close", b"Connection: keep-alive",
            b"0\r\n\r\n", b"100 Continue", b"101 ", b"204 ", b"304 ", b": ", b"\n",
            b"Retry-After: ", b";ext", b"ffffffff"),
)
def http_response(data: bytes) -> str:
    config = data[0] if data else 0
    body = data[1:]
    outcomes: list[tuple[str, _Outcome]] = []
    for name, chunks in splits(body, buffer_types=False, empty_chunks=False):
        outcomes.append((name, _drive(config, chunks, data)))
    whole = outcomes[0][1]
    for name, other in outcomes[1:]:
        for what in ("responses", "error class", "sent", "ops"):
            if _part(other, what) != _part(whole, what):
                raise breach("split-invariance",
                             f"{what} differ between whole and {name}: "
                             f"{short(_part(whole, what))} vs {short(_part(other, what))}",
                             data)
    return _label(config, whole)
