"""The emulator's public observation hook (``Hub.add_observer``), its INFO log
stream, and module identities over MQTT spoken by hand (the topics and
identity of the reference, section 1.2/1.3 and 5)."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from iotdev._auth import device_resource_uri, generate_sas_token
from iotdev._errors import CredentialError, OperationTimeout
from iotdev.emulator import Hub, HubConnection, HubObserver, Verdict
from iotdev.mqtt import MQTTClient
from iotdev_mqtt import Connect, MessageReceived

TIMEOUT = 10.0


@pytest.fixture
def hub(tmp_path: Any) -> Iterator[Hub]:
    with Hub(hub_name="obs-hub.local", mqtt_port=0, ws_port=0, state_dir=tmp_path) as h:
        yield h


def _client(hub: Hub, device_id: str, module_id: str | None = None, *, key: str | None = None,
            **kw: Any) -> MQTTClient:
    identity = hub.store.device(device_id) if module_id is None else \
        hub.store.module(device_id, module_id)
    assert identity is not None
    client_id = device_id if module_id is None else f"{device_id}/{module_id}"
    uri = device_resource_uri(hub.hub_name, device_id, module_id)
    token = generate_sas_token(uri, key or identity.primary_key, int(time.time() + 3600))
    return MQTTClient(
        "localhost", hub.mqtt_port, client_id=client_id, transport="tls",
        username=f"{hub.hub_name}/{client_id}/?api-version=2021-04-12", password=token,
        server_verification_cert=hub.ca_pem, clean_session=False, reconnect=False,
        connect_timeout=TIMEOUT, **kw)


class Recorder(HubObserver):
    """Records every observer call; verdicts to return are set per test."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.calls: list[tuple[str, Any]] = []
        self.subscribe_verdict: Verdict | None = None
        self.twin_verdict: Verdict | None = None
        self.abort_payload: bytes | None = None
        self.hold_payload: bytes | None = None

    def _add(self, name: str, value: Any) -> None:
        with self.cond:
            self.calls.append((name, value))
            self.cond.notify_all()

    def names(self) -> list[str]:
        with self.cond:
            return [name for name, _ in self.calls]

    def wait(self, name: str, count: int = 1) -> None:
        with self.cond:
            assert self.cond.wait_for(lambda: self.names().count(name) >= count, TIMEOUT), \
                f"no {name} call in {self.calls}"

    def on_connect(self, conn: HubConnection, packet: Connect, refusal: str | None) -> None:
        self._add("connect", (conn.device_id, conn.module_id, packet.client_id, refusal,
                              conn.transport_name))

    def on_subscribe(self, conn: HubConnection, subscriptions: list[tuple[str, int]]
                     ) -> Verdict | None:
        self._add("subscribe", subscriptions)
        return self.subscribe_verdict

    def on_subscribed(self, conn: HubConnection, subscriptions: list[tuple[str, int]],
                      codes: list[int]) -> None:
        self._add("subscribed", codes)

    def on_publish(self, conn: HubConnection, message: MessageReceived) -> Verdict | None:
        self._add("publish", (message.topic, message.payload))
        if message.payload == self.hold_payload:
            return Verdict.HOLD
        return Verdict.ABORT if message.payload == self.abort_payload else None

    def on_twin_request(self, conn: HubConnection, kind: str, request_id: str,
                        body: bytes) -> Verdict | None:
        self._add("twin", (kind, request_id))
        return self.twin_verdict

    def on_close(self, conn: HubConnection, reason: str) -> None:
        self._add("close", (conn.device_id, reason))


# ------------------------------------------------------------------ observers


def test_observer_sees_connect_subscribe_publish_twin_and_close(hub: Hub) -> None:
    hub.add_device("d1")
    recorder = Recorder()
    hub.add_observer(recorder)
    client = _client(hub, "d1")
    try:
        client.connect(timeout=TIMEOUT)
        assert client.subscribe([("$iothub/twin/res/#", 1)], timeout=TIMEOUT) == (1,)
        client.publish("devices/d1/messages/events/", b"hello", 1).result(TIMEOUT)
        client.publish("$iothub/twin/GET/?$rid=7", b" ", 1).result(TIMEOUT)
        recorder.wait("twin")
    finally:
        client.shutdown()
    recorder.wait("close")
    calls = dict(recorder.calls)
    assert calls["connect"] == ("d1", None, "d1", None, "mqtt")
    assert calls["subscribe"] == [("$iothub/twin/res/#", 1)]
    assert calls["subscribed"] == [1]
    assert ("devices/d1/messages/events/", b"hello") in [v for n, v in recorder.calls
                                                        if n == "publish"]
    assert calls["twin"] == ("GET", "7")
    assert calls["close"][0] == "d1"
    assert hub.observers == (recorder,)
    hub.remove_observer(recorder)
    assert hub.observers == ()


def test_observer_holds_the_suback_and_the_twin_answer(hub: Hub) -> None:
    hub.add_device("d2")
    recorder = Recorder()
    recorder.subscribe_verdict = Verdict.HOLD
    recorder.twin_verdict = Verdict.HOLD
    hub.add_observer(recorder)
    got: list[MessageReceived] = []
    client = _client(hub, "d2", on_message=got.append)
    try:
        client.connect(timeout=TIMEOUT)
        with pytest.raises(OperationTimeout):
            client.subscribe([("$iothub/twin/res/#", 1)], timeout=0.5)  # no SUBACK
        recorder.wait("subscribe")
        assert "subscribed" not in recorder.names()
        recorder.subscribe_verdict = None
        assert client.subscribe([("$iothub/twin/res/#", 1)], timeout=TIMEOUT) == (1,)
        client.publish("$iothub/twin/GET/?$rid=1", b" ", 1).result(TIMEOUT)
        recorder.wait("twin")
        recorder.twin_verdict = None
        client.publish("$iothub/twin/GET/?$rid=2", b" ", 1).result(TIMEOUT)
        recorder.wait("twin", 2)
        recorder.hold_payload = b"ignored"
        with pytest.raises(TimeoutError):  # held: no PUBACK
            client.publish("devices/d2/messages/events/", b"ignored", 1).result(0.5)
        deadline = time.monotonic() + TIMEOUT
        while not got and time.monotonic() < deadline:
            time.sleep(0.01)
        assert [m.topic for m in got] == ["$iothub/twin/res/200/?$rid=2"]  # 1 had no answer
    finally:
        client.shutdown()


def test_observer_aborts_the_connection_before_the_puback(hub: Hub) -> None:
    hub.add_device("d3")
    recorder = Recorder()
    recorder.abort_payload = b"cut here"
    hub.add_observer(recorder)
    client = _client(hub, "d3")
    try:
        client.connect(timeout=TIMEOUT)
        client.publish("devices/d3/messages/events/", b"first", 1).result(TIMEOUT)
        pending = client.publish("devices/d3/messages/events/", b"cut here", 1)
        recorder.wait("close")
        with pytest.raises(Exception):  # noqa: B017 (any error but a PUBACK)
            pending.result(TIMEOUT)
    finally:
        client.shutdown()
    assert [m.body for m in hub.telemetry("d3")] == [b"first"]  # not acted on
    assert not hub.is_connected("d3")


def test_a_failing_observer_is_logged_and_ignored(hub: Hub,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    class Broken(HubObserver):
        def on_publish(self, conn: HubConnection, message: MessageReceived) -> Verdict | None:
            raise RuntimeError("observer bug")

    hub.add_device("d4")
    hub.add_observer(Broken())
    client = _client(hub, "d4")
    try:
        client.connect(timeout=TIMEOUT)
        client.publish("devices/d4/messages/events/", b"x", 1).result(TIMEOUT)
    finally:
        client.shutdown()
    assert [m.body for m in hub.wait_for_telemetry("d4", 1)] == [b"x"]
    assert "observer bug" in caplog.text


# ------------------------------------------------------------------ the log stream


def test_info_log_says_who_connected_and_why_a_device_was_refused(
        hub: Hub, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="iotdev.emulator")
    hub.add_device("good")
    hub.add_device("bad")
    other = hub.add_device("other")
    client = _client(hub, "good")
    try:
        client.connect(timeout=TIMEOUT)
        client.subscribe([("devices/good/messages/devicebound/#", 1),
                          ("devices/other/messages/devicebound/#", 1)], timeout=TIMEOUT)
        for n in range(10):
            client.publish("devices/good/messages/events/", b"%d" % n, 1).result(TIMEOUT)
    finally:
        client.shutdown()
    wrong = _client(hub, "bad", key=other.primary_key)
    with pytest.raises(CredentialError):
        wrong.connect(timeout=TIMEOUT)
    wrong.shutdown()
    deadline = time.monotonic() + TIMEOUT
    while "disconnected good" not in caplog.text and time.monotonic() < deadline:
        time.sleep(0.01)
    text = caplog.text
    assert "connected good over mqtt from 127.0.0.1:" in text
    assert "good subscribed: devices/good/messages/devicebound/# (QoS 1), " \
           "devices/other/messages/devicebound/# (refused)" in text
    assert "good: 1 telemetry message on this connection" in text
    assert "good: 10 telemetry messages on this connection" in text
    assert "disconnected good (mqtt, 10 messages received)" in text
    refusal = [r.getMessage() for r in caplog.records if r.getMessage().startswith("refused bad")]
    assert len(refusal) == 1 and "SAS token refused" in refusal[0] and "signature" in refusal[0]
    assert all(r.levelno == logging.INFO for r in caplog.records
               if r.name.startswith("iotdev.emulator._router"))


# ------------------------------------------------------------------ modules by hand


def test_module_identity_topics_twin_and_method(hub: Hub) -> None:
    hub.add_device("dm")
    module = hub.add_module("dm", "filter")
    assert module.identity == "dm/filter"
    assert hub.connection_string("dm", module_id="filter") == (
        f"HostName=127.0.0.1;DeviceId=dm;ModuleId=filter;SharedAccessKey={module.primary_key}")
    got: list[MessageReceived] = []
    client = _client(hub, "dm", "filter", on_message=got.append)
    try:
        client.connect(timeout=TIMEOUT)
        assert hub.is_connected("dm", "filter") and not hub.is_connected("dm")
        codes = client.subscribe([("devices/dm/modules/filter/inputs/#", 1),
                                  ("devices/dm/messages/devicebound/#", 1),
                                  ("$iothub/methods/POST/#", 1), ("$iothub/twin/res/#", 1),
                                  ("$iothub/twin/PATCH/properties/desired/#", 1)],
                                 timeout=TIMEOUT)
        assert codes == (1, 0x80, 1, 1, 1)  # a module has no C2D queue
        client.publish("devices/dm/modules/filter/messages/events/%24.on=out1&k=v", b"t", 1
                       ).result(TIMEOUT)
        client.publish("$iothub/twin/PATCH/properties/reported/?$rid=1",
                       b'{"state": "ok"}', 1).result(TIMEOUT)
        hub.patch_desired("dm", {"rate": 5}, module_id="filter")

        def answer() -> None:
            deadline = time.monotonic() + TIMEOUT
            while time.monotonic() < deadline:
                for message in list(got):
                    if message.topic.startswith("$iothub/methods/POST/ping/"):
                        rid = message.topic.rpartition("=")[2]
                        client.publish(f"$iothub/methods/res/200/?$rid={rid}", b'{"pong": 1}',
                                       1)
                        return
                time.sleep(0.01)

        responder = threading.Thread(target=answer)
        responder.start()
        result = hub.invoke_method("dm", "ping", {"n": 1}, timeout=TIMEOUT, module_id="filter")
        responder.join(TIMEOUT)
        assert (result.status, result.payload) == (200, {"pong": 1})
        assert hub.invoke_method("dm", "ping", timeout=1).status == 404  # the device is offline
    finally:
        client.shutdown()
    (message,) = hub.wait_for_telemetry("dm", 1)
    assert (message.device_id, message.module_id, message.body) == ("dm", "filter", b"t")
    assert message.system_properties == {"$.on": "out1"} and message.properties == {"k": "v"}
    twin = hub.get_twin("dm", "filter")
    assert twin["moduleId"] == "filter"
    assert twin["properties"]["reported"] == {"state": "ok", "$version": 2}
    assert twin["properties"]["desired"] == {"rate": 5, "$version": 2}
    assert hub.get_twin("dm")["properties"]["reported"] == {"$version": 1}
    assert any(m.topic.startswith("$iothub/twin/PATCH/properties/desired/?$version=2")
               for m in got)


@pytest.mark.parametrize("case", ["device token", "other module", "device client id",
                                  "unknown module", "wrong user name"])
def test_module_refusals(hub: Hub, case: str) -> None:
    device = hub.add_device("dr")
    hub.add_module("dr", "a")
    other = hub.add_module("dr", "b")
    kw: dict[str, Any] = {}
    module_id: str | None = "a"
    if case == "device token":
        kw["password"] = generate_sas_token(device_resource_uri(hub.hub_name, "dr"),
                                            device.primary_key, int(time.time() + 60))
    elif case == "other module":
        kw["password"] = generate_sas_token(device_resource_uri(hub.hub_name, "dr", "b"),
                                            other.primary_key, int(time.time() + 60))
    elif case == "device client id":
        kw["client_id"] = "dr"
    elif case == "unknown module":
        kw["client_id"] = "dr/zz"
    else:
        kw["username"] = f"{hub.hub_name}/dr/b/?api-version=2021-04-12"
    base = _client(hub, "dr", module_id)
    base.shutdown()
    client = MQTTClient(
        "localhost", hub.mqtt_port, client_id=kw.get("client_id", "dr/a"), transport="tls",
        username=kw.get("username", f"{hub.hub_name}/{kw.get('client_id', 'dr/a')}/?a=1"),
        password=kw.get("password") or generate_sas_token(
            device_resource_uri(hub.hub_name, "dr", "a"),
            hub.store.module("dr", "a").primary_key,  # type: ignore[union-attr]
            int(time.time() + 60)),
        server_verification_cert=hub.ca_pem, reconnect=False, connect_timeout=TIMEOUT)
    try:
        with pytest.raises(CredentialError):
            client.connect(timeout=TIMEOUT)
    finally:
        client.shutdown()
    assert not hub.is_connected("dr", "a")


def test_modules_and_module_twins_survive_a_restart(tmp_path: Any) -> None:
    with Hub(mqtt_port=0, ws_port=None, state_dir=tmp_path) as first:
        first.add_device("dp")
        module = first.add_module("dp", "m")
        first.patch_desired("dp", {"a": 1}, module_id="m")
        first.store.set_tags("dp", {"role": "filter"}, module_id="m")
    with Hub(mqtt_port=0, ws_port=None, state_dir=tmp_path) as second:
        assert second.store.module("dp", "m") == module
        twin = second.get_twin("dp", "m")
        assert twin["properties"]["desired"] == {"a": 1, "$version": 2}
        assert twin["tags"] == {"role": "filter"}
        second.store.remove_device("dp")
        assert second.store.modules() == []
    state = json.loads((tmp_path / "state.json").read_text())
    assert state["modules"] == []


def test_service_api_module_registry_twins_and_methods(tmp_path: Any) -> None:
    import http.client
    import ssl

    with Hub(mqtt_port=0, ws_port=None, http_port=0, state_dir=tmp_path) as hub:
        hub.add_device("sd")
        assert hub.http_port is not None
        conn = http.client.HTTPSConnection(
            "127.0.0.1", hub.http_port, timeout=TIMEOUT,
            context=ssl.create_default_context(cadata=hub.ca_pem))

        def call(method: str, path: str, body: Any = None) -> tuple[int, Any]:
            conn.request(method, path + "?api-version=2021-04-12",
                         body=None if body is None else json.dumps(body))
            response = conn.getresponse()
            return response.status, json.loads(response.read() or b"null")

        try:
            status, created = call("PUT", "/devices/sd/modules/m1", {})
            assert status == 200 and created["moduleId"] == "m1"
            assert created["authentication"]["type"] == "sas"
            assert created["connectionState"] == "Disconnected"
            assert call("GET", "/devices/sd/modules")[1] == [created]
            assert call("GET", "/devices/sd/modules/m1")[1] == created
            assert call("GET", "/devices/sd/modules/zz")[0] == 404
            assert call("PUT", "/devices/nobody/modules/m1", {})[0] == 404
            status, twin = call("PATCH", "/twins/sd/modules/m1",
                                {"properties": {"desired": {"x": 1}}, "tags": {"t": "a"}})
            assert status == 200 and twin["moduleId"] == "m1"
            assert twin["properties"]["desired"] == {"x": 1, "$version": 2}
            assert twin["tags"] == {"t": "a"}
            assert call("GET", "/twins/sd")[1]["properties"]["desired"] == {"$version": 1}
            status, error = call("POST", "/twins/sd/modules/m1/methods",
                                 {"methodName": "m", "responseTimeoutInSeconds": 1})
            assert status == 404 and "DeviceNotOnline" in error["Message"]
            assert "module 'sd/m1'" in error["Message"]
        finally:
            conn.close()
