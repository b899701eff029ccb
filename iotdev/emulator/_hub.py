"""The local IoT Hub: listeners, authentication and the device-facing protocol
(telemetry, cloud-to-device, direct methods, twin), with a service-side API.

Theory of operation
-------------------
The hub runs one asyncio event loop on a background thread (so sync and async
tests can both drive it).  Every device transport is a ``DeviceConnection``
(server-side TLS, optionally WebSocket, and ``iotdev_mqtt.ServerConnection``),
whose engine events come to ``Hub._on_event`` on the loop.  Service calls
(``send_c2d``, ``invoke_method``, ``patch_desired``...) are submitted to the loop
with ``run_coroutine_threadsafe`` and their results awaited from the caller's
thread; the ``a``-prefixed variants await them from another event loop.

What the hub checks, as IoT Hub does: client id = device id, user name
``{host}/{device}/?api-version=...``, password = a SAS token whose ``sr`` names
the device under one of the hub's names (its hub name, ``localhost``, the bound
address) and whose signature verifies with the device's primary or secondary
key and whose expiry is in the future (CONNACK 5 otherwise; an unknown or
disabled device also gets 5); a token that expires while connected closes the
connection.  A second connection of the same device drops the first.  Only the
IoT Hub topics may be subscribed (others get 0x80, at most 5 subscriptions,
QoS 2 granted as 1); a PUBLISH at QoS 2, to a topic the device may not use, or
over 256 KB closes the connection.

The device port (``ws_port``) serves MQTT over WebSocket and, on the same TLS
port as IoT Hub, the device HTTP API: file upload and the blob endpoint
(``_conn.DevicePortConnection``, ``_files.py``, ``_blobs.py``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import threading
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from iotdev_mqtt import (
    ClientDisconnected,
    ConnectionLost,
    ConnectReceived,
    Event,
    MessageReceived,
    PublishAcked,
    Session,
    State,
    SubscribeReceived,
    UnsubscribeReceived,
)

from .. import _hub_topics as topics
from .._auth import SasTokenError, parse_username, verify_sas_token
from ._blobs import BlobStore
from ._certs import CertPaths, ensure_certificates
from ._conn import DeviceConnection, DevicePortConnection
from ._files import DEFAULT_CONTAINER, DEFAULT_SAS_TTL, DeviceAPI, FileUpload, UploadRegistry
from ._service import ServiceAPI  # service API (HTTPS)
from ._store import C2DMessage, Device, Store, TelemetryMessage, TwinError
from ._x509 import DeviceCertificate, issue_device_certificate, thumbprints

__all__ = ["Hub", "MethodResult"]

log = logging.getLogger(__name__)

T = TypeVar("T")

D2C_LIMIT = 262_144
MAX_SUBSCRIPTIONS = 5


@dataclass(frozen=True)
class MethodResult:
    """What ``invoke_method`` returns, shaped like the service's answer."""

    status: int
    payload: Any


class _DeviceState:
    """What the hub keeps per device across connections."""

    def __init__(self) -> None:
        self.connection: DeviceConnection | None = None
        self.session: Session | None = None
        self.subscriptions: dict[str, int] = {}
        self.c2d_tokens: dict[int, str] = {}  # engine token -> C2D lock token


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
        self.store = Store(self.state_dir)
        self.certs: CertPaths | None = None
        self._devices: dict[str, _DeviceState] = {}
        self._pending_methods: dict[str, asyncio.Future[MethodResult]] = {}
        self._telemetry_event: asyncio.Condition | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._servers: list[asyncio.base_events.Server] = []
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._expiry_timers: dict[DeviceConnection, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        # --- service API (HTTPS): checks the address now, listens in _listen ---
        self.http_port = http_port
        self._service = None if http_port is None else ServiceAPI(
            self, allow_remote=http_allow_remote)
        # --- file upload: the device HTTP API on ws_port (_files.py, _blobs.py) ---
        if not 0 <= upload_sas_ttl <= 366 * 86400:
            raise ValueError(f"upload_sas_ttl {upload_sas_ttl!r}: expected 0 to 366 days "
                             "in seconds")
        self.upload_sas_ttl = float(upload_sas_ttl)
        self._uploads = UploadRegistry()
        self._blobs = BlobStore(self.state_dir / "blobs", upload_container,
                                on_write=self._uploads.blob_written)
        self._device_api: DeviceAPI | None = None

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
        """Start listening (on a background thread); returns once ready."""
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name="iotdev-hub", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise TimeoutError("the hub did not start in time")
        if self._start_error is not None:
            raise self._start_error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Close every connection and listener; idempotent."""
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        fut = asyncio.run_coroutine_threadsafe(self._shutdown(), loop)
        try:
            fut.result(timeout)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout)
            self._thread = None
            self._loop = None

    def __enter__(self) -> Hub:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> Hub:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.stop)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._listen())
        except BaseException as exc:
            self._start_error = exc
            self._started.set()
            loop.close()
            return
        self._started.set()
        try:
            loop.run_forever()
        finally:
            loop.close()

    async def _listen(self) -> None:
        self._telemetry_event = asyncio.Condition()
        self.certs = ensure_certificates(
            self.state_dir, hub_name=self.hub_name,
            addresses=[a for a in {self.host, "127.0.0.1"} if _is_ip(a)],
        )
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.certs.server_cert, self.certs.server_key)
        # X.509 devices present a certificate from our CA; SAS devices none.
        ctx.verify_mode = ssl.CERT_OPTIONAL
        ctx.load_verify_locations(self.certs.ca_cert)
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: DeviceConnection(self, ctx, websocket=False), self.host, self.mqtt_port)
        self._servers.append(server)
        self.mqtt_port = server.sockets[0].getsockname()[1]
        if self.ws_port is not None:
            api = self._device_api = DeviceAPI(self)
            ws = await loop.create_server(
                lambda: DevicePortConnection(self, ctx, api), self.host, self.ws_port)
            self._servers.append(ws)
            self.ws_port = ws.sockets[0].getsockname()[1]
        # --- service API (HTTPS) ---
        if self._service is not None and self.http_port is not None:
            self.http_port = await self._service.start(self.http_port)

    async def _shutdown(self) -> None:
        # --- service API (HTTPS) ---
        if self._service is not None:
            await self._service.stop()
        if self._device_api is not None:
            self._device_api.stop()
        for state in self._devices.values():
            if state.connection is not None:
                state.connection.close("the hub is stopping")
        for server in self._servers:
            server.close()
            await server.wait_closed()
        self._servers.clear()

    def _call(self, coro: Coroutine[Any, Any, T], timeout: float | None = 60.0) -> T:
        loop = self._loop
        if loop is None:
            coro.close()
            raise RuntimeError("the hub is not running: call start()")
        return asyncio.run_coroutine_threadsafe(coro, loop).result(timeout)

    async def _acall(self, coro: Coroutine[Any, Any, T]) -> T:
        loop = self._loop
        if loop is None:
            coro.close()
            raise RuntimeError("the hub is not running: call start()")
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, loop))

    # ---------------------------------------------------------- service API

    def add_device(self, device_id: str, *, primary_key: str | None = None,
                   secondary_key: str | None = None, enabled: bool = True) -> Device:
        """Register a symmetric-key device (keys generated when not given)."""
        return self.store.add_device(device_id, primary_key=primary_key,
                                     secondary_key=secondary_key, enabled=enabled)

    def set_enabled(self, device_id: str, enabled: bool) -> None:
        """Enable or disable a device; disabling drops its connection."""
        self.store.set_enabled(device_id, enabled)
        if not enabled and self._loop is not None:
            self._loop.call_soon_threadsafe(self._drop, device_id, "device disabled")

    def connection_string(self, device_id: str, *, host: str | None = None) -> str:
        device = self.store.device(device_id)
        if device is None:
            raise KeyError(f"no device {device_id!r}")
        return device.connection_string(host or self.connection_host)

    def is_connected(self, device_id: str) -> bool:
        state = self._devices.get(device_id)
        return state is not None and state.connection is not None

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

    def telemetry(self, device_id: str | None = None) -> list[TelemetryMessage]:
        """Telemetry received so far (from every device, or one)."""
        return self.store.telemetry(device_id)

    def wait_for_telemetry(self, device_id: str | None, count: int,
                           timeout: float = 10.0) -> list[TelemetryMessage]:
        """Block until at least ``count`` messages arrived; return them."""
        return self._call(self._wait_telemetry(device_id, count, timeout), timeout + 5)

    async def await_telemetry(self, device_id: str | None, count: int,
                              timeout: float = 10.0) -> list[TelemetryMessage]:
        return await self._acall(self._wait_telemetry(device_id, count, timeout))

    async def _wait_telemetry(self, device_id: str | None, count: int,
                              timeout: float) -> list[TelemetryMessage]:
        cond = self._telemetry_event
        assert cond is not None
        async with cond:
            await asyncio.wait_for(
                cond.wait_for(lambda: len(self.store.telemetry(device_id)) >= count), timeout)
        return self.store.telemetry(device_id)

    def send_c2d(self, device_id: str, body: bytes | str, **kw: Any) -> C2DMessage:
        """Queue a cloud-to-device message (``message_id``, ``correlation_id``,
        ``properties``, ``ttl``, ``ack``); delivered at QoS 1 when the device is
        subscribed, kept until its PUBACK, re-delivered after a reconnect."""
        return self._call(self._send_c2d(device_id, _bytes(body), **kw))

    async def asend_c2d(self, device_id: str, body: bytes | str, **kw: Any) -> C2DMessage:
        return await self._acall(self._send_c2d(device_id, _bytes(body), **kw))

    async def _send_c2d(self, device_id: str, body: bytes, **kw: Any) -> C2DMessage:
        if self.store.device(device_id) is None:
            raise KeyError(f"no device {device_id!r}")
        message = self.store.enqueue_c2d(device_id, body, now=time.time(), **kw)
        self._deliver_c2d(device_id)
        return message

    def invoke_method(self, device_id: str, method_name: str, payload: Any = None,
                      timeout: float = 30.0) -> MethodResult:
        """Call a direct method; ``MethodResult(status, payload)``.  A device
        that is not connected (or not subscribed to methods) gives 404, no
        answer within ``timeout`` gives 504, as the service does."""
        return self._call(self._invoke(device_id, method_name, payload, timeout), timeout + 10)

    async def ainvoke_method(self, device_id: str, method_name: str, payload: Any = None,
                             timeout: float = 30.0) -> MethodResult:
        return await self._acall(self._invoke(device_id, method_name, payload, timeout))

    async def _invoke(self, device_id: str, name: str, payload: Any,
                      timeout: float) -> MethodResult:
        state = self._devices.get(device_id)
        conn = state.connection if state else None
        if conn is None or state is None or "$iothub/methods/POST/#" not in state.subscriptions:
            return MethodResult(404, {"errorCode": 404103, "message":
                                      f"device {device_id} is not online"})
        rid = uuid.uuid4().hex[:16]
        fut: asyncio.Future[MethodResult] = asyncio.get_running_loop().create_future()
        self._pending_methods[rid] = fut
        body = b"" if payload is None else json.dumps(payload).encode("utf-8")
        conn.engine.publish(topics.method_request_topic(name, rid), body, 0,
                            now=conn.loop.time())
        conn.flush()
        try:
            return await asyncio.wait_for(fut, timeout)
        except (TimeoutError, asyncio.TimeoutError):  # distinct on 3.10
            return MethodResult(504, {"errorCode": 504101, "message":
                                      f"timed out waiting for the response from {device_id}"})
        finally:
            self._pending_methods.pop(rid, None)

    def get_twin(self, device_id: str) -> dict[str, Any]:
        """The device twin as the service shows it (properties and tags)."""
        return self._call(self._get_twin(device_id))

    async def _get_twin(self, device_id: str) -> dict[str, Any]:
        twin = self.store.twin(device_id)
        doc = twin.properties_document()
        return {"deviceId": device_id, "tags": dict(twin.tags), "properties": doc}

    def patch_desired(self, device_id: str, patch: dict[str, Any]) -> dict[str, Any]:
        """Update desired properties; a subscribed device gets the patch."""
        return self._call(self._patch_desired(device_id, patch))

    async def apatch_desired(self, device_id: str, patch: dict[str, Any]) -> dict[str, Any]:
        return await self._acall(self._patch_desired(device_id, patch))

    async def _patch_desired(self, device_id: str, patch: dict[str, Any]) -> dict[str, Any]:
        notification = self.store.patch_desired(device_id, patch)
        state = self._devices.get(device_id)
        if state and state.connection and any(
            f.startswith("$iothub/twin/PATCH/properties/desired/") for f in state.subscriptions
        ):
            conn = state.connection
            conn.engine.publish(topics.twin_desired_patch_topic(notification["$version"]),
                                json.dumps(notification).encode("utf-8"), 0,
                                now=conn.loop.time())
            conn.flush()
        return notification

    # ------------------------------------------------------- device protocol

    def _on_event(self, conn: DeviceConnection, event: Event) -> None:
        if isinstance(event, MessageReceived):
            self._on_publish(conn, event)
        elif isinstance(event, ConnectReceived):
            self._authenticate(conn, event)
        elif isinstance(event, SubscribeReceived):
            self._on_subscribe(conn, event)
        elif isinstance(event, PublishAcked):
            self._on_acked(conn, event)
        elif isinstance(event, UnsubscribeReceived):
            state = self._devices.get(conn.device_id or "")
            if state is not None:
                for topic_filter in event.topic_filters:
                    state.subscriptions.pop(topic_filter, None)
        elif isinstance(event, ClientDisconnected | ConnectionLost):
            pass  # the connection closes; _on_closed cleans up

    def _authenticate(self, conn: DeviceConnection, event: ConnectReceived) -> None:
        packet = event.connect
        engine = conn.engine
        now = conn.loop.time()
        device = self.store.device(packet.client_id)
        reason = None
        expiry = None
        if device is None:
            reason = f"unknown device {packet.client_id!r}"
        elif not device.enabled:
            reason = f"device {device.device_id} is disabled"
        elif packet.username is None:
            reason = "no user name"
        elif packet.password is None:
            reason = self._check_certificate(conn, device)
            if reason is None:
                reason = self._check_username(packet.username, packet.client_id)
        else:
            reason = self._check_username(packet.username, packet.client_id)
            if reason is None:
                reason, expiry = self._check_token(device, packet.password.decode(
                    "utf-8", "replace"))
        if reason is not None:
            log.info("refused %s: %s", conn.peer, reason)
            engine.refuse(5, now=now)
            conn.flush()
            conn.close(f"refused: {reason}")
            return
        assert device is not None
        state = self._devices.setdefault(device.device_id, _DeviceState())
        if state.connection is not None and state.connection is not conn:
            state.connection.close("another connection of the same device")  # takeover
        state.connection = conn
        conn.device_id = device.device_id
        resume = not packet.clean_session and state.session is not None
        if packet.clean_session:
            state.session = None
            state.subscriptions.clear()
            state.c2d_tokens.clear()
        events = engine.accept(now=now, session_present=resume,
                               session=state.session if resume else None)
        state.session = engine.session
        conn.handle(events[1:])
        conn.flush()
        if expiry is not None:
            delay = max(0.0, expiry - time.time())
            self._expiry_timers[conn] = conn.loop.call_later(
                delay, conn.close, "the SAS token expired")
        self._deliver_c2d(device.device_id)

    @staticmethod
    def _check_username(username: str, client_id: str) -> str | None:
        try:
            _, named, _ = parse_username(username)
        except ValueError as exc:
            return f"bad user name: {exc}"
        if named != client_id:
            return "the user name names another client id"
        return None

    @staticmethod
    def _check_certificate(conn: DeviceConnection, device: Device) -> str | None:
        if not device.x509_thumbprints:
            return "no password, and the device has no X.509 thumbprint"
        tls = conn.stack.layers[0]
        der = tls.ssl_object.getpeercert(binary_form=True)  # type: ignore[attr-defined]
        if not der:
            return "no password and no client certificate"
        return Hub._check_thumbprint(der, device)

    @staticmethod
    def _check_thumbprint(der: bytes, device: Device) -> str | None:
        if not set(thumbprints(der)) & set(device.x509_thumbprints):
            return "the client certificate's thumbprint is not registered for the device"
        return None

    def add_x509_device(self, device_id: str, *, enabled: bool = True) -> DeviceCertificate:
        """Register an X.509 device with a certificate issued by the hub's CA;
        returns the certificate and key files (``iotdev.X509(cert, key)``)."""
        if self.certs is None:
            raise RuntimeError("start() the hub first: the CA is made on start")
        cert = issue_device_certificate(self.state_dir, device_id)
        self.store.add_device(device_id, x509_thumbprints=(cert.sha256_thumbprint,),
                              enabled=enabled)
        return cert

    def _check_token(self, device: Device, token: str) -> tuple[str | None, float | None]:
        error: str | None = "no key"
        for host in {self.hub_name, "localhost", self.host, self.connection_host}:
            uri = f"{host}/devices/{device.device_id}"
            for key in (device.primary_key, device.secondary_key):
                if not key:
                    continue
                try:
                    parsed = verify_sas_token(token, key, resource_uri=uri, now=time.time())
                except SasTokenError as exc:
                    error = str(exc)
                    continue
                return None, float(parsed.expiry)
        return f"SAS token refused: {error}", None

    def _on_subscribe(self, conn: DeviceConnection, event: SubscribeReceived) -> None:
        state = self._devices.get(conn.device_id or "")
        codes = []
        for topic_filter, qos in event.subscriptions:
            if state is None or not self._may_subscribe(conn.device_id or "", topic_filter):
                codes.append(0x80)
                continue
            if topic_filter not in state.subscriptions and \
                    len(state.subscriptions) >= MAX_SUBSCRIPTIONS:
                codes.append(0x80)
                continue
            granted = min(qos, 1)
            state.subscriptions[topic_filter] = granted
            codes.append(granted)
        conn.engine.suback(event.packet_id, codes, now=conn.loop.time())
        conn.flush()
        if conn.device_id:
            self._deliver_c2d(conn.device_id)

    @staticmethod
    def _may_subscribe(device_id: str, topic_filter: str) -> bool:
        return topic_filter in (
            f"devices/{device_id}/messages/devicebound/#",
            "$iothub/methods/POST/#",
            "$iothub/twin/res/#",
            "$iothub/twin/PATCH/properties/desired/#",
        )

    def _on_publish(self, conn: DeviceConnection, message: MessageReceived) -> None:
        device_id = conn.device_id
        if device_id is None:
            return
        if message.qos == 2:
            conn.close("QoS 2 is not supported by IoT Hub")
            return
        topic = message.topic
        telemetry = topics.parse_telemetry_topic(topic)
        if telemetry is not None:
            self._on_telemetry(conn, device_id, telemetry, message)
            return
        method = topics.parse_method_response_topic(topic)
        if method is not None:
            status, rid = method
            fut = self._pending_methods.get(rid)
            if fut is not None and not fut.done():
                try:
                    payload = json.loads(message.payload.decode("utf-8") or "null")
                except (UnicodeDecodeError, ValueError):
                    payload = None
                    status = 400
                fut.set_result(MethodResult(status, payload))
            return
        twin = topics.parse_twin_request_topic(topic)
        if twin is not None:
            self._on_twin(conn, device_id, twin, message.payload)
            return
        conn.close(f"publish to a topic a device may not use: {topic!r}")

    def _on_telemetry(self, conn: DeviceConnection, device_id: str,
                      parsed: tuple[str, str | None, str], message: MessageReceived) -> None:
        topic_device, module_id, bag = parsed
        if topic_device != device_id:
            conn.close(f"telemetry for another device ({topic_device!r})")
            return
        pairs = topics.decode_property_bag(bag)
        system = {k: v or "" for k, v in pairs if k.startswith("$.")}
        props = {k: v for k, v in pairs if not k.startswith("$.")}
        size = len(message.payload) + sum(len(v or "") for v in system.values()) + sum(
            len(k) + len(v or "") for k, v in props.items())
        if size > D2C_LIMIT:
            conn.close(f"telemetry of {size} bytes is over the 256 KB limit")
            return
        self.store.record_telemetry(TelemetryMessage(
            device_id=device_id, module_id=module_id, body=message.payload,
            system_properties=system, properties=props, enqueued=time.time()))
        cond = self._telemetry_event
        if cond is not None:
            task = asyncio.ensure_future(_notify(cond))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _on_twin(self, conn: DeviceConnection, device_id: str, request: tuple[str, str],
                 body: bytes) -> None:
        kind, rid = request
        now = conn.loop.time()
        if kind == "GET":
            doc = self.store.twin(device_id).properties_document()
            conn.engine.publish(topics.twin_response_topic(200, rid),
                                json.dumps(doc).encode("utf-8"), 0, now=now)
        else:
            try:
                patch = json.loads(body.decode("utf-8"))
                if not isinstance(patch, dict):
                    raise TwinError(400, "the reported patch must be a JSON object")
                version = self.store.patch_reported(device_id, patch)
            except (UnicodeDecodeError, ValueError) as exc:
                conn.engine.publish(topics.twin_response_topic(400, rid),
                                    json.dumps({"message": str(exc)}).encode(), 0, now=now)
            except TwinError as exc:
                conn.engine.publish(topics.twin_response_topic(exc.status, rid),
                                    json.dumps({"message": str(exc)}).encode(), 0, now=now)
            else:
                conn.engine.publish(topics.twin_response_topic(204, rid, version), b"", 0,
                                    now=now)
        conn.flush()

    def _deliver_c2d(self, device_id: str) -> None:
        state = self._devices.get(device_id)
        conn = state.connection if state else None
        if state is None or conn is None or conn.engine.state is not State.CONNECTED:
            return
        if f"devices/{device_id}/messages/devicebound/#" not in state.subscriptions:
            return
        in_flight = set(state.c2d_tokens.values())
        for message in self.store.pending_c2d(device_id, now=time.time()):
            if message.lock_token in in_flight:
                continue
            system = [("$.mid", message.message_id),
                      ("$.to", f"/devices/{device_id}/messages/deviceBound")]
            if message.correlation_id:
                system.append(("$.cid", message.correlation_id))
            custom: dict[object, object] = {k: v for k, v in message.properties.items()}
            if message.ack:
                custom["iothub-ack"] = message.ack
            bag = topics.encode_property_bag(system, custom)
            token = conn.engine.publish(f"devices/{device_id}/messages/devicebound/{bag}",
                                        message.body, 1, now=conn.loop.time())
            state.c2d_tokens[token] = message.lock_token
        conn.flush()

    def _on_acked(self, conn: DeviceConnection, event: PublishAcked) -> None:
        state = self._devices.get(conn.device_id or "")
        if state is None:
            return
        lock = state.c2d_tokens.pop(event.token, None)
        if lock is not None and conn.device_id:
            self.store.complete_c2d(conn.device_id, lock)

    def _on_closed(self, conn: DeviceConnection, reason: str) -> None:
        timer = self._expiry_timers.pop(conn, None)
        if timer is not None:
            timer.cancel()
        state = self._devices.get(conn.device_id or "")
        if state is not None and state.connection is conn:
            state.connection = None
            state.session = conn.engine.session
            # Deliveries in flight stay mapped by token: the session re-sends them.

    def _drop(self, device_id: str, reason: str) -> None:
        state = self._devices.get(device_id)
        if state is not None and state.connection is not None:
            state.connection.close(reason)


async def _notify(cond: asyncio.Condition) -> None:
    async with cond:
        cond.notify_all()


def _bytes(body: bytes | str) -> bytes:
    return body.encode("utf-8") if isinstance(body, str) else bytes(body)


def _is_ip(text: str) -> bool:
    import ipaddress

    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True

