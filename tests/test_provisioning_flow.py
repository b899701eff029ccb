"""The DPS registration flow (``iotdev._provisioning``) in memory: our client
engine and ``ProvisioningFlow`` against ``ServerConnection`` running the
emulator's sans-IO DPS (``DpsLogic``) or scripted answers; time is a number."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest

from iotdev import OperationTimeout, ProvisioningServiceError
from iotdev import _dps_topics as topics
from iotdev._auth import derive_device_key, generate_sas_token
from iotdev._provisioning import (
    MAX_RETRY_AFTER,
    Phase,
    ProvisioningFlow,
    RegistrationResult,
    registration_body,
)
from iotdev.emulator._dps import Attestation, DeviceCredentials, DpsLogic
from iotdev.emulator._enrollments import EnrollmentStore
from iotdev_mqtt import (
    ClientConnection,
    ConnectReceived,
    MessageReceived,
    ServerConnection,
    SubscribeReceived,
)

SCOPE = "0ne0000TEST"
KEY = "MDEyMzQ1Njc4OWFiY2RlZjAxMjM0NTY3ODlhYmNkZWY="


class Wire:
    """Client engine + flow on one side, server engine + an answering
    function on the other; bytes move when ``run()`` is called."""

    def __init__(self, answer: Any, *, password: bytes | None = None,
                 registration_id: str = "dev1", **flow_options: Any) -> None:
        self.now = 100.0
        self.answer = answer
        self.client = ClientConnection()
        self.server = ServerConnection(now=self.now)
        self.flow = ProvisioningFlow(registration_id, {"modelId": "dtmi:x:y;1"}, **flow_options)
        self.seen: list[tuple[str, bytes]] = []
        self.refused: list[str] = []
        self.rids = iter(f"r{i}" for i in range(1000))
        self.client.connect(registration_id, now=self.now, clean_session=False,
                            username=topics.build_username(SCOPE, registration_id, "test/1"),
                            password=password)
        self.run()
        self.client.subscribe([(topics.RESPONSE_SUBSCRIBE_FILTER, 1)], now=self.now)
        self.run()

    def run(self) -> None:
        for _ in range(100):
            for request in self.flow.requests_to_send():
                self.client.publish(request.topic, request.payload, 1, now=self.now)
            out = self.client.data_to_send()
            if out:
                for event in self.server.receive_data(out, now=self.now):
                    self._server(event)
            back = self.server.data_to_send()
            if back:
                for ev in self.client.receive_data(back, now=self.now):
                    if isinstance(ev, MessageReceived):
                        self.seen.append((ev.topic, ev.payload))
                        self.flow.receive(ev.topic, ev.payload, self.now)
            if not out and not back:
                return
        raise AssertionError("never quiet")

    def _server(self, event: object) -> None:
        if isinstance(event, ConnectReceived):
            self.connect = event.connect
            verdict = self.answer("connect", event.connect, None)
            if verdict is None:
                for e in self.server.accept(now=self.now)[1:]:
                    self._server(e)
            else:
                self.refused.append(verdict)
                self.server.refuse(5, now=self.now)
        elif isinstance(event, SubscribeReceived):
            self.server.suback(event.packet_id, [1], now=self.now)
        elif isinstance(event, MessageReceived):
            for topic, body in self.answer("publish", event.topic, event.payload):
                self.server.publish(topic, body, 1, now=self.now)

    def advance(self, seconds: float) -> None:
        self.now += seconds
        deadline = self.flow.next_deadline()
        if deadline is not None and deadline <= self.now:
            self.flow.tick(self.now)
        self.run()

    def until_finished(self, step: float = 0.5, limit: float = 600.0) -> None:
        start = self.now
        self.flow.start(self.now)
        self.run()
        while not self.flow.finished:
            assert self.now - start < limit
            self.advance(step)


def dps(**logic_options: Any) -> tuple[DpsLogic, dict[str, DeviceCredentials]]:
    created: dict[str, DeviceCredentials] = {}
    logic = DpsLogic(EnrollmentStore(None), id_scope=SCOPE, assigned_hub="hub.local",
                     allocate=lambda d, c: created.__setitem__(d, c), **logic_options)
    return logic, created


def logic_answer(logic: DpsLogic) -> Any:
    state: dict[str, Attestation] = {}

    def answer(kind: str, a: Any, b: Any) -> Any:
        if kind == "connect":
            who = logic.authenticate(a.client_id, a.username, a.password, None, time.time())
            if isinstance(who, str):
                return who
            state["who"] = who
            return None
        return logic.handle(state["who"], a, b, time.time()) or []

    return answer


def token(registration_id: str, key: str) -> bytes:
    uri = topics.sas_resource_uri(SCOPE, registration_id)
    return generate_sas_token(uri, key, int(time.time()) + 3600).encode()


# ----------------------------------------------------------------- the service


def test_individual_enrollment_assigning_then_assigned() -> None:
    logic, created = dps(retry_after=3, assigning_polls=1)
    logic.store.add_enrollment("dev1", primary_key=KEY)
    wire = Wire(logic_answer(logic), password=token("dev1", KEY))
    wire.until_finished()
    result = wire.flow.result
    assert result is not None and result.status == "assigned"
    state = result.registration_state
    assert state is not None
    assert (state.device_id, state.assigned_hub, state.sub_status) == (
        "dev1", "hub.local", "initialAssignment")
    assert json.loads(state.response_payload) == {"modelId": "dtmi:x:y;1"}
    assert created["dev1"].primary_key == KEY
    # register, poll (assigning), poll (assigned); each poll after retry-after 3 s
    assert [t.split("/")[3] for t, _ in wire.seen] == ["202", "202", "200"]
    assert wire.flow.requests_sent == 3
    assert wire.now - 100.0 >= 6.0


def test_group_enrollment_derived_key_and_reregistration() -> None:
    logic, created = dps(retry_after=0)
    logic.store.add_group("g1", primary_key=KEY)
    device_key = derive_device_key(KEY, "sensor-7")
    for substatus in ("initialAssignment", "deviceDataMigrated"):
        wire = Wire(logic_answer(logic), password=token("sensor-7", device_key),
                    registration_id="sensor-7")
        wire.until_finished()
        assert wire.flow.result is not None
        state = wire.flow.result.registration_state
        assert state is not None and state.sub_status == substatus
    assert created["sensor-7"].primary_key == device_key


def test_wrong_key_is_refused_at_connect() -> None:
    logic, _ = dps()
    logic.store.add_enrollment("dev1", primary_key=KEY)
    other = derive_device_key(KEY, "x")
    wire = Wire(logic_answer(logic), password=token("dev1", other))
    assert wire.refused and "signature" in wire.refused[0].lower()


def test_disabled_enrollment_fails_with_a_client_error() -> None:
    logic, created = dps(retry_after=0)
    logic.store.add_enrollment("dev1", primary_key=KEY, enabled=False)
    wire = Wire(logic_answer(logic), password=token("dev1", KEY))
    wire.until_finished()
    error = wire.flow.error
    assert isinstance(error, ProvisioningServiceError) and wire.flow.phase is Phase.FAILED
    assert error.registration_status == "disabled" and error.code == "401002"
    assert not created


def test_throttled_then_success_honours_retry_after() -> None:
    logic, _ = dps(retry_after=0)
    logic.store.add_enrollment("dev1", primary_key=KEY)
    logic.throttle(2, retry_after=5)
    wire = Wire(logic_answer(logic), password=token("dev1", KEY))
    wire.until_finished(step=1.0)
    assert wire.flow.result is not None
    assert [t.split("/")[3] for t, _ in wire.seen] == ["429", "429", "202", "200"]
    assert wire.now - 100.0 >= 10.0


# -------------------------------------------------------------- scripted answers


def scripted(*answers: tuple[int, Any, float | None]) -> Any:
    queue = list(answers)

    def answer(kind: str, a: Any, b: Any) -> Any:
        if kind == "connect":
            return None
        _, props = topics.parse_request_topic(a) or ("", {})
        if not queue:
            return []
        status, body, retry = queue.pop(0)
        return [(topics.response_topic(status, props["$rid"], retry), json.dumps(body).encode())]

    return answer


ASSIGNED = {"operationId": "op", "status": "assigned",
            "registrationState": {"deviceId": "dev1", "assignedHub": "h", "payload": None}}


def test_4xx_fails_with_status_and_body() -> None:
    body = {"errorCode": 401002, "trackingId": "t", "message": "Unauthorized"}
    wire = Wire(scripted((401, body, None)))
    wire.until_finished()
    error = wire.flow.error
    assert isinstance(error, ProvisioningServiceError)
    assert (error.status, error.code, error.body) == (401, "401002", body)
    assert "Unauthorized" in str(error)


def test_5xx_without_retry_after_backs_off_exponentially() -> None:
    wire = Wire(scripted((503, {}, None), (500, {}, None), (200, ASSIGNED, None)))
    wire.until_finished(step=0.25)
    assert wire.flow.result is not None
    assert wire.now - 100.0 >= 2.0 + 4.0


def test_retry_after_honoured_after_the_first_202() -> None:
    """v2 waits a fixed 2 s after the first 202; we wait what DPS asks."""
    wire = Wire(scripted((202, {"operationId": "op", "status": "assigning"}, 1),
                         (200, ASSIGNED, None)))
    wire.until_finished(step=0.5)
    assert wire.flow.result is not None and wire.now - 100.0 == 1.0


def test_request_timeout() -> None:
    wire = Wire(scripted(), request_timeout=7)
    wire.until_finished(step=1.0)
    assert isinstance(wire.flow.error, OperationTimeout)
    assert wire.now - 100.0 == 7.0


def test_whole_call_timeout_while_throttled() -> None:
    wire = Wire(scripted(*[(429, {}, 2.0)] * 100), timeout=9)
    wire.until_finished(step=1.0)
    assert isinstance(wire.flow.error, OperationTimeout) and "429" in str(wire.flow.error)
    assert wire.now - 100.0 == 9.0


def test_stale_and_foreign_answers_are_ignored() -> None:
    flow = ProvisioningFlow("dev1", make_rid=lambda: "r1")
    flow.start(0.0)
    assert [r.topic for r in flow.requests_to_send()] == [topics.register_topic("r1")]
    assert not flow.receive(topics.response_topic(200, "old"), b"{}", 1.0)
    assert not flow.receive("devices/x", b"", 1.0)
    assert flow.receive(topics.response_topic(200, "r1"), json.dumps(ASSIGNED).encode(), 1.0)
    assert flow.result is not None and flow.next_deadline() is None


@pytest.mark.parametrize("payload", [b"not json", b"[1]", b'{"status": "assigned"}'])
def test_garbage_success_answer_fails_typed(payload: bytes) -> None:
    flow = ProvisioningFlow("dev1", make_rid=lambda: "r1")
    flow.start(0.0)
    flow.receive(topics.response_topic(200, "r1"), payload, 1.0)
    assert isinstance(flow.error, ProvisioningServiceError) and flow.error.status == 200


def test_unknown_status_fails() -> None:
    flow = ProvisioningFlow("dev1", make_rid=lambda: "r1")
    flow.start(0.0)
    flow.receive(topics.response_topic(200, "r1"),
                 json.dumps({"operationId": "o", "status": "weird"}).encode(), 1.0)
    assert isinstance(flow.error, ProvisioningServiceError)


def test_result_models_match_v2_shapes() -> None:
    result = RegistrationResult.from_operation_status(ASSIGNED)
    assert result.registration_state is not None
    assert result.registration_state.response_payload == "null"
    assert registration_body("d", None) == b'{"payload": null, "registrationId": "d"}'
    with pytest.raises(TypeError):
        registration_body("d", object.__new__(type("Slotted", (), {"__slots__": ()})))


def test_user_name_and_topics_as_v2() -> None:
    assert topics.build_username("0ne1", "dev 1", "a/b (c)") == \
        "0ne1/registrations/dev 1/api-version=2019-03-31&ClientVersion=a%2Fb%20%28c%29"
    assert topics.poll_topic("r", "4.a/b") == \
        "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=r&operationId=4.a%2Fb"
    assert topics.parse_response_topic("$dps/registrations/res/202/?$rid=x&retry-after=3") == \
        (202, {"$rid": "x", "retry-after": "3"})
    with pytest.raises(ValueError):
        topics.parse_response_topic("$dps/registrations/res/202/?$rid=x&$rid=y")


def test_whole_call_timeout_counts_from_the_beginning_of_the_call() -> None:
    flow = ProvisioningFlow("dev1", timeout=10, make_rid=lambda: "r1")
    flow.start(4.0, began=1.0)  # three seconds went into connecting
    assert flow.next_deadline() == 11.0
    flow.tick(11.0)
    assert isinstance(flow.error, OperationTimeout)


def test_calls_out_of_order_are_refused() -> None:
    flow = ProvisioningFlow("dev1", make_rid=lambda: "r1")
    assert not flow.receive(topics.response_topic(200, "r1"), b"{}", 0.0)  # not started
    flow.tick(100.0)  # nothing to do before start
    assert flow.phase is Phase.IDLE and flow.next_deadline() is None
    flow.start(0.0)
    with pytest.raises(RuntimeError, match="AWAITING"):
        flow.start(1.0)
    with pytest.raises(ValueError):
        ProvisioningFlow("dev1", timeout=0)


def test_enrollments_persist_and_reload(tmp_path: Any) -> None:
    store = EnrollmentStore(tmp_path)
    store.add_enrollment("dev1", primary_key=KEY, initial_twin={"tags": {"a": 1}})
    store.add_group("g1", primary_key=KEY, secondary_key=KEY)
    other = EnrollmentStore(tmp_path)  # another process (the CLI)
    assert other.enrollments["dev1"].primary_key == KEY
    assert other.enrollments["dev1"].initial_twin == {"tags": {"a": 1}}
    other.set_enabled("g1", False)
    store.refresh()
    assert not store.groups["g1"].enabled
    (tmp_path / "dps.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid DPS state file"):
        EnrollmentStore(tmp_path)
    with pytest.raises(ValueError):
        store.add_enrollment("x", primary_key="c2hvcnQ=")  # 5 bytes
    with pytest.raises(ValueError):
        store.add_enrollment("x", primary_key=KEY, x509_thumbprints=["AB" * 20])


def test_dps_refuses_other_topics_and_foreign_operations() -> None:
    logic, _ = dps(retry_after=0)
    logic.store.add_enrollment("dev1", primary_key=KEY)
    logic.store.add_enrollment("dev2", primary_key=KEY)
    who = logic.authenticate("dev1", topics.build_username(SCOPE, "dev1", "t"),
                             token("dev1", KEY), None, time.time())
    other = logic.authenticate("dev2", topics.build_username(SCOPE, "dev2", "t"),
                               token("dev2", KEY), None, time.time())
    assert isinstance(who, Attestation) and isinstance(other, Attestation)
    assert logic.handle(who, "devices/dev1/messages/events/", b"", 0.0) is None
    [(topic, body)] = logic.handle(who, topics.register_topic("a"),
                                   registration_body("dev2", None), 0.0) or []
    assert topic.startswith("$dps/registrations/res/400/")  # another registration id
    [(topic, body)] = logic.handle(who, topics.register_topic("b"),
                                   registration_body("dev1", None), 0.0) or []
    operation = json.loads(body)["operationId"]
    [(topic, _)] = logic.handle(other, topics.poll_topic("c", operation), b" ", 0.0) or []
    assert topic.startswith("$dps/registrations/res/404/")  # not dev2's operation
    assert logic.authenticate("dev1", topics.build_username("0neOTHER", "dev1", "t"),
                              token("dev1", KEY), None, time.time()) == \
        "unknown id scope '0neOTHER'"
    assert "another registration id" in str(logic.authenticate(
        "dev2", topics.build_username(SCOPE, "dev1", "t"), token("dev1", KEY), None, 0))


def test_a_huge_retry_after_is_cut_to_a_finite_wait() -> None:
    """A faulty or hostile ``retry-after`` (1e308 s, or more than a float
    holds) must not make register() wait forever or overflow a timer."""
    assigning = {"operationId": "op", "status": "assigning"}
    wire = Wire(scripted((202, assigning, 10.0 ** 308), (200, ASSIGNED, None)))
    wire.flow.start(wire.now)
    wire.run()
    assert [t.split("/")[3] for t, _ in wire.seen] == ["202"]
    due = wire.flow.next_deadline()
    assert due is not None and due - wire.now <= MAX_RETRY_AFTER
    while not wire.flow.finished:
        assert wire.now < 100.0 + 2 * MAX_RETRY_AFTER
        wire.advance(MAX_RETRY_AFTER / 10)
    assert wire.flow.result is not None
