"""asyncio front-ends of iotdev (no threads)."""

from __future__ import annotations

from ._client import IoTHubDeviceClient
from ._module import IoTHubModuleClient
from ._mqtt import MQTTClient
from ._provisioning import ProvisioningDeviceClient

__all__ = ["IoTHubDeviceClient", "IoTHubModuleClient", "MQTTClient", "ProvisioningDeviceClient"]
