"""The exceptions of iotdev, importable as from ``azure.iot.device.exceptions``."""

from __future__ import annotations

from ._errors import (
    ClientError,
    ConnectionDroppedError,
    ConnectionFailedError,
    CredentialError,
    NoConnectionError,
    OperationCancelled,
    OperationTimeout,
    ProvisioningServiceError,
    ServiceError,
)

__all__ = [
    "ClientError",
    "ConnectionDroppedError",
    "ConnectionFailedError",
    "CredentialError",
    "NoConnectionError",
    "OperationCancelled",
    "OperationTimeout",
    "ProvisioningServiceError",
    "ServiceError",
]
