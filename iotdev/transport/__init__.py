"""The I/O layer: sans-IO byte layers (proxy, TLS, WebSocket) and the drivers
that own sockets, threads and event loops."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._credentials import X509
from ._layer import Layer, Stack

if TYPE_CHECKING:
    from ._proxy import ProxyOptions
    from ._tls import TLSLayer, make_client_context
    from ._ws import WebSocketLayer, WebSocketServerLayer

# ssl, h11 and wsproto load when a connection needs them, not on import.
_LAZY = {"ProxyOptions": "._proxy", "WebSocketLayer": "._ws", "WebSocketServerLayer": "._ws",
         "TLSLayer": "._tls", "make_client_context": "._tls"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module, __name__), name)

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
