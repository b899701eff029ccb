"""The I/O layer: sans-IO byte layers (proxy, TLS, WebSocket) and the drivers
that own sockets, threads and event loops."""

from __future__ import annotations

from ._layer import Layer, Stack
from ._proxy import ProxyOptions
from ._tls import X509, TLSLayer, make_client_context
from ._ws import WebSocketLayer, WebSocketServerLayer

__all__ = [
    "X509",
    "Layer",
    "ProxyOptions",
    "Stack",
    "TLSLayer",
    "WebSocketLayer",
    "WebSocketServerLayer",
    "make_client_context",
]
