"""One device connection of the emulator: an ``asyncio.Protocol`` that stacks
server-side TLS (and WebSocket) under ``iotdev_mqtt.ServerConnection`` and
hands the events to the hub."""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import TYPE_CHECKING, Any

from iotdev_mqtt import Event, ProtocolError, ServerConnection, State

from .._errors import ClientError
from ..transport._layer import Stack
from ..transport._tls import TLSLayer
from ..transport._ws import WebSocketServerLayer

if TYPE_CHECKING:
    from ._hub import Hub

__all__ = ["DeviceConnection"]

log = logging.getLogger(__name__)

WS_PATH = "/$iothub/websocket"


class DeviceConnection(asyncio.Protocol):
    """The server side of one device's transport."""

    def __init__(self, hub: Hub, context: ssl.SSLContext, *, websocket: bool) -> None:
        self.hub = hub
        self.loop = asyncio.get_running_loop()
        layers: list[Any] = [TLSLayer(context, None, server_side=True)]
        if websocket:
            layers.append(WebSocketServerLayer(path=WS_PATH))
        self.stack = Stack(layers)
        self.engine = ServerConnection(now=self.loop.time(), connect_timeout=30.0,
                                       max_packet_size=hub.max_packet_size)
        self.transport: asyncio.Transport | None = None
        self.device_id: str | None = None
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

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            app = self.stack.receive_data(data)
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

    def eof_received(self) -> bool | None:
        self.close("the device closed the connection")
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.close(f"connection lost: {exc}" if exc else "connection closed")

    # ------------------------------------------------------------ operations

    def handle(self, events: list[Event]) -> None:
        for event in events:
            self.hub._on_event(self, event)

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
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.engine.next_deadline()
        if deadline is not None and not self.closed:
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
            if out and self.transport is not None:
                self.stack.send(out)
                self.transport.write(self.stack.data_to_send())
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
        self.hub._on_closed(self, reason)
