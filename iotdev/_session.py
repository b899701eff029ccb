"""``HubSession``: everything an IoT Hub device or module client decides, with no
I/O: no threads, asyncio, sockets, clocks or logging.

Theory of operation
-------------------
A client is three layers.  The MQTT engine (``iotdev_mqtt.ClientConnection``)
turns packets into events; a driver (``transport/_thread.py`` or
``_asyncio.py``) owns the socket and the engine and resolves one future per
PUBLISH / SUBSCRIBE; this session sits on top and holds the *hub* behaviour,
once, for both faces (sync and asyncio) and for devices and modules alike.

The session is a pure state machine driven by its face:

* **Commands** the application asks for return what to send, as a list of
  ``Output`` objects: ``Publish`` (QoS 1), ``Subscribe`` / ``Unsubscribe``
  (features), ``Reauthorize`` (reconnect with a fresh token from the key),
  ``TokenRequired`` (ask the application, ``on_new_sastoken_required``).
* **Facts** come in from the driver: ``connected(now, token_expiry)``,
  ``disconnected(retrying)``, ``published(ref, error)``,
  ``subscribed(key, return_codes)`` / ``subscribe_failed(key, error)``,
  ``message(topic, payload)``; time comes in as ``tick(now)`` whenever
  ``next_deadline()`` passes.  They return outputs as well, and **events**:
  ``Received`` (a C2D / input message, a method request or a desired patch,
  to a handler or an inbox), ``TwinDone`` (the fate of a twin request) and
  ``Problem`` (an error for ``on_background_exception``).

The face executes outputs on its driver, feeds the driver's completions back
as facts, waits where the v2 API blocks and delivers events.  It never decides
anything the session decides:

Features.  ``messages`` (C2D for a device, ``inputs/#`` for a module),
``methods``, ``desired`` (desired-property patches, which imply ``twin``) and
``twin`` (responses to GET / PATCH) are *wanted* by the application; each is
subscribed at most once per connection (``subscribing`` -> ``subscribed``),
every wanted feature again after each reconnect.  A handler set to ``None``
unsubscribes its feature, as v2 does: a C2D message the application no
longer takes stays at the hub, a method request gets the hub's 404.

Receive mode.  As in v2 the lock is client-wide: the first handler set (even
to ``None``) locks the client to handlers, the first ``receive_*`` call to the
receive API; the other then raises ``ClientError``.

Twin requests.  A request leaves only once ``twin`` is subscribed on the
current connection (otherwise the hub drops the answer); until then it is
*held*.  Its fate across a drop follows what the hub acknowledged:

=====================  ==================================================
at the drop            after the reconnect
=====================  ==================================================
held                   sent once ``twin`` is subscribed again
sent, not PUBACKed     re-sent by the MQTT engine itself (DUP=1)
PUBACKed GET           sent again (reading twice is harmless)
PUBACKed PATCH         fails with ``ConnectionDroppedError``: it *may have
                       been applied*, and applying it twice is not harmless
any, no retry          fails with ``ConnectionDroppedError``
=====================  ==================================================

Desired refresh (``ensure_desired_properties``).  After each connection with
``desired`` wanted, one GET; its ``desired`` document is delivered as a patch
only if its ``$version`` differs from the last one delivered.

SAS renewal.  ``next_deadline()`` is the renewal time, in the same clock as the
token's expiry (``time.time()``).  A token living ``L`` seconds is renewed
``min(120 s, L / 5)`` before it expires, and never sooner than ``RENEW_FLOOR``
(5 s) after it was issued: a 1-hour token is renewed at 58 minutes, a 60 s
token after 48 s, a 6 s token after 5 s, and no ttl can make the client
reconnect more often than every 5 s (a token shorter than that expires before
it is renewed; the hub may then drop the connection, and the client reconnects
with a fresh one).  An own
key renews by reconnecting (``Reauthorize``); a user token is asked for once
(``TokenRequired``) and again only after ``update_sastoken``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from iotdev_mqtt._records import record, set_field

from . import _hub_topics as topics
from ._errors import ClientError, ConnectionDroppedError, ServiceError
from ._models import Message, MethodRequest, MethodResponse

__all__ = [
    "DESIRED", "MESSAGES", "METHODS", "TWIN", "HubSession", "Identity", "Output", "Problem",
    "Publish", "Reauthorize", "Received", "Subscribe", "TokenRequired", "TwinDone",
    "Unsubscribe",
]

MESSAGES = "messages"
METHODS = "methods"
DESIRED = "desired"
TWIN = "twin"
FEATURES = (MESSAGES, METHODS, DESIRED, TWIN)

D2C_LIMIT = 262_144
RENEW_MARGIN = 120.0  # at most this long before expiry
RENEW_FRACTION = 0.2  # of the token's lifetime, when that is shorter
RENEW_FLOOR = 5.0  # never renew sooner than this after a token was issued


@record
class Identity:
    """Whose session this is: a device, or a module of a device."""

    __match_args__ = ("device_id", "module_id")
    __slots__ = __match_args__

    device_id: str
    module_id: str | None

    def __init__(self, device_id: str, module_id: str | None = None) -> None:
        set_field(self, "device_id", device_id)
        set_field(self, "module_id", module_id)

    def messages_filter(self) -> str:
        if self.module_id:
            return topics.input_subscribe_filter(self.device_id, self.module_id)
        return topics.c2d_subscribe_filter(self.device_id)

    def topic_filter(self, feature: str) -> str:
        """The topic filter ``feature`` subscribes to."""
        if feature == MESSAGES:
            return self.messages_filter()
        return {METHODS: topics.METHOD_SUBSCRIBE_FILTER,
                DESIRED: topics.TWIN_DESIRED_SUBSCRIBE_FILTER,
                TWIN: topics.TWIN_RESPONSE_SUBSCRIBE_FILTER}[feature]


# ------------------------------------------------------------------- outputs


@record
class Publish:
    """Send ``payload`` to ``topic`` at QoS 1; report ``published(ref, error)``
    when a twin request (``ref`` is its request id) is acknowledged or fails."""

    __match_args__ = ("topic", "payload", "ref")
    __slots__ = __match_args__

    topic: str
    payload: bytes
    ref: str | None

    def __init__(self, topic: str, payload: bytes, ref: str | None = None) -> None:
        set_field(self, "topic", topic)
        set_field(self, "payload", payload)
        set_field(self, "ref", ref)


@record
class Subscribe:
    """SUBSCRIBE to ``filters`` (one per feature, QoS 1); report
    ``subscribed(key, codes)`` or ``subscribe_failed(key, error)``."""

    __match_args__ = ("key", "features", "filters")
    __slots__ = __match_args__

    key: int
    features: tuple[str, ...]
    filters: tuple[str, ...]

    def __init__(self, key: int, features: tuple[str, ...], filters: tuple[str, ...]) -> None:
        set_field(self, "key", key)
        set_field(self, "features", features)
        set_field(self, "filters", filters)


@record
class Unsubscribe:
    """UNSUBSCRIBE from ``filters`` (the features the application dropped)."""

    __match_args__ = ("features", "filters")
    __slots__ = __match_args__

    features: tuple[str, ...]
    filters: tuple[str, ...]

    def __init__(self, features: tuple[str, ...], filters: tuple[str, ...]) -> None:
        set_field(self, "features", features)
        set_field(self, "filters", filters)


@record
class Reauthorize:
    """Reconnect at once; the new CONNECT carries a token fresh from the key."""

    __match_args__ = ()
    __slots__ = __match_args__


@record
class TokenRequired:
    """Ask the application for a new SAS token (``on_new_sastoken_required``)."""

    __match_args__ = ()
    __slots__ = __match_args__


@record
class Received:
    """Deliver ``value`` of ``feature``: to its handler (``api`` false) or to the
    inbox named ``inbox`` (``messages``, ``input:{name}``, ``method:{name}``,
    ``desired``)."""

    __match_args__ = ("feature", "value", "api", "inbox")
    __slots__ = __match_args__

    feature: str
    value: Any
    api: bool
    inbox: str

    def __init__(self, feature: str, value: Any, api: bool, inbox: str) -> None:
        set_field(self, "feature", feature)
        set_field(self, "value", value)
        set_field(self, "api", api)
        set_field(self, "inbox", inbox)


@record
class TwinDone:
    """Twin request ``rid`` ended: with ``result`` (GET: the twin; PATCH:
    ``None``) or with ``error``."""

    __match_args__ = ("rid", "result", "error")
    __slots__ = __match_args__

    rid: str
    result: Any
    error: BaseException | None

    def __init__(self, rid: str, result: Any = None, error: BaseException | None = None) -> None:
        set_field(self, "rid", rid)
        set_field(self, "result", result)
        set_field(self, "error", error)


@record
class Problem:
    """An error nobody waits for: for ``on_background_exception``."""

    __match_args__ = ("error",)
    __slots__ = __match_args__

    error: BaseException

    def __init__(self, error: BaseException) -> None:
        set_field(self, "error", error)


Output = Publish | Subscribe | Unsubscribe | Reauthorize | TokenRequired | Received | TwinDone \
    | Problem


class _TwinRequest:
    __slots__ = ("acked", "acked_at_drop", "body", "kind", "refresh", "sent", "topic")

    def __init__(self, kind: str, topic: str, body: bytes, sent: bool = False,
                 acked: bool = False, acked_at_drop: bool = False,
                 refresh: bool = False) -> None:
        self.kind = kind  # "GET" | "PATCH"
        self.topic = topic
        self.body = body
        self.sent = sent  # handed to the engine on this or an earlier connection
        self.acked = acked  # PUBACKed by the hub
        self.acked_at_drop = acked_at_drop
        self.refresh = refresh  # the desired refresh (answered by the session itself)

    def __repr__(self) -> str:
        return (f"_TwinRequest(kind={self.kind!r}, topic={self.topic!r}, body={self.body!r}, "
                f"sent={self.sent!r}, acked={self.acked!r}, "
                f"acked_at_drop={self.acked_at_drop!r}, refresh={self.refresh!r})")


class _Renewal:
    __slots__ = ("asked", "at", "own_key")

    def __init__(self, own_key: bool, at: float | None = None, asked: bool = False) -> None:
        self.own_key = own_key
        self.at = at
        self.asked = asked

    def __repr__(self) -> str:
        return f"_Renewal(own_key={self.own_key!r}, at={self.at!r}, asked={self.asked!r})"


def renewal_time(issued: float, expiry: float) -> float:
    """When to renew a token issued at ``issued`` that expires at ``expiry``
    (the rule of the module docstring)."""
    lifetime = max(0.0, expiry - issued)
    margin = min(RENEW_MARGIN, lifetime * RENEW_FRACTION)
    return max(issued + RENEW_FLOOR, expiry - margin)


class HubSession:
    """The hub behaviour of one client (see the module docstring).

    Args:
        identity: the device (and module) this session is for.
        ensure_desired_properties: refresh the desired properties after each
            connection (v2's option of that name).
        own_key: tokens come from a key (renewed by reconnecting) rather
            than from the application; ``None`` for X.509 (no renewal).
        new_rid: makes twin request ids (injected so tests are exact).
    """

    def __init__(self, identity: Identity, *, ensure_desired_properties: bool = True,
                 own_key: bool | None = None,
                 new_rid: Callable[[], str] = topics.new_request_id) -> None:
        self.identity = identity
        self.ensure_desired_properties = ensure_desired_properties
        self._new_rid = new_rid
        self.wanted: set[str] = set()
        self.subscribed: set[str] = set()
        self._subscribing: dict[str, int] = {}  # feature -> key of its SUBSCRIBE
        self._sent: dict[int, tuple[str, ...]] = {}  # SUBSCRIBE key -> its features, in order
        self._keys = 0
        self.connected = False
        self.mode: str | None = None  # "handler" | "api" (v2's receive-mode lock)
        self._twin: dict[str, _TwinRequest] = {}
        self.last_desired_version: int | None = None
        self._renewal = _Renewal(own_key) if own_key is not None else None
        self._reauthorizing = False  # the next drop is ours: the driver reconnects

    # ---------------------------------------------------------- receive mode

    def set_handler(self, feature: str, present: bool) -> list[Output]:
        """A receive handler of ``feature`` was set (``present``) or cleared.

        Raises:
            ClientError: the client already used a ``receive_*`` API.
        """
        if self.mode == "api":
            raise ClientError("Cannot set receive handlers - receive APIs have already "
                              "been used (v2's receive-mode lock)")
        self.mode = "handler"
        return self.enable(feature) if present else self.disable(feature)

    def use_receive_api(self, feature: str) -> list[Output]:
        """A ``receive_*`` API of ``feature`` is called.

        Raises:
            ClientError: the client already had a receive handler set.
        """
        if self.mode == "handler":
            raise ClientError("Cannot use receive APIs - receive handler(s) have already "
                              "been set (v2's receive-mode lock)")
        self.mode = "api"
        return self.enable(feature)

    # -------------------------------------------------------------- features

    def enable(self, feature: str) -> list[Output]:
        """Want ``feature`` (``desired`` brings ``twin``); subscribe it now when
        connected and nobody has yet on this connection."""
        self.wanted.update((feature, TWIN) if feature == DESIRED else (feature,))
        return self._subscribe_missing()

    def disable(self, feature: str) -> list[Output]:
        """Stop wanting ``feature``: UNSUBSCRIBE it when connected.  ``twin``
        stays (twin requests need it)."""
        self.wanted.discard(feature)
        if not self.connected or (feature not in self.subscribed
                                  and feature not in self._subscribing):
            return []
        self.subscribed.discard(feature)
        self._subscribing.pop(feature, None)
        return [Unsubscribe((feature,), (self.identity.topic_filter(feature),))]

    def pending_subscriptions(self, features: set[str] | None = None) -> set[int]:
        """Keys of the SUBSCRIBEs in flight for ``features`` (default all)."""
        return {key for f, key in self._subscribing.items()
                if features is None or f in features}

    def _subscribe_missing(self) -> list[Output]:
        if not self.connected:
            return []
        todo = tuple(f for f in FEATURES if f in self.wanted and f not in self.subscribed
                     and f not in self._subscribing)
        if not todo:
            return []
        self._keys += 1
        for f in todo:
            self._subscribing[f] = self._keys
        self._sent[self._keys] = todo
        return [Subscribe(self._keys, todo, tuple(self.identity.topic_filter(f) for f in todo))]

    def subscribed_ok(self, key: int, return_codes: tuple[int, ...] | list[int]) -> list[Output]:
        """Fact: SUBACK for ``Subscribe(key)``.  A refused filter (0x80) is a
        ``Problem``; held twin requests leave once ``twin`` is subscribed."""
        out: list[Output] = []
        for index, f in enumerate(self._sent.pop(key, ())):
            if self._subscribing.get(f) != key:
                continue  # dropped meanwhile (a handler cleared), or a new connection
            del self._subscribing[f]
            code = return_codes[index] if index < len(return_codes) else 0x80
            if code == 0x80:
                error = ClientError(f"the hub refused the subscription to "
                                    f"{self.identity.topic_filter(f)!r}")
                out.append(Problem(error))
                if f == TWIN:
                    out += self._fail_twin(error, lambda r: not r.sent)
            else:
                self.subscribed.add(f)
        if TWIN in self.subscribed:
            out += self._release_twin()
        return out

    def subscribe_failed(self, key: int, error: BaseException) -> list[Output]:
        """Fact: ``Subscribe(key)`` failed (the connection dropped first):
        tried again on the next connection."""
        for f in self._sent.pop(key, ()):
            if self._subscribing.get(f) == key:
                del self._subscribing[f]
        return [Problem(error)] if self.connected else []

    # ------------------------------------------------------------ connection

    def connected_fact(self, now: float, token_expiry: float | None = None) -> list[Output]:
        """Fact: CONNACK accepted.  ``token_expiry`` is that of the token the
        CONNECT carried (``None``: X.509, or unchanged).  Subscribes every
        wanted feature, recovers twin requests, refreshes desired properties."""
        self.connected = True
        self._reauthorizing = False
        self.subscribed.clear()
        self._subscribing.clear()
        self._sent.clear()  # answers to the last connection's SUBSCRIBEs no longer count
        out: list[Output] = []
        if self._renewal is not None and token_expiry is not None:
            if self._renewal.own_key or (self._renewal.at is None and not self._renewal.asked):
                self._renewal.at = renewal_time(now, token_expiry)
        for rid, request in list(self._twin.items()):
            if request.acked_at_drop and not request.refresh and request.kind == "PATCH":
                del self._twin[rid]
                out.append(TwinDone(rid, error=ConnectionDroppedError(
                    "the connection dropped after the hub received the reported properties "
                    "patch and before it answered; it may have been applied")))
            elif request.acked_at_drop:  # a GET: ask again
                request.sent = request.acked = False
            request.acked_at_drop = False
        if self.ensure_desired_properties and DESIRED in self.wanted:
            self.wanted.add(TWIN)
            if not any(r.refresh for r in self._twin.values()):
                rid = self._new_rid()
                self._twin[rid] = _TwinRequest("GET", topics.twin_get_topic(rid), b" ",
                                               refresh=True)
        return out + self._subscribe_missing()

    def disconnected(self, retrying: bool) -> list[Output]:
        """Fact: the connection is gone (``retrying``: the driver reconnects).
        Notes which twin requests the hub had acknowledged; without a retry
        every twin request fails."""
        self.connected = False
        retrying = retrying or self._reauthorizing
        self.subscribed.clear()
        self._subscribing.clear()
        if self._renewal is not None and self._renewal.own_key:
            self._renewal.at = None  # the next CONNECT carries a fresh token anyway
        if not retrying:
            return self._fail_twin(ConnectionDroppedError("the connection was lost"))
        for request in self._twin.values():
            request.acked_at_drop = request.acked
        return []

    def stopping(self, error: BaseException) -> list[Output]:
        """Command: the application disconnects or shuts down; every twin
        request ends with ``error`` and renewal stops."""
        if self._renewal is not None:
            self._renewal.at = None
        return self._fail_twin(error)

    # -------------------------------------------------------------- renewal

    def reauthorizing(self) -> None:
        """Command: the face reconnects with new credentials (``update_sastoken``):
        the drop that follows is not the end of the twin requests, whatever
        the driver's retry policy."""
        self._reauthorizing = self.connected

    def token_updated(self, now: float, expiry: float) -> list[Output]:
        """Fact: the application gave a new token (``update_sastoken``)."""
        if self._renewal is not None:
            self._renewal.asked = False
            self._renewal.at = renewal_time(now, expiry)
        return []

    def next_deadline(self) -> float | None:
        """When to call ``tick`` (token-expiry clock), or ``None``."""
        return self._renewal.at if self._renewal is not None else None

    def tick(self, now: float) -> list[Output]:
        """Time passed: renew the token when due."""
        renewal = self._renewal
        if renewal is None or renewal.at is None or now < renewal.at:
            return []
        renewal.at = None
        if renewal.own_key:
            self.reauthorizing()
            return [Reauthorize()] if self.connected else []
        renewal.asked = True
        return [TokenRequired()]

    # ---------------------------------------------------------------- twin

    def twin_request(self, kind: str, patch: Any = None) -> tuple[str, list[Output]]:
        """Command: a twin ``GET`` or reported-properties ``PATCH``.  Returns the
        request id (its ``TwinDone`` comes later) and what to send now.

        Raises:
            TypeError: the patch cannot be encoded as JSON.
        """
        rid = self._new_rid()
        if kind == "GET":
            request = _TwinRequest(kind, topics.twin_get_topic(rid), b" ")
        else:
            body = json.dumps(patch).encode("utf-8")
            request = _TwinRequest(kind, topics.twin_patch_reported_topic(rid), body)
        self._twin[rid] = request
        return rid, self.enable(TWIN) + self._release_twin()

    def twin_abandoned(self, rid: str) -> None:
        """Command: nobody waits for ``rid`` any more (timed out)."""
        self._twin.pop(rid, None)

    def published(self, ref: str, error: BaseException | None) -> list[Output]:
        """Fact: the PUBLISH of twin request ``ref`` was acknowledged (or failed
        for good, ``error``)."""
        request = self._twin.get(ref)
        if request is None:
            return []
        if error is None:
            request.acked = True
            return []
        del self._twin[ref]
        return [] if request.refresh else [TwinDone(ref, error=error)]

    def _release_twin(self) -> list[Output]:
        if not self.connected or TWIN not in self.subscribed:
            return []
        out: list[Output] = []
        for rid, request in self._twin.items():
            if not request.sent:
                request.sent = True
                out.append(Publish(request.topic, request.body, rid))
        return out

    def _fail_twin(self, error: BaseException,
                   which: Callable[[_TwinRequest], bool] = lambda r: True) -> list[Output]:
        out: list[Output] = []
        for rid, request in list(self._twin.items()):
            if which(request):
                del self._twin[rid]
                if not request.refresh:
                    out.append(TwinDone(rid, error=error))
        return out

    # -------------------------------------------------------------- messages

    @staticmethod
    def is_twin_answer(topic: str) -> bool:
        """Whether ``topic`` answers a twin request (a face may route these
        ahead of queued handlers: a handler may be the one waiting)."""
        return topics.parse_twin_response_topic(topic) is not None

    def message(self, topic: str, payload: bytes) -> list[Output]:
        """Fact: a message arrived.  Returns what to deliver (nothing for a
        topic the session does not know)."""
        answer = topics.parse_twin_response_topic(topic)
        if answer is not None:
            return self._twin_answer(answer[0], answer[1], payload)
        try:
            return self._route(topic, payload)
        except (ValueError, RecursionError) as exc:  # not JSON, or nested too deep
            return [Problem(exc)]

    def _twin_answer(self, status: int, rid: str, payload: bytes) -> list[Output]:
        request = self._twin.pop(rid, None)
        if request is None:
            return []
        try:
            if status >= 300:
                raise ServiceError(f"twin {request.kind} returned status {status}",
                                   status=status)
            text = payload.decode("utf-8").strip()
            result = json.loads(text) if text else None
        except (ServiceError, ValueError, RecursionError) as exc:
            return [Problem(exc)] if request.refresh else [TwinDone(rid, error=exc)]
        if not request.refresh:
            return [TwinDone(rid, result)]
        desired = result.get("desired", {}) if isinstance(result, dict) else {}
        version = desired.get("$version") if isinstance(desired, dict) else None
        if version == self.last_desired_version:
            return []
        self.last_desired_version = version
        return [self._received(DESIRED, desired, DESIRED)]

    def _received(self, feature: str, value: Any, inbox: str) -> Received:
        return Received(feature, value, self.mode == "api", inbox)

    def _route(self, topic: str, payload: bytes) -> list[Output]:
        identity = self.identity
        c2d = topics.parse_c2d_topic(topic)
        if c2d is not None and c2d[0] == identity.device_id and not identity.module_id:
            return [self._received(MESSAGES, _message(payload, c2d[1]), MESSAGES)]
        if identity.module_id:
            inp = topics.parse_input_topic(topic)
            if inp is not None and inp[:2] == (identity.device_id, identity.module_id):
                message = _message(payload, inp[3])
                message.input_name = inp[2]
                return [self._received(MESSAGES, message, f"input:{inp[2]}")]
        method = topics.parse_method_request_topic(topic)
        if method is not None:
            name, rid = method
            body = json.loads(payload.decode("utf-8") or "null")
            return [self._received(METHODS, MethodRequest(rid, name, body), f"method:{name}")]
        if topics.parse_twin_desired_patch_topic(topic) is not None:
            patch = json.loads(payload.decode("utf-8") or "null")
            if isinstance(patch, dict) and isinstance(patch.get("$version"), int):
                self.last_desired_version = patch["$version"]
            return [self._received(DESIRED, patch, DESIRED)]
        return []

    # -------------------------------------------------------------- sending

    def telemetry(self, message: Any) -> Publish:
        """Command: ``send_message``; anything not a ``Message`` becomes one.

        Raises:
            ValueError: over IoT Hub's 256 KB (body plus properties).
        """
        if not isinstance(message, Message):
            message = Message(message)
        body = message.body_bytes()
        bag = topics.encode_property_bag(topics.d2c_system_pairs(message),
                                         message.custom_properties)
        size = message.get_size()
        if size > D2C_LIMIT:
            raise ValueError(f"the message is {size} bytes (body and properties); IoT Hub's "
                             f"limit is {D2C_LIMIT} (256 KB)")
        identity = self.identity
        return Publish(topics.telemetry_topic(identity.device_id, identity.module_id, bag), body)

    @staticmethod
    def method_response(response: MethodResponse) -> Publish:
        """Command: ``send_method_response``.

        Raises:
            TypeError: not a ``MethodResponse``, or its status is not an int.
        """
        if not isinstance(response, MethodResponse):
            raise TypeError("send_method_response takes a MethodResponse")
        if isinstance(response.status, bool) or not isinstance(response.status, int):
            raise TypeError("MethodResponse.status must be an int")
        body = json.dumps(response.payload).encode("utf-8")
        return Publish(topics.method_response_topic(response.status, response.request_id), body)


def _message(payload: bytes, bag: str) -> Message:
    received = Message(payload)
    attrs, custom = topics.split_received_properties(topics.decode_property_bag(bag))
    for attribute, value in attrs.items():
        setattr(received, attribute, value)
    received.custom_properties = custom
    return received
