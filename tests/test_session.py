"""``HubSession`` (``iotdev/_session.py``) driven in memory: the session's
outputs run on a real ``iotdev_mqtt.ClientConnection``, whose bytes go to a
``ServerConnection`` played by a tiny hub (SUBACKs, twin answers); the
engines' events come back to the session as facts.  Time is a number; no
sockets, threads or sleeps.

Covers the twin recover-after-drop matrix (the "may have been applied" rule
for PATCH), the client-wide receive-mode lock, one SUBSCRIBE per feature per
connection, UNSUBSCRIBE when a handler is cleared, SAS renewal for every ttl,
the desired refresh by ``$version``, and device / module topics.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from iotdev import ClientError, ConnectionDroppedError, Message, MethodResponse, ServiceError
from iotdev import _hub_topics as topics
from iotdev._session import (
    DESIRED,
    MESSAGES,
    METHODS,
    RENEW_FLOOR,
    RENEW_MARGIN,
    TWIN,
    HubSession,
    Identity,
    Output,
    Problem,
    Publish,
    Reauthorize,
    Received,
    Subscribe,
    TokenRequired,
    TwinDone,
    Unsubscribe,
    renewal_time,
)
from iotdev_mqtt import (
    ClientConnection,
    Connected,
    ConnectReceived,
    MessageReceived,
    PublishAcked,
    PublishFailed,
    RequestFailed,
    ServerConnection,
    Session,
    Subscribed,
    SubscribeReceived,
    UnsubscribeReceived,
)

DEVICE = Identity("dev-1")
MODULE = Identity("dev-1", "mod-1")


class SessionPair:
    """A ``HubSession`` on a client engine, joined in memory to a server engine
    playing the hub.

    Attributes:
        events: what the session emitted for the face (``Received``,
            ``TwinDone``, ``Problem``, ``Reauthorize``, ``TokenRequired``).
        hub_publishes: ``(topic, payload, dup)`` of each PUBLISH the hub got.
        hub_subscribes / hub_unsubscribes: the filters of each (UN)SUBSCRIBE.
        ack: the hub PUBACKs what it receives.  answer: it answers twin requests.
    """

    def __init__(self, identity: Identity = DEVICE, *, own_key: bool | None = True,
                 ensure: bool = False) -> None:
        counter = itertools.count(1)
        self.session = HubSession(identity, ensure_desired_properties=ensure, own_key=own_key,
                                  new_rid=lambda: f"r{next(counter)}")
        self.identity = identity
        self.client = ClientConnection()
        self.server: ServerConnection | None = None
        self.stored: Session | None = None
        self.now = 1000.0
        self.events: list[Output] = []
        self.hub_publishes: list[tuple[str, bytes, bool]] = []
        self.hub_subscribes: list[tuple[str, ...]] = []
        self.hub_unsubscribes: list[tuple[str, ...]] = []
        self.refused_filters: set[str] = set()
        self.ack = True
        self.answer = True
        self.twin: dict[str, Any] = {"desired": {"$version": 1}, "reported": {"$version": 1}}
        self._refs: dict[int, str] = {}  # engine token -> twin request id
        self._keys: dict[int, int] = {}  # SUBSCRIBE packet id -> session key

    # -------------------------------------------------------------- the face

    def do(self, outputs: list[Output]) -> None:
        """What a face does with the session's outputs."""
        for out in outputs:
            if isinstance(out, Publish):
                token = self.client.publish(out.topic, out.payload, 1, now=self.now)
                if out.ref is not None:
                    self._refs[token] = out.ref
            elif isinstance(out, Subscribe):
                pid = self.client.subscribe([(f, 1) for f in out.filters], now=self.now)
                self._keys[pid] = out.key
            elif isinstance(out, Unsubscribe):
                self.client.unsubscribe(list(out.filters), now=self.now)
            else:
                self.events.append(out)
        self.run()

    def facts(self, events: list[object]) -> None:
        """The client engine's events, fed to the session (the drivers' job)."""
        for event in events:
            session = self.session
            if isinstance(event, Connected):
                self.do(session.connected_fact(self.now, self.expiry))
            elif isinstance(event, PublishAcked) and event.token in self._refs:
                self.do(session.published(self._refs.pop(event.token), None))
            elif isinstance(event, PublishFailed) and event.token in self._refs:
                self.do(session.published(self._refs.pop(event.token),
                                          ConnectionDroppedError(event.reason)))
            elif isinstance(event, Subscribed):
                self.do(session.subscribed_ok(self._keys.pop(event.packet_id),
                                              event.return_codes))
            elif isinstance(event, RequestFailed) and event.packet_id in self._keys:
                self.do(session.subscribe_failed(self._keys.pop(event.packet_id),
                                                 ConnectionDroppedError(event.reason)))
            elif isinstance(event, MessageReceived):
                self.do(session.message(event.topic, event.payload))

    # ------------------------------------------------------------ the network

    expiry: float | None = None

    def connect(self, expiry: float | None = None) -> None:
        self.expiry = expiry
        self.server = ServerConnection(now=self.now, auto_ack=self.ack)
        self.facts(self.client.connect("dev-1", now=self.now, clean_session=False))
        self.run()

    def drop(self, *, retrying: bool = True) -> None:
        assert self.server is not None
        self.client.data_to_send()
        self.server.data_to_send()
        events = self.client.connection_lost()
        self.server.connection_lost()
        self.stored = self.server.session
        self.server = None
        self.do(self.session.disconnected(retrying))
        self.facts(events)

    def run(self) -> None:
        server = self.server
        if server is None:
            return
        for _ in range(1000):
            up = self.client.data_to_send()
            if up:
                self.hub(server.receive_data(up, now=self.now))
            down = server.data_to_send()
            if down:
                self.facts(self.client.receive_data(down, now=self.now))
            if not up and not down:
                return
        raise AssertionError("the engines never went quiet")

    def hub(self, events: list[object]) -> None:
        server = self.server
        assert server is not None
        for event in events:
            if isinstance(event, ConnectReceived):
                self.hub(server.accept(now=self.now, session_present=self.stored is not None,
                                       session=self.stored))
            elif isinstance(event, SubscribeReceived):
                filters = tuple(f for f, _ in event.subscriptions)
                self.hub_subscribes.append(filters)
                server.suback(event.packet_id,
                              [0x80 if f in self.refused_filters else 1 for f in filters],
                              now=self.now)
            elif isinstance(event, UnsubscribeReceived):
                self.hub_unsubscribes.append(event.topic_filters)
            elif isinstance(event, MessageReceived):
                self.hub_publishes.append((event.topic, event.payload, event.dup))
                request = topics.parse_twin_request_topic(event.topic)
                if request is not None and self.answer:
                    kind, rid = request
                    body = json.dumps(self.twin).encode() if kind == "GET" else b""
                    server.publish(topics.twin_response_topic(200 if kind == "GET" else 204,
                                                              rid), body, 0, now=self.now)

    # ---------------------------------------------------------------- helpers

    def twin_requests(self, kind: str) -> list[tuple[str, bool]]:
        """``(rid, dup)`` of each twin request of ``kind`` the hub received."""
        out = []
        for topic, _, dup in self.hub_publishes:
            request = topics.parse_twin_request_topic(topic)
            if request is not None and request[0] == kind:
                out.append((request[1], dup))
        return out

    def done(self) -> dict[str, TwinDone]:
        return {e.rid: e for e in self.events if isinstance(e, TwinDone)}


def connected(**options: Any) -> SessionPair:
    pair = SessionPair(**options)
    pair.connect()
    return pair


# ------------------------------------------------------- recover after a drop


def test_answered_get_and_patch() -> None:
    pair = connected()
    get, outputs = pair.session.twin_request("GET")
    pair.do(outputs)
    patch, outputs = pair.session.twin_request("PATCH", {"temp": 21})
    pair.do(outputs)
    done = pair.done()
    assert done[get].result == pair.twin and done[get].error is None
    assert done[patch].result is None and done[patch].error is None
    assert pair.hub_subscribes == [("$iothub/twin/res/#",)]  # once, before the requests


def test_unacked_request_is_resent_by_the_engine_not_by_the_session() -> None:
    pair = SessionPair()
    pair.ack = pair.answer = False
    pair.connect()
    rid, outputs = pair.session.twin_request("PATCH", {"a": 1})
    pair.do(outputs)
    pair.drop()
    pair.ack = pair.answer = True
    pair.connect()
    assert pair.twin_requests("PATCH") == [(rid, False), (rid, True)]  # the DUP re-send only
    assert pair.done()[rid].error is None


def test_acked_get_is_sent_again_after_the_reconnect() -> None:
    pair = SessionPair()
    pair.answer = False
    pair.connect()
    rid, outputs = pair.session.twin_request("GET")
    pair.do(outputs)
    assert pair.twin_requests("GET") == [(rid, False)]
    pair.drop()
    pair.answer = True
    pair.connect()
    assert pair.twin_requests("GET") == [(rid, False), (rid, False)]  # a new PUBLISH
    assert pair.done()[rid].result == pair.twin


def test_acked_patch_fails_may_have_been_applied_and_is_not_resent() -> None:
    pair = SessionPair()
    pair.answer = False
    pair.connect()
    rid, outputs = pair.session.twin_request("PATCH", {"counter": 1})
    pair.do(outputs)
    pair.drop()
    pair.answer = True
    pair.connect()
    assert pair.twin_requests("PATCH") == [(rid, False)]  # applying it twice is not harmless
    error = pair.done()[rid].error
    assert isinstance(error, ConnectionDroppedError)
    assert "may have been applied" in str(error)


def test_every_twin_request_fails_when_the_driver_gives_up() -> None:
    pair = SessionPair()
    pair.ack = pair.answer = False
    pair.connect()
    sent, outputs = pair.session.twin_request("GET")
    pair.do(outputs)
    pair.drop(retrying=False)
    held, outputs = pair.session.twin_request("GET")  # disconnected: held
    pair.do(outputs)
    assert set(pair.done()) == {sent}
    assert isinstance(pair.done()[sent].error, ConnectionDroppedError)
    pair.do(pair.session.stopping(ConnectionDroppedError("disconnect")))
    assert isinstance(pair.done()[held].error, ConnectionDroppedError)


def test_a_renewal_drop_keeps_twin_requests_even_without_retry() -> None:
    # connection_retry=False: the driver reports no retry, but a reauthorization
    # reconnects anyway; the session must not fail what is in flight.
    pair = SessionPair(own_key=True)
    pair.answer = False
    pair.connect(expiry=pair.now + 60)
    rid, outputs = pair.session.twin_request("GET")
    pair.do(outputs)
    pair.now = pair.session.next_deadline() or 0.0
    assert pair.session.tick(pair.now) == [Reauthorize()]
    pair.drop(retrying=False)
    pair.answer = True
    pair.connect(expiry=pair.now + 60)
    assert pair.done()[rid].result == pair.twin
    pair.answer = False
    second, outputs = pair.session.twin_request("PATCH", {"a": 1})
    pair.do(outputs)
    pair.session.reauthorizing()  # update_sastoken does the same
    pair.drop(retrying=False)
    assert second not in pair.done()  # not failed: the reconnect decides its fate
    pair.connect()
    assert isinstance(pair.done()[second].error, ConnectionDroppedError)  # acked PATCH


def test_request_made_while_disconnected_waits_for_the_twin_subscription() -> None:
    pair = SessionPair()
    rid, outputs = pair.session.twin_request("GET")
    assert outputs == []  # nothing to send before a connection
    pair.connect()
    assert pair.hub_subscribes == [("$iothub/twin/res/#",)]
    assert pair.twin_requests("GET") == [(rid, False)]
    assert pair.done()[rid].result == pair.twin


def test_refused_twin_subscription_fails_held_requests() -> None:
    pair = SessionPair()
    pair.refused_filters.add("$iothub/twin/res/#")
    pair.connect()
    rid, outputs = pair.session.twin_request("GET")
    pair.do(outputs)
    assert isinstance(pair.done()[rid].error, ClientError)
    assert any(isinstance(e, Problem) for e in pair.events)
    assert pair.twin_requests("GET") == []


def test_refused_twin_answer_is_a_service_error() -> None:
    pair = connected()
    rid, outputs = pair.session.twin_request("PATCH", {"a": 1})
    pair.do(outputs)
    pair.events.clear()
    pair.session.published(rid, None)
    assert pair.session.message(topics.twin_response_topic(400, rid), b"") == []  # answered
    rid, outputs = pair.session.twin_request("PATCH", {"a": 1})
    out = pair.session.message(topics.twin_response_topic(429, rid), b"")
    assert len(out) == 1 and isinstance(out[0], TwinDone)
    assert isinstance(out[0].error, ServiceError) and out[0].error.throttled
    assert isinstance(out[0].error, ClientError)  # what v2 code catches


# ------------------------------------------------------------- receive mode


@pytest.mark.parametrize("first", [MESSAGES, METHODS, DESIRED])
@pytest.mark.parametrize("then", [MESSAGES, METHODS, DESIRED])
def test_receive_mode_lock_is_client_wide(first: str, then: str) -> None:
    session = HubSession(DEVICE)
    session.use_receive_api(first)
    with pytest.raises(ClientError, match="receive APIs have already been used"):
        session.set_handler(then, True)
    with pytest.raises(ClientError):
        session.set_handler(then, False)  # as v2: clearing a handler locks too
    session = HubSession(DEVICE)
    session.set_handler(first, False)
    with pytest.raises(ClientError, match="receive handler"):
        session.use_receive_api(then)


def test_routing_follows_the_mode() -> None:
    pair = connected()
    pair.do(pair.session.use_receive_api(METHODS))
    out = pair.session.message(topics.method_request_topic("reboot", "7"), b'{"a": 1}')
    assert out == [Received(METHODS, out[0].value, True, "method:reboot")]  # type: ignore[union-attr]
    pair = connected()
    pair.do(pair.session.set_handler(METHODS, True))
    (event,) = pair.session.message(topics.method_request_topic("reboot", "7"), b"null")
    assert isinstance(event, Received) and not event.api and event.value.name == "reboot"
    (problem,) = pair.session.message(topics.method_request_topic("m", "8"), b"{not json")
    assert isinstance(problem, Problem) and isinstance(problem.error, ValueError)


# --------------------------------------------------------------- subscribing


def test_subscribe_once_per_feature_per_connection() -> None:
    pair = SessionPair()
    for feature in (MESSAGES, METHODS, MESSAGES, DESIRED, METHODS):
        pair.do(pair.session.set_handler(feature, True))
    assert pair.hub_subscribes == []  # not connected: at connect
    pair.connect()
    filters = [f for sub in pair.hub_subscribes for f in sub]
    assert sorted(filters) == sorted([
        "devices/dev-1/messages/devicebound/#", "$iothub/methods/POST/#",
        "$iothub/twin/PATCH/properties/desired/#", "$iothub/twin/res/#"])
    # In flight: asking again sends nothing more.
    session = HubSession(DEVICE)
    session.connected_fact(0.0)
    first = session.enable(METHODS)
    assert [type(o) for o in first] == [Subscribe]
    assert session.enable(METHODS) == [] and session.set_handler(METHODS, True) == []
    assert session.pending_subscriptions({METHODS}) == {first[0].key}  # type: ignore[union-attr]
    pair.do(pair.session.set_handler(METHODS, True))
    pair.drop()
    pair.hub_subscribes.clear()
    pair.connect()  # every wanted feature again, once
    assert sorted(f for sub in pair.hub_subscribes for f in sub) == sorted(filters)


def test_suback_codes_follow_the_filters_sent_when_a_feature_is_dropped_meanwhile() -> None:
    session = HubSession(DEVICE, ensure_desired_properties=False)
    session.set_handler(METHODS, True)
    session.set_handler(DESIRED, True)
    (sub,) = session.connected_fact(0.0)
    assert isinstance(sub, Subscribe) and sub.features == (METHODS, DESIRED, TWIN)
    assert [type(o) for o in session.set_handler(METHODS, False)] == [Unsubscribe]
    out = session.subscribed_ok(sub.key, (1, 0x80, 1))  # the hub refused the desired filter
    assert [type(o) for o in out] == [Problem] and DESIRED in str(out[0].error)  # type: ignore[union-attr]
    assert session.subscribed == {TWIN}


def test_clearing_a_handler_unsubscribes_and_stays_unsubscribed() -> None:
    pair = connected()
    pair.do(pair.session.set_handler(METHODS, True))
    pair.do(pair.session.set_handler(MESSAGES, True))
    pair.do(pair.session.set_handler(METHODS, False))
    assert pair.hub_unsubscribes == [("$iothub/methods/POST/#",)]
    assert pair.session.set_handler(METHODS, False) == []  # already off
    pair.drop()
    pair.hub_subscribes.clear()
    pair.connect()
    assert pair.hub_subscribes == [("devices/dev-1/messages/devicebound/#",)]
    offline = SessionPair()
    offline.do(offline.session.set_handler(METHODS, True))
    assert offline.session.set_handler(METHODS, False) == []  # nothing was subscribed
    offline.connect()
    assert offline.hub_subscribes == []


# ------------------------------------------------------------------ renewal

TTLS = [1, 2, 4, 5, 6, 7, 10, 30, 59, 60, 61, 119, 120, 121, 122, 300, 600, 601, 3600, 86400]


@pytest.mark.parametrize("ttl", TTLS)
def test_renewal_time_for_every_ttl(ttl: int) -> None:
    issued = 5000.0
    at = renewal_time(issued, issued + ttl)
    assert at >= issued + RENEW_FLOOR  # never a reconnect storm
    margin = issued + ttl - at
    assert margin <= RENEW_MARGIN
    if ttl * 0.8 >= RENEW_FLOOR:
        assert margin == pytest.approx(min(RENEW_MARGIN, ttl * 0.2))  # before expiry
    else:
        assert at == issued + RENEW_FLOOR


@pytest.mark.parametrize("ttl", TTLS)
def test_own_key_renews_once_per_token_and_never_storms(ttl: int) -> None:
    pair = SessionPair(own_key=True)
    pair.connect(expiry=pair.now + ttl)
    renewals = 0
    start = pair.now
    while True:  # ten minutes, reconnecting at each renewal
        deadline = pair.session.next_deadline()
        assert deadline is not None and deadline > pair.now - 1e-9
        if deadline > start + 600:
            break
        assert pair.session.tick(deadline - 0.001) == []
        pair.now = deadline
        out = pair.session.tick(pair.now)
        assert out == [Reauthorize()]
        assert pair.session.tick(pair.now + 10_000) == []  # once per token
        renewals += 1
        pair.drop()
        pair.connect(expiry=pair.now + ttl)
    interval = renewal_time(0.0, ttl)
    assert renewals <= 600 / RENEW_FLOOR
    assert abs(renewals - 600 // interval) <= 1


def test_user_token_is_asked_for_once_then_after_each_update() -> None:
    pair = SessionPair(own_key=False)
    pair.connect(expiry=pair.now + 60)
    assert pair.session.next_deadline() == pair.now + 48
    assert pair.session.tick(pair.now + 48) == [TokenRequired()]
    assert pair.session.next_deadline() is None
    pair.drop()
    pair.connect(expiry=pair.now + 60)  # still the old token: not asked again
    assert pair.session.next_deadline() is None
    pair.session.token_updated(pair.now, pair.now + 3600)
    assert pair.session.next_deadline() == pair.now + 3600 - RENEW_MARGIN


def test_x509_has_no_renewal_and_stopping_cancels_it() -> None:
    pair = SessionPair(own_key=None)
    pair.connect(expiry=None)
    assert pair.session.next_deadline() is None
    pair = SessionPair(own_key=True)
    pair.connect(expiry=pair.now + 3600)
    assert pair.session.next_deadline() is not None
    pair.session.stopping(ConnectionDroppedError("bye"))
    assert pair.session.next_deadline() is None


# ----------------------------------------------------------- desired refresh


def desired_deliveries(pair: SessionPair) -> list[Any]:
    return [e.value for e in pair.events if isinstance(e, Received) and e.feature == DESIRED]


def test_desired_refresh_delivers_only_a_new_version() -> None:
    pair = SessionPair(ensure=True)
    pair.do(pair.session.set_handler(DESIRED, True))
    pair.connect()
    assert desired_deliveries(pair) == [{"$version": 1}]
    pair.drop()
    pair.connect()  # same version: nothing
    assert desired_deliveries(pair) == [{"$version": 1}]
    pair.drop()
    pair.twin["desired"] = {"$version": 3, "mode": "eco"}
    pair.connect()
    assert desired_deliveries(pair) == [{"$version": 1}, {"$version": 3, "mode": "eco"}]
    assert [t for t in pair.done()] == []  # the refresh is the session's own request
    # A patch received meanwhile moves the version: no second delivery of it.
    assert pair.server is not None
    pair.server.publish(topics.twin_desired_patch_topic(4), b'{"mode": "max", "$version": 4}',
                        1, now=pair.now)
    pair.run()
    pair.drop()
    pair.twin["desired"] = {"$version": 4, "mode": "max"}
    pair.connect()
    assert desired_deliveries(pair)[2:] == [{"mode": "max", "$version": 4}]


def test_no_refresh_without_ensure_or_without_the_feature() -> None:
    pair = SessionPair(ensure=False)
    pair.do(pair.session.set_handler(DESIRED, True))
    pair.connect()
    assert desired_deliveries(pair) == [] and pair.twin_requests("GET") == []
    pair = SessionPair(ensure=True)
    pair.do(pair.session.set_handler(METHODS, True))
    pair.connect()
    assert pair.twin_requests("GET") == []


# ------------------------------------------------------------------ topics


def test_device_and_module_topics() -> None:
    device, module = HubSession(DEVICE), HubSession(MODULE)
    assert device.telemetry("hi").topic == "devices/dev-1/messages/events/"
    assert module.telemetry(Message("hi")).topic == "devices/dev-1/modules/mod-1/messages/events/"
    assert DEVICE.topic_filter(MESSAGES) == "devices/dev-1/messages/devicebound/#"
    assert MODULE.topic_filter(MESSAGES) == "devices/dev-1/modules/mod-1/inputs/#"
    assert MODULE.topic_filter(TWIN) == DEVICE.topic_filter(TWIN) == "$iothub/twin/res/#"
    with pytest.raises(ValueError, match="256 KB"):
        device.telemetry(b"x" * 262_145)
    response = HubSession.method_response(MethodResponse("rid1", 200, {"ok": True}))
    assert (response.topic, response.payload) == ("$iothub/methods/res/200/?$rid=rid1",
                                                  b'{"ok": true}')
    with pytest.raises(TypeError):
        HubSession.method_response("not a response")  # type: ignore[arg-type]


def test_module_inputs_are_routed_with_their_name() -> None:
    pair = SessionPair(MODULE)
    pair.do(pair.session.use_receive_api(MESSAGES))
    pair.connect()
    assert pair.hub_subscribes == [("devices/dev-1/modules/mod-1/inputs/#",)]
    assert pair.server is not None
    pair.server.publish(topics.input_topic("dev-1", "mod-1", "in1", "k=v"), b"data", 1,
                        now=pair.now)
    pair.server.publish(topics.c2d_topic("dev-1"), b"not for a module", 1, now=pair.now)
    pair.run()
    (event,) = [e for e in pair.events if isinstance(e, Received)]
    assert (event.inbox, event.api, event.value.input_name, event.value.data) == (
        "input:in1", True, "in1", b"data")
    assert event.value.custom_properties == {"k": "v"}


def test_the_session_imports_no_io_concurrency_clock_or_logging() -> None:
    import ast
    from pathlib import Path

    import iotdev._session

    tree = ast.parse(Path(iotdev._session.__file__).read_text())
    names = {alias.name.split(".")[0] for node in ast.walk(tree)
             if isinstance(node, ast.Import) for alias in node.names}
    names |= {(node.module or "").split(".")[0] for node in ast.walk(tree)
              if isinstance(node, ast.ImportFrom) and not node.level}
    assert names & {"socket", "ssl", "select", "selectors", "threading", "asyncio", "time",
                    "logging"} == set(), names
