"""``IoTHubModuleClient``: the azure-iot-device v2 module API, synchronous.
Everything a device client does (connection, telemetry, twin, methods,
handlers, reconnection, the outbox) is ``HubClient``'s over the same sans-IO
session, with a module identity (``devices/{d}/modules/{m}/...`` topics,
inputs instead of cloud-to-device messages); this file adds only what a
module has: outputs, inputs by name, and module-to-module method calls."""

from __future__ import annotations

from typing import Any

from . import _module_face as mf
from . import _session as hs
from ._face import deprecated
from ._models import Message
from ._module_face import ModuleFactories
from ._sync_client import HubClient

__all__ = ["IoTHubModuleClient"]


class IoTHubModuleClient(ModuleFactories, HubClient):
    """A synchronous IoT Hub (or IoT Edge) module client (create it with a
    factory: ``create_from_connection_string``, ``create_from_sastoken``,
    ``create_from_x509_certificate``, ``create_from_edge_environment``).

    ``on_message_received`` gets the messages routed to the module's inputs,
    with ``input_name`` set."""

    def send_message_to_output(self, message: Any, output_name: str, *,
                               timeout: float | None = None) -> None:
        """Send a message to one of the module's outputs (QoS 1; returns on
        PUBACK); IoT Edge routes it by ``output_name`` (``$.on``).  Anything
        that is not a ``Message`` becomes one; a ``Message`` gets
        ``output_name`` set, as v2 does.  With ``outbox_path`` the message is
        stored and sent as ``send_message`` does.

        Raises:
            TypeError: ``output_name`` is not a str.  ValueError: over 256 KB.
            OperationTimeout, ConnectionDroppedError, OperationCancelled,
            NoConnectionError, ClientError: as ``send_message``.
        """
        self._check_alive()
        publish = mf.output_publish(self._session, message, output_name)
        if self._outbox is not None:
            self._outbox.put(publish.topic, publish.payload)
            return
        self._send(publish, timeout, "send_message_to_output")

    def receive_message_on_input(self, input_name: str, block: bool = True,
                                 timeout: float | None = None) -> Message | None:
        """Deprecated (v2 2.3.0): wait for a message on input ``input_name``.

        Returns:
            The message, or ``None`` when ``block`` is false or ``timeout``
            passed first.

        Raises:
            ClientError: a receive handler was set before (v2's lock).
            OperationCancelled: the client was shut down meanwhile.
        """
        deprecated("receive_message_on_input", "on_message_received")
        inbox = mf.input_inbox(input_name)
        self._want(lambda s: s.use_receive_api(hs.MESSAGES))
        message: Message | None = self._take(self._inbox(inbox), block, timeout)
        return message

    def invoke_method(self, method_params: dict[str, Any], device_id: str,
                      module_id: str | None = None) -> Any:
        """Call a direct method of a device, or of a module (``module_id``),
        through the gateway (HTTPS, ``x-ms-edge-moduleId``).  Only clients
        made with ``create_from_edge_environment`` may, as in v2.

        Args:
            method_params: ``{"methodName": ..., "payload": ...,
                "responseTimeoutInSeconds": ..., "connectTimeoutInSeconds": ...}``.
            device_id: the target device.
            module_id: the target module, or ``None`` for the device itself.

        Returns:
            The gateway's answer: ``{"status": int, "payload": ...}``.

        Raises:
            ClientError: not made from the Edge environment.
            TypeError, KeyError: bad ``method_params`` (``KeyError``: no
                ``methodName``, as v2).
            ServiceError: the gateway answered >= 300 (``.status``).
            ConnectionFailedError, ConnectionDroppedError, OperationTimeout,
            OperationCancelled: ``shutdown()`` was called meanwhile.
        """
        self._check_alive()
        mf.check_invoke(self._config, method_params, device_id, module_id)
        token = self._config.http_authorization()  # the workload API signs (blocking, local)
        return self._run_http(lambda session: mf.invoke_flow(
            self._config, session, method_params, device_id, module_id, token))
