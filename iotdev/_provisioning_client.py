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
import random
import threading
import time
from typing import TYPE_CHECKING, Any

from . import _dps_topics as topics
from ._errors import (
    ClientError,
    ConnectionDroppedError,
    ConnectionFailedError,
    CredentialError,
    OperationTimeout,
)
from ._provisioning import DEFAULT_REQUEST_TIMEOUT, ProvisioningFlow, RegistrationResult
from ._provisioning_config import (
    ProvisioningClientBase,
    ProvisioningConfig,
    read_cache,
    write_cache,
)
from .transport._options import ReconnectPolicy
from .transport._thread import Completion, ThreadDriver

if TYPE_CHECKING:
    import os

    from ._sync_client import IoTHubDeviceClient

__all__ = ["ProvisioningDeviceClient"]

log = logging.getLogger(__name__)


def spread(delay: float) -> float:
    """Back-off jitter: 50-100 % of the nominal delay."""
    return delay * random.uniform(0.5, 1.0)


class ProvisioningDeviceClient(ProvisioningClientBase):
    """Registers a device with DPS over MQTT (sync).  Create it with
    ``create_from_symmetric_key`` or ``create_from_x509_certificate``."""

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
        flow = ProvisioningFlow(config.registration_id, self._provisioning_payload,
                                timeout=timeout, jitter=spread)
        inbox: queue.SimpleQueue[Any] = queue.SimpleQueue()

        def intercept(message: Any) -> bool:  # I/O thread: hand over, never block
            inbox.put(message)
            return True

        def on_state(connected: bool, reason: str | None) -> None:
            if not connected:
                inbox.put(ConnectionDroppedError(
                    f"lost the connection to the provisioning service: {reason}"))

        start = time.monotonic()
        deadline = start + timeout if timeout is not None else None
        log.info("registering %r with %s", config.registration_id, config.provisioning_host)
        driver = ThreadDriver(config.endpoint(), config.connect_options(),
                              reconnect=ReconnectPolicy(enabled=False), intercept=intercept,
                              on_state=on_state)
        try:
            _wait(driver.connect(), deadline, "connecting to the provisioning service")
            codes = _wait(driver.subscribe([(topics.RESPONSE_SUBSCRIBE_FILTER, 1)]), deadline,
                          "subscribing to the provisioning answers")
            if not codes or codes[0] == 0x80:
                raise ClientError("the provisioning service refused the subscription to "
                                  f"{topics.RESPONSE_SUBSCRIBE_FILTER}")
            flow.start(time.monotonic(), began=start)
            while True:
                for request in flow.requests_to_send():
                    driver.publish(request.topic, request.payload, 1, False)
                if flow.finished:
                    break
                due = flow.next_deadline()
                try:
                    item = inbox.get(timeout=None if due is None
                                     else max(0.0, due - time.monotonic()))
                except queue.Empty:
                    flow.tick(time.monotonic())
                    continue
                if isinstance(item, BaseException):
                    raise item
                flow.receive(item.topic, item.payload, time.monotonic())
        finally:
            try:
                driver.disconnect().result(2.0)
            except Exception:  # closing anyway
                pass
            driver.shutdown()
        if flow.error is not None:
            log.info("registration of %r failed: %s", config.registration_id, flow.error)
            raise flow.error
        assert flow.result is not None
        log.info("registered %r in %.2f s (%d requests)", config.registration_id,
                 time.monotonic() - start, flow.requests_sent)
        return flow.result

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

        result = None
        if cache_path is not None and not force_register:
            result = read_cache(cache_path, self._config)
        cached = result is not None
        for _ in range(2):
            if result is None:
                result = self.register(timeout=timeout)
                if cache_path is not None:
                    write_cache(cache_path, self._config, result)
            client: IoTHubDeviceClient = self._device_client(IoTHubDeviceClient, result,
                                                             device_options)
            try:
                client.connect(timeout=timeout)
            except (CredentialError, ConnectionFailedError, OperationTimeout):
                client.shutdown()
                if not cached:
                    raise
                log.info("the cached assignment of %r did not connect: registering again",
                         self._config.registration_id)
                result, cached = None, False
                continue
            return client
        raise AssertionError("unreachable")


def _wait(fut: Completion, deadline: float | None, what: str) -> Any:
    limit = 2 * DEFAULT_REQUEST_TIMEOUT if deadline is None else deadline - time.monotonic()
    try:
        return fut.result(max(0.0, limit))
    except TimeoutError:
        raise OperationTimeout(f"{what} did not complete in time") from None
