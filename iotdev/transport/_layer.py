"""Sans-IO byte layers between the socket and the MQTT engine.

A connection is a ``Stack`` of layers, bottom first: an optional proxy
handshake (HTTP CONNECT or SOCKS), optional TLS, optional WebSocket.  Each layer
takes bytes from below with ``receive_data()`` and returns the bytes it hands
up; takes bytes from above with ``send()``; and queues bytes for below, drained
with ``data_to_send()``.  A layer starts its handshake when ``start()`` is
called (the stack does that once the layer beneath is established) and sets
``established`` when the handshake is done.  ``receive_data(b"")`` means the
layer beneath reached end of stream.  Failures raise ``iotdev`` errors
(``ProxyError``, ``TLSError``, ``WebSocketUpgradeError``,
``ConnectionDroppedError``).  No layer touches a socket or a clock: the drivers
own both, so the same stack serves the thread driver, the asyncio driver and
the emulator.
"""

from __future__ import annotations

__all__ = ["Layer", "Stack"]


class Layer:
    """Base class: a pass-through layer (what a plain TCP connection needs)."""

    established: bool = True
    #: True once the layer has seen the end of its stream (EOF or a close).
    closed: bool = False

    def start(self) -> None:
        """Begin the handshake (queue its first bytes)."""

    def receive_data(self, data: bytes) -> bytes:
        """Bytes from below; returns bytes for the layer above (maybe ``b""``)."""
        if not data:
            self.closed = True
        return data

    def send(self, data: bytes) -> None:
        """Bytes from above, to be carried once established."""
        raise NotImplementedError

    def data_to_send(self) -> bytes:
        """Drain the bytes this layer wants written below."""
        return b""

    def close(self) -> None:
        """Queue a clean close (close frame, close_notify), if the layer has one."""


class Stack:
    """Layers stacked bottom first; the MQTT engine sits on top.

    ``receive_data(raw)`` returns the application bytes for the engine;
    ``send(app)`` carries engine bytes down; ``data_to_send()`` returns the raw
    bytes to write to the socket.  ``established`` is true once every layer's
    handshake is done (the engine may then start).
    """

    def __init__(self, layers: list[Layer]) -> None:
        self.layers = layers
        self._raw = bytearray()
        self._started = 0

    @property
    def established(self) -> bool:
        return self._started == len(self.layers) and all(
            layer.established for layer in self.layers
        )

    @property
    def pending_layer(self) -> Layer | None:
        """The layer whose handshake is in progress, or ``None``."""
        for layer in self.layers:
            if not layer.established:
                return layer
        return None

    def start(self) -> None:
        self._advance()

    def _advance(self) -> None:
        """Start each layer once all below it are established."""
        layers = self.layers
        while self._started < len(layers):
            if self._started and not layers[self._started - 1].established:
                break
            layers[self._started].start()
            self._started += 1
        self._flush()

    def _flush(self) -> None:
        """Move queued bytes from each layer down to the socket buffer."""
        layers = self.layers
        for i in range(len(layers) - 1, -1, -1):
            out = layers[i].data_to_send()
            if out:
                if i:
                    layers[i - 1].send(out)
                else:
                    self._raw += out

    def receive_data(self, data: bytes) -> bytes:
        """Raw bytes from the socket (``b""``: EOF); returns engine bytes.

        Bytes that arrive with the end of one layer's handshake (a proxy's reply
        followed by the TLS server hello) go on to the next layer, started on the
        spot.  After EOF or a close frame ``closed`` is true.
        """
        layers = self.layers
        eof = not data
        for i, layer in enumerate(layers):
            if i >= self._started:
                if not layers[i - 1].established:
                    data = b""
                    break
                layer.start()
                self._started += 1
            data = layer.receive_data(data)
            if not data and not (eof or layer.closed):
                break
        self._advance()
        return data

    @property
    def closed(self) -> bool:
        """Whether any layer has seen its stream end."""
        return any(layer.closed for layer in self.layers)

    def send(self, data: bytes) -> None:
        """Engine bytes, carried through every layer."""
        if self.layers:
            self.layers[-1].send(data)
            self._flush()
        else:
            self._raw += data

    def data_to_send(self) -> bytes:
        raw = self._raw
        if not raw:
            return b""
        out = bytes(raw)
        raw.clear()
        return out

    def flush(self) -> None:
        """Move bytes that layers queued on their own (a WebSocket ping or
        close) down to ``data_to_send()``."""
        self._flush()

    def close(self) -> None:
        """Clean close, top layer first; each layer's goodbye (WebSocket close
        frame) is carried by the layers below before they close in turn."""
        for layer in reversed(self.layers):
            layer.close()
            self._flush()
