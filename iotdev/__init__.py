"""iotdev: an Azure IoT Hub device client built on the sans-IO ``iotdev_mqtt`` engine.

``IoTHubDeviceClient`` follows azure-iot-device v2's API; ``iotdev.aio`` has the
asyncio client; ``ProvisioningDeviceClient`` registers devices with the Device
Provisioning Service (``iotdev.pnp``: Plug and Play conventions);
``iotdev.mqtt.MQTTClient`` is a generic MQTT client on the same I/O layer;
``iotdev.emulator`` is a local IoT Hub (and DPS).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._auth import derive_device_key
from ._deps import MissingDependencyError
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
    ProvisioningServiceError,
    ProxyAuthenticationError,
    ProxyError,
    ServiceError,
    TLSError,
    TLSVerificationError,
    WebSocketUpgradeError,
)
from ._models import Message, MethodRequest, MethodResponse
from ._provisioning import RegistrationResult, RegistrationState
from ._provisioning_client import ProvisioningDeviceClient
from ._sync_client import IoTHubDeviceClient
from .transport import X509

if TYPE_CHECKING:
    from .transport._proxy import ProxyOptions


def __getattr__(name: str) -> Any:
    if name == "ProxyOptions":  # loads h11 only for proxy users
        from .transport._proxy import ProxyOptions

        return ProxyOptions
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "X509",
    "ClientError",
    "ConnectTimeoutError",
    "ConnectionDroppedError",
    "ConnectionFailedError",
    "ConnectionRefusedByHostError",
    "CredentialError",
    "HostNotFoundError",
    "IoTHubDeviceClient",
    "Message",
    "MethodRequest",
    "MethodResponse",
    "MissingDependencyError",
    "NoConnectionError",
    "OperationCancelled",
    "OperationTimeout",
    "ProvisioningDeviceClient",
    "ProvisioningServiceError",
    "ProxyAuthenticationError",
    "ProxyError",
    "ProxyOptions",
    "RegistrationResult",
    "RegistrationState",
    "ServiceError",
    "TLSError",
    "TLSVerificationError",
    "WebSocketUpgradeError",
    "__version__",
    "derive_device_key",
]

__version__ = "0.1.0"
