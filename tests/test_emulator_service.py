"""The emulator's HTTPS service API (``iotdev.emulator._service``) with
``http.client``, a device on our generic MQTT client, and the ``iotdev-hub``
client subcommands against a ``serve`` subprocess."""

from __future__ import annotations

import asyncio
import base64
import http.client
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from iotdev._auth import device_resource_uri, generate_sas_token
from iotdev.emulator import Hub
from iotdev.emulator._service import MAX_BODY, MAX_HEAD, check_bind_address
from iotdev.mqtt import MQTTClient
from iotdev_mqtt import MessageReceived

TIMEOUT = 10.0
API = "?api-version=2021-04-12"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    with Hub(hub_name="test-hub.local", mqtt_port=0, ws_port=None, http_port=0,
             state_dir=tmp_path) as h:
        yield h


class Api:
    """One keep-alive ``http.client`` connection to the hub's service API."""

    def __init__(self, hub: Hub) -> None:
        assert hub.http_port is not None
        self.context = ssl.create_default_context(cadata=hub.ca_pem)
        self.port = hub.http_port
        self.conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context,
                                                timeout=TIMEOUT)

    def call(self, method: str, path: str, body: Any = None, *, raw: bytes | None = None,
             headers: dict[str, str] | None = None) -> tuple[int, Any, http.client.HTTPResponse]:
        if raw is None and body is not None:
            raw = json.dumps(body).encode()
        self.conn.request(method, path + API, body=raw, headers=headers or {})
        response = self.conn.getresponse()
        data = response.read()
        assert response.getheader("content-type", "").startswith("application/json")
        return response.status, json.loads(data) if data else None, response

    def close(self) -> None:
        self.conn.close()


@pytest.fixture
def api(hub: Hub) -> Iterator[Api]:
    client = Api(hub)
    yield client
    client.close()


def _token(hub: Hub, device_id: str) -> str:
    device = hub.store.device(device_id)
    assert device is not None and device.primary_key is not None
    return generate_sas_token(device_resource_uri(hub.hub_name, device_id), device.primary_key,
                              int(time.time() + 3600))


def _client(hub: Hub, device_id: str, **kw: Any) -> MQTTClient:
    return MQTTClient(
        "localhost", hub.mqtt_port, client_id=device_id, transport="tls",
        username=f"{hub.hub_name}/{device_id}/?api-version=2021-04-12",
        password=_token(hub, device_id), server_verification_cert=hub.ca_pem,
        clean_session=False, reconnect=False, connect_timeout=TIMEOUT, **kw)


class Device:
    """A device on the generic MQTT client: records what it gets, answers the
    method ``echo`` (200, echoing the payload), leaves ``silent`` unanswered."""

    SUBSCRIPTIONS = ("messages/devicebound/#", "$iothub/methods/POST/#",
                     "$iothub/twin/PATCH/properties/desired/#")

    def __init__(self, client_factory: Any, device_id: str) -> None:
        self.device_id = device_id
        self.got: list[MessageReceived] = []
        self.arrived = threading.Condition()
        self.client: MQTTClient = client_factory(on_message=self._on_message)

    def __enter__(self) -> Device:
        self.client.connect(timeout=TIMEOUT)
        filters = [(f"devices/{self.device_id}/{f}" if f.startswith("messages") else f, 1)
                   for f in self.SUBSCRIPTIONS]
        assert self.client.subscribe(filters, timeout=TIMEOUT) == (1, 1, 1)
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.shutdown()

    def _on_message(self, message: MessageReceived) -> None:
        with self.arrived:
            self.got.append(message)
            self.arrived.notify_all()
        if message.topic.startswith("$iothub/methods/POST/echo/"):
            rid = message.topic.split("$rid=")[1]
            body = json.loads(message.payload or b"null")
            self.client.publish(f"$iothub/methods/res/200/?$rid={rid}",
                                json.dumps({"echo": body}).encode(), 1)

    def wait_for(self, prefix: str) -> MessageReceived:
        with self.arrived:
            assert self.arrived.wait_for(
                lambda: any(m.topic.startswith(prefix) for m in self.got), TIMEOUT), self.got
            return next(m for m in self.got if m.topic.startswith(prefix))

    def telemetry(self, body: bytes, bag: str = "") -> None:
        self.client.publish(f"devices/{self.device_id}/messages/events/{bag}", body,
                            1).result(TIMEOUT)


# ---------------------------------------------------------------- registry


def test_devices_create_list_get_and_update_on_one_connection(hub: Hub, api: Api) -> None:
    key = base64.b64encode(b"k" * 32).decode()
    status, dev1, _ = api.call("PUT", "/devices/dev1")  # no body: keys generated
    sock = api.conn.sock
    assert status == 200 and dev1["deviceId"] == "dev1" and dev1["status"] == "enabled"
    assert dev1["authentication"]["type"] == "sas"
    assert dev1["authentication"]["symmetricKey"]["primaryKey"] == \
        hub.store.device("dev1").primary_key  # type: ignore[union-attr]
    status, dev2, _ = api.call("PUT", "/devices/dev%3A2", {
        "deviceId": "dev:2", "status": "disabled",
        "authentication": {"type": "sas", "symmetricKey": {"primaryKey": key}}})
    assert status == 200 and dev2["status"] == "disabled"
    assert dev2["authentication"]["symmetricKey"]["primaryKey"] == key
    assert hub.store.device("dev:2").enabled is False  # type: ignore[union-attr]
    status, listed, _ = api.call("GET", "/devices")
    assert status == 200 and [d["deviceId"] for d in listed] == ["dev1", "dev:2"]
    assert {d["connectionState"] for d in listed} == {"Disconnected"}
    status, got, _ = api.call("GET", "/devices/dev%3A2")
    assert status == 200 and got == dev2
    status, updated, _ = api.call("PUT", "/devices/dev%3A2", {"status": "enabled"})
    assert status == 200 and updated["status"] == "enabled"
    assert api.conn.sock is sock  # keep-alive: every request on one connection

    status, error, _ = api.call("PUT", "/devices/dev1", {
        "authentication": {"symmetricKey": {"primaryKey": key}}})
    assert status == 409 and "DeviceAlreadyExists" in error["Message"]
    for body in ({"authentication": {"symmetricKey": {"primaryKey": "c2hvcnQ="}}},
                 {"deviceId": "other"}, {"status": "sleepy"}, [1, 2]):
        status, error, _ = api.call("PUT", "/devices/dev3", body)
        assert status == 400, body
        assert set(error) == {"Message", "ExceptionMessage"}
    status, error, _ = api.call("PUT", "/devices/bad%20id")
    assert status == 400 and "invalid device id" in error["Message"]
    status, error, _ = api.call("GET", "/devices/nobody")
    assert status == 404 and error["Message"].startswith("ErrorCode:DeviceNotFound;")


# ---------------------------------------------------------------- errors


def test_routing_errors_and_bad_bodies(hub: Hub, api: Api) -> None:
    hub.add_device("dev1")
    status, error, response = api.call("DELETE", "/devices")
    assert status == 405 and response.getheader("allow") == "GET"
    assert "MethodNotAllowed" in error["Message"]
    status, _, response = api.call("POST", "/twins/dev1")
    assert status == 405 and response.getheader("allow") == "GET, PATCH"
    status, error, _ = api.call("GET", "/nothing/here")
    assert status == 404 and "NotFound" in error["Message"]
    for path in ("/twins/nobody", "/devices/nobody/messages/events"):
        status, error, _ = api.call("GET", path)
        assert status == 404 and "DeviceNotFound" in error["Message"], path
    status, error, _ = api.call("POST", "/twins/nobody/methods", {"methodName": "m"})
    assert status == 404 and "DeviceNotFound" in error["Message"]
    status, error, _ = api.call("POST", "/devices/nobody/messages/deviceBound", raw=b"x")
    assert status == 404
    status, error, _ = api.call("PATCH", "/twins/dev1", raw=b'{"properties": ')
    assert status == 400 and "not valid JSON" in error["Message"]
    status, error, _ = api.call("POST", "/twins/dev1/methods", raw=b"")
    assert status == 400
    api.conn.request("GET", "/devices/dev1/messages/events?whatever=1&api-version=x")
    response = api.conn.getresponse()
    assert response.status == 200 and json.loads(response.read()) == []  # ignored
    api.conn.request("GET", "/messages/events?since=soon")
    response = api.conn.getresponse()
    assert response.status == 400 and b"since" in response.read()
    api.conn.request("GET", "/messages/events?wait=99")
    response = api.conn.getresponse()
    assert response.status == 400 and b"wait" in response.read()


def test_oversize_bodies_get_413_and_the_connection_closes(hub: Hub, api: Api) -> None:
    hub.add_device("dev1")
    status, error, response = api.call("POST", "/devices/dev1/messages/deviceBound",
                                       raw=b"x" * (2 * MAX_BODY))
    assert status == 413 and "RequestEntityTooLarge" in error["Message"]
    assert response.getheader("connection") == "close"
    # Content-Length alone is enough: the answer comes before any body byte.
    conn = http.client.HTTPSConnection("127.0.0.1", api.port, context=api.context,
                                       timeout=TIMEOUT)
    try:
        conn.putrequest("PATCH", "/twins/dev1")
        conn.putheader("content-length", str(MAX_BODY + 1))
        conn.endheaders()
        response = conn.getresponse()
        assert response.status == 413
        response.read()
    finally:
        conn.close()
    # A chunked body growing past the limit, and exactly the limit is fine
    # for the HTTP layer (the C2D route then applies its own 64 KB limit).
    status, _, _ = api.call("POST", "/devices/dev1/messages/deviceBound",
                            raw=iter([b"y" * 65536] * 17))  # type: ignore[arg-type]
    assert status == 413
    status, error, _ = api.call("POST", "/devices/dev1/messages/deviceBound",
                                raw=b"z" * MAX_BODY)
    assert status == 413 and "MessageTooLarge" in error["Message"]
    status, _, _ = api.call("POST", "/devices/dev1/messages/deviceBound", raw=b"z" * 65536)
    assert status == 200


def test_headers_over_the_limit_get_431(hub: Hub, api: Api) -> None:
    status, error, _ = api.call("GET", "/devices", headers={"x-big": "a" * (MAX_HEAD + 1)})
    assert status == 431 and "RequestHeaderFieldsTooLarge" in error["Message"]
    with socket.create_connection(("127.0.0.1", api.port), TIMEOUT) as raw, \
            api.context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(b"GET /devices HTTP/1.1\r\nhost: x\r\nx-big: "
                    + b"a" * (MAX_HEAD + 4096))  # never complete: h11's own limit
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 431 ")


def test_garbage_gets_400(hub: Hub, api: Api) -> None:
    with socket.create_connection(("127.0.0.1", api.port), TIMEOUT) as raw, \
            api.context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
        tls.sendall(b"this is not HTTP\r\n\r\n")
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 ")
    assert b"ErrorCode:BadRequest;" in answer


# ---------------------------------------------------------------- twins


def test_twin_get_and_patch(hub: Hub, api: Api) -> None:
    hub.add_device("dev1")
    status, twin, _ = api.call("GET", "/twins/dev1")
    assert status == 200 and twin["deviceId"] == "dev1"
    assert twin["properties"]["desired"] == {"$version": 1}
    assert twin["connectionState"] == "Disconnected" and twin["status"] == "enabled"
    status, twin, _ = api.call("PATCH", "/twins/dev1", {
        "properties": {"desired": {"rate": 5, "mode": {"eco": True}}},
        "tags": {"site": "lab", "floor": {"n": 2}}})
    assert status == 200
    assert twin["properties"]["desired"] == {"rate": 5, "mode": {"eco": True}, "$version": 2}
    assert twin["tags"] == {"site": "lab", "floor": {"n": 2}}
    status, twin, _ = api.call("PATCH", "/twins/dev1", {
        "properties": {"desired": {"rate": None}}, "tags": {"floor": {"n": 3}, "site": None}})
    assert twin["properties"]["desired"] == {"mode": {"eco": True}, "$version": 3}
    assert twin["tags"] == {"floor": {"n": 3}}
    assert api.call("GET", "/twins/dev1")[1] == twin
    for body in ({"desired": {"rate": 1}}, {"properties": {"reported": {"x": 1}}},
                 {"properties": {"desired": [1]}}, {"properties": {"desired": {"a.b": 1}}},
                 {"deviceId": "other"}, "text"):
        status, error, _ = api.call("PATCH", "/twins/dev1", body)
        assert status == 400, body
    big = {f"k{i}": "v" * 4000 for i in range(9)}
    status, error, _ = api.call("PATCH", "/twins/dev1", {"properties": {"desired": big}})
    assert status == 413 and "over 32768" in error["Message"]
    assert hub.get_twin("dev1")["properties"]["desired"]["$version"] == 3


# ---------------------------------------------------------------- device round trips


def test_c2d_methods_and_desired_reach_the_device(hub: Hub, api: Api) -> None:
    hub.add_device("dev1")
    status, error, _ = api.call("POST", "/twins/dev1/methods", {"methodName": "echo"})
    assert status == 404 and error["Message"].startswith("ErrorCode:DeviceNotOnline;")
    with Device(lambda **kw: _client(hub, "dev1", **kw), "dev1") as device:
        assert api.call("GET", "/devices/dev1")[1]["connectionState"] == "Connected"
        status, sent, _ = api.call(
            "POST", "/devices/dev1/messages/deviceBound", raw="héllo".encode(),
            headers={"iothub-messageid": "m-1", "iothub-correlationid": "c-1",
                     "iothub-app-Color": "blue sky", "iothub-app-n": "1",
                     "content-type": "application/octet-stream"})
        assert status == 200 and sent["messageId"] == "m-1" and sent["correlationId"] == "c-1"
        c2d = device.wait_for("devices/dev1/messages/devicebound/")
        assert c2d.payload == "héllo".encode()
        assert "%24.mid=m-1" in c2d.topic and "%24.cid=c-1" in c2d.topic
        assert "color=blue%20sky" in c2d.topic and "n=1" in c2d.topic

        status, result, _ = api.call("POST", "/twins/dev1/methods", {
            "methodName": "echo", "payload": {"delay": 5}, "responseTimeoutInSeconds": 5,
            "connectTimeoutInSeconds": 0})
        assert (status, result) == (200, {"status": 200, "payload": {"echo": {"delay": 5}}})
        status, result, _ = api.call("POST", "/twins/dev1/methods", {"methodName": "echo"})
        assert (status, result) == (200, {"status": 200, "payload": {"echo": None}})
        status, error, _ = api.call("POST", "/twins/dev1/methods", {
            "methodName": "silent", "responseTimeoutInSeconds": 0.5})
        assert status == 504 and error["Message"].startswith("ErrorCode:GatewayTimeout;")
        for body in ({"payload": 1}, {"methodName": ""}, {"methodName": "echo",
                     "responseTimeoutInSeconds": 0}, {"methodName": "echo",
                     "responseTimeoutInSeconds": "5"}, [1]):
            assert api.call("POST", "/twins/dev1/methods", body)[0] == 400, body

        status, _, _ = api.call("PATCH", "/twins/dev1", {"properties": {"desired": {"rate": 7}}})
        assert status == 200
        patch = device.wait_for("$iothub/twin/PATCH/properties/desired/")
        assert json.loads(patch.payload) == {"rate": 7, "$version": 2}
    assert hub.store.pending_c2d("dev1", now=time.time()) == []  # PUBACK completed it


def test_c2d_refusals(hub: Hub, api: Api) -> None:
    hub.add_device("dev1")
    status, error, _ = api.call("POST", "/devices/dev1/messages/deviceBound", raw=b"x",
                                headers={"iothub-messageid": "no spaces allowed"})
    assert status == 400 and "message id" in error["Message"]
    status, error, _ = api.call("POST", "/devices/dev1/messages/deviceBound", raw=b"x",
                                headers={"iothub-ack": "sometimes"})
    assert status == 400
    for _ in range(hub.store.c2d_queue_limit):
        assert api.call("POST", "/devices/dev1/messages/deviceBound", raw=b"x")[0] == 200
    status, error, _ = api.call("POST", "/devices/dev1/messages/deviceBound", raw=b"x")
    assert status == 403 and "DeviceMaximumQueueDepthExceeded" in error["Message"]
    assert api.call("GET", "/devices/dev1")[1]["cloudToDeviceMessageCount"] == 50


# ---------------------------------------------------------------- telemetry


def test_telemetry_events_since_and_long_poll(hub: Hub, api: Api) -> None:
    hub.add_device("dev1")
    hub.add_device("dev2")
    with Device(lambda **kw: _client(hub, "dev1", **kw), "dev1") as device:
        device.telemetry(b'{"t": 1}', "%24.mid=a&k=v")
        device.telemetry(b"\xff\x00")
        hub.wait_for_telemetry("dev1", 2)
        status, events, _ = api.call("GET", "/devices/dev1/messages/events")
        assert status == 200 and len(events) == 2
        first, second = events
        assert base64.b64decode(first["body"]) == b'{"t": 1}'
        assert first["systemProperties"] == {"$.mid": "a"} and first["properties"] == {"k": "v"}
        assert first["deviceId"] == "dev1" and first["moduleId"] is None
        assert first["enqueuedTimeUtc"].endswith("Z")
        assert base64.b64decode(second["body"]) == b"\xff\x00"
        assert api.call("GET", "/devices/dev2/messages/events")[1] == []
        api.conn.request("GET", f"/messages/events?since={second['enqueuedTime']!r}")
        response = api.conn.getresponse()
        assert [e["body"] for e in json.loads(response.read())] == [second["body"]]

        # A long poll answers as soon as a message arrives.
        since = time.time()
        result: list[Any] = []
        poller = Api(hub)

        def poll() -> None:
            poller.conn.request("GET", f"/devices/dev1/messages/events?since={since!r}&wait=8")
            result.append(json.loads(poller.conn.getresponse().read()))

        thread = threading.Thread(target=poll)
        started = time.monotonic()
        thread.start()
        time.sleep(0.3)
        device.telemetry(b"late")
        thread.join(TIMEOUT)
        poller.close()
        assert time.monotonic() - started < 5
        assert [base64.b64decode(e["body"]) for e in result[0]] == [b"late"]
        # And a poll with nothing to report answers [] once the wait is over.
        started = time.monotonic()
        api.conn.request("GET", f"/messages/events?since={time.time() + 60!r}&wait=0.3")
        assert json.loads(api.conn.getresponse().read()) == []
        assert 0.25 < time.monotonic() - started < 5
        api.conn.request("GET", "/messages/events?limit=2")
        assert len(json.loads(api.conn.getresponse().read())) == 2


def test_every_telemetry_waiter_wakes(hub: Hub) -> None:
    """Several waiters at once (each re-checks its own condition at every
    message); one whose count is not reached times out with the count."""
    hub.add_device("dev1")
    results: dict[int, list[bytes]] = {}

    def wait(count: int) -> None:
        results[count] = [m.body for m in hub.wait_for_telemetry("dev1", count, TIMEOUT)]

    threads = [threading.Thread(target=wait, args=(n,)) for n in (1, 2, 2)]
    for thread in threads:
        thread.start()
    with Device(lambda **kw: _client(hub, "dev1", **kw), "dev1") as device:
        device.telemetry(b"one")
        device.telemetry(b"two")
        for thread in threads:
            thread.join(TIMEOUT)
        assert results == {1: [b"one", b"two"], 2: [b"one", b"two"]} or \
            results == {1: [b"one"], 2: [b"one", b"two"]}
        with pytest.raises(TimeoutError, match="2 of 3 telemetry messages from dev1"):
            hub.wait_for_telemetry("dev1", 3, 0.2)


def test_stop_closes_open_connections_and_long_polls(tmp_path: Path) -> None:
    """``stop()`` ends a long poll that is in flight at once.  The old test
    slept 0.3 s and could pass with no poll in flight (the request still in a
    socket buffer is closed just the same).  Now the hub's thread is watched
    (``threading.setprofile``, set only while the hub starts its thread) for
    ``Router.wait_for_telemetry`` entering ``asyncio.wait_for`` (on the
    future the next message wakes), which is what a long poll waits on:
    nothing enters it before the request, and ``stop()`` runs only after the
    poll has.  The hub's loop runs one thing at a time, so the poll is
    suspended in that wait when ``stop()`` reaches the loop."""
    from iotdev.emulator._router import Router

    waiting = threading.Event()
    wait_code = asyncio.wait_for.__code__
    poll_code = Router.wait_for_telemetry.__code__

    def watch(frame: Any, event: str, arg: Any) -> None:
        if event == "call" and frame.f_code is wait_code and frame.f_back is not None \
                and frame.f_back.f_code is poll_code:
            waiting.set()

    threading.setprofile(watch)
    try:
        hub = Hub(mqtt_port=0, ws_port=None, http_port=0, state_dir=tmp_path).start()
    finally:
        threading.setprofile(None)  # only the hub's thread, started above, is watched
    api = Api(hub)
    assert not waiting.is_set(), "something else waits for telemetry: the proof is void"
    outcome: list[BaseException | None] = []

    def poll() -> None:
        try:
            api.conn.request("GET", f"/messages/events?since={time.time() + 60!r}&wait=30")
            api.conn.getresponse().read()
            outcome.append(None)
        except (OSError, http.client.HTTPException) as exc:
            outcome.append(exc)

    thread = threading.Thread(target=poll)
    thread.start()
    assert waiting.wait(TIMEOUT), "the long poll never started waiting"
    assert not outcome  # still in flight
    started = time.monotonic()
    hub.stop()
    thread.join(TIMEOUT)
    api.close()
    assert time.monotonic() - started < 5
    assert outcome and isinstance(outcome[0], OSError | http.client.HTTPException)


# ---------------------------------------------------------------- binding


def test_refuses_a_non_loopback_address_unless_allowed(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no authentication"):
        Hub(host="0.0.0.0", mqtt_port=0, ws_port=None, http_port=0, state_dir=tmp_path)
    hub = Hub(host="0.0.0.0", mqtt_port=0, ws_port=None, http_port=0, state_dir=tmp_path,
              http_allow_remote=True)
    assert hub.http_port == 0
    Hub(host="0.0.0.0", mqtt_port=0, ws_port=None, state_dir=tmp_path)  # no API: no check
    for host in ("127.0.0.1", "127.1.2.3", "::1", "localhost"):
        check_bind_address(host, False)
    for host in ("", "0.0.0.0", "::", "192.168.1.10", "example.com"):
        with pytest.raises(ValueError):
            check_bind_address(host, False)


# ---------------------------------------------------------------- the command line


class Served:
    """A ``serve`` subprocess with free ports, its state in ``cwd/iotdev-hub-state``."""

    def __init__(self, cwd: Path) -> None:
        self.cwd = cwd
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "iotdev.emulator", "serve", "--mqtt-port", "0",
             "--ws-port", "-1", "--http-port", "0", "--device", "dev1"],
            cwd=cwd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines: list[str] = []
        assert self.proc.stdout is not None
        deadline = time.monotonic() + 60
        while not any("HostName=" in line for line in self.lines):
            assert time.monotonic() < deadline, self.lines
            line = self.proc.stdout.readline()
            assert line, f"serve exited early: {self.lines}"
            self.lines.append(line)
        out = "".join(self.lines)
        self.mqtt_port = int(re.search(r"MQTT/TLS on [^ ]+:(\d+)", out).group(1))  # type: ignore[union-attr]
        self.url = re.search(r"service API on (https://\S+)", out).group(1)  # type: ignore[union-attr]
        self.key = re.search(r"dev1: .*SharedAccessKey=(\S+)", out).group(1)  # type: ignore[union-attr]
        self.ca_pem = (cwd / "iotdev-hub-state" / "ca.pem").read_text()

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        url = () if "--url" in args else ("--url", self.url)
        return subprocess.run([sys.executable, "-m", "iotdev.emulator", *args, *url],
                              cwd=self.cwd, env=_env(), capture_output=True,
                              text=True, timeout=timeout)

    def device_client(self, **kw: Any) -> MQTTClient:
        token = generate_sas_token(device_resource_uri("iotdev-hub.local", "dev1"), self.key,
                                   int(time.time() + 3600))
        return MQTTClient(
            "localhost", self.mqtt_port, client_id="dev1", transport="tls",
            username="iotdev-hub.local/dev1/?api-version=2021-04-12", password=token,
            server_verification_cert=self.ca_pem, clean_session=False, reconnect=False,
            connect_timeout=TIMEOUT, **kw)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        assert self.proc.stdout is not None
        self.proc.stdout.close()


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    server = Served(tmp_path)
    try:
        yield server
    finally:
        server.stop()


def test_cli_subcommands_against_serve(served: Served) -> None:
    assert served.url.startswith("https://127.0.0.1:")
    done = served.run("devices")
    assert done.returncode == 0, done.stderr
    assert re.search(r"^dev1\s+enabled\s+Disconnected\s+sas\s+0$", done.stdout, re.M), done.stdout

    done = served.run("desired", "dev1", '{"rate": 5}')
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["properties"]["desired"] == {"rate": 5, "$version": 2}
    done = served.run("twin", "dev1")
    assert done.returncode == 0 and json.loads(done.stdout)["deviceId"] == "dev1"

    with Device(served.device_client, "dev1") as device:
        done = served.run("c2d", "dev1", "hello device", "--message-id", "m1",
                          "--correlation-id", "c1", "--property", "k=v w", "--ack", "full")
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "sent message m1 to dev1"
        c2d = device.wait_for("devices/dev1/messages/devicebound/")
        assert c2d.payload == b"hello device"
        assert "%24.mid=m1" in c2d.topic and "k=v%20w" in c2d.topic
        assert "iothub-ack=full" in c2d.topic

        done = served.run("invoke", "dev1", "echo", '{"x": [1, 2]}', "--timeout", "5")
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout) == {"status": 200, "payload": {"echo": {"x": [1, 2]}}}
        done = served.run("invoke", "dev1", "silent", "--timeout", "0.5")
        assert done.returncode == 1 and "504" in done.stderr and "GatewayTimeout" in done.stderr

        device.telemetry(b"21.5", "a=1")
        done = served.run("telemetry", "dev1")
        assert done.returncode == 0, done.stderr
        (line,) = done.stdout.splitlines()
        assert json.loads(line)["body"] == "21.5" and json.loads(line)["properties"] == {"a": "1"}
        done = served.run("telemetry")
        assert done.returncode == 0 and len(done.stdout.splitlines()) == 1
        done = served.run("devices")
        assert re.search(r"^dev1\s+enabled\s+Connected", done.stdout, re.M), done.stdout

        follow = subprocess.Popen(
            [sys.executable, "-m", "iotdev.emulator", "telemetry", "dev1", "--follow",
             "--url", served.url], cwd=served.cwd, env=_env(), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True)
        try:
            # --follow starts from now: publish until a message shows up.
            stop = threading.Event()

            def publish() -> None:
                n = 0
                while not stop.is_set():
                    n += 1
                    device.telemetry(f"follow {n}".encode())
                    stop.wait(0.2)

            publisher = threading.Thread(target=publish)
            publisher.start()
            try:
                assert follow.stdout is not None
                first = json.loads(follow.stdout.readline())
                second = json.loads(follow.stdout.readline())
            finally:
                stop.set()
                publisher.join(TIMEOUT)
            assert first["body"].startswith("follow ") and first["deviceId"] == "dev1"
            assert int(second["body"].split()[1]) == int(first["body"].split()[1]) + 1
            follow.send_signal(signal.SIGINT)
            assert follow.wait(TIMEOUT) == 0
        finally:
            if follow.poll() is None:
                follow.kill()
                follow.wait()
            for stream in (follow.stdout, follow.stderr):
                if stream is not None:
                    stream.close()


def test_cli_exit_codes(served: Served, tmp_path: Path, test_ca: Any) -> None:
    done = served.run("twin", "nobody")
    assert done.returncode == 1
    assert "404" in done.stderr and "DeviceNotFound" in done.stderr
    done = served.run("invoke", "dev1", "m")  # not connected
    assert done.returncode == 1 and "DeviceNotOnline" in done.stderr
    done = served.run("desired", "dev1", "{not json")
    assert done.returncode == 2 and "PATCH_JSON is not valid JSON" in done.stderr
    done = served.run("desired", "dev1", "[1]")
    assert done.returncode == 2
    done = served.run("c2d", "dev1", "x", "--property", "no-equals")
    assert done.returncode == 2
    done = served.run("invoke", "dev1")  # argparse: METHOD missing
    assert done.returncode == 2
    done = served.run("devices", "--ca", str(tmp_path / "missing.pem"))
    assert done.returncode == 2 and "not found" in done.stderr
    done = served.run("devices", "--ca", str(test_ca.ca_cert))  # another CA
    assert done.returncode == 2 and "did not verify" in done.stderr
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    done = subprocess.run([sys.executable, "-m", "iotdev.emulator", "devices", "--url",
                           f"https://127.0.0.1:{port}"], cwd=served.cwd, env=_env(),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "cannot reach the emulator" in done.stderr
    done = served.run("devices", "--url", "http://127.0.0.1:1")
    assert done.returncode == 2 and "expected https://" in done.stderr


def test_serve_refuses_a_remote_address_without_the_flag(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "iotdev.emulator", "serve", "--host", "0.0.0.0",
         "--mqtt-port", "0", "--ws-port", "-1", "--http-port", "0", "--state",
         str(tmp_path)], env=_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "no authentication" in done.stderr
