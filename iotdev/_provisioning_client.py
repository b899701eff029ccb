"""``ProvisioningDeviceClient``: register a device with the Device
Provisioning Service (azure-iot-device v2's API), synchronous face.

The registration logic is ``_provisioning.ProvisioningFlow`` (sans-IO); this
face connects with the thread driver, feeds the flow what arrives (through the
driver's ``intercept`` hook, into a queue the caller's thread reads) and
sleeps until the flow's next deadline.  User code never runs on the I/O thread.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import TYPE_CHECKING, Any

from . import _dps_topics as topics
from ._errors import ClientError, OperationTimeout
from ._provisioning import RegistrationResult
from ._provisioning_config import (
    CONNECT_ERRORS,
    ProvisioningClientBase,
    ProvisioningConfig,
    wait_limit,
)
from .transport._options import ReconnectPolicy
from .transport._thread import Completion, ThreadDriver

if TYPE_CHECKING:
    import os

    from ._sync_client import IoTHubDeviceClient

__all__ = ["ProvisioningDeviceClient"]


class ProvisioningDeviceClient(ProvisioningClientBase):
    """Registers a device with DPS over MQTT (sync).  Create it with
    ``create_from_symmetric_key`` or ``create_from_x509_certificate``."""

    _log = logging.getLogger(__name__)

    def __init__(self, config: ProvisioningConfig) -> None:
        super().__init__(config)
        self._busy = threading.Lock()

    def register(self, *, timeout: float | None = None) -> RegistrationResult:
        """Register with DPS; blocks until assigned or failed.

        Args:
            timeout: seconds for the whole call (iotdev); ``None`` leaves each
                request its own 30 s and honours every ``retry-after``.

        Returns:
            The ``RegistrationResult`` (status ``"assigned"``).

        Raises:
            CredentialError: the key or certificate was refused.
            ConnectionFailedError, ConnectionDroppedError: network trouble.
            ProvisioningServiceError: DPS refused the request (4xx) or ended
                the registration ``failed``/``disabled`` (a ``ClientError``
                and a ``ServiceError``).
            OperationTimeout: a request went unanswered or ``timeout`` passed.
            ClientError: a registration is already running on this client.
            TypeError: the payload is not JSON serializable.
        """
        if not self._busy.acquire(blocking=False):
            raise ClientError("a registration is already in progress on this client")
        try:
            return self._register(timeout)
        finally:
            self._busy.release()

    def _register(self, timeout: float | None) -> RegistrationResult:
        config = self._config
        flow = self._new_flow(timeout)
        inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()

        def intercept(message: Any) -> bool:  # I/O thread: hand over, never block
            inbox.put(message)
            return True

        start = time.monotonic()
        deadline = start + timeout if timeout is not None else None
        driver = ThreadDriver(config.endpoint(), config.connect_options(),
                              reconnect=ReconnectPolicy(enabled=False), intercept=intercept,
                              on_state=self._drop_reporter(inbox.put))
        try:
            _wait(driver.connect(), deadline, "connecting to the provisioning service")
            self._check_subscription(_wait(
                driver.subscribe([(topics.RESPONSE_SUBSCRIBE_FILTER, 1)]), deadline,
                "subscribing to the provisioning answers"))
            flow.start(time.monotonic(), began=start)
            while self._send_due(flow, lambda topic, body: driver.publish(topic, body, 1, False)):
                try:
                    item = inbox.get(timeout=self._wait_time(flow, time.monotonic()))
                except queue.Empty:
                    item = None
                self._take(flow, item, time.monotonic())
        finally:
            try:
                driver.disconnect().result(2.0)
            except Exception:  # closing anyway
                pass
            driver.shutdown()
        return self._outcome(flow, time.monotonic() - start)

    def create_device_client(self, *, cache_path: str | os.PathLike[str] | None = None,
                             force_register: bool = False, timeout: float | None = None,
                             **device_options: Any) -> IoTHubDeviceClient:
        """Provision (or reuse the cached assignment) and return an
        ``IoTHubDeviceClient`` connected to the assigned hub (iotdev).

        The device client authenticates as this client does (the same key or
        certificate), with this client's TLS, WebSocket and proxy settings and
        the provisioning payload's ``modelId`` as ``model_id``; ``device_options``
        add to or override them.  With ``cache_path`` the assignment is kept on
        disk (no secrets) and reused at the next call without registering; if
        connecting with a cached assignment fails, the device registers again.

        Args:
            cache_path: a file for the last assignment, or ``None``.
            force_register: register even when the cache has an assignment.
            timeout: seconds for registration, and again for connecting.
            **device_options: options of ``IoTHubDeviceClient``'s factories.

        Returns:
            The connected client.

        Raises:
            what ``register()`` and ``IoTHubDeviceClient.connect()`` raise.
        """
        from ._sync_client import IoTHubDeviceClient

        result = self._cached_assignment(cache_path, force_register)
        if result is not None:
            client: IoTHubDeviceClient = self._device_client(IoTHubDeviceClient, result,
                                                             device_options)
            if _connected(client, timeout, cached=True):
                return client
            self._stale_assignment()
        result = self._remember(cache_path, self.register(timeout=timeout))
        client = self._device_client(IoTHubDeviceClient, result, device_options)
        _connected(client, timeout, cached=False)
        return client


def _connected(client: IoTHubDeviceClient, timeout: float | None, *, cached: bool) -> bool:
    """Connect; on failure shut the client down, then re-raise (a fresh
    assignment) or return ``False`` (a cached one: register again)."""
    try:
        client.connect(timeout=timeout)
    except CONNECT_ERRORS:
        client.shutdown()
        if not cached:
            raise
        return False
    return True


def _wait(fut: Completion, deadline: float | None, what: str) -> Any:
    try:
        return fut.result(wait_limit(deadline, time.monotonic()))
    except TimeoutError:
        raise OperationTimeout(f"{what} did not complete in time") from None
