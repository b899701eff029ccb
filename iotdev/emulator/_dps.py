"""The emulator's Device Provisioning Service: a DPS on its own listener
(MQTT over TLS, and over WebSocket on ``/$iothub/websocket``), next to the hub.

Theory of operation
-------------------
``DpsLogic`` is the service, sans-IO: ``authenticate()`` checks a CONNECT and
``handle()`` answers one request; time comes in as an argument.  ``Dps`` runs
it: one asyncio loop on a background thread, the emulator's
``DeviceConnection`` (TLS, WebSocket, ``iotdev_mqtt.ServerConnection``) per
device, and the emulator's CA (``ensure_certificates`` in the same state
folder, so clients trust the hub and the DPS with one ``ca.pem``).

Collaborators are explicit: the ``EnrollmentStore`` (``_enrollments.py``), the
``allocate`` callable that creates the device identity on the hub when a
registration is assigned (``hub_allocator(hub)`` for an emulator ``Hub``), and
the host name reported as ``assignedHub``.

What it checks and answers, as DPS does:
- client id = registration id; user name ``{idScope}/registrations/{id}/...``
  with our id scope; password a SAS token for ``{idScope}/registrations/{id}``
  (with or without ``skn``) signed by the individual enrollment's key or the
  device key derived from a group's key; or no password and a client
  certificate whose thumbprint an X.509 enrollment lists and whose CN is the
  registration id.  Anything else: CONNACK 5.
- register: ``202 assigning`` with ``retry-after``; each poll then ``202
  assigning`` ``assigning_polls`` more times, then ``200 assigned`` (the device
  is created on the hub at that moment) or ``200 disabled`` for a disabled
  enrollment or group.  The device's ``payload`` is echoed back in
  ``registrationState.payload`` (as a custom allocation policy may do).
- ``throttle(n, retry_after)`` answers the next ``n`` requests with 429.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import ssl
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from iotdev_mqtt import ConnectReceived, Event, MessageReceived, SubscribeReceived

from .. import _dps_topics as topics
from .._auth import SasTokenError, derive_device_key, verify_sas_token
from ._certs import CertPaths, ensure_certificates
from ._conn import DeviceConnection
from ._enrollments import Enrollment, EnrollmentStore, GroupEnrollment, Registration
from ._loop import LoopThread
from ._x509 import thumbprints

if TYPE_CHECKING:
    from ._hub import Hub

__all__ = ["Attestation", "DeviceCredentials", "Dps", "DpsLogic", "hub_allocator"]

log = logging.getLogger(__name__)

MAX_OPERATIONS = 10_000
"""Registrations in progress the DPS remembers (a device that never polls
leaves one behind)."""


@dataclass(frozen=True, slots=True)
class DeviceCredentials:
    """How the assigned device authenticates to the hub."""

    primary_key: str | None = None
    secondary_key: str | None = None
    x509_thumbprints: tuple[str, ...] = ()
    initial_twin: dict[str, Any] | None = None  # {"tags": {...}, "desired": {...}}


Allocate = Callable[[str, DeviceCredentials], None]


@dataclass(frozen=True, slots=True)
class Attestation:
    """Who a connection proved to be."""

    registration_id: str
    enrollment: Enrollment | None = None
    group: GroupEnrollment | None = None

    @property
    def enabled(self) -> bool:
        source = self.enrollment or self.group
        return source is not None and source.enabled

    def device_id(self) -> str:
        return self.enrollment.device_id if self.enrollment else self.registration_id

    def credentials(self) -> DeviceCredentials:
        if self.enrollment is not None:
            return DeviceCredentials(self.enrollment.primary_key, self.enrollment.secondary_key,
                                     self.enrollment.x509_thumbprints,
                                     self.enrollment.initial_twin or None)
        assert self.group is not None
        return DeviceCredentials(derive_device_key(self.group.primary_key, self.registration_id),
                                 derive_device_key(self.group.secondary_key,
                                                   self.registration_id))


def _iso(epoch: float) -> str:
    moment = datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _cn(der: bytes) -> str | None:
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    names = x509.load_der_x509_certificate(der).subject.get_attributes_for_oid(
        NameOID.COMMON_NAME)
    return str(names[0].value) if names else None


class DpsLogic:
    """The provisioning service, sans-IO.

    Args:
        store: enrollments and registration records.
        id_scope: the id scope devices must name.
        assigned_hub: the host name answered as ``assignedHub``.
        allocate: creates (or updates) the device identity on the hub.
        retry_after: seconds in the ``retry-after`` of ``assigning`` answers.
        assigning_polls: ``assigning`` answers to polls before the result.
    """

    def __init__(self, store: EnrollmentStore, *, id_scope: str, assigned_hub: str,
                 allocate: Allocate, retry_after: float = 1.0, assigning_polls: int = 0) -> None:
        self.store = store
        self.id_scope = id_scope
        self.assigned_hub = assigned_hub
        self.allocate = allocate
        self.retry_after = retry_after
        self.assigning_polls = assigning_polls
        self.throttled = 0
        self.throttle_retry_after = 1.0
        self.requests = 0
        self._operations: dict[str, tuple[Attestation, Any, int]] = {}

    def authenticate(self, client_id: str, username: str | None, password: bytes | None,
                     cert_der: bytes | None, now: float) -> Attestation | str:
        """Check a CONNECT.

        Returns:
            The ``Attestation``, or the reason to refuse (text).
        """
        if username is None:
            return "no user name"
        self.store.refresh()  # enrollments edited by the CLI meanwhile
        try:
            scope, registration_id, _ = topics.parse_username(username)
        except ValueError as exc:
            return str(exc)
        if scope != self.id_scope:
            return f"unknown id scope {scope!r}"
        if registration_id != client_id:
            return "the user name names another registration id than the client id"
        enrollment = self.store.enrollments.get(registration_id)
        if password is None:
            if enrollment is None or not enrollment.x509_thumbprints:
                return f"no password, and no X.509 enrollment for {registration_id!r}"
            if not cert_der:
                return "no password and no client certificate"
            if not set(thumbprints(cert_der)) & set(enrollment.x509_thumbprints):
                return "the client certificate is not the enrollment's"
            if _cn(cert_der) != registration_id:
                return "the certificate's CN is not the registration id"
            return Attestation(registration_id, enrollment=enrollment)
        token = password.decode("utf-8", "replace")
        uri = topics.sas_resource_uri(scope, registration_id)
        candidates: list[tuple[str, Attestation]] = []
        if enrollment is not None and enrollment.primary_key:
            attestation = Attestation(registration_id, enrollment=enrollment)
            candidates += [(k, attestation) for k in (enrollment.primary_key,
                                                       enrollment.secondary_key) if k]
        elif enrollment is None:
            for group in self.store.groups.values():
                attestation = Attestation(registration_id, group=group)
                candidates += [(derive_device_key(k, registration_id), attestation)
                               for k in (group.primary_key, group.secondary_key)]
        reason = f"no enrollment for {registration_id!r}"
        for key, attestation in candidates:
            try:
                verify_sas_token(token, key, resource_uri=uri, now=now)
            except SasTokenError as exc:
                reason = f"SAS token refused: {exc}"
                continue
            return attestation
        return reason

    def throttle(self, count: int, retry_after: float = 1.0) -> None:
        """Answer the next ``count`` requests with 429 and this ``retry-after``."""
        self.throttled = count
        self.throttle_retry_after = retry_after

    def handle(self, who: Attestation, topic: str, payload: bytes,
               now: float) -> list[tuple[str, bytes]] | None:
        """Answer one request.

        Returns:
            The answers to publish, or ``None`` for a topic a device may not
            publish to (the connection should close).
        """
        try:
            parsed = topics.parse_request_topic(topic)
        except ValueError:
            return None
        if parsed is None:
            return None
        kind, props = parsed
        rid = props.get("$rid", "")
        self.requests += 1
        if self.throttled > 0:
            self.throttled -= 1
            return [self._error(429, rid, 429001, "Operations are being throttled",
                                retry_after=self.throttle_retry_after)]
        if kind == "register":
            return [self._register(who, rid, payload)]
        return [self._poll(who, rid, props.get("operationId", ""), now)]

    # ------------------------------------------------------------------ inside

    def _answer(self, status: int, rid: str, body: dict[str, Any],
                retry_after: float | None = None) -> tuple[str, bytes]:
        return (topics.response_topic(status, rid, retry_after),
                json.dumps(body).encode("utf-8"))

    def _error(self, status: int, rid: str, code: int, message: str,
               retry_after: float | None = None) -> tuple[str, bytes]:
        body = {"errorCode": code, "trackingId": str(uuid.uuid4()), "message": message,
                "timestampUtc": _iso(time.time())}
        return self._answer(status, rid, body, retry_after)

    def _register(self, who: Attestation, rid: str, payload: bytes) -> tuple[str, bytes]:
        try:
            document = json.loads(payload.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return self._error(400, rid, 400004, "the registration request is not JSON")
        if not isinstance(document, dict) or \
                document.get("registrationId") != who.registration_id:
            return self._error(400, rid, 400004,
                               "registrationId is missing or not the connection's")
        operation_id = f"4.{uuid.uuid4().hex[:16]}.{uuid.uuid4()}"
        if len(self._operations) >= MAX_OPERATIONS:  # abandoned ones: forget the oldest
            del self._operations[next(iter(self._operations))]
        self._operations[operation_id] = (who, document.get("payload"), self.assigning_polls)
        return self._answer(202, rid, {"operationId": operation_id, "status": "assigning"},
                            self.retry_after)

    def _poll(self, who: Attestation, rid: str, operation_id: str,
              now: float) -> tuple[str, bytes]:
        entry = self._operations.get(operation_id)
        if entry is None or entry[0].registration_id != who.registration_id:
            return self._error(404, rid, 404001, f"operation {operation_id!r} not found")
        attestation, payload, polls = entry
        if polls > 0:
            self._operations[operation_id] = (attestation, payload, polls - 1)
            return self._answer(202, rid, {"operationId": operation_id, "status": "assigning"},
                                self.retry_after)
        del self._operations[operation_id]
        registration_id = who.registration_id
        if not attestation.enabled:
            state = {"registrationId": registration_id, "status": "disabled",
                     "createdDateTimeUtc": _iso(now), "lastUpdatedDateTimeUtc": _iso(now),
                     "errorCode": 401002, "errorMessage": "the enrollment is disabled"}
            return self._answer(200, rid, {"operationId": operation_id, "status": "disabled",
                                           "registrationState": state})
        device_id = attestation.device_id()
        previous = self.store.registrations.get(registration_id)
        try:
            self.allocate(device_id, attestation.credentials())
        except Exception as exc:  # the hub refused the identity: DPS reports failed
            log.warning("allocating %s failed: %s", device_id, exc)
            state = {"registrationId": registration_id, "status": "failed",
                     "errorCode": 500000, "errorMessage": f"allocation failed: {exc}"}
            return self._answer(200, rid, {"operationId": operation_id, "status": "failed",
                                           "registrationState": state})
        record = Registration(
            registration_id=registration_id, device_id=device_id,
            assigned_hub=self.assigned_hub,
            created=previous.created if previous else _iso(now), updated=_iso(now),
            etag=uuid.uuid4().hex, count=(previous.count + 1) if previous else 1,
            payload=payload,
            group_id=attestation.group.group_id if attestation.group else None)
        self.store.record(record)
        log.info("DPS assigned %s (device %s) to %s (registration %d)", registration_id,
                 device_id, record.assigned_hub, record.count)
        state = {"registrationId": registration_id, "createdDateTimeUtc": record.created,
                 "assignedHub": record.assigned_hub, "deviceId": device_id,
                 "status": "assigned",
                 "substatus": "deviceDataMigrated" if previous else "initialAssignment",
                 "lastUpdatedDateTimeUtc": record.updated, "etag": record.etag,
                 "payload": payload}
        return self._answer(200, rid, {"operationId": operation_id, "status": "assigned",
                                       "registrationState": state})


def hub_allocator(hub: Hub) -> Allocate:
    """The ``allocate`` callable for an emulator ``Hub``: creates the device
    (with the enrollment's initial twin: ``tags`` and ``desired``), or replaces
    it when its credentials differ (a device-data reset)."""

    def allocate(device_id: str, credentials: DeviceCredentials) -> None:
        device = hub.store.device(device_id)
        if device is not None:
            if (device.primary_key, device.secondary_key) == (
                    credentials.primary_key, credentials.secondary_key) and \
                    set(credentials.x509_thumbprints) <= set(device.x509_thumbprints):
                if not device.enabled:
                    hub.set_enabled(device_id, True)
                return
            hub.store.remove_device(device_id)
        hub.store.add_device(device_id, primary_key=credentials.primary_key,
                             secondary_key=credentials.secondary_key,
                             x509_thumbprints=credentials.x509_thumbprints)
        twin = credentials.initial_twin or {}
        if twin.get("tags"):
            hub.store.set_tags(device_id, twin["tags"])
        if twin.get("desired"):
            hub.store.patch_desired(device_id, twin["desired"])

    return allocate


class Dps:
    """A local Device Provisioning Service.

    Args:
        allocate: creates the device identity on the hub (``hub_allocator(hub)``).
        assigned_hub: the hub host name answered as ``assignedHub``.
        id_scope: the id scope (``0ne00000000`` by default).
        host: the address to listen on.
        mqtt_port: MQTT over TLS (8883 by default; 0 picks a free port).
        ws_port: MQTT over WebSocket over TLS (443 by default; 0 picks a free
            port; ``None`` disables it).
        state_dir: the folder of the CA and ``dps.json`` (share the hub's,
            so one ``ca.pem`` covers both).
        dps_name: a DNS name for the DPS in its server certificate.
        retry_after, assigning_polls: see ``DpsLogic``.

    Use ``Dps.for_hub(hub, ...)`` to wire it to an emulator ``Hub``.
    """

    connect_timeout = 30.0
    max_packet_size = 512 * 1024

    def __init__(self, *, allocate: Allocate, assigned_hub: str, state_dir: Path | str,
                 id_scope: str = "0ne00000000", host: str = "127.0.0.1",
                 mqtt_port: int = 8883, ws_port: int | None = 443,
                 dps_name: str = "iotdev-dps.local", retry_after: float = 1.0,
                 assigning_polls: int = 0) -> None:
        self.state_dir = Path(state_dir)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.id_scope = id_scope
        self.host = host
        self.mqtt_port = mqtt_port
        self.ws_port = ws_port
        self.dps_name = dps_name
        self.enrollments = EnrollmentStore(self.state_dir)
        self.logic = DpsLogic(self.enrollments, id_scope=id_scope, assigned_hub=assigned_hub,
                              allocate=allocate, retry_after=retry_after,
                              assigning_polls=assigning_polls)
        self.certs: CertPaths | None = None
        self._who: dict[DeviceConnection, Attestation] = {}
        self._loop_thread = LoopThread("iotdev-dps")
        self._servers: list[asyncio.base_events.Server] = []

    @classmethod
    def for_hub(cls, hub: Hub, **kwargs: Any) -> Dps:
        """A DPS that assigns to ``hub`` (started), in the hub's state folder."""
        kwargs.setdefault("state_dir", hub.state_dir)
        kwargs.setdefault("assigned_hub", hub.connection_host)
        return cls(allocate=hub_allocator(hub), **kwargs)

    # ----------------------------------------------------------- service API

    def add_enrollment(self, registration_id: str, **kwargs: Any) -> Enrollment:
        """Add an individual enrollment (see ``EnrollmentStore.add_enrollment``)."""
        return self.enrollments.add_enrollment(registration_id, **kwargs)

    def add_x509_enrollment(self, registration_id: str, *,
                            enabled: bool = True) -> tuple[Enrollment, Any]:
        """Issue a device certificate (CN = registration id) from the emulator's
        CA and enroll its thumbprint; returns the enrollment and the
        ``DeviceCertificate`` (``cert_file``, ``key_file``)."""
        from ._x509 import issue_device_certificate

        if self.certs is None:
            raise RuntimeError("start() the DPS first: the CA is made on start")
        cert = issue_device_certificate(self.state_dir, registration_id)
        enrollment = self.enrollments.add_enrollment(
            registration_id, x509_thumbprints=(cert.sha256_thumbprint,), enabled=enabled)
        return enrollment, cert

    def add_group(self, group_id: str, **kwargs: Any) -> GroupEnrollment:
        """Add a symmetric-key enrollment group."""
        return self.enrollments.add_group(group_id, **kwargs)

    def set_enabled(self, name: str, enabled: bool) -> None:
        self.enrollments.set_enabled(name, enabled)

    def throttle(self, count: int, retry_after: float = 1.0) -> None:
        """Answer the next ``count`` requests with 429 and ``retry-after``."""
        self.logic.throttle(count, retry_after)

    @property
    def ca_pem(self) -> str:
        assert self.certs is not None, "start() the DPS first"
        return self.certs.ca_pem

    # ------------------------------------------------------------- lifecycle

    def start(self, timeout: float = 30.0) -> Dps:
        """Start listening on a background thread; returns once ready."""
        self._loop_thread.start(self._listen, timeout)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Close every connection and listener; idempotent."""
        self._loop_thread.stop(self._shutdown, timeout)

    def __enter__(self) -> Dps:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def _listen(self) -> None:
        self.certs = ensure_certificates(
            self.state_dir, hub_name=self.dps_name,
            addresses=[a for a in {self.host, "127.0.0.1"} if a[:1].isdigit()])
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.certs.server_cert, self.certs.server_key)
        ctx.verify_mode = ssl.CERT_OPTIONAL  # X.509 attestation
        ctx.load_verify_locations(self.certs.ca_cert)
        ctx.num_tickets = 0  # no resumption, as the hub (Hub.server_context)
        ctx.options |= ssl.OP_NO_TICKET
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: DeviceConnection(self, ctx, websocket=False,
                                     connect_timeout=self.connect_timeout,
                                     max_packet_size=self.max_packet_size),
            self.host, self.mqtt_port)
        self._servers.append(server)
        self.mqtt_port = server.sockets[0].getsockname()[1]
        if self.ws_port is not None:
            ws = await loop.create_server(
                lambda: DeviceConnection(self, ctx, websocket=True,
                                         connect_timeout=self.connect_timeout,
                                         max_packet_size=self.max_packet_size),
                self.host, self.ws_port)
            self._servers.append(ws)
            self.ws_port = ws.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        for conn in list(self._who):
            conn.close("the DPS is stopping")
        for server in self._servers:
            server.close()
            await server.wait_closed()
        self._servers.clear()

    # ----------------------------------------------------- connection events

    def on_event(self, conn: DeviceConnection, event: Event) -> None:
        """One engine event of ``conn`` (``_conn.ConnectionHandler``)."""
        now = conn.loop.time()
        if isinstance(event, ConnectReceived):
            packet = event.connect
            der = None
            if packet.password is None:
                der = conn.peer_certificate()
            who = self.logic.authenticate(packet.client_id, packet.username, packet.password,
                                          der, time.time())
            if isinstance(who, str):
                log.info("DPS refused %s: %s", conn.peer, who)
                conn.engine.refuse(5, now=now)
                conn.flush()
                conn.close(f"refused: {who}")
                return
            self._who[conn] = who
            conn.device_id = who.registration_id
            conn.handle(conn.engine.accept(now=now)[1:])  # DPS keeps no sessions
        elif isinstance(event, SubscribeReceived):
            codes = [min(qos, 1) if f == topics.RESPONSE_SUBSCRIBE_FILTER else 0x80
                     for f, qos in event.subscriptions]
            conn.engine.suback(event.packet_id, codes, now=now)
        elif isinstance(event, MessageReceived):
            known = self._who.get(conn)
            answers = None if known is None or event.qos == 2 else \
                self.logic.handle(known, event.topic, event.payload, time.time())
            if answers is None:
                conn.close(f"publish to {event.topic!r} refused")
                return
            if event.qos == 1 and event.packet_id is not None:  # the PUBACK is ours to send
                conn.engine.ack(event.packet_id, now=now)
            for topic, body in answers:
                conn.engine.publish(topic, body, 1, now=now)
        conn.flush()

    def on_closed(self, conn: DeviceConnection, reason: str) -> None:
        """``conn`` closed (``_conn.ConnectionHandler``)."""
        self._who.pop(conn, None)
