"""MQTT over WebSocket as a sans-IO layer (wsproto), client and server side.

Theory of operation: wsproto does the HTTP/1.1 upgrade and the framing; this
layer adds what MQTT needs on top [MQTT-6.0]:

* the client offers the subprotocol ``mqtt`` and insists that the server select
  it [MQTT-6.0.0-3, MQTT-6.0.0-4]; the server side refuses requests that do not
  offer it (400) and, when given a path, requests for any other path (404);
* MQTT bytes go out as binary frames (one frame per ``send()``; clients mask,
  servers do not) and come back as a byte stream: frames may split or join MQTT
  packets freely and messages may be fragmented [MQTT-6.0.0-2], so the payload
  of every binary frame is handed up as it arrives;
* a text frame is a protocol error [MQTT-6.0.0-1]: close 1003, then
  ``ConnectionDroppedError``; so is any frame wsproto cannot parse (close with
  wsproto's code, usually 1002);
* pings are answered at once; a close frame from the peer is answered and sets
  ``closed``; ``receive_data(b"")`` (EOF) sets ``closed`` too.

Two wsproto gaps are covered here.  Its client drops the reason phrase of a
refusal (``RejectConnection`` has only the status), so the client keeps the raw
status line.  Its server drops whatever follows the upgrade request in the same
read (the bytes left in h11's buffer never reach the frame parser), so the
server side feeds wsproto the request head only, up to the blank line found with
h11's own rule, and hands the rest to the frame parser after accepting.

Neither side touches a socket or a clock: a driver owns both (a handshake
deadline is the driver's ``ConnectTimeoutError``).  wsproto draws the handshake
nonce and the client's frame masks from ``os.urandom`` and offers no way to
inject them, so client bytes are not reproducible; server bytes are.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from http import HTTPStatus

from wsproto import ConnectionType, WSConnection
from wsproto.connection import ConnectionState
from wsproto.events import (
    AcceptConnection,
    BytesMessage,
    CloseConnection,
    Event,
    Ping,
    Pong,
    RejectConnection,
    RejectData,
    Request,
    TextMessage,
)
from wsproto.frame_protocol import CloseReason
from wsproto.utilities import LocalProtocolError, RemoteProtocolError

from .._errors import ConnectionDroppedError, WebSocketUpgradeError
from ._layer import Layer

__all__ = ["DEFAULT_PATH", "WebSocketLayer", "WebSocketServerLayer"]

DEFAULT_PATH = "/$iothub/websocket"
"""The path IoT Hub serves MQTT over WebSocket on."""

MAX_REJECT_BODY = 4096
"""Bytes of a refusal's body kept (the rest is not waited for)."""

MAX_REQUEST_HEAD = 16384
"""Largest upgrade request head the server side accepts (h11's own default)."""

_EXCERPT = 200  # characters of a refusal's body quoted in the error message
_MAX_STATUS_LINE = 1024
_STATUS_LINE = re.compile(rb"HTTP/\d\.\d[ \t]+(\d{3})(?:[ \t]([^\r\n]*))?")
_HEAD_END = re.compile(rb"\n\r?\n")  # how h11 finds the end of a message head


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return ""


def _excerpt(body: bytes) -> str:
    text = " ".join(body.decode("utf-8", "replace").split())
    return text if len(text) <= _EXCERPT else text[:_EXCERPT].rstrip() + "..."


class _WebSocket(Layer):
    """What both sides share: the data phase, close, ping."""

    _peer = "the peer"

    def __init__(self, connection_type: ConnectionType) -> None:
        self._ws = WSConnection(connection_type)
        self._out = bytearray()
        self._pending = bytearray()  # send() before the handshake finished
        self._error: Exception | None = None
        self.established = False
        self.closed = False
        #: The code of the peer's close frame (``None``: none received).
        self.close_code: int | None = None
        #: The reason text of the peer's close frame.
        self.close_reason: str | None = None
        #: The payload of the last pong received (``None``: none yet).
        self.last_pong: bytes | None = None

    # ------------------------------------------------------------- the contract

    def send(self, data: bytes) -> None:
        """Queue MQTT bytes as one binary frame (held until the handshake is done).

        Raises:
            ConnectionDroppedError: the WebSocket is closing or closed, or
                failed earlier.
        """
        self._check_usable()
        if not data:
            return
        if not self.established:
            self._pending += data
            return
        state = self._ws.state
        if state is not ConnectionState.OPEN:
            raise ConnectionDroppedError(
                f"WebSocket: cannot send {len(data)} bytes, the connection is "
                f"{state.name.lower().replace('_', ' ')}")
        self._out += self._ws.send(BytesMessage(data=bytes(data)))

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def close(self) -> None:
        """Queue a normal close frame (1000), once, if the WebSocket is open.

        Before the handshake is done there is nothing to close cleanly: the
        driver just closes the socket.
        """
        if self.established and self._error is None and self._ws.state is ConnectionState.OPEN:
            self._out += self._ws.send(CloseConnection(code=CloseReason.NORMAL_CLOSURE))

    def ping(self, payload: bytes = b"") -> None:
        """Queue a ping; the answer shows up as ``last_pong``.

        Args:
            payload: at most 125 bytes, echoed by the peer's pong.

        Raises:
            ValueError: ``payload`` is longer than 125 bytes.
            ConnectionDroppedError: the WebSocket is not open (handshake not
                done, closing, closed or failed).
        """
        if len(payload) > 125:
            raise ValueError(f"a ping payload is at most 125 bytes, got {len(payload)}")
        self._check_usable()
        state = self._ws.state
        if not self.established or state is not ConnectionState.OPEN:
            raise ConnectionDroppedError(
                f"WebSocket: cannot ping, the connection is "
                f"{state.name.lower().replace('_', ' ')}")
        self._out += self._ws.send(Ping(payload=bytes(payload)))

    # ---------------------------------------------------------------- internals

    def _check_usable(self) -> None:
        if self._error is not None:
            raise ConnectionDroppedError(
                f"WebSocket: the connection failed earlier: {self._error}") from self._error

    def _fail(self, error: Exception) -> Exception:
        """Remember ``error`` (every later call fails) and return it for raising."""
        self._error = error
        return error

    def _open(self) -> None:
        self.established = True
        if self._pending:
            data = bytes(self._pending)
            self._pending.clear()
            self.send(data)

    def _eof(self) -> bytes:
        self.closed = True
        return b""

    def _feed(self, data: bytes) -> bytes:
        """Bytes for wsproto once the handshake is behind us."""
        if self.closed:
            return b""  # after the peer's close or EOF: nothing more to read
        if not data:
            return self._eof()
        self._ws.receive_data(data)
        return self._process(self._ws.events())

    def _process(self, events: Iterable[Event]) -> bytes:
        """Handle wsproto's events; return the payload of the binary frames."""
        payload = bytearray()
        for event in events:
            if isinstance(event, BytesMessage):
                payload += event.data
            elif isinstance(event, Ping):
                if self._ws.state is ConnectionState.OPEN:
                    self._out += self._ws.send(event.response())
            elif isinstance(event, Pong):
                self.last_pong = bytes(event.payload)
            elif isinstance(event, TextMessage):
                raise self._protocol_error(
                    CloseReason.UNSUPPORTED_DATA, "text frames are not MQTT",
                    f"{self._peer} sent a text frame; MQTT travels in binary frames only "
                    f"[MQTT-6.0.0-1]")
            elif isinstance(event, CloseConnection):
                if self._ws.state in (ConnectionState.OPEN, ConnectionState.LOCAL_CLOSING):
                    # No close frame arrived: wsproto reports a frame it could
                    # not parse this way, without changing its state.
                    raise self._protocol_error(
                        event.code, event.reason or "protocol error",
                        f"invalid frame from {self._peer}: {event.reason}")
                self.close_code = event.code
                self.close_reason = event.reason
                if self._ws.state is ConnectionState.REMOTE_CLOSING:
                    self._out += self._ws.send(event.response())
                self.closed = True
                break
            else:
                self._handshake_event(event)
        return bytes(payload)

    def _protocol_error(self, code: int, close_reason: str, what: str) -> Exception:
        if self._ws.state is ConnectionState.OPEN:
            self._out += self._ws.send(CloseConnection(code=code, reason=close_reason))
        return self._fail(ConnectionDroppedError(
            f"WebSocket protocol error: {what} (closing with {int(code)})"))

    def _handshake_event(self, event: Event) -> None:  # pragma: no cover - per side
        raise NotImplementedError


class WebSocketLayer(_WebSocket):
    """The client side: HTTP upgrade offering ``mqtt``, then binary frames.

    Args:
        host: the server's host name, sent as ``Host``.
        path: the request target (IoT Hub: ``/$iothub/websocket``).
        subprotocol: the subprotocol to offer and require.
        extra_headers: more request headers, e.g. ``[(b"User-Agent", b"...")]``.

    Attributes:
        established: the server accepted the upgrade with our subprotocol.
        closed: a close frame or EOF arrived.
        close_code, close_reason: from the server's close frame, if any.
        last_pong: the payload of the last pong received.
        status, reason: the status line of the server's answer, once read.
    """

    _peer = "the server"

    def __init__(
        self,
        host: str,
        path: str = DEFAULT_PATH,
        subprotocol: str = "mqtt",
        extra_headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(ConnectionType.CLIENT)
        self.host = host
        self.path = path
        self.subprotocol = subprotocol
        self.extra_headers = list(extra_headers or [])
        self.url = f"wss://{host}{path}"
        self.status: int | None = None
        self.reason = ""
        self._started = False
        self._status_line = bytearray()
        self._reject_status: int | None = None
        self._reject_body = bytearray()

    def start(self) -> None:
        """Queue the upgrade request (once)."""
        if self._started:
            return
        self._started = True
        self._out += self._ws.send(Request(
            host=self.host, target=self.path, subprotocols=[self.subprotocol],
            extra_headers=self.extra_headers,
        ))

    def receive_data(self, data: bytes) -> bytes:
        """Bytes from below; returns the MQTT bytes they complete.

        Raises:
            WebSocketUpgradeError: the server refused the upgrade (``status``,
                ``reason``; the start of its body is quoted), answered with
                something that is not a valid handshake, or did not select our
                subprotocol.
            ConnectionDroppedError: EOF during the handshake; a text frame; a
                frame wsproto cannot parse; or an earlier failure.
        """
        self._check_usable()
        if self.established:
            return self._feed(data)
        if not data:
            return self._eof_in_handshake()
        self._note_status_line(data)
        try:
            self._ws.receive_data(data)
            return self._process(self._ws.events())
        except RemoteProtocolError as exc:
            raise self._fail(self._bad_answer(str(exc))) from exc

    def _note_status_line(self, data: bytes) -> None:
        """Keep the first line of the answer: wsproto drops the reason phrase."""
        line = self._status_line
        if self.status is not None or len(line) > _MAX_STATUS_LINE:
            return
        line += data[: _MAX_STATUS_LINE + 1 - len(line)]
        match = _STATUS_LINE.match(line)
        if match is not None and b"\n" in line:
            self.status = int(match[1])
            self.reason = (match[2] or b"").decode("latin-1").strip() or _phrase(self.status)

    def _status_reason(self, status: int) -> tuple[int, str]:
        if self.status == status:
            return status, self.reason
        return status, _phrase(status)

    def _bad_answer(self, problem: str) -> WebSocketUpgradeError:
        if problem.startswith("unrecognized subprotocol"):
            chosen = problem.removeprefix("unrecognized subprotocol").strip()
            problem = (f"the server selected the subprotocol {chosen!r}, not the "
                       f"{self.subprotocol!r} we offered [MQTT-6.0.0-4]")
        elif problem == "Bad HTTP message":
            problem = "the answer is not valid HTTP/1.1"
        status = f" ({self.status} {self.reason})".rstrip() if self.status else ""
        return WebSocketUpgradeError(
            f"WebSocket upgrade to {self.url} failed{status}: {problem}",
            self.status, self.reason)

    def _handshake_event(self, event: Event) -> None:
        if isinstance(event, AcceptConnection):
            if event.subprotocol != self.subprotocol:
                chosen = "none" if event.subprotocol is None else repr(event.subprotocol)
                self._out += self._ws.send(CloseConnection(
                    code=CloseReason.PROTOCOL_ERROR, reason=f"{self.subprotocol} required"))
                raise self._fail(self._bad_answer(
                    f"the server selected {chosen} as subprotocol; MQTT needs "
                    f"{self.subprotocol!r} [MQTT-6.0.0-4]"))
            self._open()
        elif isinstance(event, RejectConnection):
            self._reject_status = event.status_code
            if not event.has_body:  # an informational status other than 101
                raise self._refused()
        elif isinstance(event, RejectData):
            room = MAX_REJECT_BODY - len(self._reject_body)
            self._reject_body += event.data[:room]
            if event.body_finished or len(event.data) >= room:
                raise self._refused()

    def _refused(self) -> Exception:
        assert self._reject_status is not None
        status, reason = self._status_reason(self._reject_status)
        body = _excerpt(bytes(self._reject_body))
        message = f"WebSocket upgrade to {self.url} refused: {status} {reason}".rstrip()
        if body:
            message += f" ({body})"
        return self._fail(WebSocketUpgradeError(message, status, reason))

    def _eof_in_handshake(self) -> bytes:
        self.closed = True
        if self._reject_status is not None:
            # A refusal whose body runs to EOF (or was cut short): report it.
            try:
                self._ws.receive_data(None)
                for event in self._ws.events():
                    if isinstance(event, RejectData):
                        self._reject_body += event.data[: MAX_REJECT_BODY - len(self._reject_body)]
            except RemoteProtocolError:
                pass
            raise self._refused()
        if not self._started:
            raise self._fail(ConnectionDroppedError(
                f"WebSocket: the connection to {self.host} ended before the handshake began"))
        answered = f" after {self.status} {self.reason}".rstrip() if self.status else ""
        raise self._fail(ConnectionDroppedError(
            f"WebSocket: the server closed the connection during the WebSocket handshake "
            f"with {self.url}{answered}"))


class WebSocketServerLayer(_WebSocket):
    """The server side (for the IoT Hub emulator): accept an upgrade that offers
    ``subprotocol`` (and asks for ``path``), selecting it; then binary frames.

    Args:
        subprotocol: the subprotocol the client must offer [MQTT-6.0.0-3].
        path: the only request path served (the query string is ignored);
            ``None`` serves any path, as mosquitto does.

    Attributes:
        established: the upgrade was accepted.
        target: the request target (path and query) of the accepted request.
        headers: its headers, lower-case names (wsproto keeps ``Host``,
            ``Sec-WebSocket-Protocol`` and ``Sec-WebSocket-Extensions`` apart).
        closed, close_code, close_reason, last_pong: as for the client.
    """

    _peer = "the client"

    def __init__(self, subprotocol: str = "mqtt", path: str | None = None) -> None:
        super().__init__(ConnectionType.SERVER)
        self.subprotocol = subprotocol
        self.path = path
        self.target: str | None = None
        self.headers: list[tuple[bytes, bytes]] = []
        self._head = bytearray()
        self._rest = b""

    def receive_data(self, data: bytes) -> bytes:
        """Bytes from the client; returns the MQTT bytes they complete.

        Raises:
            WebSocketUpgradeError: the request was refused (the refusal is
                queued in ``data_to_send()``): not a valid upgrade request
                (400, or 426 for another WebSocket version), another path (404),
                the subprotocol not offered (400), a request with a body (400),
                a head over 16 KiB (431).
            ConnectionDroppedError: EOF before the request was complete; a text
                frame; a frame wsproto cannot parse; or an earlier failure.
        """
        self._check_usable()
        if self.established:
            return self._feed(data)
        if not data:
            self.closed = True
            raise self._fail(ConnectionDroppedError(
                "WebSocket: the client closed the connection during the WebSocket handshake "
                f"({len(self._head)} bytes of its upgrade request received)"))
        self._head += data
        end = _HEAD_END.search(self._head)
        if end is None:
            if len(self._head) > MAX_REQUEST_HEAD:
                raise self._refuse(431, f"the request head exceeds {MAX_REQUEST_HEAD} bytes")
            return b""
        head = bytes(self._head[: end.end()])
        self._rest = bytes(self._head[end.end():])
        self._head.clear()
        try:
            self._ws.receive_data(head)
            return self._process(self._ws.events())
        except RemoteProtocolError as exc:
            hint = exc.event_hint
            if isinstance(hint, RejectConnection):
                raise self._refuse(hint.status_code, f"not a WebSocket upgrade request: {exc}",
                                   hint.headers) from exc
            raise self._refuse(400, f"not a WebSocket upgrade request: {exc}") from exc

    def _handshake_event(self, event: Event) -> None:
        if not isinstance(event, Request):  # pragma: no cover - servers get requests only
            return
        path = event.target.partition("?")[0]
        if self.path is not None and path != self.path:
            raise self._refuse(404, f"no WebSocket endpoint at {path}")
        if any(name.lower() == b"transfer-encoding"
               or (name.lower() == b"content-length" and value.strip() != b"0")
               for name, value in event.extra_headers):
            raise self._refuse(400, "an upgrade request has no body")
        if self.subprotocol not in event.subprotocols:
            offered = ", ".join(event.subprotocols) or "none"
            raise self._refuse(
                400, f"the WebSocket subprotocol {self.subprotocol!r} must be offered "
                f"(offered: {offered}) [MQTT-6.0.0-3]")
        try:
            self._out += self._ws.send(AcceptConnection(subprotocol=self.subprotocol))
        except LocalProtocolError as exc:  # pragma: no cover - checked just above
            raise self._refuse(400, str(exc)) from exc
        self.target = event.target
        self.headers = [(bytes(k).lower(), bytes(v)) for k, v in event.extra_headers]
        self._open()
        rest, self._rest = self._rest, b""
        if rest:  # frames that came with the request: wsproto would drop them
            self._ws.receive_data(rest)

    def _refuse(
        self, status: int, detail: str, headers: Iterable[tuple[bytes, bytes]] = ()
    ) -> Exception:
        """Queue an HTTP refusal with a short text body; return the error to raise."""
        reason = _phrase(status)
        body = f"{detail}\n".encode()
        lines = [
            f"HTTP/1.1 {status} {reason}".encode("ascii"),
            b"Content-Type: text/plain; charset=utf-8",
            b"Content-Length: " + str(len(body)).encode("ascii"),
            b"Connection: close",
            *(bytes(name) + b": " + bytes(value) for name, value in headers
              if bytes(name).lower() not in (b"content-length", b"connection")),
        ]
        self._out += b"\r\n".join(lines) + b"\r\n\r\n" + body
        return self._fail(WebSocketUpgradeError(
            f"WebSocket upgrade refused: {status} {reason}: {detail}", status, reason))
