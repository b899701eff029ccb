"""``iotdev.aio.IoTHubModuleClient``: the azure-iot-device v2 asyncio module
API.  Everything a device client does is ``HubClient``'s over the same
sans-IO session with a module identity; this file adds only what a module
has: outputs, inputs by name, and module-to-module method calls (see
``iotdev.IoTHubModuleClient``)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from .. import _module_face as mf
from .. import _session as hs
from .._face import deprecated
from .._models import Message
from .._module_face import ModuleFactories
from ._client import HubClient

__all__ = ["IoTHubModuleClient"]


class IoTHubModuleClient(ModuleFactories, HubClient):
    """An asyncio IoT Hub (or IoT Edge) module client (create it with a
    factory).  ``on_message_received`` gets input messages (``input_name``
    set).

    Made from the Edge environment, it has each SAS token signed by the
    workload API on its loop just before it is needed (``connect``, each
    renewal, each reconnection after a drop), so that the driver's CONNECT
    finds it ready; a token not ready in time is signed then, blocking the
    loop for that one local call."""

    async def connect(self, *, timeout: float | None = None) -> None:
        """As ``iotdev.IoTHubModuleClient.connect``."""
        self._check_alive()
        if not self._driver.connected:
            await self._presign()
        await super().connect(timeout=timeout)

    async def _presign(self) -> None:
        """Sign the next CONNECT's token on this loop (Edge environment only);
        a failure is left to the CONNECT, which signs again and reports."""
        if self._config.workload is None:
            return
        from .._workload import IoTEdgeError

        try:
            token, expiry = await self._signed()
        except IoTEdgeError:
            return
        self._config.presigned = (token, expiry, time.time())

    def _renew(self) -> None:
        if self._config.workload is None:
            super()._renew()
            return

        async def renew() -> None:
            await self._presign()
            super(IoTHubModuleClient, self)._renew()

        self._spawn(renew())

    def _on_state(self, connected: bool, reason: str | None) -> None:
        super()._on_state(connected, reason)
        if not connected and self._driver.reconnecting and self._config.workload is not None:
            self._spawn(self._presign())  # the driver's next attempt finds it ready

    async def send_message_to_output(self, message: Any, output_name: str, *,
                                     timeout: float | None = None) -> None:
        """As ``iotdev.IoTHubModuleClient.send_message_to_output``."""
        self._check_alive()
        publish = mf.output_publish(self._session, message, output_name)
        if self._outbox is not None:
            self._outbox.put(publish.topic, publish.payload)
            await asyncio.sleep(0)  # let the sender run (see send_message)
            return
        await self._send(publish, timeout, "send_message_to_output")

    async def receive_message_on_input(self, input_name: str) -> Message:
        """Deprecated (v2 2.3.0): the next message on input ``input_name``.

        Raises:
            ClientError: a receive handler was set before (v2's lock).
            OperationCancelled: the client was shut down meanwhile.
        """
        deprecated("receive_message_on_input", "on_message_received")
        inbox = mf.input_inbox(input_name)
        await self._want(lambda s: s.use_receive_api(hs.MESSAGES))
        message: Message = await self._take(self._inbox(inbox))
        return message

    async def invoke_method(self, method_params: dict[str, Any], device_id: str,
                            module_id: str | None = None) -> Any:
        """As ``iotdev.IoTHubModuleClient.invoke_method``, on this loop."""
        self._check_alive()
        mf.check_invoke(self._config, method_params, device_id, module_id)
        token = await self._http_token()
        return await self._run_http(lambda session: mf.invoke_flow(
            self._config, session, method_params, device_id, module_id, token))

    async def _http_token(self) -> str | None:
        """The ``Authorization`` of an HTTPS call: signed by the workload API on
        this loop (Edge environment), else from the key or the user's token."""
        if self._config.workload is None:
            return self._config.http_authorization()
        return (await self._signed())[0]

    async def _signed(self) -> tuple[str, float]:
        """A fresh SAS token signed by the workload API on this loop, and its
        expiry.

        Raises:
            IoTEdgeError: the workload API failed.
        """
        from .._workload import assemble_token, token_text

        config = self._config
        text, expiry = token_text(config.resource_uri(), config.sastoken_ttl)
        return assemble_token(text, await config.workload.sign_async(text), expiry), \
            float(expiry)
