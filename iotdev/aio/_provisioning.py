"""``ProvisioningDeviceClient`` for asyncio: the same sans-IO registration flow
(``_provisioning.ProvisioningFlow``) on the caller's event loop, over the
asyncio driver; no threads."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from .. import _dps_topics as topics
from .._errors import ClientError, OperationTimeout
from .._provisioning import RegistrationResult
from .._provisioning_config import CONNECT_ERRORS, ProvisioningClientBase, wait_limit
from ..transport._asyncio import AsyncDriver
from ..transport._options import ReconnectPolicy

if TYPE_CHECKING:
    import os
    from collections.abc import Awaitable

    from ._client import IoTHubDeviceClient

__all__ = ["ProvisioningDeviceClient"]


class ProvisioningDeviceClient(ProvisioningClientBase):
    """Registers a device with DPS over MQTT (asyncio).  Create it with
    ``create_from_symmetric_key`` or ``create_from_x509_certificate``; the
    factories, options and errors are those of ``iotdev.ProvisioningDeviceClient``."""

    _busy = False
    _log = logging.getLogger(__name__)

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
        flow = self._new_flow(timeout)
        loop = asyncio.get_running_loop()
        inbox: asyncio.Queue[Any] = asyncio.Queue()
        start = loop.time()
        deadline = None if timeout is None else start + timeout
        driver = AsyncDriver(config.endpoint(), config.connect_options(),
                             reconnect=ReconnectPolicy(enabled=False),
                             on_message=inbox.put_nowait,
                             on_state=self._drop_reporter(inbox.put_nowait))

        def publish(topic: str, body: bytes) -> None:
            driver.publish(topic, body, 1, False).add_done_callback(_ignore)

        try:
            await _bounded(driver.connect(), deadline, "connecting to the provisioning service")
            self._check_subscription(await _bounded(
                driver.subscribe([(topics.RESPONSE_SUBSCRIBE_FILTER, 1)]), deadline,
                "subscribing to the provisioning answers"))
            flow.start(loop.time(), began=start)
            while self._send_due(flow, publish):
                try:
                    item = await asyncio.wait_for(inbox.get(),
                                                  self._wait_time(flow, loop.time()))
                except (TimeoutError, asyncio.TimeoutError):  # distinct on 3.10
                    item = None
                self._take(flow, item, loop.time())
        finally:
            try:
                await asyncio.wait_for(driver.shutdown(), 2.0)
            except Exception:  # closing anyway
                pass
        return self._outcome(flow, loop.time() - start)

    async def create_device_client(self, *, cache_path: str | os.PathLike[str] | None = None,
                                   force_register: bool = False, timeout: float | None = None,
                                   **device_options: Any) -> IoTHubDeviceClient:
        """Provision (or reuse the cached assignment) and return a connected
        ``iotdev.aio.IoTHubDeviceClient``; see the synchronous
        ``create_device_client``."""
        from ._client import IoTHubDeviceClient

        result = self._cached_assignment(cache_path, force_register)
        if result is not None:
            client: IoTHubDeviceClient = self._device_client(IoTHubDeviceClient, result,
                                                             device_options)
            if await _connected(client, timeout, cached=True):
                return client
            self._stale_assignment()
        result = self._remember(cache_path, await self.register(timeout=timeout))
        client = self._device_client(IoTHubDeviceClient, result, device_options)
        await _connected(client, timeout, cached=False)
        return client


async def _connected(client: IoTHubDeviceClient, timeout: float | None, *,
                     cached: bool) -> bool:
    """Connect; on failure shut the client down, then re-raise (a fresh
    assignment) or return ``False`` (a cached one: register again)."""
    try:
        await client.connect(timeout=timeout)
    except CONNECT_ERRORS:
        await client.shutdown()
        if not cached:
            raise
        return False
    return True


def _ignore(fut: asyncio.Future[None]) -> None:
    if not fut.cancelled():
        fut.exception()  # a lost PUBACK shows up as the drop; do not log it twice


async def _bounded(awaitable: Awaitable[Any], deadline: float | None, what: str) -> Any:
    limit = wait_limit(deadline, asyncio.get_running_loop().time())
    try:
        return await asyncio.wait_for(awaitable, limit)
    except (TimeoutError, asyncio.TimeoutError):  # distinct on 3.10
        raise OperationTimeout(f"{what} did not complete in time") from None
