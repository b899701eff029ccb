"""A blocking byte pipe for probes: one socket under the sans-IO layer stack.

The conformance checker writes arbitrary bytes (legal MQTT or not) and reads
whatever comes back, always against a deadline.  ``RawConnection`` owns the
socket (sockets live only in ``iotdev.transport``), runs the optional TLS and
WebSocket layers, and reports the peer's end of stream, a reset included, as
``closed`` instead of raising: for a probe a close is an answer, not an error.
"""

from __future__ import annotations

import socket
import ssl
import time

from .._errors import ConnectionFailedError, ConnectTimeoutError
from ._layer import Layer, Stack

__all__ = ["RawConnection", "RawListener"]


class RawConnection:
    """One connection that sends and receives raw application bytes.

    Use ``RawConnection.open(...)``; every wait takes a deadline (a
    ``time.monotonic()`` value), so nothing here blocks longer than asked.

    Attributes:
        closed: the peer ended the stream (EOF, reset, TLS or WebSocket close).
        close_reason: how it ended, e.g. ``"eof"`` or ``"reset"``.
    """

    def __init__(self, sock: socket.socket, stack: Stack) -> None:
        self._sock = sock
        self._stack = stack
        self.closed = False
        self.close_reason = ""
        #: seconds a write may block on a peer that does not read.
        self.write_timeout = 10.0

    @classmethod
    def open(
        cls,
        host: str,
        port: int,
        *,
        tls_context: ssl.SSLContext | None = None,
        server_hostname: str | None = None,
        ws_path: str | None = None,
        timeout: float = 10.0,
    ) -> RawConnection:
        """Connect and finish every handshake (TLS, WebSocket upgrade).

        Args:
            host, port: the server.
            tls_context: TLS client context, or ``None`` for plain TCP.
            server_hostname: name for SNI and verification (default ``host``).
            ws_path: WebSocket request path (subprotocol ``mqtt``), or ``None``.
            timeout: seconds for the TCP connect and the handshakes together.

        Returns:
            The connection, ready for ``send``.

        Raises:
            ConnectTimeoutError: the handshakes took longer than ``timeout``.
            ConnectionFailedError: the TCP connect or a handshake failed (the
                cause is chained).
        """
        deadline = time.monotonic() + timeout
        layers: list[Layer] = []
        if tls_context is not None:
            from ._tls import TLSLayer

            layers.append(TLSLayer(tls_context, server_hostname or host,
                                   max_record=4096 if ws_path else None))
        if ws_path is not None:
            from ._ws import WebSocketLayer

            layers.append(WebSocketLayer(server_hostname or host, path=ws_path))
        try:
            sock = socket.create_connection((host, port), timeout=timeout)
        except TimeoutError as exc:
            raise ConnectTimeoutError(f"TCP connect to {host}:{port} timed out") from exc
        except OSError as exc:
            raise ConnectionFailedError(f"cannot connect to {host}:{port}: {exc}") from exc
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn = cls(sock, Stack(layers))
        try:
            conn._handshake(deadline)
        except BaseException:
            sock.close()
            raise
        return conn

    def _handshake(self, deadline: float) -> None:
        stack = self._stack
        stack.start()
        self._write(stack.data_to_send())
        while not stack.established:
            data = self._read(deadline)
            if data is None:
                raise ConnectTimeoutError("the TLS/WebSocket handshake did not finish in time")
            if not data:
                raise ConnectionFailedError(
                    f"the server closed the connection during the handshake ({self.close_reason})")
            try:
                stack.receive_data(data)
            except Exception as exc:
                raise ConnectionFailedError(f"handshake failed: {exc}") from exc
            self._write(stack.data_to_send())

    def _write(self, raw: bytes) -> None:
        if not raw or self.closed:
            return
        try:
            self._sock.settimeout(self.write_timeout)
            self._sock.sendall(raw)
        except OSError as exc:
            self._mark_closed("reset" if isinstance(exc, ConnectionError) else str(exc))

    def _read(self, deadline: float) -> bytes | None:
        """Raw bytes from the socket; ``b""`` at end of stream, ``None`` at the deadline."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        self._sock.settimeout(remaining)
        try:
            data = self._sock.recv(65536)
        except TimeoutError:
            return None
        except OSError as exc:
            self._mark_closed("reset" if isinstance(exc, ConnectionError) else str(exc))
            return b""
        if not data:
            self._mark_closed("eof")
        return data

    def _mark_closed(self, reason: str) -> None:
        if not self.closed:
            self.closed = True
            self.close_reason = reason

    def send(self, data: bytes) -> None:
        """Send application bytes (a write to a closed peer only marks ``closed``)."""
        if self.closed:
            return
        try:
            self._stack.send(data)
        except Exception as exc:  # a layer that has seen its stream end
            self._mark_closed(f"layer refused to send: {exc}")
            return
        self._write(self._stack.data_to_send())

    def receive(self, deadline: float) -> bytes | None:
        """The next application bytes.

        Returns:
            Bytes (never empty); ``b""`` once the peer has closed; ``None`` when
            ``deadline`` passed first.
        """
        while True:
            if self.closed:
                return b""
            data = self._read(deadline)
            if data is None:
                return None
            try:
                app = self._stack.receive_data(data)
            except Exception as exc:  # TLS alert, WebSocket protocol error
                self._mark_closed(f"transport error: {exc}")
                return b""
            self._write(self._stack.data_to_send())
            if app:
                return app
            if not data or self._stack.closed:
                self._mark_closed(self.close_reason or "eof")
                return b""

    def close(self, *, clean: bool = False) -> None:
        """Close the socket; with ``clean`` the layers say goodbye first."""
        if clean and not self.closed:
            try:
                self._stack.close()
                self._write(self._stack.data_to_send())
            except Exception:  # best effort on the way out
                pass
        try:
            self._sock.close()
        except OSError:
            pass
        self.closed = True


class RawListener:
    """A listening TCP socket handing out ``RawConnection``s (plain TCP), for a
    fake broker that serves scripted scenarios to a client under test.

    Attributes:
        host, port: where it listens (``port=0`` picks a free one).
    """

    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind((host, port))
        self._sock.listen(16)
        self.host, self.port = self._sock.getsockname()[:2]

    def accept(self, deadline: float) -> RawConnection | None:
        """The next connection, or ``None`` if none came before ``deadline``
        (or the listener was closed)."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return None
        self._sock.settimeout(remaining)
        try:
            sock, _ = self._sock.accept()
        except (TimeoutError, OSError):
            return None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return RawConnection(sock, Stack([]))

    def close(self) -> None:
        self._sock.close()
