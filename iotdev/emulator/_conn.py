"""One device connection of the emulator: an ``asyncio.Protocol`` that stacks
server-side TLS (and WebSocket) under ``iotdev_mqtt.ServerConnection`` and
hands the events to the hub; and the device port's first step, which reads
the first request line to pick MQTT over WebSocket or the device HTTP API
(file upload), as IoT Hub's port 443 does."""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from iotdev_mqtt import ConnectRefused, Event, ProtocolError, ServerConnection, State

from .._errors import ClientError
from ..transport._layer import Stack
from ..transport._tls import TLSLayer
from ..transport._ws import WebSocketServerLayer
from ._http import MAX_HEAD, HTTPConnection

if TYPE_CHECKING:
    from ._files import DeviceAPI

__all__ = ["ConnectionHandler", "DeviceConnection", "DevicePortConnection"]

log = logging.getLogger(__name__)

WS_PATH = "/$iothub/websocket"
MAX_CONNECT_SIZE = 64 * 1024
"""Largest CONNECT the hub reads (a device's is a few hundred bytes)."""


class ConnectionHandler(Protocol):
    """Who gets a connection's MQTT events and its end (``_router.Router``)."""

    def on_event(self, conn: Any, event: Event) -> None: ...

    def on_closed(self, conn: Any, reason: str) -> None: ...


class DeviceConnection(asyncio.Protocol):
    """The server side of one device's (or module's) transport.

    Args:
        handler: gets the engine events and the close.
        context: the server TLS context.
        websocket: MQTT over WebSocket (``/$iothub/websocket``) above TLS.
        connect_timeout: seconds to the CONNECT (TLS handshake included).
        max_packet_size: the largest MQTT packet accepted.
        tls: a TLS session already established (the device port's).
    """

    def __init__(self, handler: ConnectionHandler, context: ssl.SSLContext, *, websocket: bool,
                 connect_timeout: float, max_packet_size: int,
                 tls: TLSLayer | None = None) -> None:
        self.handler = handler
        self.loop = asyncio.get_running_loop()
        layers: list[Any] = [tls or TLSLayer(context, None, server_side=True)]
        if websocket:
            layers.append(WebSocketServerLayer(path=WS_PATH))
        self.stack = Stack(layers)
        self.websocket = websocket
        # What an unauthenticated socket may cost: CONNECT within
        # connect_timeout seconds, and at most MAX_CONNECT_SIZE bytes of it.
        self.engine = ServerConnection(now=self.loop.time(), connect_timeout=connect_timeout,
                                       max_packet_size=max_packet_size,
                                       max_connect_size=MAX_CONNECT_SIZE,
                                       auto_ack=False)  # the router acks what it accepts
        self.transport: asyncio.Transport | None = None
        self.device_id: str | None = None
        self.module_id: str | None = None
        self.messages_in = 0
        self.closed = False
        self._timer: asyncio.TimerHandle | None = None
        self.peer = "?"

    # --------------------------------------------------------------- asyncio

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.stack.start()
        self._arm_timer()

    def adopt(self, transport: asyncio.BaseTransport, plaintext: bytes) -> None:
        """Carry on a connection whose TLS handshake is done (the ``tls`` given
        to the constructor): ``plaintext`` is what was already received and
        decrypted.  The caller has made this object the transport's protocol."""
        self.connection_made(transport)  # TLS is established: its start() is a no-op
        self._receive(plaintext, decrypted=True)

    def data_received(self, data: bytes) -> None:
        self._receive(data, decrypted=False)

    def _receive(self, data: bytes, *, decrypted: bool) -> None:
        if self.closed:
            return
        try:
            app = self._above_tls(data) if decrypted else self.stack.receive_data(data)
            if app:
                self.handle(self.engine.receive_data(app, now=self.loop.time()))
        except ProtocolError as exc:
            self.handle(list(getattr(exc, "events", ())))
            self.close(f"protocol violation: {exc}")
            return
        except ClientError as exc:
            self.close(f"transport error: {exc}")
            return
        if self.stack.closed:
            self.close("the device closed the connection")
            return
        self.flush()

    def _above_tls(self, data: bytes) -> bytes:
        """Decrypted bytes through the layers above TLS; returns MQTT bytes."""
        for layer in self.stack.layers[1:]:
            if not data:
                break
            data = layer.receive_data(data)
        self.stack.flush()
        return data

    def eof_received(self) -> bool | None:
        self.close("the device closed the connection")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.close(f"connection lost: {exc}" if exc else "connection closed")

    # ------------------------------------------------------------ operations

    @property
    def transport_name(self) -> str:
        """``"mqtt"`` (MQTT over TLS) or ``"mqtt-ws"`` (over TLS WebSocket)."""
        return "mqtt-ws" if self.websocket else "mqtt"

    def peer_certificate(self) -> bytes | None:
        """The DER of the client's TLS certificate, if it sent one."""
        tls = self.stack.layers[0]
        der = tls.ssl_object.getpeercert(binary_form=True)  # type: ignore[attr-defined]
        return der or None

    def handle(self, events: list[Event]) -> None:
        for event in events:
            if self.closed:
                return
            if isinstance(event, ConnectRefused):  # the engine's own CONNACK 1 or 2
                self.close(f"refused: CONNACK {event.return_code}")  # [MQTT-3.2.2-5]
                return
            self.handler.on_event(self, event)

    def abort(self) -> None:
        """Drop the connection at once: what is queued is discarded, not sent."""
        if self.closed:
            return
        self.engine.data_to_send()  # e.g. the PUBACK of the PUBLISH being aborted
        if self.transport is not None:
            self.transport.abort()
        self.close("aborted by the hub")

    def flush(self) -> None:
        if self.closed or self.transport is None:
            return
        try:
            out = self.engine.data_to_send()
            if out:
                self.stack.send(out)
            raw = self.stack.data_to_send()
        except ClientError as exc:
            self.close(f"transport error: {exc}")
            return
        if raw:
            self.transport.write(raw)
        self._arm_timer()

    def _arm_timer(self) -> None:
        """Make sure a timer fires by the engine's next deadline.  An armed
        timer that fires earlier is kept (it re-arms when it fires): the
        deadline moves on with every packet, and cancelling and re-creating
        the timer on every flush piles cancelled handles up in the loop's heap
        (thousands per second with a fleet sending telemetry)."""
        deadline = self.engine.next_deadline()
        timer = self._timer
        if deadline is None or self.closed:
            if timer is not None:
                timer.cancel()
                self._timer = None
            return
        if timer is not None:
            if timer.when() <= deadline:
                return
            timer.cancel()
        self._timer = self.loop.call_at(deadline, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.closed:
            return
        try:
            events = self.engine.tick(self.loop.time())
        except ProtocolError:
            return
        if events:
            self.handle(events)
            self.close("keep-alive expired (1.5 x keep alive without a packet)")
        else:
            self._arm_timer()

    def close(self, reason: str) -> None:
        """Close the transport (after sending what is queued) and tell the hub."""
        if self.closed:
            return
        try:
            out = self.engine.data_to_send()
            if out:
                self.stack.send(out)
            self.stack.flush()  # also what a layer queued (a WebSocket refusal)
            raw = self.stack.data_to_send()
            if raw and self.transport is not None:
                self.transport.write(raw)
        except Exception:  # the connection is going anyway
            pass
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self.transport is not None:
            self.transport.close()
        if self.engine.state is not State.DISCONNECTED:
            try:
                self.engine.connection_lost()
            except ProtocolError:
                pass
        log.debug("connection %s (%s) closed: %s", self.peer, self.device_id, reason)
        self.handler.on_closed(self, reason)


class DevicePortConnection(asyncio.Protocol):
    """The device port (``ws_port``, 443 by default) before it knows what it
    serves: TLS, then the first request line decides.  ``GET
    /$iothub/websocket`` (the MQTT WebSocket upgrade) goes to a
    ``DeviceConnection``; anything else to the device HTTP API (file upload,
    blobs; ``_files.py``).  The chosen protocol object becomes the transport's
    protocol and gets the TLS session and the bytes already decrypted."""

    def __init__(self, context: ssl.SSLContext, api: DeviceAPI, *, connect_timeout: float,
                 mqtt: Callable[[TLSLayer], DeviceConnection]) -> None:
        self.context = context
        self.api = api
        self.connect_timeout = connect_timeout
        self.mqtt = mqtt
        self.loop = asyncio.get_running_loop()
        self.tls = TLSLayer(context, None, server_side=True)
        self.transport: asyncio.Transport | None = None
        self.closed = False
        self.peer = "?"
        self._buffer = bytearray()
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.api.pending.add(self)
        # The TLS handshake and a request line within the hub's CONNECT timeout.
        self._timer = self.loop.call_later(self.connect_timeout, self.close,
                                           "no request in time")
        try:
            self.tls.start()
        except ClientError as exc:
            self.close(f"TLS: {exc}")
            return
        self._write()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            self._buffer += self.tls.receive_data(data)
        except ClientError as exc:
            self.close(f"TLS: {exc}")
            return
        self._write()
        if self.tls.closed:
            self.close("the client closed the connection before a request")
            return
        end = self._buffer.find(b"\n")
        if end < 0 and len(self._buffer) <= MAX_HEAD:
            return  # h11 answers a request line over MAX_HEAD
        self._hand_over(bytes(self._buffer[:max(end, 0)]).rstrip(b"\r"))

    def _hand_over(self, line: bytes) -> None:
        method, _, rest = line.partition(b" ")
        path = rest.partition(b" ")[0].partition(b"?")[0]
        transport = self.transport
        assert transport is not None
        plaintext = bytes(self._buffer)
        self._detach()
        new: DeviceConnection | HTTPConnection
        if method == b"GET" and path == WS_PATH.encode():
            new = self.mqtt(self.tls)
        else:
            new = HTTPConnection(self.api, tls=self.tls)
        transport.set_protocol(new)
        new.adopt(transport, plaintext)

    def eof_received(self) -> bool | None:
        self.close("the client closed the connection before a request")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.close(f"connection lost: {exc}" if exc else "connection closed")

    def _write(self) -> None:
        raw = self.tls.data_to_send()
        if raw and self.transport is not None and not self.transport.is_closing():
            self.transport.write(raw)

    def _detach(self) -> None:
        self.closed = True
        self._buffer.clear()
        self.api.pending.discard(self)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def close(self, reason: str) -> None:
        """Close the connection (TLS close_notify first)."""
        if self.closed:
            return
        self._detach()
        transport = self.transport
        if transport is not None and not transport.is_closing():
            try:
                self.tls.close()
                self._write_to(transport)
            except Exception:  # the connection is going anyway
                pass
            transport.close()
        log.debug("device port: connection %s closed: %s", self.peer, reason)

    def _write_to(self, transport: asyncio.Transport) -> None:
        raw = self.tls.data_to_send()
        if raw:
            transport.write(raw)
