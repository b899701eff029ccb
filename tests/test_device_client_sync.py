"""``iotdev.IoTHubDeviceClient`` (sync) against the local IoT Hub emulator.

Covers the four factories, option validation, connect / disconnect / shutdown,
telemetry checked on the hub side byte for byte (reference section 4.1),
cloud-to-device messages, direct methods, the twin (``ensure_desired_properties``
across reconnects, refused patches), handlers, SAS renewal, operation timeouts
and hub outages.

The hub is real (TLS, MQTT, the IoT Hub topics).  ``HubSpy`` wraps a few of its
protocol hooks on the instance to see what a device sent (raw topics, CONNECT
passwords, subscriptions) and, when a test asks, to withhold twin answers or
cut a connection at a chosen PUBLISH.  Every wait has a deadline; nothing
sleeps.  Tests marked ``xfail(strict=True)`` document client bugs.
"""

from __future__ import annotations

import datetime
import json
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from iotdev import (
    X509,
    ClientError,
    CredentialError,
    IoTHubDeviceClient,
    Message,
    MethodRequest,
    MethodResponse,
    NoConnectionError,
    OperationCancelled,
    OperationTimeout,
    ServiceError,
)
from iotdev._auth import device_resource_uri, generate_sas_token
from iotdev.emulator import Hub, HubConnection, HubObserver, Verdict

HOST = "127.0.0.1"
# The deprecated receive_* APIs are tested here on purpose (their warning: test_v2_behaviours).
pytestmark = pytest.mark.filterwarnings(
    "ignore:.*deprecated since azure-iot-device 2.3.0:DeprecationWarning")
TIMEOUT = 10.0
LIMIT = 262_144  # IoT Hub's D2C limit: body + system property values + app names and values
KEY = "c2VjcmV0LWtleS1vZi1hLXRlc3QtZGV2aWNlLTAxMjM0NTY3OA=="  # a valid base64 key
SECURITY_IFID = "urn:azureiot:Security:SecurityAgent:1"

Client = IoTHubDeviceClient


# ---------------------------------------------------------------- helpers


def new_id(prefix: str = "dev") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def device_key(hub: Hub, device_id: str) -> str:
    device = hub.store.device(device_id)
    assert device is not None and device.primary_key
    return device.primary_key


def sas_token(hub: Hub, device_id: str, ttl: float = 3600, *, key: str | None = None) -> str:
    """A device SAS token whose resource host is the address the client dials."""
    return generate_sas_token(device_resource_uri(HOST, device_id),
                              key or device_key(hub, device_id), int(time.time() + ttl))


class Recorder:
    """A callable that records its calls (one argument: the argument; none:
    ``None``; several: the tuple) and lets a test wait for them."""

    def __init__(self, then: Callable[..., Any] | None = None) -> None:
        self.items: list[Any] = []
        self.cond = threading.Condition()
        self.then = then

    def __call__(self, *args: Any) -> None:
        value = args[0] if len(args) == 1 else (args or None)
        with self.cond:
            self.items.append(value)
            self.cond.notify_all()
        if self.then is not None:
            self.then(*args)

    def add(self, value: Any) -> None:
        with self.cond:
            self.items.append(value)
            self.cond.notify_all()

    def wait(self, count: int = 1, timeout: float = TIMEOUT) -> list[Any]:
        return self.wait_for(lambda items: len(items) >= count, timeout, f"{count} calls")

    def wait_for(self, predicate: Callable[[list[Any]], bool], timeout: float = TIMEOUT,
                 what: str = "the condition") -> list[Any]:
        with self.cond:
            ok = self.cond.wait_for(lambda: predicate(self.items), timeout)
            items = list(self.items)
        assert ok, f"timed out after {timeout} s waiting for {what}; got {items!r}"
        return items


class HubSpy:
    """Wraps protocol hooks of a ``Hub`` instance.

    Records, per device: raw PUBLISH topics and payloads (``publishes``), CONNECT
    user names and passwords (``connects``), subscribed filters (``subscribed``),
    twin request kinds (``twin_requests``) and closed connections (``closes``).
    ``mute_twin`` holds devices whose twin requests get no answer,
    ``mute_subscribe`` devices whose SUBSCRIBEs get no SUBACK;
    ``cut_at[payload]`` is an event: the first PUBLISH with that payload is not
    processed (no PUBACK) and its connection is aborted, then the event is set.
    """

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.publishes: list[tuple[str | None, str, bytes]] = []
        self.connects: list[tuple[str, str | None, bytes | None, int]] = []
        self.subscribed: dict[str, set[str]] = {}
        self.twin_requests: list[tuple[str, str]] = []
        self.closes: list[str | None] = []
        self.mute_twin: set[str] = set()
        self.mute_subscribe: set[str] = set()
        self.subscribe_requests: list[str | None] = []
        self.cut_at: dict[bytes, threading.Event] = {}

    def install(self, hub: Hub, setattr_: Callable[[Any, str, Any], None] = setattr) -> HubSpy:
        spy = self

        class Observer(HubObserver):
            def on_connect(self, conn: HubConnection, packet: Any, refusal: str | None) -> None:
                with spy.cond:
                    spy.connects.append((packet.client_id, packet.username, packet.password,
                                         packet.keep_alive))
                    spy.cond.notify_all()

            def on_publish(self, conn: HubConnection, message: Any) -> Verdict | None:
                with spy.cond:
                    spy.publishes.append((conn.device_id, message.topic, message.payload))
                    spy.cond.notify_all()
                cut = spy.cut_at.get(message.payload)
                if cut is not None and not cut.is_set():
                    conn.abort()  # no PUBACK ever leaves for this PUBLISH
                    cut.set()
                    return Verdict.ABORT
                return None

            def on_subscribe(self, conn: HubConnection, subscriptions: Any) -> Verdict | None:
                with spy.cond:
                    spy.subscribe_requests.append(conn.device_id)
                    spy.cond.notify_all()
                return Verdict.HOLD if conn.device_id in spy.mute_subscribe else None  # no SUBACK

            def on_subscribed(self, conn: HubConnection, subscriptions: Any,
                              codes: list[int]) -> None:
                with spy.cond:
                    if conn.device_id:
                        spy.subscribed.setdefault(conn.device_id, set()).update(
                            f for f, _ in subscriptions)
                    spy.cond.notify_all()

            def on_twin_request(self, conn: HubConnection, kind: str, request_id: str,
                                body: bytes) -> Verdict | None:
                with spy.cond:
                    spy.twin_requests.append((conn.device_id or "", kind))
                    spy.cond.notify_all()
                return Verdict.HOLD if conn.device_id in spy.mute_twin else None

            def on_close(self, conn: HubConnection, reason: str) -> None:
                with spy.cond:
                    spy.closes.append(conn.device_id)
                    spy.cond.notify_all()

        setattr_(hub, "observers", (*hub.observers, Observer()))
        return self

    def wait_for(self, predicate: Callable[[], bool], timeout: float = TIMEOUT,
                 what: str = "the hub") -> None:
        with self.cond:
            assert self.cond.wait_for(predicate, timeout), f"timed out waiting for {what}"

    def topics(self, device_id: str) -> list[str]:
        with self.cond:
            return [t for d, t, _ in self.publishes if d == device_id]

    def passwords(self, device_id: str) -> list[bytes | None]:
        with self.cond:
            return [p for c, _, p, _ in self.connects if c == device_id]

    def wait_subscribed(self, device_id: str, topic_filter: str) -> None:
        self.wait_for(lambda: topic_filter in self.subscribed.get(device_id, set()),
                      what=f"{device_id} to subscribe to {topic_filter}")

    def twin_gets(self, device_id: str) -> int:
        with self.cond:
            return sum(1 for d, k in self.twin_requests if d == device_id and k == "GET")


class Joinable:
    """``fn(*args)`` on a daemon thread; calling it (``join(timeout)``) gives
    the result or raises the exception, and fails if it has not returned."""

    def __init__(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> None:
        self.fn = fn
        self.outcome: dict[str, Any] = {}
        self.thread = threading.Thread(target=self._run, args=args, kwargs=kwargs, daemon=True)
        self.thread.start()

    def _run(self, *args: Any, **kwargs: Any) -> None:
        try:
            self.outcome["value"] = self.fn(*args, **kwargs)
        except BaseException as exc:
            self.outcome["error"] = exc

    def __call__(self, timeout: float = TIMEOUT) -> Any:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"{self.fn!r} did not return within {timeout} s"
        if "error" in self.outcome:
            raise self.outcome["error"]
        return self.outcome.get("value")

    def wait_blocked(self, timeout: float = TIMEOUT) -> None:
        """Wait until the thread waits (on an empty queue, or for an operation)."""
        deadline = time.monotonic() + timeout
        pause = threading.Event()
        while time.monotonic() < deadline:
            frame = sys._current_frames().get(self.thread.ident or -1)
            if frame is not None and frame.f_code.co_name in ("wait", "_wait"):
                return  # Condition.wait (a queue), Completion._wait (an operation)
            assert self.thread.is_alive(), f"{self.fn!r} returned: {self.outcome!r}"
            pause.wait(0.005)
        pytest.fail(f"{self.fn!r} did not block within {timeout} s")


in_thread = Joinable


def restart(hub: Hub) -> Hub:
    """Stop ``hub`` and start a new one on the same ports with the same state."""
    hub.stop()
    return Hub(mqtt_port=hub.mqtt_port, ws_port=hub.ws_port, state_dir=hub.state_dir).start()


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    with Hub(mqtt_port=0, ws_port=0, state_dir=tmp_path_factory.mktemp("hub")) as running:
        yield running


@pytest.fixture
def spy(hub: Hub, monkeypatch: pytest.MonkeyPatch) -> HubSpy:
    return HubSpy().install(hub, monkeypatch.setattr)


@pytest.fixture
def dev(hub: Hub) -> str:
    device_id = new_id()
    hub.add_device(device_id)
    return device_id


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    made: list[Client] = []
    yield made
    for client in made:
        client.shutdown()


@pytest.fixture
def make(hub: Hub, clients: list[Client]) -> Callable[..., Client]:
    """``make(device_id, **options)``: a connection-string client of ``hub``."""

    def make(device_id: str, hub_: Hub | None = None, **kwargs: Any) -> Client:
        target = hub_ or hub
        kwargs.setdefault("server_verification_cert", target.ca_pem)
        kwargs.setdefault("port", target.ws_port if kwargs.get("websockets") else target.mqtt_port)
        client = Client.create_from_connection_string(target.connection_string(device_id),
                                                      **kwargs)
        clients.append(client)
        return client

    return make


@pytest.fixture
def own_hub(tmp_path: Path) -> Iterator[dict[str, Hub]]:
    """A hub of the test's own (``box["hub"]``), for tests that stop it;
    whatever is in the box at the end is stopped."""
    box = {"hub": Hub(mqtt_port=0, ws_port=0, state_dir=tmp_path / "hub").start()}
    yield box
    box["hub"].stop()


def state_recorder(client: Client) -> Recorder:
    states = Recorder()
    client.on_connection_state_change = lambda: states.add(client.connected)
    return states


# ---------------------------------------------------------------- factories


@pytest.mark.parametrize("websockets", [False, True], ids=["mqtt", "websockets"])
def test_create_from_connection_string(hub: Hub, spy: HubSpy, dev: str,
                                       make: Callable[..., Client], websockets: bool) -> None:
    client = make(dev, websockets=websockets)
    assert client.connected is False
    client.connect()
    assert client.connected is True
    client.send_message("hello")
    assert [m.body for m in hub.wait_for_telemetry(dev, 1)] == [b"hello"]
    ((client_id, username, password, keep_alive),) = [c for c in spy.connects if c[0] == dev]
    assert client_id == dev
    assert username is not None and username.startswith(f"{HOST}/{dev}/?api-version=")
    assert password is not None and password.startswith(
        f"SharedAccessSignature sr={HOST}%2Fdevices%2F{dev}&sig=".encode())
    assert keep_alive == 60


def test_create_from_sastoken(hub: Hub, spy: HubSpy, dev: str, clients: list[Client]) -> None:
    token = sas_token(hub, dev)
    client = Client.create_from_sastoken(token, server_verification_cert=hub.ca_pem,
                                         port=hub.mqtt_port)
    clients.append(client)
    client.send_message(b"from a token")  # auto-connects
    assert client.connected
    assert [m.body for m in hub.wait_for_telemetry(dev, 1)] == [b"from a token"]
    assert spy.passwords(dev) == [token.encode()]


def test_create_from_symmetric_key(hub: Hub, spy: HubSpy, dev: str,
                                   clients: list[Client]) -> None:
    client = Client.create_from_symmetric_key(device_key(hub, dev), HOST, dev,
                                              server_verification_cert=hub.ca_pem,
                                              port=hub.mqtt_port, sastoken_ttl=600)
    clients.append(client)
    before = int(time.time())
    client.connect()
    after = int(time.time())
    client.send_message("from a key")
    assert [m.body for m in hub.wait_for_telemetry(dev, 1)] == [b"from a key"]
    (password,) = spy.passwords(dev)
    assert password is not None
    expiry = int(password.decode().rsplit("&se=", 1)[1])
    assert before + 600 <= expiry <= after + 601


def test_create_from_x509_certificate(hub: Hub, spy: HubSpy, clients: list[Client]) -> None:
    device_id = new_id("x509")
    cert = hub.add_x509_device(device_id)
    x509 = X509(str(cert.cert_file), str(cert.key_file))
    client = Client.create_from_x509_certificate(x509, HOST, device_id,
                                                 server_verification_cert=hub.ca_pem,
                                                 port=hub.mqtt_port)
    clients.append(client)
    client.connect()
    client.send_message("signed")
    # The same identity from an x509=true connection string.
    other = Client.create_from_connection_string(
        f"HostName={HOST};DeviceId={device_id};x509=true", x509=x509,
        server_verification_cert=hub.ca_pem, port=hub.mqtt_port)
    clients.append(other)
    other.send_message("signed again")  # takes the connection over
    assert [m.body for m in hub.wait_for_telemetry(device_id, 2)] == [b"signed",
                                                                       b"signed again"]
    assert spy.passwords(device_id) == [None, None]
    with pytest.raises(ValueError, match="x509"):
        Client.create_from_connection_string(f"HostName={HOST};DeviceId={device_id};x509=true")


def test_x509_certificate_of_another_device_is_a_credential_error(
        hub: Hub, clients: list[Client]) -> None:
    mine, theirs = new_id("x509"), new_id("x509")
    cert = hub.add_x509_device(mine)
    hub.add_x509_device(theirs)
    client = Client.create_from_x509_certificate(
        X509(str(cert.cert_file), str(cert.key_file)), HOST, theirs,
        server_verification_cert=hub.ca_pem, port=hub.mqtt_port)
    clients.append(client)
    with pytest.raises(CredentialError):
        client.connect()
    assert not client.connected


# ---------------------------------------------------------------- options


def _factories(hub: Hub) -> dict[str, Callable[..., Client]]:
    cs = f"HostName={HOST};DeviceId=opts;SharedAccessKey={KEY}"
    token = generate_sas_token(device_resource_uri(HOST, "opts"), KEY, int(time.time()) + 3600)
    x509 = X509("/nonexistent/cert.pem", "/nonexistent/key.pem")
    return {
        "connection_string": lambda **kw: Client.create_from_connection_string(cs, **kw),
        "sastoken": lambda **kw: Client.create_from_sastoken(token, **kw),
        "symmetric_key": lambda **kw: Client.create_from_symmetric_key(KEY, HOST, "opts", **kw),
        "x509": lambda **kw: Client.create_from_x509_certificate(x509, HOST, "opts", **kw),
    }


FACTORIES = ["connection_string", "sastoken", "symmetric_key", "x509"]


@pytest.mark.parametrize("factory", FACTORIES)
@pytest.mark.parametrize("option", ["bogus_option", "keepalive", "retry_interval"])
def test_unknown_keyword_is_a_type_error_naming_it(hub: Hub, factory: str,
                                                   option: str) -> None:
    with pytest.raises(TypeError, match=option):
        _factories(hub)[factory](**{option: 1})


@pytest.mark.parametrize("factory", FACTORIES)
@pytest.mark.parametrize("value", [0, -5, 1741, 100_000])
def test_keep_alive_out_of_range_is_a_value_error(hub: Hub, factory: str, value: int) -> None:
    with pytest.raises(ValueError, match="keep_alive"):
        _factories(hub)[factory](keep_alive=value)


@pytest.mark.parametrize(("option", "value", "error"), [
    ("websockets", "yes", TypeError),
    ("websockets", 1, TypeError),
    ("auto_connect", None, TypeError),
    ("connection_retry", "false", TypeError),
    ("ensure_desired_properties", 0, TypeError),
    ("server_verification_cert", b"-----BEGIN CERTIFICATE-----", TypeError),
    ("gateway_hostname", 42, TypeError),
    ("product_info", 1.5, TypeError),
    ("cipher", 5, TypeError),
    ("proxy_options", "http://proxy:8080", TypeError),
    ("keep_alive", "sixty", TypeError),  # v2 takes "60" and 60.0 (int()), not this
    ("keep_alive", [60], TypeError),
    ("keep_alive", True, TypeError),
    ("sastoken_ttl", "3600", TypeError),
    ("sastoken_ttl", 0, ValueError),
    ("connection_retry_interval", 0, ValueError),
    ("connection_retry_interval", "often", TypeError),
    ("port", 0, ValueError),
    ("port", 65_536, ValueError),
    ("port", "8883", TypeError),
    ("operation_timeout", 0, ValueError),
    ("operation_timeout", -1.0, ValueError),
    ("max_queued_messages", -1, ValueError),
])
def test_option_of_wrong_type_or_value(hub: Hub, option: str, value: Any,
                                       error: type[Exception]) -> None:
    with pytest.raises(error, match=option):
        _factories(hub)["connection_string"](**{option: value})


def test_option_bounds_are_accepted(hub: Hub, spy: HubSpy, dev: str,
                                    make: Callable[..., Client]) -> None:
    for keep_alive in (1, 1740):
        client = make(dev, keep_alive=keep_alive, operation_timeout=0.5)
        client.connect()
        client.disconnect()
    assert [c[3] for c in spy.connects if c[0] == dev] == [1, 1740]


def test_factory_argument_types(hub: Hub) -> None:
    with pytest.raises(TypeError):
        Client.create_from_connection_string(b"HostName=h;DeviceId=d;SharedAccessKey=" +
                                             KEY.encode())  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Client.create_from_sastoken(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Client.create_from_x509_certificate("cert.pem", HOST, "d")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="sastoken_ttl"):
        _factories(hub)["sastoken"](sastoken_ttl=60)
    with pytest.raises(ValueError):
        Client.create_from_symmetric_key("not base64 !!", HOST, "d")


SECRET = "U2VjcmV0S2V5VGhhdE11c3ROZXZlckxlYWsxMjM0NTY3OA=="


@pytest.mark.parametrize("text", [
    f"HostName=h;SharedAccessKey={SECRET}",
    f"HostName=h;DeviceId=d;SharedAccessKey={SECRET};Bogus=1",
    f"HostName=h;DeviceId=d;SharedAcessKey={SECRET}",
    f"HostName=h;DeviceId=d;SharedAccessKey={SECRET};SharedAccessKey={SECRET}",
    f"HostName=h;DeviceId=d;SharedAccessKey={SECRET};",
    f"HostName=h;DeviceId=d;{SECRET}",
    f"HostName=h;DeviceId=d;SharedAccessKey={SECRET};x509=true",
    f"HostName=h;DeviceId=d;ModuleId=m;SharedAccessKey={SECRET}",
    f"HostName=h;DeviceId=d;SharedAccessKey={SECRET[:-2]}",  # bad padding
    f"HostName=h;SharedAccessKeyName=owner;SharedAccessKey={SECRET}",
], ids=["no-device-id", "unknown-key", "misspelled-key", "duplicate-key", "trailing-semicolon",
        "part-without-equals", "mixed-auth", "module-string", "key-bad-padding", "hub-level"])
def test_bad_connection_string_error_never_contains_the_key(text: str) -> None:
    with pytest.raises(ValueError) as info:
        Client.create_from_connection_string(text)
    shown = "".join(traceback.format_exception(info.value))
    exc: BaseException | None = info.value
    while exc is not None:  # the whole chain, message and args
        shown += str(exc) + repr(exc.args)
        exc = exc.__cause__ or exc.__context__
    for fragment in (SECRET, SECRET[:16], SECRET[-16:]):
        assert fragment not in shown


# ------------------------------------------------- connect, disconnect, shutdown


def test_connect_disconnect_and_the_connected_property(
        hub: Hub, spy: HubSpy, dev: str, make: Callable[..., Client]) -> None:
    client = make(dev)
    states = state_recorder(client)
    assert client.connected is False
    client.connect()
    assert client.connected is True
    assert hub.is_connected(dev)
    client.connect()  # already connected: nothing happens
    assert len(spy.passwords(dev)) == 1
    client.disconnect()
    assert client.connected is False
    spy.wait_for(lambda: dev in spy.closes, what="the hub to see the connection close")
    client.disconnect()  # already disconnected: fine
    client.connect()
    client.send_message("after reconnect")
    assert [m.body for m in hub.wait_for_telemetry(dev, 1)] == [b"after reconnect"]
    assert states.wait(3) == [True, False, True]


def test_after_shutdown_every_call_raises_client_error(hub: Hub, spy: HubSpy, dev: str,
                                                      make: Callable[..., Client]) -> None:
    client = make(dev)
    client.connect()
    client.shutdown()
    assert client.connected is False
    spy.wait_for(lambda: dev in spy.closes, what="the hub to see the connection close")
    response = MethodResponse("1", 200, None)
    calls: dict[str, Callable[[], Any]] = {
        "connect": client.connect,
        "disconnect": client.disconnect,
        "send_message": lambda: client.send_message("x"),
        "send_method_response": lambda: client.send_method_response(response),
        "get_twin": client.get_twin,
        "patch_twin_reported_properties": lambda: client.patch_twin_reported_properties({}),
        "receive_message": lambda: client.receive_message(block=False),
        "receive_method_request": lambda: client.receive_method_request(block=False),
        "receive_twin_desired_properties_patch":
            lambda: client.receive_twin_desired_properties_patch(block=False),
        "update_sastoken": lambda: client.update_sastoken(sas_token(hub, dev)),
    }
    for name in ("on_message_received", "on_method_request_received",
                 "on_twin_desired_properties_patch_received", "on_connection_state_change",
                 "on_new_sastoken_required", "on_background_exception"):
        calls[name] = lambda name=name: setattr(client, name, lambda *a: None)
    for name, call in calls.items():
        with pytest.raises(ClientError):
            call()
            pytest.fail(f"{name} did not raise")
    client.shutdown()  # idempotent
    assert len(spy.passwords(dev)) == 1  # nothing reconnected


def test_shutdown_wakes_blocked_receive_calls(dev: str, make: Callable[..., Client]) -> None:
    client = make(dev, ensure_desired_properties=False)
    client.connect()
    joins = [in_thread(client.receive_message),  # block=True, no timeout
             in_thread(client.receive_method_request, "m"),
             in_thread(client.receive_twin_desired_properties_patch, block=True)]
    for join in joins:
        join.wait_blocked()
    client.shutdown()
    for join in joins:
        with pytest.raises(OperationCancelled):
            join(5.0)


def test_shutdown_wakes_a_receive_call_that_is_still_subscribing(
        spy: HubSpy, dev: str, make: Callable[..., Client]) -> None:
    client = make(dev)
    client.connect()
    spy.mute_subscribe.add(dev)  # the SUBACK is late
    shut_down = threading.Event()

    def slow_background_handler(error: BaseException) -> None:
        if threading.current_thread() is join.thread:  # the failed SUBSCRIBE, reported
            shut_down.wait(TIMEOUT)  # by the receiving thread after shutdown() returned

    client.on_background_exception = slow_background_handler
    join = in_thread(client.receive_message)  # block=True, no timeout
    spy.wait_for(lambda: dev in spy.subscribe_requests, what="the SUBSCRIBE")
    client.shutdown()
    shut_down.set()
    with pytest.raises((OperationCancelled, ClientError)):
        join(1.5)


def test_auto_connect_false_raises_no_connection_error(
        hub: Hub, spy: HubSpy, dev: str, make: Callable[..., Client]) -> None:
    client = make(dev, auto_connect=False)
    for call in (lambda: client.send_message("x"), client.get_twin,
                 lambda: client.patch_twin_reported_properties({"a": 1}),
                 lambda: client.send_method_response(MethodResponse("1", 200))):
        with pytest.raises(NoConnectionError):
            call()
    # A handler set while disconnected does not connect; it is subscribed on connect.
    client.on_method_request_received = lambda r: client.send_method_response(
        MethodResponse.create_from_method_request(r, 200, "ok"))
    assert spy.passwords(dev) == []
    client.connect()
    spy.wait_subscribed(dev, "$iothub/methods/POST/#")
    assert hub.invoke_method(dev, "m", timeout=TIMEOUT).payload == "ok"
    client.send_message("x")
    client.disconnect()
    with pytest.raises(NoConnectionError):
        client.send_message("y")
    assert [m.body for m in hub.telemetry(dev)] == [b"x"]


def test_wrong_key_is_a_credential_error(hub: Hub, dev: str, clients: list[Client]) -> None:
    other = new_id()
    hub.add_device(other)
    wrong = f"HostName={HOST};DeviceId={dev};SharedAccessKey={device_key(hub, other)}"
    client = Client.create_from_connection_string(wrong, server_verification_cert=hub.ca_pem,
                                                  port=hub.mqtt_port)
    clients.append(client)
    with pytest.raises(CredentialError) as info:
        client.connect()
    assert device_key(hub, other) not in str(info.value)
    with pytest.raises(CredentialError):
        client.send_message("auto-connects, and fails the same way")
    assert not client.connected
    assert hub.telemetry(dev) == []


def test_disabled_device_is_a_credential_error(hub: Hub, make: Callable[..., Client]) -> None:
    device_id = new_id()
    hub.add_device(device_id, enabled=False)
    client = make(device_id)
    with pytest.raises(CredentialError):
        client.connect()
    hub.set_enabled(device_id, True)
    client.connect()
    assert client.connected


def test_expired_sastoken_is_refused_at_creation(hub: Hub, dev: str) -> None:
    # v2: ValueError("Provided SasToken has already expired"), before any connection.
    with pytest.raises(ValueError, match="expired"):
        Client.create_from_sastoken(sas_token(hub, dev, ttl=-60),
                                    server_verification_cert=hub.ca_pem, port=hub.mqtt_port)


# ---------------------------------------------------------------- telemetry


def _every_attribute() -> tuple[Message, str]:
    message = Message(b'{"t": 21.5}', message_id="msg 1", content_encoding="utf-8",
                      content_type="application/json", output_name="out/1")
    message.correlation_id = "c/1"
    message.user_id = "user@x"
    message.expiry_time_utc = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    message.set_as_security_message()
    message.custom_properties = {
        "zeta": "a+b", "alpha": 1, "sp ace": "x&y=z", "pct": "100%",
        "iothub-creation-time-utc": "2024-01-01T00:00:00Z", "$.ctime": "x",
        "semi;colon": "q?#", "ünï": "çødé ✓",
    }
    bag = ("%24.on=out%2F1&%24.mid=msg%201&%24.cid=c%2F1&%24.uid=user%40x"
           "&%24.ct=application%2Fjson&%24.ce=utf-8"
           "&%24.ifid=urn%3Aazureiot%3ASecurity%3ASecurityAgent%3A1"
           "&%24.exp=2024-01-02T03%3A04%3A05%2B00%3A00"
           "&%24.ctime=x&alpha=1&iothub-creation-time-utc=2024-01-01T00%3A00%3A00Z"
           "&pct=100%25&semi%3Bcolon=q%3F%23&sp%20ace=x%26y%3Dz&zeta=a%2Bb"
           "&%C3%BCn%C3%AF=%C3%A7%C3%B8d%C3%A9%20%E2%9C%93")
    return message, bag


def _reference_example() -> tuple[Message, str]:
    """The example of reference section 4.1, verbatim."""
    message = Message("payload", message_id="msg 1", content_type="application/json",
                      content_encoding="utf-8")
    message.correlation_id = "c/1"
    message.expiry_time_utc = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    message.custom_properties = {"zeta": "a+b", "alpha": 1, "sp ace": "x&y=z",
                                 "iothub-creation-time-utc": "2024-01-01T00:00:00Z"}
    bag = ("%24.mid=msg%201&%24.cid=c%2F1&%24.ct=application%2Fjson&%24.ce=utf-8"
           "&%24.exp=2024-01-02T03%3A04%3A05%2B00%3A00&alpha=1"
           "&iothub-creation-time-utc=2024-01-01T00%3A00%3A00Z&sp%20ace=x%26y%3Dz&zeta=a%2Bb")
    return message, bag


def _falsy_and_strings() -> tuple[Message, str]:
    message = Message("x", message_id="", content_type=None, content_encoding="")
    message.correlation_id = 0  # type: ignore[assignment]
    message.user_id = ""
    message.expiry_time_utc = "2030-01-01T00:00:00Z"  # a str is sent as given
    message.custom_properties = {7: 8.5, "empty": "", "none": None}
    return message, "%24.exp=2030-01-01T00%3A00%3A00Z&7=8.5&empty=&none=None"


def _nothing() -> tuple[Message, str]:
    return Message(b"bare"), ""


@pytest.mark.parametrize("case", [_every_attribute, _reference_example, _falsy_and_strings,
                                  _nothing],
                         ids=["every-attribute", "reference-4.1", "falsy-and-strings", "bare"])
def test_send_message_property_bag_on_the_wire(
        hub: Hub, spy: HubSpy, dev: str, make: Callable[..., Client],
        case: Callable[[], tuple[Message, str]]) -> None:
    message, bag = case()
    client = make(dev)
    client.send_message(message)
    (received,) = hub.wait_for_telemetry(dev, 1)
    assert spy.topics(dev) == [f"devices/{dev}/messages/events/{bag}"]
    assert received.body == message.body_bytes()
    assert received.module_id is None


def test_send_message_every_attribute_as_the_hub_decodes_it(
        hub: Hub, dev: str, make: Callable[..., Client]) -> None:
    message, _ = _every_attribute()
    make(dev).send_message(message)
    (received,) = hub.wait_for_telemetry(dev, 1)
    assert received.body == b'{"t": 21.5}'
    assert received.system_properties == {
        "$.on": "out/1", "$.mid": "msg 1", "$.cid": "c/1", "$.uid": "user@x",
        "$.ct": "application/json", "$.ce": "utf-8", "$.ifid": SECURITY_IFID,
        "$.exp": "2024-01-02T03:04:05+00:00", "$.ctime": "x",
    }
    assert received.properties == {
        "alpha": "1", "iothub-creation-time-utc": "2024-01-01T00:00:00Z", "pct": "100%",
        "semi;colon": "q?#", "sp ace": "x&y=z", "zeta": "a+b", "ünï": "çødé ✓",
    }


def test_duplicate_custom_property_keys_are_refused_before_sending(
        spy: HubSpy, dev: str, make: Callable[..., Client]) -> None:
    client = make(dev, auto_connect=False)
    message = Message("x")
    message.custom_properties = {1: "a", "1": "b"}
    with pytest.raises(ValueError, match="Duplicate"):
        client.send_message(message)
    assert spy.passwords(dev) == []


@pytest.mark.parametrize(("data", "body"), [
    ("text", b"text"),
    ("ünïcode ✓", "ünïcode ✓".encode()),
    (b"\x00\xff\x10", b"\x00\xff\x10"),
    (bytearray(b"ba"), b"ba"),
    (42, b"42"),
    (1.5, b"1.5"),
    (None, b""),
], ids=["str", "unicode", "bytes", "bytearray", "int", "float", "none"])
def test_send_message_with_a_non_message_argument(
        hub: Hub, spy: HubSpy, dev: str, make: Callable[..., Client], data: Any,
        body: bytes) -> None:
    make(dev).send_message(data)
    assert [m.body for m in hub.wait_for_telemetry(dev, 1)] == [body]
    assert spy.topics(dev) == [f"devices/{dev}/messages/events/"]


def _sized(total: int, *, unicode: bool) -> Message:
    """A message of exactly ``total`` bytes by the service's count."""
    key, value = ("kéy", "välüe ✓") if unicode else ("key", "value")
    overhead = len("mid-1") + len("text/plain") + len(key.encode()) + len(value.encode())
    message = Message(b"a" * (total - overhead), message_id="mid-1", content_type="text/plain")
    message.custom_properties = {key: value}
    return message


@pytest.mark.parametrize("unicode", [False, True], ids=["ascii", "utf8"])
def test_256_kb_limit_exactly_at_the_limit_and_one_byte_over(
        hub: Hub, spy: HubSpy, dev: str, make: Callable[..., Client], unicode: bool) -> None:
    offline = make(dev, auto_connect=False)
    with pytest.raises(ValueError, match="256 KB"):  # refused before any connection
        offline.send_message(_sized(LIMIT + 1, unicode=unicode))
    with pytest.raises(ValueError):
        offline.send_message(b"a" * (LIMIT + 1))
    assert spy.passwords(dev) == []
    client = make(dev)
    client.send_message(_sized(LIMIT, unicode=unicode))
    client.send_message(b"b" * LIMIT)
    with pytest.raises(ValueError, match="256 KB"):
        client.send_message(_sized(LIMIT + 1, unicode=unicode))
    client.send_message("still connected")
    bodies = [m.body for m in hub.wait_for_telemetry(dev, 3)]
    assert [len(b) for b in bodies] == [len(_sized(LIMIT, unicode=unicode).data), LIMIT, 15]
    assert len(spy.topics(dev)) == 3
    assert client.connected


def test_256_kb_limit_counts_the_expiry_system_property(
        dev: str, make: Callable[..., Client]) -> None:
    client = make(dev, operation_timeout=1)
    message = Message(b"")
    message.expiry_time_utc = "2030-01-01T00:00:00Z"
    message.data = b"a" * (LIMIT - len(message.expiry_time_utc) + 1)  # one byte over
    with pytest.raises(ValueError):
        client.send_message(message)


# ---------------------------------------------------------------- C2D


def test_c2d_handler_gets_every_attribute(hub: Hub, spy: HubSpy, dev: str,
                                          make: Callable[..., Client]) -> None:
    client = make(dev)
    client.connect()
    received = Recorder()
    client.on_message_received = received
    spy.wait_subscribed(dev, f"devices/{dev}/messages/devicebound/#")
    hub.send_c2d(dev, b"\x00body", message_id="c2d-1", correlation_id="corr/1",
                 properties={"k": "v w", "plus": "a+b", "uni": "ü&=?"}, ack="full")
    hub.send_c2d(dev, "second")
    first, second = received.wait(2)
    assert isinstance(first, Message)
    assert first.data == b"\x00body"
    assert (first.message_id, first.correlation_id, first.ack) == ("c2d-1", "corr/1", "full")
    assert first.custom_properties == {"k": "v w", "plus": "a+b", "uni": "ü&=?"}
    assert first.input_name is None
    assert second.data == b"second" and second.custom_properties == {}


def test_c2d_with_the_receive_message_api(hub: Hub, dev: str,
                                          make: Callable[..., Client]) -> None:
    client = make(dev)
    client.connect()
    assert client.receive_message(block=False) is None  # subscribes (API mode)
    started = time.monotonic()
    assert client.receive_message(timeout=0.2) is None
    assert time.monotonic() - started < TIMEOUT
    hub.send_c2d(dev, b"one", message_id="m1")
    hub.send_c2d(dev, b"two", properties={"p": "q"})
    one = client.receive_message(timeout=TIMEOUT)
    two = client.receive_message(block=True, timeout=TIMEOUT)
    assert one is not None and two is not None
    assert (one.data, one.message_id) == (b"one", "m1")
    assert (two.data, two.custom_properties) == (b"two", {"p": "q"})


def test_c2d_sent_while_disconnected_arrives_after_connect(
        hub: Hub, dev: str, make: Callable[..., Client]) -> None:
    client = make(dev)
    client.connect()
    received = Recorder()
    client.on_message_received = received
    client.disconnect()
    hub.send_c2d(dev, b"while away")
    client.connect()
    assert [m.data for m in received.wait(1)] == [b"while away"]


@pytest.mark.parametrize("feature", ["c2d", "methods", "twin"])
def test_receive_mode_lock(hub: Hub, dev: str, make: Callable[..., Client],
                           feature: str) -> None:
    handler_name, receive = {
        "c2d": ("on_message_received", "receive_message"),
        "methods": ("on_method_request_received", "receive_method_request"),
        "twin": ("on_twin_desired_properties_patch_received",
                 "receive_twin_desired_properties_patch"),
    }[feature]
    api_client = make(dev, ensure_desired_properties=False)
    api_client.connect()
    assert getattr(api_client, receive)(block=False) is None
    with pytest.raises(ClientError):
        setattr(api_client, handler_name, lambda *a: None)
    api_client.on_connection_state_change = lambda: None  # client events are not locked
    api_client.on_background_exception = lambda e: None
    other = new_id()
    hub.add_device(other)
    handler_client = make(other, ensure_desired_properties=False)
    setattr(handler_client, handler_name, lambda *a: None)
    with pytest.raises(ClientError):
        getattr(handler_client, receive)(block=False)


def test_setting_a_non_callable_handler_is_a_type_error(make: Callable[..., Client],
                                                        dev: str) -> None:
    client = make(dev, auto_connect=False)
    with pytest.raises(TypeError):
        client.on_message_received = "not callable"
    with pytest.raises(TypeError):
        client.on_background_exception = 42


# ---------------------------------------------------------------- methods


def test_method_handler_answers_from_inside_the_handler(
        hub: Hub, spy: HubSpy, dev: str, make: Callable[..., Client]) -> None:
    client = make(dev)
    client.connect()
    requests = Recorder()

    def answer(request: MethodRequest) -> None:
        # Calling back into the client from the handler thread must not deadlock.
        twin = client.get_twin()
        client.patch_twin_reported_properties({"last_method": request.name.replace(" ", "_")})
        client.send_method_response(MethodResponse.create_from_method_request(
            request, 201, {"echo": request.payload, "version": twin["desired"]["$version"]}))

    client.on_method_request_received = Recorder(then=answer)  # replaced just below
    client.on_method_request_received = requests
    requests.then = answer
    spy.wait_subscribed(dev, "$iothub/methods/POST/#")
    result = hub.invoke_method(dev, "reboot now", {"delay": 5}, timeout=TIMEOUT)
    assert (result.status, result.payload) == (201, {"echo": {"delay": 5}, "version": 1})
    result = hub.invoke_method(dev, "ping", None, timeout=TIMEOUT)
    assert (result.status, result.payload) == (201, {"echo": None, "version": 1})
    first, second = requests.wait(2)
    assert (first.name, first.payload, second.name) == ("reboot now", {"delay": 5}, "ping")
    assert first.request_id != second.request_id
    assert hub.get_twin(dev)["properties"]["reported"]["last_method"] == "ping"


def test_setting_a_handler_subscribes_before_returning(
        hub: Hub, dev: str, make: Callable[..., Client]) -> None:
    client = make(dev)
    client.on_method_request_received = lambda r: client.send_method_response(
        MethodResponse.create_from_method_request(r, 200, None))
    assert hub.invoke_method(dev, "m", timeout=TIMEOUT).status == 200


def test_receive_method_request_by_name(hub: Hub, spy: HubSpy, dev: str,
                                        make: Callable[..., Client]) -> None:
    client = make(dev)
    client.connect()
    assert client.receive_method_request("alpha", block=False) is None
    spy.wait_subscribed(dev, "$iothub/methods/POST/#")
    beta = in_thread(hub.invoke_method, dev, "beta", [1, 2], timeout=TIMEOUT)
    any_request = client.receive_method_request(timeout=TIMEOUT)
    alpha = in_thread(hub.invoke_method, dev, "alpha", "a", timeout=TIMEOUT)
    named = client.receive_method_request("alpha", timeout=TIMEOUT)
    assert any_request is not None and named is not None
    assert (any_request.name, any_request.payload) == ("beta", [1, 2])
    assert (named.name, named.payload) == ("alpha", "a")
    assert client.receive_method_request("alpha", timeout=0.1) is None
    client.send_method_response(MethodResponse(named.request_id, 200, {"n": "alpha"}))
    client.send_method_response(MethodResponse.create_from_method_request(any_request, 404))
    assert (alpha().status, alpha().payload) == (200, {"n": "alpha"})
    assert (beta().status, beta().payload) == (404, None)


def test_send_method_response_argument_errors(spy: HubSpy, dev: str,
                                              make: Callable[..., Client]) -> None:
    client = make(dev, auto_connect=False)
    with pytest.raises(TypeError):
        client.send_method_response({"request_id": "1", "status": 200})  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        client.send_method_response(MethodResponse("1", "200"))  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        client.send_method_response(MethodResponse("1", True))
    assert spy.passwords(dev) == []


def test_method_request_and_response_topics(hub: Hub, spy: HubSpy, dev: str,
                                            make: Callable[..., Client]) -> None:
    client = make(dev)
    client.connect()
    client.on_method_request_received = lambda r: client.send_method_response(
        MethodResponse.create_from_method_request(r, 200, {"ok": True}))
    assert hub.invoke_method(dev, "go", timeout=TIMEOUT).payload == {"ok": True}
    (topic,) = [t for t in spy.topics(dev) if t.startswith("$iothub/methods/")]
    assert topic.startswith("$iothub/methods/res/200/?$rid=")
    ((_, _, body),) = [p for p in spy.publishes if p[1] == topic]
    assert body == b'{"ok": true}'


# ---------------------------------------------------------------- twin


def test_get_twin_shape_and_reported_patches(hub: Hub, spy: HubSpy, dev: str,
                                             make: Callable[..., Client]) -> None:
    client = make(dev)
    assert client.get_twin() == {"desired": {"$version": 1}, "reported": {"$version": 1}}
    client.patch_twin_reported_properties({"battery": 55, "nested": {"a": 1, "b": "x"}})
    reported = hub.get_twin(dev)["properties"]["reported"]
    assert (reported["battery"], reported["nested"]) == (55, {"a": 1, "b": "x"})
    client.patch_twin_reported_properties({"nested": {"a": None}, "battery": None})
    hub.patch_desired(dev, {"rate": 5})
    twin = client.get_twin()
    assert set(twin) == {"desired", "reported"}
    assert twin["desired"] == {"rate": 5, "$version": 2}
    assert twin["reported"] == {"nested": {"b": "x"}, "$version": 3}
    # Distinct request ids: see test_twin_request_made_while_connecting_is_sent_once.
    gets = {t for t in spy.topics(dev) if t.startswith("$iothub/twin/GET/")}
    patches = {p[1]: p[2] for p in spy.publishes
               if p[0] == dev and p[1].startswith("$iothub/twin/PATCH/properties/reported/")}
    assert len(gets) == 2 and len(patches) == 2
    assert all(t.startswith("$iothub/twin/GET/?$rid=") for t in gets)
    assert all(t.startswith("$iothub/twin/PATCH/properties/reported/?$rid=") for t in patches)
    assert b'{"battery": 55, "nested": {"a": 1, "b": "x"}}' in patches.values()
    with pytest.raises(TypeError):
        client.patch_twin_reported_properties([("a", 1)])  # type: ignore[arg-type]


def test_twin_request_made_while_connecting_is_neither_failed_nor_sent_twice(
        hub: Hub, spy: HubSpy, dev: str, make: Callable[..., Client]) -> None:
    client = make(dev, operation_timeout=1)
    spy.mute_twin.add(dev)  # a slow hub: the answer is not there yet

    def patches() -> list[bytes]:
        with spy.cond:
            return [p[2] for p in spy.publishes
                    if p[0] == dev and p[1].startswith("$iothub/twin/PATCH/properties/reported/")]

    def busy_handler() -> None:  # the handler thread is busy until the PATCH is acknowledged
        spy.wait_for(lambda: len(patches()) >= 1, what="the PATCH")
        client.send_message("probe")  # its PUBACK comes after the PATCH's

    client.on_connection_state_change = busy_handler
    with pytest.raises(OperationTimeout):  # no answer: nothing else
        client.patch_twin_reported_properties({"a": 1})  # auto-connects
    client.send_message("marker")  # written after anything queued before it
    hub.wait_for_telemetry(dev, 2)
    assert patches() == [b'{"a": 1}']


def test_twin_request_on_the_new_connection_survives_a_busy_handler_thread(
        hub: Hub, spy: HubSpy, dev: str, make: Callable[..., Client]) -> None:
    client = make(dev, connection_retry_interval=1, operation_timeout=1)
    client.connect()
    client.get_twin()
    busy, release = threading.Event(), threading.Event()

    def slow_handler(message: Message) -> None:
        busy.set()
        release.wait(TIMEOUT)

    client.on_message_received = slow_handler
    hub.send_c2d(dev, b"a long job")
    assert busy.wait(TIMEOUT)
    try:
        closes = spy.closes.count(dev)
        hub.set_enabled(dev, False)  # a network blip while the handler works
        spy.wait_for(lambda: spy.closes.count(dev) > closes, what="the drop")
        hub.set_enabled(dev, True)
        client.send_message("reconnected")  # waits for the reconnection
        spy.mute_twin.add(dev)
        join = in_thread(client.patch_twin_reported_properties, {"on": "the new connection"})
        spy.wait_for(lambda: any(p[0] == dev and p[1].startswith(
            "$iothub/twin/PATCH/properties/reported/") for p in spy.publishes), what="PATCH")
        client.send_message("probe")  # its PUBACK comes after the PATCH's
    finally:
        release.set()
    with pytest.raises(OperationTimeout):  # no answer: nothing else
        join()


def test_twin_request_cut_off_by_a_drop_is_sent_once_after_the_reconnect(
        hub: Hub, spy: HubSpy, dev: str, make: Callable[..., Client]) -> None:
    client = make(dev, connection_retry_interval=1)
    patches = Recorder()
    client.on_twin_desired_properties_patch_received = patches  # a twin GET at every connect
    patches.wait(1)
    gets = spy.twin_gets(dev)
    body = json.dumps({"cut": dev}).encode()
    spy.cut_at[body] = threading.Event()  # the first copy: no PUBACK, the connection drops
    spy.mute_twin.add(dev)  # a slow hub: no answer yet

    def copies() -> int:
        with spy.cond:
            return sum(1 for d, _, p in spy.publishes if d == dev and p == body)

    join = in_thread(client.patch_twin_reported_properties, {"cut": dev})
    # The automatic GET of the reconnect is written after any re-published request.
    spy.wait_for(lambda: spy.twin_gets(dev) > gets, what="the GET after the reconnect")
    client.shutdown()
    with pytest.raises(OperationCancelled):
        join()
    assert copies() == 2  # the cut copy and the session's re-send


@pytest.mark.parametrize("patch", [{"bad key": 1}, {"$bad": 1}, {"a.b": 1},
                                   {"ok": {"nested key": 2}}])
def test_refused_twin_patch_is_a_service_error_with_status(
        hub: Hub, dev: str, make: Callable[..., Client], patch: dict[str, Any]) -> None:
    client = make(dev)
    with pytest.raises(ServiceError) as info:
        client.patch_twin_reported_properties(patch)
    assert isinstance(info.value, ClientError)  # what v2 code catches
    assert info.value.status == 400  # type: ignore[attr-defined]
    assert hub.get_twin(dev)["properties"]["reported"] == {"$version": 1}
    client.patch_twin_reported_properties({"fine": True})  # the client keeps working
    assert client.get_twin()["reported"]["fine"] is True


def test_desired_patch_handler_without_ensure(hub: Hub, spy: HubSpy, dev: str,
                                              make: Callable[..., Client]) -> None:
    client = make(dev, ensure_desired_properties=False)
    client.connect()
    patches = Recorder()
    client.on_twin_desired_properties_patch_received = patches
    spy.wait_subscribed(dev, "$iothub/twin/PATCH/properties/desired/#")
    hub.patch_desired(dev, {"rate": 5})
    hub.patch_desired(dev, {"rate": None, "mode": "eco"})
    assert patches.wait(2) == [{"rate": 5, "$version": 2},
                               {"rate": None, "mode": "eco", "$version": 3}]
    assert spy.twin_gets(dev) == 0


def test_ensure_desired_properties_delivers_the_document_once_after_connect(
        hub: Hub, dev: str, make: Callable[..., Client]) -> None:
    hub.patch_desired(dev, {"a": 1, "deep": {"b": 2}})  # while the device is offline
    client = make(dev)
    patches = Recorder()
    client.on_twin_desired_properties_patch_received = patches  # auto-connects
    assert patches.wait(1) == [{"a": 1, "deep": {"b": 2}, "$version": 2}]
    hub.patch_desired(dev, {"c": 3})
    assert patches.wait(2) == [{"a": 1, "deep": {"b": 2}, "$version": 2},
                               {"c": 3, "$version": 3}]


def test_ensure_desired_properties_after_reconnects(hub: Hub, spy: HubSpy, dev: str,
                                                    make: Callable[..., Client]) -> None:
    client = make(dev, connection_retry_interval=1)
    states = state_recorder(client)
    patches = Recorder()
    client.on_twin_desired_properties_patch_received = patches
    assert patches.wait(1) == [{"$version": 1}]
    assert states.wait(1) == [True]

    def bounce(count: int, while_down: Callable[[], Any] = lambda: None) -> None:
        hub.set_enabled(dev, False)  # drops the connection; reconnects are refused
        states.wait(count - 1)
        while_down()
        hub.set_enabled(dev, True)
        assert states.wait(count)[-2:] == [False, True]

    bounce(3, lambda: hub.patch_desired(dev, {"x": 1}))  # the version moves while offline
    assert patches.wait(2)[1] == {"x": 1, "$version": 2}
    gets = spy.twin_gets(dev)
    bounce(5)  # the version did not move: nothing is delivered
    spy.wait_for(lambda: spy.twin_gets(dev) > gets, what="the twin GET after reconnecting")
    client.get_twin()  # answered after the automatic GET
    hub.patch_desired(dev, {"y": 2})
    assert patches.wait(3) == [{"$version": 1}, {"x": 1, "$version": 2},
                               {"y": 2, "$version": 3}]


def test_receive_twin_desired_properties_patch(hub: Hub, spy: HubSpy, dev: str,
                                               make: Callable[..., Client]) -> None:
    client = make(dev)
    # Not connected: the first call connects, and the full document arrives.
    assert client.receive_twin_desired_properties_patch(timeout=TIMEOUT) == {"$version": 1}
    spy.wait_subscribed(dev, "$iothub/twin/PATCH/properties/desired/#")
    hub.patch_desired(dev, {"rate": 7})
    assert client.receive_twin_desired_properties_patch(timeout=TIMEOUT) == {
        "rate": 7, "$version": 2}
    assert client.receive_twin_desired_properties_patch(block=False) is None
    assert client.receive_twin_desired_properties_patch(timeout=0.1) is None


def test_desired_patch_handler_patches_reported(hub: Hub, spy: HubSpy, dev: str,
                                                make: Callable[..., Client]) -> None:
    client = make(dev, ensure_desired_properties=False)
    client.connect()
    done = Recorder()

    def acknowledge(patch: dict[str, Any]) -> None:
        client.patch_twin_reported_properties({"rate": {"value": patch["rate"],
                                                        "av": patch["$version"]}})
        done(patch)

    client.on_twin_desired_properties_patch_received = acknowledge
    spy.wait_subscribed(dev, "$iothub/twin/PATCH/properties/desired/#")
    hub.patch_desired(dev, {"rate": 9})
    done.wait(1)
    assert hub.get_twin(dev)["properties"]["reported"]["rate"] == {"value": 9, "av": 2}


# ---------------------------------------------------------------- handlers


def test_on_connection_state_change_sees_every_transition(
        hub: Hub, dev: str, make: Callable[..., Client]) -> None:
    client = make(dev, connection_retry_interval=1)
    states = state_recorder(client)
    client.connect()
    assert states.wait(1) == [True]
    client.disconnect()
    assert states.wait(2) == [True, False]
    client.connect()
    hub.set_enabled(dev, False)
    assert states.wait(4) == [True, False, True, False]
    hub.set_enabled(dev, True)
    assert states.wait(5) == [True, False, True, False, True]


def test_background_exception_gets_handler_errors_and_the_client_keeps_working(
        hub: Hub, spy: HubSpy, dev: str, make: Callable[..., Client]) -> None:
    client = make(dev)
    client.connect()
    errors = Recorder()
    client.on_background_exception = errors
    received = Recorder()

    def handler(message: Message) -> None:
        received(message.data)
        if message.data.startswith(b"boom"):
            raise RuntimeError(message.data.decode())

    client.on_message_received = handler
    spy.wait_subscribed(dev, f"devices/{dev}/messages/devicebound/#")
    hub.send_c2d(dev, b"boom-1")
    (error,) = errors.wait(1)
    assert isinstance(error, RuntimeError) and str(error) == "boom-1"
    # A failing on_background_exception does not stop anything either.
    client.on_background_exception = Recorder(then=lambda e: 1 / 0)
    hub.send_c2d(dev, b"boom-2")
    hub.send_c2d(dev, b"fine")
    assert received.wait(3) == [b"boom-1", b"boom-2", b"fine"]
    client.send_message("still working")
    assert [m.body for m in hub.wait_for_telemetry(dev, 1)] == [b"still working"]
    assert client.connected
    assert client.get_twin()["desired"]["$version"] == 1


def test_method_handler_exception_is_reported(hub: Hub, spy: HubSpy, dev: str,
                                              make: Callable[..., Client]) -> None:
    client = make(dev)
    client.connect()
    errors = Recorder()
    client.on_background_exception = errors

    def handler(request: MethodRequest) -> None:
        if request.name == "fail":
            raise ValueError("no such thing")
        client.send_method_response(MethodResponse.create_from_method_request(request, 200))

    client.on_method_request_received = handler
    assert hub.invoke_method(dev, "fail", timeout=0.5).status == 504
    assert isinstance(errors.wait(1)[0], ValueError)
    assert hub.invoke_method(dev, "ok", timeout=TIMEOUT).status == 200


def test_c2d_handler_sends_telemetry(hub: Hub, spy: HubSpy, dev: str,
                                     make: Callable[..., Client]) -> None:
    client = make(dev)
    client.connect()
    client.on_message_received = lambda m: client.send_message(b"echo:" + m.data)
    spy.wait_subscribed(dev, f"devices/{dev}/messages/devicebound/#")
    for n in range(3):
        hub.send_c2d(dev, f"c2d-{n}")
    assert [m.body for m in hub.wait_for_telemetry(dev, 3)] == [
        b"echo:c2d-0", b"echo:c2d-1", b"echo:c2d-2"]


# ---------------------------------------------------------------- SAS renewal


def test_sas_renewal_reconnects_and_loses_nothing(hub: Hub, spy: HubSpy, dev: str,
                                                  make: Callable[..., Client]) -> None:
    # Renewal is due min(120 s, ttl/5) before expiry, and at least 5 s after the
    # token was made (RENEW_FLOOR): a 6 s token is renewed after 5 s.
    client = make(dev, sastoken_ttl=6)
    states = state_recorder(client)
    client.connect()
    sent: list[bytes] = []
    stop = threading.Event()

    def sender() -> None:
        n = 0
        while not stop.is_set() and n < 2000:
            body = f"m{n}".encode()
            client.send_message(body, timeout=TIMEOUT)
            sent.append(body)
            n += 1

    join = in_thread(sender)
    try:
        states.wait(3)  # connected, renewal drop, reconnected
    finally:
        stop.set()
        join()
    client.send_message(b"after")
    sent.append(b"after")
    got = [m.body for m in hub.wait_for_telemetry(dev, len(sent))]
    assert set(got) == set(sent)
    assert states.items[:3] == [True, False, True]
    passwords = spy.passwords(dev)
    assert len(passwords) >= 2 and passwords[0] != passwords[1]  # a fresh token


def test_sastoken_client_asks_for_a_new_token_and_update_sastoken_reconnects(
        hub: Hub, spy: HubSpy, dev: str, clients: list[Client]) -> None:
    first = sas_token(hub, dev, ttl=6)
    client = Client.create_from_sastoken(first, server_verification_cert=hub.ca_pem,
                                         port=hub.mqtt_port)
    clients.append(client)
    states = state_recorder(client)
    second = sas_token(hub, dev, ttl=3600)
    asked = Recorder(then=lambda: client.update_sastoken(second))
    client.on_new_sastoken_required = asked
    client.connect()
    asked.wait(1)
    assert states.wait(3)[:3] == [True, False, True]
    assert spy.passwords(dev)[:2] == [first.encode(), second.encode()]
    client.send_message("with the new token")
    assert [m.body for m in hub.wait_for_telemetry(dev, 1)] == [b"with the new token"]
    assert len(asked.items) == 1


def test_update_sastoken_errors(hub: Hub, dev: str, make: Callable[..., Client],
                                clients: list[Client]) -> None:
    with pytest.raises(ClientError):
        make(dev, auto_connect=False).update_sastoken(sas_token(hub, dev))
    client = Client.create_from_sastoken(sas_token(hub, dev), auto_connect=False,
                                         server_verification_cert=hub.ca_pem,
                                         port=hub.mqtt_port)
    clients.append(client)
    other = new_id()
    hub.add_device(other)
    with pytest.raises(ValueError):
        client.update_sastoken(sas_token(hub, other))
    with pytest.raises(ValueError):
        client.update_sastoken("SharedAccessSignature garbage")
    client.update_sastoken(sas_token(hub, dev, ttl=7200))  # not connected: just stored
    client.connect()
    assert client.connected


# ---------------------------------------------------------------- timeouts


def test_twin_requests_time_out_when_the_hub_never_answers(
        hub: Hub, spy: HubSpy, dev: str, make: Callable[..., Client]) -> None:
    client = make(dev, operation_timeout=0.5)
    client.connect()
    spy.mute_twin.add(dev)
    started = time.monotonic()
    with pytest.raises(OperationTimeout):
        client.get_twin()
    with pytest.raises(OperationTimeout):
        client.patch_twin_reported_properties({"a": 1})
    with pytest.raises(OperationTimeout):
        client.get_twin(timeout=0.2)
    assert time.monotonic() - started < 5
    assert not isinstance(OperationTimeout(), ClientError)
    spy.mute_twin.discard(dev)
    assert client.get_twin()["reported"] == {"$version": 1}
    assert client.connected


# ---------------------------------------------------------------- faults


def test_send_in_flight_when_the_hub_stops_is_delivered_after_restart(
        own_hub: dict[str, Hub], make: Callable[..., Client]) -> None:
    hub = own_hub["hub"]
    spy = HubSpy().install(hub)
    hub.add_device("dev")
    client = make("dev", hub, connection_retry_interval=1, operation_timeout=30)
    states = state_recorder(client)
    client.connect()
    states.wait(1)  # the handler thread has seen it
    cut = spy.cut_at[b"in flight"] = threading.Event()
    join = in_thread(client.send_message, "in flight")
    assert cut.wait(TIMEOUT)  # the hub has the PUBLISH and never acknowledged it
    hub = own_hub["hub"] = restart(hub)
    assert join(TIMEOUT) is None  # returns once the re-sent PUBLISH is acknowledged
    assert [m.body for m in hub.wait_for_telemetry("dev", 1)] == [b"in flight"]
    assert states.wait(3)[:3] == [True, False, True]
    client.send_message("after")
    assert [m.body for m in hub.wait_for_telemetry("dev", 2)] == [b"in flight", b"after"]


def test_twin_request_cut_by_a_hub_restart_is_answered_after_reconnect(
        own_hub: dict[str, Hub], make: Callable[..., Client]) -> None:
    hub = own_hub["hub"]
    spy = HubSpy().install(hub)
    hub.add_device("dev")
    client = make("dev", hub, connection_retry_interval=1, operation_timeout=30)
    client.connect()
    hub.patch_desired("dev", {"before": 1})
    spy.mute_twin.add("dev")
    join = in_thread(client.get_twin)
    spy.wait_for(lambda: spy.twin_gets("dev") >= 1, what="the twin GET")
    hub = own_hub["hub"] = restart(hub)
    twin = join(TIMEOUT)
    assert twin == {"desired": {"before": 1, "$version": 2}, "reported": {"$version": 1}}


def test_send_while_the_hub_is_down_is_delivered_after_restart(
        own_hub: dict[str, Hub], make: Callable[..., Client]) -> None:
    hub = own_hub["hub"]
    hub.add_device("dev")
    client = make("dev", hub, connection_retry_interval=1, operation_timeout=30)
    states = state_recorder(client)
    client.connect()
    states.wait(1)  # the handler thread has seen it
    hub.stop()
    states.wait(2)
    join = in_thread(client.send_message, "queued while down")
    join.wait_blocked()  # waiting for the reconnection
    hub = own_hub["hub"] = Hub(mqtt_port=hub.mqtt_port, ws_port=hub.ws_port,
                               state_dir=hub.state_dir).start()
    assert join(TIMEOUT) is None
    assert [m.body for m in hub.wait_for_telemetry("dev", 1)] == [b"queued while down"]


def test_get_twin_while_the_hub_is_down_times_out(
        own_hub: dict[str, Hub], make: Callable[..., Client]) -> None:
    hub = own_hub["hub"]
    hub.add_device("dev")
    client = make("dev", hub, connection_retry_interval=1, operation_timeout=0.5)
    states = state_recorder(client)
    client.connect()
    states.wait(1)  # the handler thread has seen it
    hub.stop()
    states.wait(2)
    with pytest.raises(OperationTimeout):
        client.get_twin()


def test_client_reconnects_after_an_operation_failed_while_the_hub_was_down(
        own_hub: dict[str, Hub], make: Callable[..., Client]) -> None:
    hub = own_hub["hub"]
    hub.add_device("dev")
    client = make("dev", hub, connection_retry_interval=1, operation_timeout=0.5)
    states = state_recorder(client)
    client.connect()
    states.wait(1)  # the handler thread has seen it
    hub.stop()
    states.wait(2)
    with pytest.raises(OperationTimeout):
        client.send_message("while down")
    hub = own_hub["hub"] = Hub(mqtt_port=hub.mqtt_port, ws_port=hub.ws_port,
                               state_dir=hub.state_dir).start()
    assert states.wait(3, timeout=6)[:3] == [True, False, True]
    client.send_message("back")
    # The timeout only bounded the wait: the message stayed queued (at least once).
    assert [m.body for m in hub.wait_for_telemetry("dev", 2)] == [b"while down", b"back"]


def test_full_offline_queue_raises_a_client_error(own_hub: dict[str, Hub],
                                                  make: Callable[..., Client]) -> None:
    hub = own_hub["hub"]
    hub.add_device("dev")
    client = make("dev", hub, connection_retry_interval=1, operation_timeout=5,
                  max_queued_messages=1)
    states = state_recorder(client)
    client.connect()
    states.wait(1)
    hub.stop()
    states.wait(2)
    queued = in_thread(client.send_message, "queued")
    queued.wait_blocked()
    with pytest.raises(ClientError, match="queue is full"):
        client.send_message("no room")
    hub = own_hub["hub"] = Hub(mqtt_port=hub.mqtt_port, ws_port=hub.ws_port,
                               state_dir=hub.state_dir).start()
    assert queued() is None
    assert [m.body for m in hub.wait_for_telemetry("dev", 1)] == [b"queued"]


def test_max_queued_messages_zero_is_refused_and_one_delivers(
        hub: Hub, dev: str, make: Callable[..., Client]) -> None:
    """Pinned both ways (the old test passed whether 0 was refused or
    accepted, and never checked delivery): a queue of 0 could hold no
    publish at all, so 0 is refused with a ``ValueError`` naming the option;
    the smallest queue, 1, delivers."""
    with pytest.raises(ValueError, match="max_queued_messages must be at least 1"):
        make(dev, max_queued_messages=0)
    device_id = new_id("queue1")
    hub.add_device(device_id)
    client = make(device_id, max_queued_messages=1)
    client.send_message("first")  # connects in the background (auto_connect)
    client.send_message("second")
    assert [m.body for m in hub.wait_for_telemetry(device_id, 2)] == [b"first", b"second"]


def test_no_call_hangs_while_the_hub_is_down(own_hub: dict[str, Hub],
                                             make: Callable[..., Client]) -> None:
    hub = own_hub["hub"]
    hub.add_device("dev")
    client = make("dev", hub, connection_retry_interval=1, operation_timeout=0.5)
    states = state_recorder(client)
    client.connect()
    states.wait(1)  # the handler thread has seen it
    hub.stop()
    states.wait(2)
    for call in (lambda: client.send_message("x"), client.get_twin,
                 lambda: client.patch_twin_reported_properties({"a": 1})):
        with pytest.raises(OperationTimeout):  # each waits for the reconnection, bounded
            in_thread(call)(5.0)
    in_thread(client.disconnect)(5.0)
    assert not client.connected
    in_thread(client.shutdown)(5.0)
