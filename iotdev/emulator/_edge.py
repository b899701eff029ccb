"""The emulator's IoT Edge mode: the hub also plays an Edge device's runtime
(edgeHub and the workload API), so that an unmodified Edge module process
(``IoTHubModuleClient.create_from_edge_environment()``) runs against it.

Theory of operation
-------------------
``EdgeRuntime`` holds the Edge devices (``EdgeDevice``: its routes and its
workload socket).  For each it serves:

* the **workload API** on a Unix socket (``HTTPAPI`` over plain
  ``HTTPConnection``\\ s): ``POST /modules/{m}/genid/{g}/sign`` signs
  ``base64(data)`` with HMAC-SHA256 under the module's primary (or secondary)
  key, answering ``{"digest": base64}``; ``GET /trust-bundle`` answers
  ``{"certificate": <the hub's CA PEM>}``.  The generation id must be the
  module's (404 otherwise);
* **routes** (``_routes.py``): every message a module of the Edge device sends
  goes through them (``Router.output_router``), to ``$upstream`` (the hub's
  telemetry) or to another module's input (``Router.deliver_input``, queued
  until the module is connected and subscribed); a message no route takes is
  dropped, as edgeHub does;
* **module-to-module methods**: ``POST /twins/{d}[/modules/{m}]/methods`` on
  the device port (the gateway's 443), authenticated by the calling module's
  SAS token and its ``x-ms-edge-moduleId`` header, answered like the service
  API's method call.

The MQTT side needs nothing more: the modules connect to the hub's MQTT port
(the gateway host) as module identities.  ``environment()`` gives the
``IOTEDGE_*`` variables of a module.  The Edge devices, their routes and the
names the environment needs persist in ``edge.json`` in the state folder
(modules and their twins are in the store's ``state.json``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import hmac
import json
import logging
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ._http import HTTPAPI, HTTPConnection, Request, Response, ServiceError, json_response
from ._persist import write_file_atomically
from ._records import Module, TelemetryMessage
from ._router import InputMessage, Router
from ._routes import Route, parse_route
from ._service import invoke_method
from ._store import Store

__all__ = ["EDGE_FILE", "WORKLOAD_API_VERSION", "EdgeDevice", "EdgeRuntime",
           "load_edge_config"]

log = logging.getLogger(__name__)

EDGE_FILE = "edge.json"
WORKLOAD_API_VERSION = "2019-01-30"
"""The workload API version put in ``IOTEDGE_APIVERSION`` (any is accepted)."""
_FORMAT = "iotdev-emulator-edge"
_VERSION = 1
MANAGED_BY = "iotEdge"


@dataclass
class EdgeDevice:
    """One Edge device the emulator plays the runtime of.

    Attributes:
        device_id: the Edge device.
        routes: route name -> route text (``FROM ... INTO ...``).
        workload_socket: the workload API's Unix socket.
    """

    device_id: str
    routes: dict[str, str]
    workload_socket: Path
    parsed: list[Route] = field(default_factory=list, repr=False)
    server: asyncio.base_events.Server | None = field(default=None, repr=False)


def load_edge_config(state_dir: Path) -> dict[str, Any]:
    """``edge.json`` of a state folder (an empty configuration when missing).

    Raises:
        ValueError: the file exists but is not an Edge configuration.
    """
    path = state_dir / EDGE_FILE
    if not path.exists():
        return {"format": _FORMAT, "version": _VERSION, "devices": {}}
    try:
        document = json.loads(path.read_bytes())
        if document.get("format") != _FORMAT or document.get("version") != _VERSION:
            raise ValueError(f"format {document.get('format')!r} version "
                             f"{document.get('version')!r}")
        if not isinstance(document.get("devices"), dict):
            raise ValueError("no devices object")
    except (OSError, ValueError, AttributeError) as exc:
        raise ValueError(f"{path}: not a usable Edge configuration: {exc}") from exc
    return dict(document)


class EdgeRuntime:
    """The Edge devices of a hub (see the module docstring).

    Args:
        store: the registry (modules, their keys and generation ids).
        router: the hub's device protocol (telemetry, module inputs, methods).
        state_dir: where ``edge.json`` and the default workload sockets live.
        hub_name: ``IOTEDGE_IOTHUBHOSTNAME``.
        gateway_host: returns ``IOTEDGE_GATEWAYHOSTNAME`` (the address modules dial).
        ca_pem: returns the trust bundle (the hub's CA).

    Raises:
        ValueError: ``edge.json`` is unusable, or holds a bad route.
    """

    def __init__(self, *, store: Store, router: Router, state_dir: Path, hub_name: str,
                 gateway_host: Callable[[], str], ca_pem: Callable[[], str]) -> None:
        self.store = store
        self.router = router
        self.state_dir = state_dir
        self.hub_name = hub_name
        self._gateway_host = gateway_host
        self._ca_pem = ca_pem
        self.devices: dict[str, EdgeDevice] = {}
        self._running = False
        for device_id, entry in load_edge_config(state_dir)["devices"].items():
            device = EdgeDevice(device_id, dict(entry.get("routes", {})),
                                Path(entry["workload_socket"]))
            device.parsed = [parse_route(n, t) for n, t in device.routes.items()]
            self.devices[device_id] = device

    # ----------------------------------------------------------- configuration

    def add_device(self, device_id: str, *, routes: Mapping[str, str] | None = None,
                   workload_socket: Path | None = None) -> EdgeDevice:
        """Make a registered device an Edge device (idempotent; given routes
        replace the stored ones).

        Raises:
            KeyError: the device is not registered.
            ValueError: a bad route.
        """
        if self.store.device(device_id) is None:
            raise KeyError(f"no device {device_id!r}")
        device = self.devices.get(device_id)
        if device is None:
            socket = workload_socket or self.state_dir / "edge" / device_id / "workload.sock"
            # absolute: IOTEDGE_WORKLOADURI is unix:// + an absolute path
            device = self.devices[device_id] = EdgeDevice(device_id, {}, socket.absolute())
        elif workload_socket is not None:
            device.workload_socket = workload_socket.absolute()
        if routes is not None:
            self._set_routes(device, routes)
        self.save()
        return device

    def set_routes(self, device_id: str, routes: Mapping[str, str]) -> None:
        """Replace an Edge device's routes (name -> ``FROM ... INTO ...``).

        Raises:
            KeyError: not an Edge device.
            ValueError: a bad route (nothing changes).
        """
        self._set_routes(self.devices[device_id], routes)
        self.save()

    def _set_routes(self, device: EdgeDevice, routes: Mapping[str, str]) -> None:
        parsed = [parse_route(name, text) for name, text in routes.items()]
        device.routes = dict(routes)
        device.parsed = parsed

    def save(self) -> None:
        """Write ``edge.json`` (atomically)."""
        document = {"format": _FORMAT, "version": _VERSION, "hub_name": self.hub_name,
                    "gateway_host": self._gateway_host(),
                    "devices": {d.device_id: {"routes": d.routes,
                                              "workload_socket": str(d.workload_socket)}
                                for d in self.devices.values()}}
        write_file_atomically(self.state_dir / EDGE_FILE,
                              json.dumps(document, indent=1).encode("utf-8"))

    def environment(self, device_id: str, module_id: str) -> dict[str, str]:
        """The ``IOTEDGE_*`` environment of a module of an Edge device.

        Raises:
            KeyError: not an Edge device, or no such module.
        """
        device = self.devices.get(device_id)
        module = self.store.module(device_id, module_id)
        if device is None:
            raise KeyError(f"{device_id!r} is not an Edge device")
        if module is None:
            raise KeyError(f"no module {module_id!r} on device {device_id!r}")
        return edge_environment(self.hub_name, self._gateway_host(), module,
                                device.workload_socket)

    # ----------------------------------------------------------- routing

    def route(self, device_id: str, module_id: str, output: str | None,
              message: TelemetryMessage) -> bool:
        """Route a module's message (``Router.output_router``).

        Returns:
            ``False`` when the device is not an Edge device (the hub keeps the
            message as telemetry), else ``True``: the routes took it.
        """
        device = self.devices.get(device_id)
        if device is None:
            return False
        origin = f"/messages/modules/{module_id}" + (f"/outputs/{output}" if output else "")
        properties: dict[str, str | None] = {**message.properties,
                                             **message.system_properties,
                                             "$.cdid": device_id, "$.cmid": module_id}
        upstream = False
        targets: list[tuple[str, str]] = []
        for route in device.parsed:
            if not route.matches(origin, properties):
                continue
            if route.module is None:
                upstream = True
            elif route.input_name is not None and \
                    (route.module, route.input_name) not in targets:
                targets.append((route.module, route.input_name))
        if upstream:
            self.router.record_telemetry(message)
        system = {k: v for k, v in message.system_properties.items() if k != "$.on"}
        system.update({"$.cdid": device_id, "$.cmid": module_id})
        for target, input_name in targets:
            if self.store.module(device_id, target) is None:
                log.warning("route from %s: no module %r on %s: message dropped", origin,
                            target, device_id)
                continue
            self.router.deliver_input(device_id, target, InputMessage(
                input_name, message.body, dict(system), dict(message.properties),
                uuid.uuid4().hex))
        if not upstream and not targets:
            log.info("%s: no route takes the message from %s: dropped", device_id, origin)
        return True

    # ----------------------------------------------------------- serving

    async def start(self) -> None:
        """Serve every Edge device's workload API (on the hub's loop)."""
        self._running = True
        for device in self.devices.values():
            await self.start_device(device)

    async def start_device(self, device: EdgeDevice) -> None:
        """Serve one device's workload API on its Unix socket."""
        if not self._running or device.server is not None:
            return
        path = device.workload_socket
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # a socket file left by an earlier run
        api = _WorkloadAPI(self, device.device_id)
        device.server = await asyncio.get_running_loop().create_unix_server(
            lambda: HTTPConnection(api, plain=True), str(path))
        log.info("Edge device %s: workload API on unix://%s, %d route(s)", device.device_id,
                 path, len(device.routes))

    async def stop(self) -> None:
        """Stop every workload API."""
        self._running = False
        for device in self.devices.values():
            server, device.server = device.server, None
            if server is not None:
                server.close()
                await server.wait_closed()
                with contextlib.suppress(OSError):
                    device.workload_socket.unlink()

    def add_method_routes(self, api: HTTPAPI) -> None:
        """Serve module-to-module methods on the device port's HTTP API."""
        api.add_route("POST", "/twins/{id}/methods", self._invoke)
        api.add_route("POST", "/twins/{id}/modules/{mid}/methods", self._invoke)

    async def _invoke(self, request: Request) -> Response:
        caller = request.header("x-ms-edge-moduleid")
        token = request.header("authorization")
        if not caller or "/" not in caller or token is None:
            raise ServiceError(401, "IotHubUnauthorizedAccess",
                               "a module-to-module method call needs x-ms-edge-moduleId "
                               "and a SharedAccessSignature Authorization header")
        device_id, _, module_id = caller.partition("/")
        module = self.store.module(device_id, module_id)
        if module is None or device_id not in self.devices:
            raise ServiceError(401, "IotHubUnauthorizedAccess",
                               f"{caller!r} is not a module of an Edge device")
        device = self.store.device(device_id)
        if device is None or not device.enabled:
            raise ServiceError(401, "IotHubUnauthorizedAccess",
                               f"device {device_id!r} is disabled")
        reason, _ = self.router.identity.check_token(module, token)
        if reason is not None:
            raise ServiceError(401, "IotHubUnauthorizedAccess", reason)
        target_device = request.params["id"]
        target_module = request.params.get("mid")
        if self.store.device(target_device) is None:
            raise ServiceError(404, "DeviceNotFound", f"device {target_device!r} is not "
                               "registered in the hub")
        if target_module is not None and self.store.module(target_device,
                                                            target_module) is None:
            raise ServiceError(404, "ModuleNotFound", f"module {target_module!r} of device "
                               f"{target_device!r} is not registered in the hub")
        log.info("%s invokes a method of %s", caller, target_device + (
            f"/{target_module}" if target_module else ""))
        return await invoke_method(self.router, target_device, target_module, request)


def edge_environment(hub_name: str, gateway_host: str, module: Module,
                     workload_socket: Path) -> dict[str, str]:
    """The ``IOTEDGE_*`` variables the IoT Edge runtime gives a module."""
    return {
        "IOTEDGE_IOTHUBHOSTNAME": hub_name,
        "IOTEDGE_GATEWAYHOSTNAME": gateway_host,
        "IOTEDGE_DEVICEID": module.device_id,
        "IOTEDGE_MODULEID": module.module_id,
        "IOTEDGE_MODULEGENERATIONID": module.generation_id,
        "IOTEDGE_WORKLOADURI": f"unix://{workload_socket}",
        "IOTEDGE_APIVERSION": WORKLOAD_API_VERSION,
        "IOTEDGE_AUTHSCHEME": "sasToken",
    }


def _workload_error(error: ServiceError) -> Response:
    """The workload API's error shape: ``{"message": ...}``."""
    return json_response(error.status, {"message": error.message})


class _WorkloadAPI(HTTPAPI):
    """One Edge device's workload API (see the module docstring)."""

    def __init__(self, runtime: EdgeRuntime, device_id: str) -> None:
        super().__init__(f"workload API of {device_id}")
        self.runtime = runtime
        self.device_id = device_id
        self.add_route("POST", "/modules/{mid}/genid/{genid}/sign", self.sign,
                       max_body=64 * 1024, render_error=_workload_error)
        self.add_route("GET", "/trust-bundle", self.trust_bundle, render_error=_workload_error)

    async def trust_bundle(self, request: Request) -> Response:
        return json_response(200, {"certificate": self.runtime._ca_pem()})

    async def sign(self, request: Request) -> Response:
        module_id = request.params["mid"]
        module = self.runtime.store.module(self.device_id, module_id)
        if module is None:
            raise ServiceError(404, "ModuleNotFound", f"module {module_id!r} not found on "
                               f"Edge device {self.device_id!r}")
        if request.params["genid"] != module.generation_id:
            raise ServiceError(404, "ModuleNotFound",
                               f"module {module_id!r}: generation id "
                               f"{request.params['genid']!r} is not the current one")
        try:
            body = json.loads(request.body)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise ServiceError(400, "BadRequest", "the body must be a JSON object")
        key_id, algo, data = body.get("keyId"), body.get("algo"), body.get("data")
        if key_id not in ("primary", "secondary"):
            raise ServiceError(400, "BadRequest",
                               f"keyId {key_id!r}: expected 'primary' or 'secondary'")
        if algo != "HMACSHA256":
            raise ServiceError(400, "BadRequest", f"algo {algo!r}: expected 'HMACSHA256'")
        key = module.primary_key if key_id == "primary" else module.secondary_key
        if key is None:
            raise ServiceError(400, "BadRequest", f"module {module_id!r} has no symmetric key")
        try:
            message = base64.b64decode(str(data), validate=True)
        except (binascii.Error, ValueError):
            raise ServiceError(400, "BadRequest", "data must be base64") from None
        digest = hmac.new(base64.b64decode(key), message, hashlib.sha256).digest()
        return json_response(200, {"digest": base64.b64encode(digest).decode("ascii")})
