"""``ProvisioningDeviceClient`` for asyncio: the same sans-IO registration flow
(``_provisioning.ProvisioningFlow``) on the caller's event loop, over the
asyncio driver; no threads."""

from __future__ import annotations

import asyncio
import logging
import random
from typing import TYPE_CHECKING, Any

from .. import _dps_topics as topics
from .._errors import (
    ClientError,
    ConnectionDroppedError,
    ConnectionFailedError,
    CredentialError,
    OperationTimeout,
)
from .._provisioning import DEFAULT_REQUEST_TIMEOUT, ProvisioningFlow, RegistrationResult
from .._provisioning_config import ProvisioningClientBase, read_cache, write_cache
from ..transport._asyncio import AsyncDriver
from ..transport._options import ReconnectPolicy

if TYPE_CHECKING:
    import os
    from collections.abc import Awaitable

    from ._client import IoTHubDeviceClient

__all__ = ["ProvisioningDeviceClient"]

log = logging.getLogger(__name__)


class ProvisioningDeviceClient(ProvisioningClientBase):
    """Registers a device with DPS over MQTT (asyncio).  Create it with
    ``create_from_symmetric_key`` or ``create_from_x509_certificate``; the
    factories, options and errors are those of ``iotdev.ProvisioningDeviceClient``."""

    _busy = False

    async def register(self, *, timeout: float | None = None) -> RegistrationResult:
        """Register with DPS (see ``iotdev.ProvisioningDeviceClient.register``).

        Args:
            timeout: seconds for the whole call, or ``None``.

        Returns:
            The ``RegistrationResult`` (status ``"assigned"``).

        Raises:
            CredentialError, ConnectionFailedError, ConnectionDroppedError,
            ProvisioningServiceError, OperationTimeout, ClientError, TypeError:
            as the synchronous ``register()``.
        """
        if self._busy:
            raise ClientError("a registration is already in progress on this client")
        self._busy = True
        try:
            return await self._register(timeout)
        finally:
            self._busy = False

    async def _register(self, timeout: float | None) -> RegistrationResult:
        config = self._config
        flow = ProvisioningFlow(config.registration_id, self._provisioning_payload,
                                timeout=timeout,
                                jitter=lambda delay: delay * random.uniform(0.5, 1.0))
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[Any] = asyncio.Queue()

        def on_state(connected: bool, reason: str | None) -> None:
            if not connected:
                inbox.put_nowait(ConnectionDroppedError(
                    f"lost the connection to the provisioning service: {reason}"))

        deadline = None if timeout is None else loop.time() + timeout
        start = loop.time()
        driver = AsyncDriver(config.endpoint(), config.connect_options(),
                             reconnect=ReconnectPolicy(enabled=False),
                             on_message=inbox.put_nowait, on_state=on_state)
        try:
            await _bounded(driver.connect(), deadline, "connecting to the provisioning service")
            codes = await _bounded(driver.subscribe([(topics.RESPONSE_SUBSCRIBE_FILTER, 1)]),
                                   deadline, "subscribing to the provisioning answers")
            if not codes or codes[0] == 0x80:
                raise ClientError("the provisioning service refused the subscription to "
                                  f"{topics.RESPONSE_SUBSCRIBE_FILTER}")
            flow.start(loop.time(), began=start)
            while True:
                for request in flow.requests_to_send():
                    driver.publish(request.topic, request.payload, 1, False).add_done_callback(
                        _ignore)
                if flow.finished:
                    break
                due = flow.next_deadline()
                try:
                    item = await asyncio.wait_for(
                        inbox.get(), None if due is None else max(0.0, due - loop.time()))
                except (TimeoutError, asyncio.TimeoutError):  # distinct on 3.10
                    flow.tick(loop.time())
                    continue
                if isinstance(item, BaseException):
                    raise item
                flow.receive(item.topic, item.payload, loop.time())
        finally:
            try:
                await asyncio.wait_for(driver.shutdown(), 2.0)
            except Exception:  # closing anyway
                pass
        if flow.error is not None:
            log.info("registration of %r failed: %s", config.registration_id, flow.error)
            raise flow.error
        assert flow.result is not None
        log.info("registered %r in %.2f s (%d requests)", config.registration_id,
                 loop.time() - start, flow.requests_sent)
        return flow.result

    async def create_device_client(self, *, cache_path: str | os.PathLike[str] | None = None,
                                   force_register: bool = False, timeout: float | None = None,
                                   **device_options: Any) -> IoTHubDeviceClient:
        """Provision (or reuse the cached assignment) and return a connected
        ``iotdev.aio.IoTHubDeviceClient``; see the synchronous
        ``create_device_client``."""
        from ._client import IoTHubDeviceClient

        result = None
        if cache_path is not None and not force_register:
            result = read_cache(cache_path, self._config)
        cached = result is not None
        for _ in range(2):
            if result is None:
                result = await self.register(timeout=timeout)
                if cache_path is not None:
                    write_cache(cache_path, self._config, result)
            client: IoTHubDeviceClient = self._device_client(IoTHubDeviceClient, result,
                                                             device_options)
            try:
                await client.connect(timeout=timeout)
            except (CredentialError, ConnectionFailedError, OperationTimeout):
                await client.shutdown()
                if not cached:
                    raise
                log.info("the cached assignment of %r did not connect: registering again",
                         self._config.registration_id)
                result, cached = None, False
                continue
            return client
        raise AssertionError("unreachable")


def _ignore(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled():
        fut.exception()  # a lost PUBACK shows up as the drop; do not log it twice


async def _bounded(awaitable: Awaitable[Any], deadline: float | None, what: str) -> Any:
    loop = asyncio.get_running_loop()
    limit = 2 * DEFAULT_REQUEST_TIMEOUT if deadline is None else deadline - loop.time()
    try:
        return await asyncio.wait_for(awaitable, max(0.0, limit))
    except (TimeoutError, asyncio.TimeoutError):  # distinct on 3.10
        raise OperationTimeout(f"{what} did not complete in time") from None
