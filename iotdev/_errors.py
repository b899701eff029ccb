"""The exception tree of ``iotdev``, named as in azure-iot-device v2.

::

    ClientError
    ├── ConnectionFailedError          could not establish a connection
    │   ├── HostNotFoundError          DNS lookup failed
    │   ├── ConnectionRefusedByHostError   TCP connection refused / unreachable
    │   ├── ConnectTimeoutError        TCP, proxy, TLS or WebSocket handshake too slow
    │   ├── TLSError                   TLS handshake failed (protocol, cipher...)
    │   │   └── TLSVerificationError   server certificate not trusted (``reason``)
    │   ├── ProxyError                 the proxy refused (``status``, ``reason``)
    │   │   └── ProxyAuthenticationError  (also a CredentialError)
    │   └── WebSocketUpgradeError      the server refused the upgrade (``status``, ``reason``)
    ├── ConnectionDroppedError         the connection was lost during the operation
    ├── NoConnectionError              not connected and auto-connect is off
    └── CredentialError                CONNACK 4/5: bad or expired credentials
    └── ServiceError                   the service answered with an error status
        └── ProvisioningServiceError   DPS refused or failed a registration
    OperationTimeout                   an operation did not complete in time
    OperationCancelled                 shutdown / disconnect cancelled an operation

As in v2, ``OperationTimeout`` and ``OperationCancelled`` are not
``ClientError`` subclasses.  v2 raises ``ClientError`` for a twin or file-upload
call the service refused; ``ServiceError`` (status, code, retry_after) is a
``ClientError`` so that both ``except`` clauses catch it.  Every error raised
at the transport boundary chains the original exception (``raise ... from exc``).
"""

from __future__ import annotations

__all__ = [
    "ClientError",
    "ConnectTimeoutError",
    "ConnectionDroppedError",
    "ConnectionFailedError",
    "ConnectionRefusedByHostError",
    "CredentialError",
    "HostNotFoundError",
    "NoConnectionError",
    "OperationCancelled",
    "OperationTimeout",
    "ProvisioningServiceError",
    "ProxyAuthenticationError",
    "ProxyError",
    "ServiceError",
    "TLSError",
    "TLSVerificationError",
    "WebSocketUpgradeError",
]


class ClientError(Exception):
    """A client-side failure."""


class ConnectionFailedError(ClientError):
    """Could not establish a connection."""


class HostNotFoundError(ConnectionFailedError):
    """The host name did not resolve."""


class ConnectionRefusedByHostError(ConnectionFailedError):
    """The TCP connection was refused or the host is unreachable."""


class ConnectTimeoutError(ConnectionFailedError):
    """A step of establishing the connection took longer than allowed."""


class TLSError(ConnectionFailedError):
    """The TLS handshake failed."""


class TLSVerificationError(TLSError):
    """The server's certificate or host name did not verify.

    Attributes:
        reason: OpenSSL's verification message, e.g. ``"certificate has expired"``.
    """

    def __init__(self, message: str, reason: str = "") -> None:
        super().__init__(message)
        self.reason = reason


class ProxyError(ConnectionFailedError):
    """The proxy refused the tunnel.

    Attributes:
        status: the HTTP status or SOCKS reply code, if any.
        reason: the proxy's reason phrase or the meaning of its code.
    """

    def __init__(self, message: str, status: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class CredentialError(ClientError):
    """Credentials were refused (CONNACK 4 or 5, proxy authentication)."""


class ProxyAuthenticationError(ProxyError, CredentialError):
    """The proxy refused our credentials (HTTP 407, SOCKS5 authentication)."""


class WebSocketUpgradeError(ConnectionFailedError):
    """The server refused the WebSocket upgrade.

    Attributes:
        status: the HTTP status of the refusal.
        reason: its reason phrase.
    """

    def __init__(self, message: str, status: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason


class ConnectionDroppedError(ClientError):
    """The connection was lost while the operation was in progress."""


class NoConnectionError(ClientError):
    """The client is not connected and will not connect on its own."""


class OperationTimeout(Exception):
    """The operation did not complete within its timeout."""


class OperationCancelled(Exception):
    """The operation was cancelled (shutdown, disconnect)."""


class ServiceError(ClientError):
    """The service answered with an error status.

    Attributes:
        status: the status (HTTP, or the twin response's), or ``None``.
        code: the service's error code when it gave one (IoT Hub's
            ``ErrorCode``, Azure Storage's ``<Code>``), else ``""``.
        retry_after: seconds the service asked us to wait (``Retry-After``), or
            ``None``.
    """

    def __init__(self, message: str = "", status: int | None = None, code: str = "",
                 retry_after: float | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.retry_after = retry_after

    @property
    def throttled(self) -> bool:
        """The service is throttling us (429): retry later."""
        return self.status == 429


class ProvisioningServiceError(ServiceError):
    """The Device Provisioning Service refused the registration (an HTTP-like
    status from 300 to 428 other than 429) or ended it as ``failed`` or
    ``disabled``.  Also a ``ClientError``: azure-iot-device v2 raises
    ``ClientError`` there, so ``except ClientError`` written for v2 still
    catches it.

    Attributes:
        status: the answer's status (401, 404...), or the HTTP-like status of
            the answer that carried a ``failed``/``disabled`` result.
        code: DPS's ``errorCode`` (e.g. ``"401002"``), as text, or ``""``.
        body: DPS's error body (``errorCode``, ``trackingId``, ``message``...)
            or the operation status, parsed from JSON (raw text if it was not).
        registration_status: ``"failed"``, ``"disabled"``... when DPS ended
            the registration with that status, else ``None``.
    """

    def __init__(self, message: str = "", status: int | None = None, code: str = "",
                 retry_after: float | None = None, body: object = None,
                 registration_status: str | None = None) -> None:
        super().__init__(message, status, code, retry_after)
        self.body = body
        self.registration_status = registration_status
