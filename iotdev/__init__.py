"""iotdev: an Azure IoT Hub device client built on the sans-IO ``iotdev_mqtt`` engine.

The device client lands in later steps; for now the package only re-exports the
MQTT engine's version so that the distribution installs and type-checks.
"""

from __future__ import annotations

__all__ = ["__version__"]

__version__ = "0.1.0"
