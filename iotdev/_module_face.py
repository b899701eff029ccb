"""What the sync and asyncio ``IoTHubModuleClient`` faces share beyond the
device faces' common part (``_face.ClientFace``): the module factories
(``create_from_x509_certificate`` with a module id, and
``create_from_edge_environment``), the argument checks of
``send_message_to_output`` and ``invoke_method``, and the module-to-module
method call as an HTTP flow (``transport/_http.py``) to the gateway.  No I/O
here: each face runs the flow with its own HTTP driver."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import quote_plus

from ._auth import IOTHUB_API_VERSION, default_user_agent
from ._errors import ClientError
from ._hubclient import HubConfig, build_config
from ._models import Message
from .transport._credentials import X509

if TYPE_CHECKING:
    from . import _session as hs
    from .transport._http import Flow, HTTPSession

__all__ = ["ModuleFactories", "check_invoke", "input_inbox", "invoke_flow", "output_publish"]

_Module = TypeVar("_Module", bound="ModuleFactories")


class ModuleFactories:
    """The factories only ``IoTHubModuleClient`` has (the connection-string
    and SAS-token ones are ``ClientFace``'s, with ``_MODULE`` true)."""

    _MODULE = True

    @classmethod
    def create_from_x509_certificate(cls: type[_Module], x509: X509, hostname: str,
                                     device_id: str, module_id: str, **kwargs: Any) -> _Module:
        """From a module's client certificate (subject ``{device}/{module}``).

        Args:
            x509: the certificate and key (``iotdev.X509``).
            hostname: the hub's host name.
            device_id, module_id: the module's identity.
            **kwargs: options as azure-iot-device v2 (``sastoken_ttl`` excluded).

        Raises:
            TypeError: ``x509`` is not an ``X509``, a bad option, or
                ``sastoken_ttl`` (v2).
            ValueError: an empty host name, device id or module id.
            FileNotFoundError: the certificate or key file is missing.
        """
        if not isinstance(x509, X509):
            raise TypeError("x509 must be an iotdev.X509")
        _check_module_id(module_id)
        return cls(build_config(hostname=hostname, device_id=device_id,  # type: ignore[call-arg]
                                module_id=module_id, x509=x509, **kwargs))

    @classmethod
    def create_from_edge_environment(cls: type[_Module], **kwargs: Any) -> _Module:
        """Inside an IoT Edge module (or with Visual Studio Code's local-debug
        variables): from the ``IOTEDGE_*`` environment; the trust bundle and
        every SAS token's signature (renewals included) come from the Edge
        workload API.  TLS goes to the gateway (edgeHub); ``invoke_method``
        works only on clients made here (as v2).

        Raises:
            OSError: ``IoT Edge environment not configured correctly``, or
                the workload API failed (the message names its status).
            ValueError: bad debug variables, or a token the runtime would not
                sign.
            TypeError: a bad option, or ``server_verification_cert`` /
                ``gateway_hostname`` (the environment gives them).
        """
        from ._edge_env import config_from_edge_environment

        return cls(config_from_edge_environment(**kwargs))  # type: ignore[call-arg]


def _check_module_id(module_id: object) -> None:
    if not isinstance(module_id, str):
        raise TypeError(f"module_id must be a str, not {type(module_id).__name__}")
    if not module_id:
        raise ValueError("module_id must not be empty")


def output_publish(session: hs.HubSession, message: Any, output_name: str) -> hs.Publish:
    """``send_message_to_output``'s PUBLISH: the message (made a ``Message``
    when it is not one, as v2) with ``output_name`` set (``$.on`` first in the
    property bag), to the module's telemetry topic.

    Raises:
        TypeError: ``output_name`` is not a str.
        ValueError: over 256 KB.
    """
    if not isinstance(output_name, str):
        raise TypeError(f"output_name must be a str, not {type(output_name).__name__}")
    if not isinstance(message, Message):
        message = Message(message)
    message.output_name = output_name  # as v2: the caller's Message carries it afterwards
    return session.telemetry(message)


def input_inbox(input_name: object) -> str:
    """The inbox of ``receive_message_on_input(input_name)``.

    Raises:
        TypeError: ``input_name`` is not a str.
    """
    if not isinstance(input_name, str):
        raise TypeError(f"input_name must be a str, not {type(input_name).__name__}")
    return f"input:{input_name}"


def check_invoke(config: HubConfig, method_params: Any, device_id: Any,
                 module_id: Any) -> None:
    """``invoke_method``'s checks, as v2 makes them.

    Raises:
        ClientError: the client was not made with ``create_from_edge_environment``.
        TypeError: ``method_params`` is not a dict; an id is not a str.
        KeyError: ``method_params`` has no ``methodName`` (v2 raises that).
    """
    if not config.edge:
        raise ClientError("invoke_method is only supported on module clients created with "
                          "create_from_edge_environment() (as azure-iot-device v2)")
    if not isinstance(method_params, dict):
        raise TypeError(f"method_params must be a dict, not {type(method_params).__name__}")
    if "methodName" not in method_params:
        raise KeyError("methodName")
    if not isinstance(device_id, str) or not device_id:
        raise TypeError("device_id must be a non-empty str")
    if module_id is not None and (not isinstance(module_id, str) or not module_id):
        raise TypeError("module_id must be a non-empty str or None")


def invoke_flow(config: HubConfig, session: HTTPSession, method_params: dict[str, Any],
                device_id: str, module_id: str | None, token: str | None) -> Flow[Any]:
    """``POST /twins/{device}[/modules/{module}]/methods`` on the gateway's
    HTTPS port with ``x-ms-edge-moduleId: {our device}/{our module}`` and
    ``token`` (the module's SAS token, signed by the workload API or the key)
    as ``Authorization``; returns the answer (``{"status": ..., "payload":
    ...}``).  Sent once: a method call is not retried.

    Raises:
        ServiceError: the gateway answered >= 300 (``.status``; 404: no such
            target or it is offline, 504: it did not answer in time).
        ConnectionFailedError, ConnectionDroppedError, OperationTimeout.
    """
    from dataclasses import replace

    from ._upload import _call, _json
    from .transport._http import HTTPRequest

    upload = config.upload_config()
    connect = method_params.get("connectTimeoutInSeconds") or 0
    respond = method_params.get("responseTimeoutInSeconds") or 30
    limit = config.operation_timeout
    if isinstance(connect, int | float) and isinstance(respond, int | float):
        limit = max(limit, float(connect) + float(respond) + 10.0)
    upload = replace(upload, retries=0, timeout=limit)
    target = f"/twins/{quote_plus(device_id)}"
    if module_id:
        target += f"/modules/{quote_plus(module_id)}"
    target += f"/methods?api-version={IOTHUB_API_VERSION}"
    body = json.dumps(method_params).encode("utf-8")
    host = config.gateway_hostname or config.hostname

    def make() -> HTTPRequest:
        headers = [("Content-Type", "application/json"),
                   ("x-ms-edge-moduleId", f"{config.device_id}/{config.module_id}"),
                   ("User-Agent", quote_plus(default_user_agent() + str(config.product_info)))]
        if token is not None:
            headers.append(("Authorization", token))
        return HTTPRequest("POST", target, host, headers, body)

    response = yield from _call(upload, session, upload.hub_endpoint, make, "invoke_method")
    return _json(response, "invoke_method")
