"""The local IoT Hub: the composition root.  ``Hub`` builds the parts, each
taking its collaborators explicitly, runs them on one event-loop thread and
offers the service-side API to tests and the CLI.

Theory of operation
-------------------
The parts, one job each:

* ``_store.Store``: identities (devices, modules), twins, C2D queues, telemetry;
* ``_identity.IdentityChecks``: who a CONNECT or a request proves to be
  (SAS token or X.509 thumbprint), shared by MQTT and HTTPS;
* ``_router.Router``: the device protocol for devices and modules
  (telemetry, C2D, module inputs, methods, twins) and the operations that reach
  a connected client; observers (``_observer.py``) see and steer it;
* ``_conn.DeviceConnection``: one MQTT transport (TLS, WebSocket) handing its
  events to the router; ``_conn.DevicePortConnection`` picks MQTT over
  WebSocket or the device HTTP API (``_files.DeviceAPI``: file upload, blobs)
  on the device port, as IoT Hub's 443 does;
* ``_service.ServiceAPI``: the HTTPS service API (optional);
* ``_edge.EdgeRuntime``: the Edge mode (workload API, routes, module-to-module
  methods) for the devices ``add_edge_device`` names;
* ``_loop.LoopThread``: the event loop on a background thread (so sync and
  async tests can both drive the hub).

Service calls (``send_c2d``, ``invoke_method``, ``patch_desired``...) are
submitted to the loop and their results awaited from the caller's thread; the
``a``-prefixed variants await them from another event loop.

The emulator logs to the ``iotdev.emulator`` logger: at INFO a connect (with
the identity, transport and peer), a refusal with its reason, subscriptions,
and a disconnect with the count of messages received.
"""

from __future__ import annotations

import logging
import ssl
import time
from pathlib import Path
from typing import Any

from ._blobs import BlobStore
from ._certs import CertPaths, ensure_certificates
from ._conn import DeviceConnection, DevicePortConnection
from ._edge import MANAGED_BY, EdgeDevice, EdgeRuntime
from ._files import DEFAULT_CONTAINER, DEFAULT_SAS_TTL, DeviceAPI, FileUpload, UploadRegistry
from ._identity import IdentityChecks
from ._loop import LoopThread
from ._observer import HubObserver
from ._router import MethodResult, Router
from ._service import ServiceAPI  # service API (HTTPS)
from ._store import C2DMessage, Device, Module, Store, TelemetryMessage
from ._x509 import DeviceCertificate, issue_device_certificate

__all__ = ["Hub", "MethodResult"]

log = logging.getLogger(__name__)


class Hub:
    """A local IoT Hub.

    Args:
        hub_name: the hub's host name (in tokens, user names, connection strings).
        host: the address to listen on.
        mqtt_port: MQTT over TLS (8883 by default; 0 picks a free port).
        ws_port: MQTT over TLS WebSocket on ``/$iothub/websocket`` and the
            device HTTP API (file upload, blobs) on the same TLS port (443 by
            default; 0 picks a free port; ``None`` disables both).
        state_dir: where the CA, the certificates and the state live (a
            temporary folder when ``None``).
        connect_timeout: seconds a new connection has to send its CONNECT
            (TLS handshake included); an unauthenticated socket also may not
            send more than 64 KiB before it.
        connection_host: the ``HostName`` put in connection strings
            (default: ``host``, so that clients dial the right address).
        http_port: the HTTPS service API (``_service.py``; 0 picks a free
            port; ``None``, the default, disables it).  It has no
            authentication, so it refuses a non-loopback ``host`` unless
            ``http_allow_remote`` is true.
        upload_container: the blob container of file uploads.
        upload_sas_ttl: seconds a blob SAS from storage info lives (IoT Hub's
            default hour; 0 gives SAS tokens that have expired already).

    Raises:
        ValueError: a bad ``upload_container`` or ``upload_sas_ttl``, or a
            non-loopback ``host`` for the service API.

    Attributes:
        store: the registry, twins, C2D queues and telemetry (``Store``);
            replace it only before ``start()``.
        router: the device protocol (``_router.Router``): what other parts
            composed next to the hub (a DPS, the Edge mode) use to reach
            connected clients.
        identity: the CONNECT and HTTP credential checks (``IdentityChecks``).
        edge: the Edge devices the hub plays the runtime of (``EdgeRuntime``).
    """

    def __init__(
        self,
        *,
        hub_name: str = "iotdev-hub.local",
        host: str = "127.0.0.1",
        mqtt_port: int = 8883,
        ws_port: int | None = 443,
        state_dir: Path | str | None = None,
        connection_host: str | None = None,
        max_packet_size: int = 512 * 1024,
        connect_timeout: float = 30.0,
        http_port: int | None = None,  # service API (HTTPS)
        http_allow_remote: bool = False,  # service API (HTTPS)
        upload_container: str = DEFAULT_CONTAINER,
        upload_sas_ttl: float = DEFAULT_SAS_TTL,
    ) -> None:
        self.hub_name = hub_name
        self.host = host
        self.mqtt_port = mqtt_port
        self.ws_port = ws_port
        self.max_packet_size = max_packet_size
        self.connect_timeout = connect_timeout
        if state_dir is None:
            import tempfile

            state_dir = tempfile.mkdtemp(prefix="iotdev-hub-")
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.connection_host = connection_host or host
        self.certs: CertPaths | None = None
        self.http_port = http_port
        self._http_allow_remote = http_allow_remote
        if not 0 <= upload_sas_ttl <= 366 * 86400:
            raise ValueError(f"upload_sas_ttl {upload_sas_ttl!r}: expected 0 to 366 days "
                             "in seconds")
        self.upload_sas_ttl = float(upload_sas_ttl)
        self._uploads = UploadRegistry()
        self._blobs = BlobStore(self.state_dir / "blobs", upload_container,
                                on_write=self._uploads.blob_written)
        self._runner = LoopThread("iotdev-hub")
        self._servers: list[Any] = []
        self._device_api: DeviceAPI | None = None
        self._compose(Store(self.state_dir))

    def _compose(self, store: Store) -> None:
        """Build the parts over ``store`` (checks the service API's address)."""
        self._store = store
        self.identity = IdentityChecks(store, self._host_names, time.time)
        previous: Router | None = getattr(self, "router", None)
        self.router = Router(store, self.identity)
        self.router.observers = () if previous is None else previous.observers
        self.edge = EdgeRuntime(store=store, router=self.router, state_dir=self.state_dir,
                                hub_name=self.hub_name, gateway_host=self._gateway_host,
                                ca_pem=lambda: self.ca_pem)
        self.router.output_router = self.edge.route
        self._service = None if self.http_port is None else ServiceAPI(
            self.host, store=store, backend=self.router, uploads=self.uploads,
            allow_remote=self._http_allow_remote)

    def _gateway_host(self) -> str:
        return self.connection_host

    def _host_names(self) -> set[str]:
        return {self.hub_name, "localhost", self.host, self.connection_host}

    @property
    def store(self) -> Store:
        """The hub's ``Store``."""
        return self._store

    @store.setter
    def store(self, store: Store) -> None:
        if self._runner.running:
            raise RuntimeError("replace the store before start()")
        self._compose(store)

    # ----------------------------------------------------------- observers

    @property
    def observers(self) -> tuple[HubObserver, ...]:
        """The observers (``_observer.HubObserver``), in call order.  Setting
        it replaces them all (``monkeypatch.setattr`` restores the old ones)."""
        return self.router.observers

    @observers.setter
    def observers(self, observers: tuple[HubObserver, ...]) -> None:
        self.router.observers = tuple(observers)

    def add_observer(self, observer: HubObserver) -> None:
        """See and steer the device protocol (``HubObserver``).

        Args:
            observer: called on the hub's loop thread for connects,
                subscribes, publishes, twin requests and closes; its
                ``Verdict`` can hold an answer back or abort the connection.
        """
        self.router.observers = (*self.router.observers, observer)

    def remove_observer(self, observer: HubObserver) -> None:
        """Stop calling ``observer`` (no error if it was not added)."""
        self.router.observers = tuple(o for o in self.router.observers if o is not observer)

    # ----------------------------------------------------------- lifecycle

    @property
    def ca_pem(self) -> str:
        assert self.certs is not None, "start() the hub first"
        return self.certs.ca_pem

    @property
    def ca_path(self) -> Path:
        assert self.certs is not None, "start() the hub first"
        return self.certs.ca_cert

    def start(self, timeout: float = 30.0) -> Hub:
        """Start listening (on a background thread); returns once ready.

        Raises:
            OSError: a port cannot be bound.
            TimeoutError: not ready within ``timeout`` seconds.
        """
        self._runner.start(self._listen, timeout)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Close every connection and listener; idempotent."""
        self._runner.stop(self._shutdown, timeout)

    def __enter__(self) -> Hub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> Hub:
        import asyncio

        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(self, *exc: object) -> None:
        import asyncio

        await asyncio.to_thread(self.stop)

    def server_context(self) -> ssl.SSLContext:
        """A server TLS context with the hub's certificate that asks for (and
        verifies against the hub's CA) an optional client certificate."""
        assert self.certs is not None, "start() the hub first"
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.certs.server_cert, self.certs.server_key)
        # X.509 devices present a certificate from our CA; SAS devices none.
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.load_verify_locations(self.certs.ca_cert)
        # No session tickets: IoT Hub speaks TLS 1.2 without session resumption
        # (Microsoft's "TLS support in IoT Hub"; azure-c-shared-utility#64) and
        # our clients never resume.  A TLS 1.3 NewSessionTicket also leaves OpenSSL's
        # 16 KB handshake buffer allocated in every client connection (a fleet
        # of 5,000 clients in one process: 80 MB that IoT Hub never costs them).
        ctx.num_tickets = 0
        ctx.options |= ssl.OP_NO_TICKET
        return ctx

    async def _listen(self) -> None:
        import asyncio

        self.certs = ensure_certificates(
            self.state_dir, hub_name=self.hub_name,
            addresses=[a for a in {self.host, "127.0.0.1"} if _is_ip(a)],
        )
        ctx = self.server_context()
        loop = asyncio.get_running_loop()
        router = self.router
        router.start()

        def mqtt(tls: Any = None, websocket: bool = False) -> DeviceConnection:
            return DeviceConnection(router, ctx, websocket=websocket, tls=tls,
                                    connect_timeout=self.connect_timeout,
                                    max_packet_size=self.max_packet_size)

        server = await loop.create_server(mqtt, self.host, self.mqtt_port)
        self._servers.append(server)
        self.mqtt_port = server.sockets[0].getsockname()[1]
        if self.ws_port is not None:
            api = self._device_api = DeviceAPI(
                store=self.store, identity=self.identity, uploads=self._uploads,
                blobs=self._blobs, host_name=self._device_host_name,
                sas_ttl=self.upload_sas_ttl)
            ws = await loop.create_server(
                lambda: DevicePortConnection(
                    ctx, api, connect_timeout=self.connect_timeout,
                    mqtt=lambda tls: mqtt(tls, websocket=True)),
                self.host, self.ws_port)
            self._servers.append(ws)
            self.ws_port = ws.sockets[0].getsockname()[1]
            self.edge.add_method_routes(api)
        await self.edge.start()
        # --- service API (HTTPS) ---
        if self._service is not None and self.http_port is not None:
            self.http_port = await self._service.start(self.http_port, self.certs)
        log.info("hub %s listening on %s: MQTT %s, device port (MQTT/WS, HTTPS) %s, "
                 "service API %s; state in %s", self.hub_name, self.host, self.mqtt_port,
                 self.ws_port if self.ws_port is not None else "off",
                 self.http_port if self._service is not None else "off", self.state_dir)

    def _device_host_name(self) -> str:
        """The ``hostName`` of storage info: the connection host, with the
        device port unless it is 443."""
        host = self.connection_host
        if ":" in host and not host.startswith("["):
            host = f"[{host}]"
        return host if self.ws_port == 443 else f"{host}:{self.ws_port}"

    async def _shutdown(self) -> None:
        # --- service API (HTTPS) ---
        if self._service is not None:
            await self._service.stop()
        if self._device_api is not None:
            self._device_api.stop()
        await self.edge.stop()
        self.router.close_all("the hub is stopping")
        for server in self._servers:
            server.close()
            await server.wait_closed()
        self._servers.clear()

    # ---------------------------------------------------------- registry

    def add_device(self, device_id: str, *, primary_key: str | None = None,
                   secondary_key: str | None = None, enabled: bool = True) -> Device:
        """Register a symmetric-key device (keys generated when not given).

        Returns:
            The new ``Device``.

        Raises:
            ValueError: a bad or duplicate id, or a bad key.
        """
        return self.store.add_device(device_id, primary_key=primary_key,
                                     secondary_key=secondary_key, enabled=enabled)

    def add_module(self, device_id: str, module_id: str, *, primary_key: str | None = None,
                   secondary_key: str | None = None) -> Module:
        """Register a symmetric-key module of a registered device (keys
        generated when not given).

        Returns:
            The new ``Module``.

        Raises:
            DeviceNotFoundError: no such device.
            ValueError: a bad or duplicate module id, or a bad key.
        """
        managed = MANAGED_BY if device_id in self.edge.devices else None
        return self.store.add_module(device_id, module_id, primary_key=primary_key,
                                     secondary_key=secondary_key, managed_by=managed)

    # ---------------------------------------------------------- Edge mode

    def add_edge_device(self, device_id: str, *, routes: dict[str, str] | None = None,
                        workload_socket: Path | str | None = None) -> EdgeDevice:
        """Play the IoT Edge runtime of a device (``_edge.py``): its workload
        API on a Unix socket, its routes, module-to-module methods.  The
        device is registered (with generated keys) when it is not yet.

        Args:
            device_id: the Edge device.
            routes: route name -> ``FROM <source> [WHERE <condition>] INTO <sink>``
                (replacing the stored ones when given).
            workload_socket: the workload API's socket (default
                ``state_dir/edge/{device}/workload.sock``).

        Returns:
            The ``EdgeDevice`` (persisted in ``edge.json``).

        Raises:
            ValueError: a bad device id or route.
        """
        if self.store.device(device_id) is None:
            self.store.add_device(device_id)
        device = self.edge.add_device(
            device_id, routes=routes,
            workload_socket=None if workload_socket is None else Path(workload_socket))
        if self._runner.running:
            self._runner.call(self.edge.start_device(device))
        return device

    def set_routes(self, device_id: str, routes: dict[str, str]) -> None:
        """Replace an Edge device's routes (name -> route text).

        Raises:
            KeyError: not an Edge device.
            ValueError: a bad route (nothing changes).
        """
        self.edge.set_routes(device_id, routes)

    def edge_environment(self, device_id: str, module_id: str) -> dict[str, str]:
        """The ``IOTEDGE_*`` environment variables of a module of an Edge
        device: with them, ``create_from_edge_environment()`` connects here.

        Raises:
            KeyError: not an Edge device, or no such module.
        """
        return self.edge.environment(device_id, module_id)

    def add_x509_device(self, device_id: str, *, enabled: bool = True) -> DeviceCertificate:
        """Register an X.509 device with a certificate issued by the hub's CA;
        returns the certificate and key files (``iotdev.X509(cert, key)``).

        Raises:
            RuntimeError: the hub has not started (the CA is made on start).
        """
        if self.certs is None:
            raise RuntimeError("start() the hub first: the CA is made on start")
        cert = issue_device_certificate(self.state_dir, device_id)
        self.store.add_device(device_id, x509_thumbprints=(cert.sha256_thumbprint,),
                              enabled=enabled)
        return cert

    def add_x509_module(self, device_id: str, module_id: str) -> DeviceCertificate:
        """Register an X.509 module of a registered device, with a certificate
        issued by the hub's CA (subject ``{device}/{module}``).

        Returns:
            The certificate and key files.

        Raises:
            RuntimeError: the hub has not started.
            DeviceNotFoundError: no such device.
        """
        if self.certs is None:
            raise RuntimeError("start() the hub first: the CA is made on start")
        cert = issue_device_certificate(self.state_dir, device_id, module_id=module_id)
        self.store.add_module(device_id, module_id,
                              x509_thumbprints=(cert.sha256_thumbprint,))
        return cert

    def set_enabled(self, device_id: str, enabled: bool) -> None:
        """Enable or disable a device; disabling drops its connections (and
        its modules').

        Raises:
            DeviceNotFoundError: no such device.
        """
        self.store.set_enabled(device_id, enabled)
        if not enabled:
            self._runner.call_soon(lambda: self.router.drop(device_id, "device disabled"))

    def connection_string(self, device_id: str, *, host: str | None = None,
                          module_id: str | None = None) -> str:
        """The connection string of a device, or of one of its modules.

        Raises:
            KeyError: no such device or module.
            ValueError: the identity uses X.509 (no key).
        """
        if module_id is not None:
            module = self.store.module(device_id, module_id)
            if module is None:
                raise KeyError(f"no module {module_id!r} on device {device_id!r}")
            return module.connection_string(host or self.connection_host)
        device = self.store.device(device_id)
        if device is None:
            raise KeyError(f"no device {device_id!r}")
        return device.connection_string(host or self.connection_host)

    def is_connected(self, device_id: str, module_id: str | None = None) -> bool:
        """Whether the device (or module) has a live connection."""
        return self.router.is_connected(device_id, module_id)

    @property
    def _devices(self) -> dict[str, Any]:
        """Per-identity sessions (kept for tests that peek at a connection)."""
        return self.router.sessions

    # ---------------------------------------------------------- file uploads

    @property
    def upload_container(self) -> str:
        return self._blobs.container

    def uploads(self, device_id: str | None = None) -> list[FileUpload]:
        """File uploads the devices started with a storage info request.

        Args:
            device_id: only this device's (default: every device's).

        Returns:
            ``FileUpload`` records (frozen), oldest first: status ``pending``,
            ``succeeded``, ``failed`` or ``expired``, the blob's size and path.
        """
        return self._uploads.list(device_id, now=time.time())

    # ---------------------------------------------------------- telemetry

    def telemetry(self, device_id: str | None = None) -> list[TelemetryMessage]:
        """Telemetry received so far (from every device, or one device and its modules)."""
        return self.store.telemetry(device_id)

    def wait_for_telemetry(self, device_id: str | None, count: int,
                           timeout: float = 10.0) -> list[TelemetryMessage]:
        """Block until at least ``count`` messages arrived; return them.

        Raises:
            TimeoutError: fewer arrived within ``timeout`` seconds.
        """
        return self._runner.call(self._wait_telemetry(device_id, count, timeout), timeout + 5)

    async def await_telemetry(self, device_id: str | None, count: int,
                              timeout: float = 10.0) -> list[TelemetryMessage]:
        """``wait_for_telemetry`` for asyncio callers."""
        return await self._runner.acall(self._wait_telemetry(device_id, count, timeout))

    async def _wait_telemetry(self, device_id: str | None, count: int,
                              timeout: float) -> list[TelemetryMessage]:
        if not await self.router.wait_for_telemetry(
                lambda: len(self.store.telemetry(device_id)) >= count, timeout):
            have = len(self.store.telemetry(device_id))
            raise TimeoutError(f"{have} of {count} telemetry messages from "
                               f"{device_id or 'every device'} within {timeout} s")
        return self.store.telemetry(device_id)

    # ---------------------------------------------------------- cloud-to-device

    def send_c2d(self, device_id: str, body: bytes | str, **kw: Any) -> C2DMessage:
        """Queue a cloud-to-device message (``message_id``, ``correlation_id``,
        ``properties``, ``ttl``, ``ack``); delivered at QoS 1 when the device is
        subscribed, kept until its PUBACK, re-delivered after a reconnect."""
        return self._runner.call(self.router.send_c2d(device_id, _bytes(body), **kw))

    async def asend_c2d(self, device_id: str, body: bytes | str, **kw: Any) -> C2DMessage:
        """``send_c2d`` for asyncio callers."""
        return await self._runner.acall(self.router.send_c2d(device_id, _bytes(body), **kw))

    # ---------------------------------------------------------- methods

    def invoke_method(self, device_id: str, method_name: str, payload: Any = None,
                      timeout: float = 30.0, *, module_id: str | None = None) -> MethodResult:
        """Call a direct method of a device (or of its module ``module_id``).

        Returns:
            ``MethodResult(status, payload)``.  A client that is not connected
            (or not subscribed to methods) gives 404, no answer within
            ``timeout`` gives 504, as the service does.
        """
        return self._runner.call(
            self.router.invoke(device_id, method_name, payload, timeout, module_id),
            timeout + 10)

    async def ainvoke_method(self, device_id: str, method_name: str, payload: Any = None,
                             timeout: float = 30.0, *,
                             module_id: str | None = None) -> MethodResult:
        """``invoke_method`` for asyncio callers."""
        return await self._runner.acall(
            self.router.invoke(device_id, method_name, payload, timeout, module_id))

    # ---------------------------------------------------------- twins

    def get_twin(self, device_id: str, module_id: str | None = None) -> dict[str, Any]:
        """The device (or module) twin as the service shows it (properties and tags)."""
        return self.router.twin_document(device_id, module_id)

    def patch_desired(self, device_id: str, patch: dict[str, Any], *,
                      module_id: str | None = None) -> dict[str, Any]:
        """Update desired properties; a subscribed device (or module) gets the patch.

        Returns:
            The notification (the patch with its ``$version``).

        Raises:
            TwinError: the patch breaks a twin rule (nothing changes).
        """
        return self._runner.call(self.router.patch_desired(device_id, patch, module_id))

    async def apatch_desired(self, device_id: str, patch: dict[str, Any], *,
                             module_id: str | None = None) -> dict[str, Any]:
        """``patch_desired`` for asyncio callers."""
        return await self._runner.acall(self.router.patch_desired(device_id, patch, module_id))


def _bytes(body: bytes | str) -> bytes:
    return body.encode("utf-8") if isinstance(body, str) else bytes(body)


def _is_ip(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True
