"""The hub's device protocol: what IoT Hub does with each MQTT event of an
authenticated device or module connection, and the service operations that
reach a connected client (cloud-to-device, direct methods, desired patches,
module inputs).

Theory of operation
-------------------
Every ``DeviceConnection`` (``_conn.py``) hands its engine events to
``Router.on_event`` and its end to ``Router.on_closed``; everything runs on
the hub's event loop.  The router keeps one ``_Session`` per identity
(``device`` or ``device/module``): the live connection, the MQTT session kept
across connections (CleanSession 0), the granted subscriptions, and the
deliveries in flight (engine token -> C2D lock token or module-input id).

What it checks, as IoT Hub does: the CONNECT through ``IdentityChecks``
(``_identity.py``; CONNACK 5 and the reason in the log otherwise); a token
that expires while connected closes the connection; a second connection of
the same identity drops the first.  Only the identity's own topics may be
subscribed (others get 0x80, at most 5 subscriptions, QoS 2 granted as 1); a
PUBLISH at QoS 2, to a topic the identity may not use, or over 256 KB closes
the connection.

Module messages (with or without an output name, ``$.on``) go to
``output_router`` when one is set (the Edge mode's routes, ``_edge.py``); what
it does not take is recorded as telemetry like everything else a client sends
upstream.

Observers (``_observer.py``) see connects, subscribes, publishes, twin
requests and closes, and may hold an answer back or abort the connection.
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from iotdev_mqtt import (
    Connect,
    ConnectReceived,
    Event,
    MessageReceived,
    PublishAcked,
    ServerConnection,
    Session,
    State,
    SubscribeReceived,
    UnsubscribeReceived,
)

from .. import _hub_topics as topics
from .._auth import parse_username
from ._identity import IdentityChecks
from ._observer import HubObserver, Verdict
from ._records import C2DMessage, Device, TelemetryMessage, TwinError, identity_key
from ._store import Store

__all__ = ["InputMessage", "MethodResult", "RoutedConnection", "Router"]

log = logging.getLogger(__name__)

D2C_LIMIT = 262_144
MAX_SUBSCRIPTIONS = 5
MAX_PENDING_INPUTS = 1000


@dataclass(frozen=True)
class MethodResult:
    """What ``invoke_method`` returns, shaped like the service's answer."""

    status: int
    payload: Any


@dataclass(frozen=True, slots=True)
class InputMessage:
    """A message for a module's input (Edge routes): body and property bag."""

    input_name: str
    body: bytes
    system_properties: dict[str, str]
    properties: dict[str, str | None]
    message_id: str


class RoutedConnection(Protocol):
    """What the router needs of a connection (``_conn.DeviceConnection``)."""

    engine: ServerConnection
    loop: asyncio.AbstractEventLoop
    device_id: str | None
    module_id: str | None
    peer: str
    messages_in: int

    @property
    def transport_name(self) -> str: ...

    def peer_certificate(self) -> bytes | None: ...

    def flush(self) -> None: ...

    def close(self, reason: str) -> None: ...

    def abort(self) -> None: ...

    def handle(self, events: list[Event]) -> None: ...


OutputRouter = Callable[[str, str, str | None, TelemetryMessage], bool]
"""``(device_id, module_id, output_name, message) -> handled``: the Edge routes."""


class _Session:
    """What the hub keeps per identity across connections."""

    def __init__(self) -> None:
        self.connection: RoutedConnection | None = None
        self.session: Session | None = None
        self.subscriptions: dict[str, int] = {}
        self.c2d_tokens: dict[int, str] = {}  # engine token -> C2D lock token
        self.input_tokens: dict[int, str] = {}  # engine token -> input message id
        self.inputs: collections.deque[InputMessage] = collections.deque()



def model_id_of(username: str | None) -> str:
    """Plug and Play: the ``model-id`` of a CONNECT user name ("" if none)."""
    try:
        _, _, params = parse_username(username or "")
    except ValueError:
        return ""
    return params.get("model-id", "")

class Router:
    """The device protocol (see the module docstring).

    Args:
        store: identities, twins, C2D queues and telemetry.
        identity: the CONNECT checks.
        clock: epoch seconds (``time.time``).
    """

    def __init__(self, store: Store, identity: IdentityChecks,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.identity = identity
        self.clock = clock
        self.observers: tuple[HubObserver, ...] = ()
        self.output_router: OutputRouter | None = None
        self.sessions: dict[str, _Session] = {}
        # Plug and Play: the model id of each identity's last CONNECT (the
        # twin's ``modelId``; "" for one that announces none).
        self.model_ids: dict[str, str] = {}
        # Waiters of wait_for_telemetry: woken by the next message (no task or
        # lock per message when nobody waits, as with 5,000 devices sending).
        self._telemetry_waiters: set[asyncio.Future[None]] = set()
        self._pending_methods: dict[str, asyncio.Future[MethodResult]] = {}
        self._expiry_timers: dict[RoutedConnection, asyncio.TimerHandle] = {}

    def start(self) -> None:
        """Called on the hub's (new) event loop before it serves: loop-bound
        state is made afresh, so a stopped hub can start again."""
        self._telemetry_waiters = set()

    # ----------------------------------------------------------- observers

    def _ask(self, call: Callable[[HubObserver], Verdict | None]) -> Verdict:
        verdict = Verdict.PROCEED
        for observer in self.observers:
            try:
                answer = call(observer)
            except Exception:
                log.exception("hub observer %r failed (ignored)", observer)
                continue
            if answer is Verdict.ABORT:
                return answer
            if answer is Verdict.HOLD:
                verdict = answer
        return verdict

    def _tell(self, call: Callable[[HubObserver], None]) -> None:
        for observer in self.observers:
            try:
                call(observer)
            except Exception:
                log.exception("hub observer %r failed (ignored)", observer)

    # ----------------------------------------------------------- events

    def on_event(self, conn: RoutedConnection, event: Event) -> None:
        """One engine event of ``conn``."""
        if isinstance(event, MessageReceived):
            self._on_publish(conn, event)
        elif isinstance(event, ConnectReceived):
            self._authenticate(conn, event.connect)
        elif isinstance(event, SubscribeReceived):
            self._on_subscribe(conn, event)
        elif isinstance(event, PublishAcked):
            self._on_acked(conn, event)
        elif isinstance(event, UnsubscribeReceived):
            state = self._session_of(conn)
            if state is not None:
                for topic_filter in event.topic_filters:
                    state.subscriptions.pop(topic_filter, None)
        # ClientDisconnected, ConnectionLost: the connection closes; on_closed cleans up

    def _session_of(self, conn: RoutedConnection) -> _Session | None:
        if conn.device_id is None:
            return None
        return self.sessions.get(identity_key(conn.device_id, conn.module_id))

    def _authenticate(self, conn: RoutedConnection, packet: Connect) -> None:
        engine = conn.engine
        now = conn.loop.time()
        result = self.identity.connect(packet, conn.peer_certificate)
        identity = result.identity
        if identity is not None:
            conn.device_id = identity.device_id
            conn.module_id = None if isinstance(identity, Device) else identity.module_id
        self._tell(lambda o: o.on_connect(conn, packet, result.refusal))
        if identity is None:
            log.info("refused %s from %s over %s: %s", packet.client_id or "''", conn.peer,
                     conn.transport_name, result.refusal)
            engine.refuse(5, now=now)
            conn.flush()
            conn.close(f"refused: {result.refusal}")
            return
        key = identity_key(identity.device_id, conn.module_id)
        state = self.sessions.setdefault(key, _Session())
        if state.connection is not None and state.connection is not conn:
            state.connection.close("another connection of the same identity")  # takeover
        state.connection = conn
        self.model_ids[key] = model_id_of(packet.username)  # Plug and Play
        resume = not packet.clean_session and state.session is not None
        if packet.clean_session:
            state.session = None
            state.subscriptions.clear()
            state.c2d_tokens.clear()
            state.input_tokens.clear()
        events = engine.accept(now=now, session_present=resume,
                               session=state.session if resume else None)
        state.session = engine.session
        log.info("connected %s over %s from %s (%s, keep-alive %d s%s)", key,
                 conn.transport_name, conn.peer,
                 "X.509" if result.expiry is None else "SAS",
                 packet.keep_alive, ", session resumed" if resume else "")
        conn.handle(events[1:])
        conn.flush()
        if result.expiry is not None:
            delay = max(0.0, result.expiry - self.clock())
            self._expiry_timers[conn] = conn.loop.call_later(
                delay, conn.close, "the SAS token expired")
        self._deliver(key)

    def _may_subscribe(self, conn: RoutedConnection, topic_filter: str) -> bool:
        common = ("$iothub/methods/POST/#", "$iothub/twin/res/#",
                  "$iothub/twin/PATCH/properties/desired/#")
        device_id = conn.device_id or ""
        if conn.module_id is None:
            own = f"devices/{device_id}/messages/devicebound/#"
        else:
            own = f"devices/{device_id}/modules/{conn.module_id}/inputs/#"
        return topic_filter == own or topic_filter in common

    def _on_subscribe(self, conn: RoutedConnection, event: SubscribeReceived) -> None:
        subscriptions = list(event.subscriptions)
        verdict = self._ask(lambda o: o.on_subscribe(conn, subscriptions))
        if verdict is Verdict.ABORT:
            conn.abort()
            return
        if verdict is Verdict.HOLD:
            return
        state = self._session_of(conn)
        codes = []
        for topic_filter, qos in subscriptions:
            if state is None or not self._may_subscribe(conn, topic_filter):
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
        log.info("%s subscribed: %s", _name(conn), ", ".join(
            f"{f} ({'refused' if c == 0x80 else f'QoS {c}'})"
            for (f, _), c in zip(subscriptions, codes, strict=True)))
        self._tell(lambda o: o.on_subscribed(conn, subscriptions, codes))
        if conn.device_id:
            self._deliver(identity_key(conn.device_id, conn.module_id))

    def _on_publish(self, conn: RoutedConnection, message: MessageReceived) -> None:
        device_id = conn.device_id
        if device_id is None:
            return
        verdict = self._ask(lambda o: o.on_publish(conn, message))
        if verdict is Verdict.ABORT:
            conn.abort()
            return
        if verdict is Verdict.HOLD:
            return
        if message.qos == 2:
            conn.close("QoS 2 is not supported by IoT Hub")
            return
        if message.qos == 1 and message.packet_id is not None:
            # Accepted: PUBACK (queued before any answer, as on receipt).
            conn.engine.ack(message.packet_id, now=conn.loop.time())
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
            self._on_twin(conn, twin, message.payload)
            return
        conn.close(f"publish to a topic {_name(conn)} may not use: {topic!r}")

    def _on_telemetry(self, conn: RoutedConnection, device_id: str,
                      parsed: tuple[str, str | None, str], message: MessageReceived) -> None:
        topic_device, module_id, bag = parsed
        if topic_device != device_id or module_id != conn.module_id:
            conn.close(f"telemetry for another identity "
                       f"({identity_key(topic_device, module_id)!r})")
            return
        pairs = topics.decode_property_bag(bag)
        system = {k: v or "" for k, v in pairs if k.startswith("$.")}
        props = {k: v for k, v in pairs if not k.startswith("$.")}
        size = len(message.payload) + sum(len(v or "") for v in system.values()) + sum(
            len(k) + len(v or "") for k, v in props.items())
        if size > D2C_LIMIT:
            conn.close(f"telemetry of {size} bytes is over the 256 KB limit")
            return
        conn.messages_in += 1
        if _milestone(conn.messages_in):
            log.info("%s: %d telemetry message%s on this connection", _name(conn),
                     conn.messages_in, "" if conn.messages_in == 1 else "s")
        record = TelemetryMessage(
            device_id=device_id, module_id=module_id, body=message.payload,
            system_properties=system, properties=props, enqueued=self.clock())
        if module_id is not None and self.output_router is not None and \
                self.output_router(device_id, module_id, system.get("$.on") or None, record):
            return
        self.record_telemetry(record)

    def record_telemetry(self, record: TelemetryMessage) -> None:
        """Keep a message that reached the hub (``Hub.telemetry``) and wake waiters."""
        self.store.record_telemetry(record)
        if self._telemetry_waiters:
            waiters, self._telemetry_waiters = self._telemetry_waiters, set()
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_result(None)

    def _on_twin(self, conn: RoutedConnection, request: tuple[str, str], body: bytes) -> None:
        kind, rid = request
        verdict = self._ask(lambda o: o.on_twin_request(conn, kind, rid, body))
        if verdict is Verdict.ABORT:
            conn.abort()
            return
        if verdict is Verdict.HOLD:
            return
        device_id = conn.device_id or ""
        now = conn.loop.time()
        if kind == "GET":
            doc = self.store.twin(device_id, conn.module_id).properties_document()
            conn.engine.publish(topics.twin_response_topic(200, rid),
                                json.dumps(doc).encode("utf-8"), 0, now=now)
        else:
            try:
                patch = json.loads(body.decode("utf-8"))
                if not isinstance(patch, dict):
                    raise TwinError(400, "the reported patch must be a JSON object")
                version = self.store.patch_reported(device_id, patch, module_id=conn.module_id)
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

    def _on_acked(self, conn: RoutedConnection, event: PublishAcked) -> None:
        state = self._session_of(conn)
        if state is None:
            return
        lock = state.c2d_tokens.pop(event.token, None)
        if lock is not None and conn.device_id:
            self.store.complete_c2d(conn.device_id, lock)
        done = state.input_tokens.pop(event.token, None)
        if done is not None:
            for index, message in enumerate(state.inputs):
                if message.message_id == done:
                    del state.inputs[index]
                    break

    def on_closed(self, conn: RoutedConnection, reason: str) -> None:
        """``conn`` closed (for ``reason``): forget it, keep its session (unless clean)."""
        timer = self._expiry_timers.pop(conn, None)
        if timer is not None:
            timer.cancel()
        state = self._session_of(conn)
        if state is not None and state.connection is conn:
            state.connection = None
            packet = conn.engine.connect_packet
            if packet is not None and packet.clean_session:
                # A clean session lasts as long as its connection [MQTT-3.1.2-6]:
                # the next CleanSession=0 CONNECT finds none [MQTT-3.2.2-3].
                state.session = None
                state.subscriptions.clear()
                state.c2d_tokens.clear()
                state.input_tokens.clear()
            else:
                state.session = conn.engine.session
            # Deliveries in flight stay mapped by token: the session re-sends them.
            log.info("disconnected %s (%s, %d messages received): %s", _name(conn),
                     conn.transport_name, conn.messages_in, reason)
        self._tell(lambda o: o.on_close(conn, reason))

    # ----------------------------------------------------------- deliveries

    def _deliver(self, key: str) -> None:
        state = self.sessions.get(key)
        conn = state.connection if state else None
        if state is None or conn is None or conn.engine.state is not State.CONNECTED:
            return
        device_id = conn.device_id or ""
        if conn.module_id is None:
            self._deliver_c2d(state, conn, device_id)
        else:
            self._deliver_inputs(state, conn, device_id, conn.module_id)
        conn.flush()

    def _deliver_c2d(self, state: _Session, conn: RoutedConnection, device_id: str) -> None:
        if f"devices/{device_id}/messages/devicebound/#" not in state.subscriptions:
            return
        in_flight = set(state.c2d_tokens.values())
        for message in self.store.pending_c2d(device_id, now=self.clock()):
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

    def _deliver_inputs(self, state: _Session, conn: RoutedConnection, device_id: str,
                        module_id: str) -> None:
        if topics.input_subscribe_filter(device_id, module_id) not in state.subscriptions:
            return
        in_flight = set(state.input_tokens.values())
        for message in state.inputs:
            if message.message_id in in_flight:
                continue
            system = sorted(message.system_properties.items())
            custom: dict[object, object] = {k: v for k, v in message.properties.items()}
            bag = topics.encode_property_bag(system, custom)
            topic = topics.input_topic(device_id, module_id, message.input_name, bag)
            token = conn.engine.publish(topic, message.body, 1, now=conn.loop.time())
            state.input_tokens[token] = message.message_id

    def deliver_input(self, device_id: str, module_id: str, message: InputMessage) -> None:
        """Queue a message for a module's input; sent at QoS 1 once the module
        is connected and subscribed to its inputs, kept until its PUBACK (at
        most ``MAX_PENDING_INPUTS`` per module: the oldest goes first)."""
        key = identity_key(device_id, module_id)
        state = self.sessions.setdefault(key, _Session())
        if len(state.inputs) >= MAX_PENDING_INPUTS:
            dropped = state.inputs.popleft()
            log.warning("input queue of %s is full: dropped message %s", key,
                        dropped.message_id)
        state.inputs.append(message)
        self._deliver(key)

    # ----------------------------------------------------------- service operations

    def is_connected(self, device_id: str, module_id: str | None = None) -> bool:
        """Whether the identity has a live connection."""
        state = self.sessions.get(identity_key(device_id, module_id))
        return state is not None and state.connection is not None

    def set_enabled(self, device_id: str, enabled: bool) -> None:
        """Enable or disable a device; disabling drops its (and its modules') connections.

        Raises:
            DeviceNotFoundError: no such device.
        """
        self.store.set_enabled(device_id, enabled)
        if not enabled:
            self.drop(device_id, "device disabled")

    def drop(self, device_id: str, reason: str) -> None:
        """Close every connection of the device and of its modules."""
        for key, state in list(self.sessions.items()):
            if (key == device_id or key.startswith(device_id + "/")) and \
                    state.connection is not None:
                state.connection.close(reason)

    def close_all(self, reason: str) -> None:
        """Close every connection (the hub is stopping)."""
        for state in list(self.sessions.values()):
            if state.connection is not None:
                state.connection.close(reason)

    async def wait_for_telemetry(self, ready: Callable[[], bool], timeout: float) -> bool:
        """Wait until ``ready()`` (re-checked at each new message); ``False``
        on time-out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not ready():
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            waiter = loop.create_future()
            self._telemetry_waiters.add(waiter)
            try:
                await asyncio.wait_for(waiter, remaining)
            except asyncio.TimeoutError:
                return False
            finally:
                self._telemetry_waiters.discard(waiter)
        return True

    async def send_c2d(self, device_id: str, body: bytes, **kw: Any) -> C2DMessage:
        """Queue a cloud-to-device message and deliver it if the device can take it.

        Raises:
            KeyError: no such device; as ``Store.enqueue_c2d`` otherwise.
        """
        if self.store.device(device_id) is None:
            raise KeyError(f"no device {device_id!r}")
        message = self.store.enqueue_c2d(device_id, body, now=self.clock(), **kw)
        self._deliver(device_id)
        return message

    async def invoke(self, device_id: str, name: str, payload: Any, timeout: float,
                     module_id: str | None = None) -> MethodResult:
        """Call a direct method of a device or module (404 offline, 504 time-out)."""
        key = identity_key(device_id, module_id)
        state = self.sessions.get(key)
        conn = state.connection if state else None
        if conn is None or state is None or "$iothub/methods/POST/#" not in state.subscriptions:
            return MethodResult(404, {"errorCode": 404103, "message":
                                      f"{_kind(module_id)} {key} is not online"})
        rid = uuid.uuid4().hex[:16]
        fut: asyncio.Future[MethodResult] = asyncio.get_running_loop().create_future()
        self._pending_methods[rid] = fut
        body = b"" if payload is None else json.dumps(payload).encode("utf-8")
        conn.engine.publish(topics.method_request_topic(name, rid), body, 0,
                            now=conn.loop.time())
        conn.flush()
        try:
            return await asyncio.wait_for(fut, timeout)
        except asyncio.TimeoutError:
            return MethodResult(504, {"errorCode": 504101, "message":
                                      f"timed out waiting for the response from {key}"})
        finally:
            self._pending_methods.pop(rid, None)

    def twin_document(self, device_id: str, module_id: str | None = None) -> dict[str, Any]:
        """The twin as the service shows it (properties and tags)."""
        twin = self.store.twin(device_id, module_id)
        doc: dict[str, Any] = {"deviceId": device_id}
        if module_id is not None:
            doc["moduleId"] = module_id
        doc["modelId"] = self.model_ids.get(identity_key(device_id, module_id), "")
        doc.update({"tags": dict(twin.tags), "properties": twin.properties_document()})
        return doc

    async def patch_desired(self, device_id: str, patch: dict[str, Any],
                            module_id: str | None = None) -> dict[str, Any]:
        """Update desired properties; a subscribed device or module gets the patch."""
        notification = self.store.patch_desired(device_id, patch, module_id=module_id)
        state = self.sessions.get(identity_key(device_id, module_id))
        if state and state.connection and any(
            f.startswith("$iothub/twin/PATCH/properties/desired/") for f in state.subscriptions
        ):
            conn = state.connection
            conn.engine.publish(topics.twin_desired_patch_topic(notification["$version"]),
                                json.dumps(notification).encode("utf-8"), 0,
                                now=conn.loop.time())
            conn.flush()
        return notification


def _name(conn: RoutedConnection) -> str:
    return identity_key(conn.device_id or "?", conn.module_id)


def _milestone(count: int) -> bool:
    """1, 10, 100, 1000...: the counts worth an INFO line."""
    while count % 10 == 0:
        count //= 10
    return count == 1


def _kind(module_id: str | None) -> str:
    return "device" if module_id is None else "module"
