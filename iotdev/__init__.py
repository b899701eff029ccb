"""iotdev: an Azure IoT Hub device client built on the sans-IO ``iotdev_mqtt`` engine.

So far: the I/O layer and a generic MQTT client (``iotdev.mqtt.MQTTClient``,
``iotdev.aio.MQTTClient``); the IoT Hub device client follows.
"""

from __future__ import annotations

from ._errors import (
    ClientError,
    ConnectionDroppedError,
    ConnectionFailedError,
    ConnectionRefusedByHostError,
    ConnectTimeoutError,
    CredentialError,
    HostNotFoundError,
    NoConnectionError,
    OperationCancelled,
    OperationTimeout,
    ProxyAuthenticationError,
    ProxyError,
    ServiceError,
    TLSError,
    TLSVerificationError,
    WebSocketUpgradeError,
)
from .transport import X509, ProxyOptions

__all__ = [
    "X509",
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
    "ProxyAuthenticationError",
    "ProxyError",
    "ProxyOptions",
    "ServiceError",
    "TLSError",
    "TLSVerificationError",
    "WebSocketUpgradeError",
    "__version__",
]

__version__ = "0.1.0"
