"""Where and how to connect: host, port, TLS, WebSocket, proxy; the layer stack
for it; and the mapping of socket errors to ``iotdev`` errors.  Shared by the
thread driver and the asyncio driver."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any, Literal, Protocol

from iotdev_mqtt._records import field, mutable_record

from .._deps import require
from .._errors import (
    ConnectionFailedError,
    ConnectionRefusedByHostError,
    ConnectTimeoutError,
    HostNotFoundError,
)
from ._layer import Layer, Stack

if TYPE_CHECKING:
    import ssl

    from ._credentials import X509

__all__ = ["AzureTransportSettings", "Endpoint", "azure_endpoint", "map_connect_error"]

TransportName = Literal["tcp", "tls", "websockets"]

WS_TLS_RECORD = 4096
"""Largest TLS record under WebSocket (see ``TLSLayer``'s ``max_record``)."""


@mutable_record
class Endpoint:
    """One place to connect to.

    Attributes:
        host: the server's host name (TLS SNI and verification use it, or
            ``server_hostname`` when set).
        port: its port.
        transport: ``"tcp"`` (plain MQTT), ``"tls"`` or ``"websockets"`` (MQTT
            over WebSocket over TLS).
        tls_context: the TLS client context (``make_client_context()``); needed
            for ``"tls"`` and ``"websockets"``.
        server_hostname: name to verify and send as SNI, if not ``host``.
        ws_path: the WebSocket request path.
        proxy: ``ProxyOptions`` or ``None``.
        connect_timeout: seconds for TCP connect plus every handshake.

    Raises (constructor):
        ValueError: an unknown transport, a TLS transport without a context, a
            port outside 1..65535.
        MissingDependencyError: ``"websockets"`` without wsproto (or h11)
            installed.
    """

    host: str
    port: int
    transport: TransportName = "tcp"
    tls_context: ssl.SSLContext | None = None
    server_hostname: str | None = None
    ws_path: str = "/mqtt"
    proxy: Any = None
    connect_timeout: float = 30.0
    ws_headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.transport not in ("tcp", "tls", "websockets"):
            raise ValueError(f"transport must be 'tcp', 'tls' or 'websockets', "
                             f"got {self.transport!r}")
        if self.transport != "tcp" and self.tls_context is None:
            raise ValueError(f"transport {self.transport!r} needs a tls_context")
        if not isinstance(self.port, int) or not 0 < self.port < 65536:
            raise ValueError(f"port must be an int from 1 to 65535, got {self.port!r}")
        if self.transport == "websockets":  # here, not in the I/O thread at connect
            require("wsproto", "websockets=True (MQTT over WebSocket)")
            require("h11", "websockets=True (MQTT over WebSocket)")

    @property
    def dial_address(self) -> tuple[str, int]:
        """The TCP peer: the proxy when there is one, else the server."""
        if self.proxy is not None:
            return (self.proxy.proxy_address, self.proxy.proxy_port)
        return (self.host, self.port)

    def describe(self) -> str:
        scheme = {"tcp": "mqtt", "tls": "mqtts", "websockets": "wss"}[self.transport]
        where = f"{scheme}://{self.host}:{self.port}"
        if self.transport == "websockets":
            where += self.ws_path
        if self.proxy is not None:
            where += f" via {self.proxy.proxy_type} proxy {self.proxy.proxy_address}:" \
                     f"{self.proxy.proxy_port}"
        return where

    def stack(self) -> Stack:
        """A fresh layer stack for one connection attempt."""
        layers: list[Layer] = []
        if self.proxy is not None:
            from ._proxy import proxy_layer

            layers.append(proxy_layer(self.proxy, self.host, self.port))
        if self.transport in ("tls", "websockets"):
            from ._tls import TLSLayer

            assert self.tls_context is not None
            layers.append(TLSLayer(self.tls_context, self.server_hostname or self.host,
                                   max_record=WS_TLS_RECORD if self.transport == "websockets"
                                   else None))
        if self.transport == "websockets":
            from ._ws import WebSocketLayer

            layers.append(WebSocketLayer(self.host, path=self.ws_path,
                                         extra_headers=self.ws_headers or None))
        return Stack(layers)


class AzureTransportSettings(Protocol):
    """The transport options that IoT Hub and DPS clients both take (v2's
    names): a ``HubConfig`` or a ``ProvisioningConfig``."""

    x509: X509 | None
    server_verification_cert: str | None
    gateway_hostname: str | None
    websockets: bool
    cipher: str | list[str]
    proxy_options: Any
    port: int | None


def azure_endpoint(settings: AzureTransportSettings, host: str) -> Endpoint:
    """Where an Azure IoT client connects: MQTT over TLS on 8883, or over
    WebSocket on 443 (``/$iothub/websocket``), to ``gateway_hostname`` when set
    or else ``host``; ``port`` overrides the port."""
    from ._tls import make_client_context, shared_client_context

    cipher = settings.cipher or None
    if settings.x509 is None:
        ctx = shared_client_context(server_verification_cert=settings.server_verification_cert,
                                    cipher=cipher)
    else:
        ctx = make_client_context(server_verification_cert=settings.server_verification_cert,
                                  cipher=cipher, x509=settings.x509)
    port = settings.port if settings.port is not None else (443 if settings.websockets else 8883)
    return Endpoint(host=settings.gateway_hostname or host, port=port,
                    transport="websockets" if settings.websockets else "tls",
                    tls_context=ctx, ws_path="/$iothub/websocket",
                    proxy=settings.proxy_options, connect_timeout=30.0)


def map_connect_error(exc: BaseException, endpoint: Endpoint) -> ConnectionFailedError:
    """The ``iotdev`` error for a failure to open the TCP connection."""
    host, port = endpoint.dial_address
    if isinstance(exc, ConnectionFailedError):
        return exc
    if isinstance(exc, socket.gaierror):
        return HostNotFoundError(f"cannot resolve {host!r}: {exc.strerror or exc}")
    if isinstance(exc, TimeoutError | socket.timeout):
        return ConnectTimeoutError(
            f"TCP connect to {host}:{port} took longer than {endpoint.connect_timeout:g} s")
    if isinstance(exc, OSError):
        return ConnectionRefusedByHostError(
            f"cannot connect to {host}:{port}: {exc.strerror or exc}")
    return ConnectionFailedError(f"cannot connect to {endpoint.describe()}: {exc}")
