"""``iotdev.aio.IoTHubDeviceClient`` against the local IoT Hub emulator: the
asyncio twin of ``test_device_client_sync.py`` (whose ``HubSpy`` and helpers
are reused), plus what only the asyncio client has: coroutine handlers, and
handlers on the caller's event loop.

Each test body is a coroutine run by ``asyncio.run`` under a deadline; the
clients it made are shut down on the same loop.  Hub calls that wait for the
device (``invoke_method``, ``wait_for_telemetry``) use the hub's ``a``-variants
so that the client's loop keeps running; blocking hub waits (``HubSpy``) run
in a worker thread.  Nothing sleeps.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from iotdev import (
    X509,
    ClientError,
    CredentialError,
    Message,
    MethodRequest,
    MethodResponse,
    NoConnectionError,
    OperationCancelled,
    OperationTimeout,
    ServiceError,
)
from iotdev._auth import device_resource_uri, generate_sas_token
from iotdev._compat import async_timeout
from iotdev.aio import IoTHubDeviceClient
from iotdev.emulator import Hub
from tests.test_device_client_sync import (
    HOST,
    KEY,
    LIMIT,
    SECRET,
    SECURITY_IFID,
    HubSpy,
    device_key,
    new_id,
    restart,
    sas_token,
)

# The deprecated receive_* APIs are tested here on purpose (their warning: test_v2_behaviours).
pytestmark = pytest.mark.filterwarnings(
    "ignore:.*deprecated since azure-iot-device 2.3.0:DeprecationWarning")
TIMEOUT = 10.0
TEST_DEADLINE = 30.0

Client = IoTHubDeviceClient


# ---------------------------------------------------------------- helpers


class ARecorder:
    """A callable recording its calls (one argument: the argument; none:
    ``None``), which a coroutine can wait on.  Plain-function handlers run on
    the client's handler thread (as in v2), so a call from another thread
    wakes the waiting loop thread-safely."""

    def __init__(self, then: Callable[..., Any] | None = None) -> None:
        self.items: list[Any] = []
        self.then = then
        self._changed: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def __call__(self, *args: Any) -> Any:
        self.add(args[0] if len(args) == 1 else (args or None))
        if self.then is not None:
            return self.then(*args)
        return None

    def add(self, value: Any) -> None:
        self.items.append(value)  # list.append is atomic
        changed, loop = self._changed, self._loop
        if changed is None or loop is None:
            return
        try:
            running: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is loop:
            changed.set()
        elif not loop.is_closed():
            loop.call_soon_threadsafe(changed.set)

    async def wait(self, count: int = 1, timeout: float = TIMEOUT) -> list[Any]:
        return await self.wait_for(lambda items: len(items) >= count, timeout, f"{count} calls")

    async def wait_for(self, predicate: Callable[[list[Any]], bool],
                       timeout: float = TIMEOUT, what: str = "the condition") -> list[Any]:
        if self._changed is None:
            self._changed = asyncio.Event()
            self._loop = asyncio.get_running_loop()
        try:
            async with async_timeout(timeout):
                while not predicate(self.items):
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            pytest.fail(f"timed out after {timeout} s waiting for {what}; got {self.items!r}")
        return list(self.items)


async def hub_wait(spy: HubSpy, predicate: Callable[[], bool], what: str = "the hub") -> None:
    await asyncio.to_thread(spy.wait_for, predicate, TIMEOUT, what)


async def subscribed(spy: HubSpy, device_id: str, topic_filter: str) -> None:
    await asyncio.to_thread(spy.wait_subscribed, device_id, topic_filter)


async def bodies(hub: Hub, device_id: str, count: int) -> list[bytes]:
    return [m.body for m in await hub.await_telemetry(device_id, count, TIMEOUT)]


def state_recorder(client: Client) -> ARecorder:
    states = ARecorder()
    client.on_connection_state_change = lambda: states.add(client.connected)
    return states


class Aio:
    """``make(device_id, hub=None, **options)`` builds connection-string
    clients; ``run(body)`` runs ``body()`` on a new loop under a deadline and
    then shuts every client made down on that loop."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.made: list[Client] = []

    def make(self, device_id: str, hub: Hub | None = None, **kwargs: Any) -> Client:
        target = hub or self.hub
        kwargs.setdefault("server_verification_cert", target.ca_pem)
        kwargs.setdefault("port", target.ws_port if kwargs.get("websockets") else target.mqtt_port)
        return self.keep(Client.create_from_connection_string(target.connection_string(device_id),
                                                              **kwargs))

    def keep(self, client: Client) -> Client:
        self.made.append(client)
        return client

    def run(self, body: Callable[[], Awaitable[Any]], deadline: float = TEST_DEADLINE) -> Any:
        async def main() -> Any:
            try:
                async with async_timeout(deadline):
                    return await body()
            finally:
                for client in self.made:
                    await asyncio.wait_for(client.shutdown(), 5.0)

        return asyncio.run(main())


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
def aio(hub: Hub) -> Aio:
    return Aio(hub)


@pytest.fixture
def own_hub(tmp_path: Path) -> Iterator[dict[str, Hub]]:
    box = {"hub": Hub(mqtt_port=0, ws_port=0, state_dir=tmp_path / "hub").start()}
    yield box
    box["hub"].stop()


# ---------------------------------------------------------------- factories


@pytest.mark.parametrize("websockets", [False, True], ids=["mqtt", "websockets"])
def test_create_from_connection_string(hub: Hub, spy: HubSpy, dev: str, aio: Aio,
                                       websockets: bool) -> None:
    async def body() -> None:
        client = aio.make(dev, websockets=websockets)
        assert client.connected is False
        await client.connect()
        assert client.connected is True
        await client.send_message("hello")
        assert await bodies(hub, dev, 1) == [b"hello"]

    aio.run(body)
    ((client_id, username, password, keep_alive),) = [c for c in spy.connects if c[0] == dev]
    assert client_id == dev
    assert username is not None and username.startswith(f"{HOST}/{dev}/?api-version=")
    assert password is not None and password.startswith(
        f"SharedAccessSignature sr={HOST}%2Fdevices%2F{dev}&sig=".encode())
    assert keep_alive == 60


def test_create_from_sastoken(hub: Hub, spy: HubSpy, dev: str, aio: Aio) -> None:
    token = sas_token(hub, dev)

    async def body() -> None:
        client = aio.keep(Client.create_from_sastoken(
            token, server_verification_cert=hub.ca_pem, port=hub.mqtt_port))
        await client.send_message(b"from a token")  # auto-connects
        assert client.connected
        assert await bodies(hub, dev, 1) == [b"from a token"]

    aio.run(body)
    assert spy.passwords(dev) == [token.encode()]


def test_create_from_symmetric_key(hub: Hub, spy: HubSpy, dev: str, aio: Aio) -> None:
    async def body() -> tuple[int, int]:
        client = aio.keep(Client.create_from_symmetric_key(
            device_key(hub, dev), HOST, dev, server_verification_cert=hub.ca_pem,
            port=hub.mqtt_port, sastoken_ttl=600))
        before = int(time.time())
        await client.connect()
        after = int(time.time())
        await client.send_message("from a key")
        assert await bodies(hub, dev, 1) == [b"from a key"]
        return before, after

    before, after = aio.run(body)
    (password,) = spy.passwords(dev)
    assert password is not None
    assert before + 600 <= int(password.decode().rsplit("&se=", 1)[1]) <= after + 601


def test_create_from_x509_certificate(hub: Hub, spy: HubSpy, aio: Aio) -> None:
    device_id = new_id("x509")
    cert = hub.add_x509_device(device_id)
    x509 = X509(str(cert.cert_file), str(cert.key_file))

    async def body() -> None:
        client = aio.keep(Client.create_from_x509_certificate(
            x509, HOST, device_id, server_verification_cert=hub.ca_pem, port=hub.mqtt_port))
        await client.connect()
        await client.send_message("signed")
        assert await bodies(hub, device_id, 1) == [b"signed"]
        await client.disconnect()
        other = aio.keep(Client.create_from_connection_string(
            f"HostName={HOST};DeviceId={device_id};x509=true", x509=x509,
            server_verification_cert=hub.ca_pem, port=hub.mqtt_port))
        await other.send_message("signed again")
        assert await bodies(hub, device_id, 2) == [b"signed", b"signed again"]

    aio.run(body)
    assert spy.passwords(device_id) == [None, None]


def test_x509_certificate_of_another_device_is_a_credential_error(hub: Hub, aio: Aio) -> None:
    mine, theirs = new_id("x509"), new_id("x509")
    cert = hub.add_x509_device(mine)
    hub.add_x509_device(theirs)

    async def body() -> None:
        client = aio.keep(Client.create_from_x509_certificate(
            X509(str(cert.cert_file), str(cert.key_file)), HOST, theirs,
            server_verification_cert=hub.ca_pem, port=hub.mqtt_port))
        with pytest.raises(CredentialError):
            await client.connect()
        assert not client.connected

    aio.run(body)


# ---------------------------------------------------------------- options


def _factories() -> dict[str, Callable[..., Client]]:
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
@pytest.mark.parametrize("option", ["bogus_option", "keepalive"])
def test_unknown_keyword_is_a_type_error_naming_it(factory: str, option: str) -> None:
    with pytest.raises(TypeError, match=option):
        _factories()[factory](**{option: 1})


@pytest.mark.parametrize("factory", FACTORIES)
@pytest.mark.parametrize("value", [0, 1741])
def test_keep_alive_out_of_range_is_a_value_error(factory: str, value: int) -> None:
    with pytest.raises(ValueError, match="keep_alive"):
        _factories()[factory](keep_alive=value)


@pytest.mark.parametrize(("option", "value", "error"), [
    ("websockets", "yes", TypeError),
    ("auto_connect", None, TypeError),
    ("server_verification_cert", b"pem", TypeError),
    ("cipher", 5, TypeError),
    ("proxy_options", "http://proxy:8080", TypeError),
    ("keep_alive", "sixty", TypeError),  # "60" is fine, as in v2
    ("sastoken_ttl", 0, ValueError),
    ("connection_retry_interval", 0, ValueError),
    ("port", 65_536, ValueError),
    ("operation_timeout", 0, ValueError),
])
def test_option_of_wrong_type_or_value(option: str, value: Any,
                                       error: type[Exception]) -> None:
    with pytest.raises(error, match=option):
        _factories()["connection_string"](**{option: value})


def test_factory_argument_types() -> None:
    with pytest.raises(TypeError):
        Client.create_from_connection_string(None)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        Client.create_from_x509_certificate("cert.pem", HOST, "d")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="sastoken_ttl"):
        _factories()["sastoken"](sastoken_ttl=60)


@pytest.mark.parametrize("text", [
    f"HostName=h;SharedAccessKey={SECRET}",
    f"HostName=h;DeviceId=d;SharedAccessKey={SECRET};Bogus=1",
    f"HostName=h;DeviceId=d;SharedAccessKey={SECRET};SharedAccessKey={SECRET}",
    f"HostName=h;DeviceId=d;{SECRET}",
    f"HostName=h;DeviceId=d;ModuleId=m;SharedAccessKey={SECRET}",
    f"HostName=h;DeviceId=d;SharedAccessKey={SECRET[:-2]}",
], ids=["no-device-id", "unknown-key", "duplicate-key", "part-without-equals",
        "module-string", "key-bad-padding"])
def test_bad_connection_string_error_never_contains_the_key(text: str) -> None:
    with pytest.raises(ValueError) as info:
        Client.create_from_connection_string(text)
    shown = "".join(traceback.format_exception(info.value))
    exc: BaseException | None = info.value
    while exc is not None:
        shown += str(exc) + repr(exc.args)
        exc = exc.__cause__ or exc.__context__
    for fragment in (SECRET, SECRET[:16]):
        assert fragment not in shown


# ------------------------------------------------- connect, disconnect, shutdown


def test_connect_disconnect_and_the_connected_property(hub: Hub, spy: HubSpy, dev: str,
                                                       aio: Aio) -> None:
    async def body() -> None:
        client = aio.make(dev)
        states = state_recorder(client)
        assert client.connected is False
        await client.connect()
        assert client.connected is True and hub.is_connected(dev)
        await client.connect()  # already connected
        assert len(spy.passwords(dev)) == 1
        await client.disconnect()
        assert client.connected is False
        await hub_wait(spy, lambda: dev in spy.closes, "the hub to see the close")
        await client.disconnect()
        await client.connect()
        await client.send_message("after reconnect")
        assert await bodies(hub, dev, 1) == [b"after reconnect"]
        assert await states.wait(3) == [True, False, True]

    aio.run(body)


def test_after_shutdown_every_call_raises_client_error(hub: Hub, spy: HubSpy, dev: str,
                                                      aio: Aio) -> None:
    async def body() -> None:
        client = aio.make(dev)
        await client.connect()
        await client.shutdown()
        assert client.connected is False
        await hub_wait(spy, lambda: dev in spy.closes, "the hub to see the close")
        response = MethodResponse("1", 200, None)
        calls: dict[str, Callable[[], Awaitable[Any]]] = {
            "connect": client.connect,
            "disconnect": client.disconnect,
            "send_message": lambda: client.send_message("x"),
            "send_method_response": lambda: client.send_method_response(response),
            "get_twin": client.get_twin,
            "patch_twin_reported_properties":
                lambda: client.patch_twin_reported_properties({}),
            "receive_message": client.receive_message,
            "receive_method_request": client.receive_method_request,
            "receive_twin_desired_properties_patch":
                client.receive_twin_desired_properties_patch,
            "update_sastoken": lambda: client.update_sastoken(sas_token(hub, dev)),
        }
        for name, call in calls.items():
            with pytest.raises(ClientError):
                await asyncio.wait_for(call(), TIMEOUT)
                pytest.fail(f"{name} did not raise")
        for name in ("on_message_received", "on_method_request_received",
                     "on_twin_desired_properties_patch_received", "on_connection_state_change",
                     "on_new_sastoken_required", "on_background_exception"):
            with pytest.raises(ClientError):
                setattr(client, name, lambda *a: None)
        await client.shutdown()  # idempotent

    aio.run(body)
    assert len(spy.passwords(dev)) == 1


def test_shutdown_wakes_pending_receive_calls(hub: Hub, spy: HubSpy, dev: str,
                                              aio: Aio) -> None:
    async def body() -> None:
        client = aio.make(dev, ensure_desired_properties=False)
        await client.connect()
        first = asyncio.ensure_future(client.receive_message())
        await subscribed(spy, dev, f"devices/{dev}/messages/devicebound/#")
        await hub.asend_c2d(dev, b"one")
        assert (await asyncio.wait_for(first, TIMEOUT)).data == b"one"
        # Subscribed already: each call below gets to its inbox in its first step.
        pending = [asyncio.ensure_future(client.receive_message()),
                   asyncio.ensure_future(client.receive_message())]
        await asyncio.sleep(0)  # one loop turn: both wait on the inbox
        assert not any(task.done() for task in pending)
        await client.shutdown()
        for task in pending:
            with pytest.raises(OperationCancelled):
                await asyncio.wait_for(task, 1.0)

    aio.run(body)


def test_shutdown_wakes_a_receive_call_that_is_still_subscribing(
        spy: HubSpy, dev: str, aio: Aio) -> None:
    async def body() -> None:
        client = aio.make(dev)
        await client.connect()
        spy.mute_subscribe.add(dev)  # the SUBACK is late
        pending = asyncio.ensure_future(client.receive_message())
        await hub_wait(spy, lambda: dev in spy.subscribe_requests, "the SUBSCRIBE")
        await client.shutdown()
        try:
            with pytest.raises((OperationCancelled, ClientError)):
                await asyncio.wait_for(pending, 1.5)
        finally:
            pending.cancel()

    aio.run(body)


def test_auto_connect_false_raises_no_connection_error(hub: Hub, spy: HubSpy, dev: str,
                                                       aio: Aio) -> None:
    async def body() -> None:
        client = aio.make(dev, auto_connect=False)
        for call in (lambda: client.send_message("x"), client.get_twin,
                     lambda: client.patch_twin_reported_properties({"a": 1}),
                     lambda: client.send_method_response(MethodResponse("1", 200))):
            with pytest.raises(NoConnectionError):
                await call()

        async def answer(request: MethodRequest) -> None:
            await client.send_method_response(
                MethodResponse.create_from_method_request(request, 200, "ok"))

        client.on_method_request_received = answer
        assert spy.passwords(dev) == []
        await client.connect()
        await subscribed(spy, dev, "$iothub/methods/POST/#")
        assert (await hub.ainvoke_method(dev, "m", timeout=TIMEOUT)).payload == "ok"
        await client.send_message("x")
        await client.disconnect()
        with pytest.raises(NoConnectionError):
            await client.send_message("y")

    aio.run(body)
    assert [m.body for m in hub.telemetry(dev)] == [b"x"]


def test_wrong_key_is_a_credential_error(hub: Hub, dev: str, aio: Aio) -> None:
    other = new_id()
    hub.add_device(other)
    wrong = f"HostName={HOST};DeviceId={dev};SharedAccessKey={device_key(hub, other)}"

    async def body() -> None:
        client = aio.keep(Client.create_from_connection_string(
            wrong, server_verification_cert=hub.ca_pem, port=hub.mqtt_port))
        with pytest.raises(CredentialError) as info:
            await client.connect()
        assert device_key(hub, other) not in str(info.value)
        with pytest.raises(CredentialError):
            await client.send_message("auto-connects, and fails the same way")
        assert not client.connected

    aio.run(body)
    assert hub.telemetry(dev) == []


def test_disabled_device_is_a_credential_error_expired_token_a_value_error(
        hub: Hub, aio: Aio) -> None:
    disabled, expired = new_id(), new_id()
    hub.add_device(disabled, enabled=False)
    hub.add_device(expired)

    async def body() -> None:
        client = aio.make(disabled)
        with pytest.raises(CredentialError):
            await client.connect()
        hub.set_enabled(disabled, True)
        await client.connect()
        assert client.connected
        with pytest.raises(ValueError, match="expired"):  # as v2, at creation
            Client.create_from_sastoken(sas_token(hub, expired, ttl=-60),
                                        server_verification_cert=hub.ca_pem,
                                        port=hub.mqtt_port)

    aio.run(body)


# ---------------------------------------------------------------- telemetry


def test_send_message_every_attribute_on_the_wire(hub: Hub, spy: HubSpy, dev: str,
                                                  aio: Aio) -> None:
    message = Message("ünï ✓", message_id="msg 1", content_encoding="utf-8",
                      content_type="application/json", output_name="out/1")
    message.correlation_id = "c/1"
    message.user_id = "user@x"
    message.expiry_time_utc = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    message.set_as_security_message()
    message.custom_properties = {"zeta": "a+b", "alpha": 1, "sp ace": "x&y=z", "pct": "100%",
                                 "$.ctime": "x", "ünï": "çødé ✓"}
    bag = ("%24.on=out%2F1&%24.mid=msg%201&%24.cid=c%2F1&%24.uid=user%40x"
           "&%24.ct=application%2Fjson&%24.ce=utf-8"
           "&%24.ifid=urn%3Aazureiot%3ASecurity%3ASecurityAgent%3A1"
           "&%24.exp=2024-01-02T03%3A04%3A05%2B00%3A00"
           "&%24.ctime=x&alpha=1&pct=100%25&sp%20ace=x%26y%3Dz&zeta=a%2Bb"
           "&%C3%BCn%C3%AF=%C3%A7%C3%B8d%C3%A9%20%E2%9C%93")

    async def body() -> None:
        await aio.make(dev).send_message(message)
        (received,) = await hub.await_telemetry(dev, 1, TIMEOUT)
        assert received.body == "ünï ✓".encode()
        assert received.system_properties == {
            "$.on": "out/1", "$.mid": "msg 1", "$.cid": "c/1", "$.uid": "user@x",
            "$.ct": "application/json", "$.ce": "utf-8", "$.ifid": SECURITY_IFID,
            "$.exp": "2024-01-02T03:04:05+00:00", "$.ctime": "x"}
        assert received.properties == {"alpha": "1", "pct": "100%", "sp ace": "x&y=z",
                                       "zeta": "a+b", "ünï": "çødé ✓"}

    aio.run(body)
    assert spy.topics(dev) == [f"devices/{dev}/messages/events/{bag}"]


def test_send_message_falsy_attributes_and_non_message_arguments(
        hub: Hub, spy: HubSpy, dev: str, aio: Aio) -> None:
    falsy = Message("x", message_id="", content_type=None, content_encoding="")
    falsy.correlation_id = 0  # type: ignore[assignment]
    falsy.expiry_time_utc = "2030-01-01T00:00:00Z"
    falsy.custom_properties = {7: 8.5, "empty": ""}

    async def body() -> None:
        client = aio.make(dev)
        for data in (falsy, "text", b"\x00\xff", 42, None):
            await client.send_message(data)
        assert await bodies(hub, dev, 5) == [b"x", b"text", b"\x00\xff", b"42", b""]
        duplicate = Message("d")
        duplicate.custom_properties = {1: "a", "1": "b"}
        with pytest.raises(ValueError, match="Duplicate"):
            await client.send_message(duplicate)

    aio.run(body)
    base = f"devices/{dev}/messages/events/"
    assert spy.topics(dev) == [base + "%24.exp=2030-01-01T00%3A00%3A00Z&7=8.5&empty="] + [
        base] * 4


@pytest.mark.parametrize("unicode", [False, True], ids=["ascii", "utf8"])
def test_256_kb_limit_exactly_at_the_limit_and_one_byte_over(
        hub: Hub, spy: HubSpy, dev: str, aio: Aio, unicode: bool) -> None:
    def sized(total: int) -> Message:
        key, value = ("kéy", "välüe ✓") if unicode else ("key", "value")
        overhead = len("mid-1") + len(key.encode()) + len(value.encode())
        message = Message(b"a" * (total - overhead), message_id="mid-1")
        message.custom_properties = {key: value}
        return message

    async def body() -> None:
        offline = aio.make(dev, auto_connect=False)
        with pytest.raises(ValueError, match="256 KB"):  # before any connection
            await offline.send_message(sized(LIMIT + 1))
        assert spy.passwords(dev) == []
        client = aio.make(dev)
        await client.send_message(sized(LIMIT))
        await client.send_message(b"b" * LIMIT)
        with pytest.raises(ValueError, match="256 KB"):
            await client.send_message(sized(LIMIT + 1))
        with pytest.raises(ValueError):
            await client.send_message(b"b" * (LIMIT + 1))
        await client.send_message("still connected")
        got = await bodies(hub, dev, 3)
        assert [len(b) for b in got] == [len(sized(LIMIT).data), LIMIT, 15]
        assert client.connected

    aio.run(body)
    assert len(spy.topics(dev)) == 3


# ---------------------------------------------------------------- C2D


def test_c2d_handler_gets_every_attribute(hub: Hub, spy: HubSpy, dev: str, aio: Aio) -> None:
    async def body() -> None:
        client = aio.make(dev)
        await client.connect()
        received = ARecorder()
        client.on_message_received = received
        await subscribed(spy, dev, f"devices/{dev}/messages/devicebound/#")
        await hub.asend_c2d(dev, b"\x00body", message_id="c2d-1", correlation_id="corr/1",
                            properties={"k": "v w", "plus": "a+b", "uni": "ü&=?"}, ack="full")
        await hub.asend_c2d(dev, "second")
        first, second = await received.wait(2)
        assert isinstance(first, Message) and first.data == b"\x00body"
        assert (first.message_id, first.correlation_id, first.ack) == (
            "c2d-1", "corr/1", "full")
        assert first.custom_properties == {"k": "v w", "plus": "a+b", "uni": "ü&=?"}
        assert second.data == b"second"

    aio.run(body)


def test_c2d_with_the_receive_message_api(hub: Hub, spy: HubSpy, dev: str, aio: Aio) -> None:
    async def body() -> None:
        client = aio.make(dev)
        await client.connect()
        first = asyncio.ensure_future(client.receive_message())
        await subscribed(spy, dev, f"devices/{dev}/messages/devicebound/#")
        assert not first.done()
        await hub.asend_c2d(dev, b"one", message_id="m1")
        await hub.asend_c2d(dev, b"two", properties={"p": "q"})
        one = await asyncio.wait_for(first, TIMEOUT)
        two = await asyncio.wait_for(client.receive_message(), TIMEOUT)
        assert (one.data, one.message_id) == (b"one", "m1")
        assert (two.data, two.custom_properties) == (b"two", {"p": "q"})

    aio.run(body)


@pytest.mark.parametrize("feature", ["c2d", "methods", "twin"])
def test_receive_mode_lock(hub: Hub, spy: HubSpy, dev: str, aio: Aio, feature: str) -> None:
    handler_name, receive, topic_filter = {
        "c2d": ("on_message_received", "receive_message",
                f"devices/{dev}/messages/devicebound/#"),
        "methods": ("on_method_request_received", "receive_method_request",
                    "$iothub/methods/POST/#"),
        "twin": ("on_twin_desired_properties_patch_received",
                 "receive_twin_desired_properties_patch",
                 "$iothub/twin/PATCH/properties/desired/#"),
    }[feature]
    other = new_id()
    hub.add_device(other)

    async def body() -> None:
        api_client = aio.make(dev, ensure_desired_properties=False)
        await api_client.connect()
        pending = asyncio.ensure_future(getattr(api_client, receive)())
        await subscribed(spy, dev, topic_filter)
        with pytest.raises(ClientError):
            setattr(api_client, handler_name, lambda *a: None)
        api_client.on_connection_state_change = lambda: None  # client events are not locked
        pending.cancel()
        handler_client = aio.make(other, ensure_desired_properties=False)
        await handler_client.connect()
        setattr(handler_client, handler_name, lambda *a: None)
        with pytest.raises(ClientError):
            await asyncio.wait_for(getattr(handler_client, receive)(), TIMEOUT)

    aio.run(body)


def test_c2d_sent_while_disconnected_arrives_after_connect(hub: Hub, spy: HubSpy, dev: str,
                                                           aio: Aio) -> None:
    async def body() -> None:
        client = aio.make(dev)
        await client.connect()
        received = ARecorder()
        client.on_message_received = received
        await subscribed(spy, dev, f"devices/{dev}/messages/devicebound/#")
        await client.disconnect()
        await hub.asend_c2d(dev, b"while away")
        await client.connect()
        assert [m.data for m in await received.wait(1)] == [b"while away"]

    aio.run(body)


# ---------------------------------------------------------------- methods


def test_coroutine_method_handler_calls_back_into_the_client(
        hub: Hub, spy: HubSpy, dev: str, aio: Aio) -> None:
    async def body() -> None:
        client = aio.make(dev)
        await client.connect()
        loop_thread = threading.get_ident()
        threads: list[int] = []

        async def answer(request: MethodRequest) -> None:
            threads.append(threading.get_ident())
            twin = await client.get_twin()
            await client.patch_twin_reported_properties({"last": request.name.replace(" ", "_")})
            await client.send_method_response(MethodResponse.create_from_method_request(
                request, 201, {"echo": request.payload, "version": twin["desired"]["$version"]}))

        client.on_method_request_received = answer
        await subscribed(spy, dev, "$iothub/methods/POST/#")
        result = await hub.ainvoke_method(dev, "reboot now", {"delay": 5}, timeout=TIMEOUT)
        assert (result.status, result.payload) == (201, {"echo": {"delay": 5}, "version": 1})
        result = await hub.ainvoke_method(dev, "ping", None, timeout=TIMEOUT)
        assert (result.status, result.payload) == (201, {"echo": None, "version": 1})
        assert threads == [loop_thread, loop_thread]  # on the caller's loop
        twin = await asyncio.to_thread(hub.get_twin, dev)
        assert twin["properties"]["reported"]["last"] == "ping"

    aio.run(body)


def test_sync_method_handler_runs_off_the_loop_as_in_v2(hub: Hub, spy: HubSpy, dev: str,
                                                         aio: Aio) -> None:
    """A plain-function handler runs on a handler thread, not on the loop (v2
    runs it in a thread pool), so v2's idiom of answering from it with
    ``run_coroutine_threadsafe(...).result()`` works instead of freezing the
    loop that would have to run the answer."""
    async def body() -> None:
        client = aio.make(dev)
        await client.connect()
        loop = asyncio.get_running_loop()
        requests = ARecorder()
        threads: list[threading.Thread] = []

        def answer(request: MethodRequest) -> None:
            threads.append(threading.current_thread())
            requests(request)
            response = MethodResponse.create_from_method_request(request, 200, [request.payload])
            asyncio.run_coroutine_threadsafe(
                client.send_method_response(response), loop).result(TIMEOUT)

        client.on_method_request_received = answer
        await subscribed(spy, dev, "$iothub/methods/POST/#")
        result = await hub.ainvoke_method(dev, "m", "x", timeout=TIMEOUT)
        assert (result.status, result.payload) == (200, ["x"])
        (request,) = await requests.wait(1)
        assert (request.name, request.payload) == ("m", "x")
        assert threads and threads[0] is not threading.current_thread()
        await client.shutdown()

    aio.run(body)


def test_handler_set_from_another_thread_while_connected(hub: Hub, spy: HubSpy, dev: str,
                                                         aio: Aio) -> None:
    """v2 lets any thread set a handler: the change is made on the client's
    loop (a SUBSCRIBE follows and messages arrive), not half-made."""
    async def body() -> None:
        client = aio.make(dev)
        await client.connect()
        got = ARecorder()
        await asyncio.to_thread(setattr, client, "on_message_received", got)
        assert client.on_message_received is got
        await subscribed(spy, dev, f"devices/{dev}/messages/devicebound/#")
        await asyncio.to_thread(hub.send_c2d, dev, b"from another thread")
        (message,) = await got.wait(1)
        assert message.data == b"from another thread"
        await client.shutdown()

    aio.run(body)


def test_receive_method_request_by_name(hub: Hub, spy: HubSpy, dev: str, aio: Aio) -> None:
    async def body() -> None:
        client = aio.make(dev)
        await client.connect()
        named_task = asyncio.ensure_future(client.receive_method_request("alpha"))
        await subscribed(spy, dev, "$iothub/methods/POST/#")
        beta = asyncio.ensure_future(hub.ainvoke_method(dev, "beta", [1, 2], timeout=TIMEOUT))
        any_request = await asyncio.wait_for(client.receive_method_request(), TIMEOUT)
        alpha = asyncio.ensure_future(hub.ainvoke_method(dev, "alpha", "a", timeout=TIMEOUT))
        named = await asyncio.wait_for(named_task, TIMEOUT)
        assert (any_request.name, any_request.payload) == ("beta", [1, 2])
        assert (named.name, named.payload) == ("alpha", "a")
        await client.send_method_response(MethodResponse(named.request_id, 200, {"n": 1}))
        await client.send_method_response(
            MethodResponse.create_from_method_request(any_request, 404))
        assert ((await alpha).status, (await beta).status) == (200, 404)
        assert (await alpha).payload == {"n": 1}

    aio.run(body)


def test_send_method_response_argument_errors(spy: HubSpy, dev: str, aio: Aio) -> None:
    async def body() -> None:
        client = aio.make(dev, auto_connect=False)
        with pytest.raises(TypeError):
            await client.send_method_response({"status": 200})  # type: ignore[arg-type]
        with pytest.raises(TypeError):
            await client.send_method_response(MethodResponse("1", "200"))  # type: ignore[arg-type]

    aio.run(body)
    assert spy.passwords(dev) == []


def test_method_handler_exception_is_reported(hub: Hub, spy: HubSpy, dev: str,
                                              aio: Aio) -> None:
    async def body() -> None:
        client = aio.make(dev)
        await client.connect()
        errors = ARecorder()
        client.on_background_exception = errors

        async def handler(request: MethodRequest) -> None:
            if request.name == "fail":
                raise ValueError("no such thing")
            await client.send_method_response(
                MethodResponse.create_from_method_request(request, 200))

        client.on_method_request_received = handler
        await subscribed(spy, dev, "$iothub/methods/POST/#")
        assert (await hub.ainvoke_method(dev, "fail", timeout=0.5)).status == 504
        assert isinstance((await errors.wait(1))[0], ValueError)
        assert (await hub.ainvoke_method(dev, "ok", timeout=TIMEOUT)).status == 200

    aio.run(body)


# ---------------------------------------------------------------- twin


def test_get_twin_shape_and_reported_patches(hub: Hub, dev: str, aio: Aio) -> None:
    async def body() -> None:
        client = aio.make(dev)
        assert await client.get_twin() == {"desired": {"$version": 1},
                                           "reported": {"$version": 1}}
        await client.patch_twin_reported_properties({"battery": 55, "nested": {"a": 1}})
        twin = await asyncio.to_thread(hub.get_twin, dev)
        assert twin["properties"]["reported"]["battery"] == 55
        await client.patch_twin_reported_properties({"nested": {"a": None}, "battery": None})
        await hub.apatch_desired(dev, {"rate": 5})
        twin = await client.get_twin()
        assert twin["desired"] == {"rate": 5, "$version": 2}
        assert twin["reported"]["nested"] == {} and "battery" not in twin["reported"]
        with pytest.raises(TypeError):
            await client.patch_twin_reported_properties("a=1")  # type: ignore[arg-type]

    aio.run(body)


@pytest.mark.parametrize("patch", [{"bad key": 1}, {"$bad": 1}])
def test_refused_twin_patch_is_a_service_error_with_status(
        hub: Hub, dev: str, aio: Aio, patch: dict[str, Any]) -> None:
    async def body() -> None:
        client = aio.make(dev)
        with pytest.raises(ServiceError) as info:
            await client.patch_twin_reported_properties(patch)
        assert isinstance(info.value, ClientError)  # what v2 code catches
        assert info.value.status == 400  # type: ignore[attr-defined]
        await client.patch_twin_reported_properties({"fine": True})
        assert (await client.get_twin())["reported"]["fine"] is True

    aio.run(body)


def test_twin_request_cut_off_by_a_drop_is_sent_once_after_the_reconnect(
        hub: Hub, spy: HubSpy, dev: str, aio: Aio) -> None:
    body = json.dumps({"cut": dev}).encode()

    def copies() -> int:
        with spy.cond:
            return sum(1 for d, _, p in spy.publishes if d == dev and p == body)

    async def run() -> None:
        client = aio.make(dev, connection_retry_interval=1)
        patches = ARecorder()
        client.on_twin_desired_properties_patch_received = patches  # a GET at every connect
        await patches.wait(1)
        gets = spy.twin_gets(dev)
        spy.cut_at[body] = threading.Event()  # the first copy: no PUBACK, the connection drops
        spy.mute_twin.add(dev)  # a slow hub: no answer yet
        request = asyncio.ensure_future(client.patch_twin_reported_properties({"cut": dev}))
        # The automatic GET of the reconnect is written after any re-published request.
        await hub_wait(spy, lambda: spy.twin_gets(dev) > gets, "the GET after the reconnect")
        await client.shutdown()
        with pytest.raises(OperationCancelled):
            await asyncio.wait_for(request, TIMEOUT)
        assert copies() == 2  # the cut copy and the session's re-send

    aio.run(run)


def test_twin_patch_cut_off_by_a_drop_is_applied_once(hub: Hub, spy: HubSpy, dev: str,
                                                      aio: Aio) -> None:
    async def body() -> None:
        client = aio.make(dev, connection_retry_interval=1)
        await client.connect()
        cut = spy.cut_at[json.dumps({"cut": dev}).encode()] = threading.Event()
        await client.patch_twin_reported_properties({"cut": dev})  # answered after reconnect
        assert cut.is_set()
        await client.send_message("marker")  # written after anything queued before it
        await hub.await_telemetry(dev, 1, TIMEOUT)
        twin = await asyncio.to_thread(hub.get_twin, dev)
        assert twin["properties"]["reported"] == {"cut": dev, "$version": 2}

    aio.run(body)


def test_desired_patch_handler_without_ensure(hub: Hub, spy: HubSpy, dev: str,
                                              aio: Aio) -> None:
    async def body() -> None:
        client = aio.make(dev, ensure_desired_properties=False)
        await client.connect()
        patches = ARecorder()
        client.on_twin_desired_properties_patch_received = patches
        await subscribed(spy, dev, "$iothub/twin/PATCH/properties/desired/#")
        await hub.apatch_desired(dev, {"rate": 5})
        await hub.apatch_desired(dev, {"rate": None, "mode": "eco"})
        assert await patches.wait(2) == [{"rate": 5, "$version": 2},
                                         {"rate": None, "mode": "eco", "$version": 3}]

    aio.run(body)
    assert spy.twin_gets(dev) == 0


def test_ensure_desired_properties_delivers_the_document_once_after_connect(
        hub: Hub, dev: str, aio: Aio) -> None:
    hub.patch_desired(dev, {"a": 1})  # while the device is offline

    async def body() -> None:
        client = aio.make(dev)
        patches = ARecorder()

        async def handler(patch: dict[str, Any]) -> None:  # a coroutine handler
            patches(patch)

        client.on_twin_desired_properties_patch_received = handler  # connects in a task
        assert await patches.wait(1) == [{"a": 1, "$version": 2}]
        await hub.apatch_desired(dev, {"c": 3})
        assert await patches.wait(2) == [{"a": 1, "$version": 2}, {"c": 3, "$version": 3}]

    aio.run(body)


def test_ensure_desired_properties_after_reconnects(hub: Hub, spy: HubSpy, dev: str,
                                                    aio: Aio) -> None:
    async def body() -> None:
        client = aio.make(dev, connection_retry_interval=1)
        states = state_recorder(client)
        patches = ARecorder()
        client.on_twin_desired_properties_patch_received = patches
        assert await patches.wait(1) == [{"$version": 1}]
        assert await states.wait(1) == [True]

        async def bounce(count: int, while_down: Callable[[], Any] = lambda: None) -> None:
            hub.set_enabled(dev, False)
            await states.wait(count - 1)
            while_down()
            hub.set_enabled(dev, True)
            assert (await states.wait(count))[-2:] == [False, True]

        await bounce(3, lambda: hub.patch_desired(dev, {"x": 1}))
        assert (await patches.wait(2))[1] == {"x": 1, "$version": 2}
        gets = spy.twin_gets(dev)
        await bounce(5)
        await hub_wait(spy, lambda: spy.twin_gets(dev) > gets, "the GET after reconnecting")
        await client.get_twin()
        await hub.apatch_desired(dev, {"y": 2})
        assert await patches.wait(3) == [{"$version": 1}, {"x": 1, "$version": 2},
                                         {"y": 2, "$version": 3}]

    aio.run(body)


def test_ensure_desired_properties_after_a_hub_restart(own_hub: dict[str, Hub],
                                                       aio: Aio) -> None:
    hub = own_hub["hub"]
    hub.add_device("dev")

    async def body() -> None:
        client = aio.make("dev", hub, connection_retry_interval=1)
        states = state_recorder(client)
        patches = ARecorder()
        client.on_twin_desired_properties_patch_received = patches
        assert await patches.wait(1) == [{"$version": 1}]
        await asyncio.to_thread(hub.stop)
        await states.wait(2)
        # The service changes the twin while the hub is down (the store is on disk).
        restarted = Hub(mqtt_port=hub.mqtt_port, ws_port=hub.ws_port, state_dir=hub.state_dir)
        restarted.store.patch_desired("dev", {"while": "down"})
        own_hub["hub"] = await asyncio.to_thread(restarted.start)
        assert await patches.wait(2) == [{"$version": 1}, {"while": "down", "$version": 2}]
        assert (await states.wait(3))[:3] == [True, False, True]

    aio.run(body)


def test_receive_twin_desired_properties_patch(hub: Hub, spy: HubSpy, dev: str,
                                               aio: Aio) -> None:
    async def body() -> None:
        client = aio.make(dev)
        # Not connected: the first call connects, and the full document arrives.
        first = await asyncio.wait_for(client.receive_twin_desired_properties_patch(), TIMEOUT)
        assert first == {"$version": 1}
        await subscribed(spy, dev, "$iothub/twin/PATCH/properties/desired/#")
        await hub.apatch_desired(dev, {"rate": 7})
        assert await asyncio.wait_for(client.receive_twin_desired_properties_patch(),
                                      TIMEOUT) == {"rate": 7, "$version": 2}

    aio.run(body)


# ---------------------------------------------------------------- handlers


def test_on_connection_state_change_sees_every_transition(hub: Hub, dev: str,
                                                          aio: Aio) -> None:
    async def body() -> None:
        client = aio.make(dev, connection_retry_interval=1)
        states = state_recorder(client)
        await client.connect()
        assert await states.wait(1) == [True]
        await client.disconnect()
        assert await states.wait(2) == [True, False]
        await client.connect()
        hub.set_enabled(dev, False)
        assert await states.wait(4) == [True, False, True, False]
        hub.set_enabled(dev, True)
        assert await states.wait(5) == [True, False, True, False, True]

    aio.run(body)


def test_background_exception_gets_handler_errors_and_the_client_keeps_working(
        hub: Hub, spy: HubSpy, dev: str, aio: Aio) -> None:
    async def body() -> None:
        client = aio.make(dev)
        await client.connect()
        errors = ARecorder()
        client.on_background_exception = errors
        received = ARecorder()

        def sync_handler(message: Message) -> None:
            received(message.data)
            if message.data == b"boom-sync":
                raise RuntimeError("boom-sync")

        async def async_handler(message: Message) -> None:
            received(message.data)
            if message.data == b"boom-async":
                raise RuntimeError("boom-async")

        client.on_message_received = sync_handler
        await subscribed(spy, dev, f"devices/{dev}/messages/devicebound/#")
        await hub.asend_c2d(dev, b"boom-sync")
        (error,) = await errors.wait(1)
        assert isinstance(error, RuntimeError) and str(error) == "boom-sync"
        client.on_message_received = async_handler
        await hub.asend_c2d(dev, b"boom-async")
        assert str((await errors.wait(2))[1]) == "boom-async"
        client.on_background_exception = ARecorder(then=lambda e: 1 / 0)  # fails too
        await hub.asend_c2d(dev, b"boom-async")
        await hub.asend_c2d(dev, b"fine")
        assert await received.wait(4) == [b"boom-sync", b"boom-async", b"boom-async", b"fine"]
        await client.send_message("still working")
        assert await bodies(hub, dev, 1) == [b"still working"]
        assert client.connected

    aio.run(body)


# ---------------------------------------------------------------- SAS renewal


def test_sas_renewal_reconnects_and_loses_nothing(hub: Hub, spy: HubSpy, dev: str,
                                                  aio: Aio) -> None:
    async def body() -> None:
        client = aio.make(dev, sastoken_ttl=6)  # renewal due after 5 s (RENEW_FLOOR)
        states = state_recorder(client)
        await client.connect()
        sent: list[bytes] = []
        stop = asyncio.Event()

        async def sender() -> None:
            n = 0
            while not stop.is_set() and n < 2000:
                body = f"m{n}".encode()
                await client.send_message(body, timeout=TIMEOUT)
                sent.append(body)
                n += 1

        task = asyncio.ensure_future(sender())
        try:
            await states.wait(3)
        finally:
            stop.set()
            await asyncio.wait_for(task, TIMEOUT)
        await client.send_message(b"after")
        sent.append(b"after")
        assert set(await bodies(hub, dev, len(sent))) == set(sent)
        assert states.items[:3] == [True, False, True]

    aio.run(body)
    passwords = spy.passwords(dev)
    assert len(passwords) >= 2 and passwords[0] != passwords[1]


def test_sastoken_client_asks_for_a_new_token_and_update_sastoken_reconnects(
        hub: Hub, spy: HubSpy, dev: str, aio: Aio) -> None:
    first, second = sas_token(hub, dev, ttl=6), sas_token(hub, dev, ttl=3600)

    async def body() -> None:
        client = aio.keep(Client.create_from_sastoken(
            first, server_verification_cert=hub.ca_pem, port=hub.mqtt_port))
        states = state_recorder(client)

        async def renew() -> None:
            await client.update_sastoken(second)

        asked = ARecorder(then=renew)
        client.on_new_sastoken_required = asked
        await client.connect()
        await asked.wait(1)
        assert (await states.wait(3))[:3] == [True, False, True]
        await client.send_message("with the new token")
        assert await bodies(hub, dev, 1) == [b"with the new token"]
        assert len(asked.items) == 1

    aio.run(body)
    assert spy.passwords(dev)[:2] == [first.encode(), second.encode()]


def test_update_sastoken_errors(hub: Hub, dev: str, aio: Aio) -> None:
    other = new_id()
    hub.add_device(other)

    async def body() -> None:
        with pytest.raises(ClientError):
            await aio.make(dev, auto_connect=False).update_sastoken(sas_token(hub, dev))
        client = aio.keep(Client.create_from_sastoken(
            sas_token(hub, dev), server_verification_cert=hub.ca_pem, port=hub.mqtt_port))
        with pytest.raises(ValueError):
            await client.update_sastoken(sas_token(hub, other))
        with pytest.raises(ValueError):
            await client.update_sastoken("SharedAccessSignature garbage")
        await client.update_sastoken(sas_token(hub, dev, ttl=7200))
        await client.connect()
        assert client.connected

    aio.run(body)


# ---------------------------------------------------------------- timeouts


def test_twin_requests_time_out_when_the_hub_never_answers(hub: Hub, spy: HubSpy, dev: str,
                                                           aio: Aio) -> None:
    async def body() -> None:
        client = aio.make(dev, operation_timeout=0.5)
        await client.connect()
        spy.mute_twin.add(dev)
        started = time.monotonic()
        with pytest.raises(OperationTimeout):
            await client.get_twin()
        with pytest.raises(OperationTimeout):
            await client.patch_twin_reported_properties({"a": 1})
        with pytest.raises(OperationTimeout):
            await client.get_twin(timeout=0.2)
        assert time.monotonic() - started < 5
        spy.mute_twin.discard(dev)
        assert (await client.get_twin())["reported"] == {"$version": 1}

    aio.run(body)


# ---------------------------------------------------------------- faults


def test_send_in_flight_when_the_hub_stops_is_delivered_after_restart(
        own_hub: dict[str, Hub], aio: Aio) -> None:
    hub = own_hub["hub"]
    spy = HubSpy().install(hub)
    hub.add_device("dev")

    async def body() -> None:
        client = aio.make("dev", hub, connection_retry_interval=1, operation_timeout=30)
        states = state_recorder(client)
        await client.connect()
        cut = spy.cut_at[b"in flight"] = threading.Event()
        sending = asyncio.ensure_future(client.send_message("in flight"))
        assert await asyncio.to_thread(cut.wait, TIMEOUT)
        new = own_hub["hub"] = await asyncio.to_thread(restart, hub)
        await asyncio.wait_for(sending, TIMEOUT)
        assert (await states.wait(3))[:3] == [True, False, True]
        await client.send_message("after")
        assert await bodies(new, "dev", 2) == [b"in flight", b"after"]

    aio.run(body)


def test_twin_request_cut_by_a_hub_restart_is_answered_after_reconnect(
        own_hub: dict[str, Hub], aio: Aio) -> None:
    hub = own_hub["hub"]
    spy = HubSpy().install(hub)
    hub.add_device("dev")

    async def body() -> None:
        client = aio.make("dev", hub, connection_retry_interval=1, operation_timeout=30)
        await client.connect()
        await hub.apatch_desired("dev", {"before": 1})
        spy.mute_twin.add("dev")
        request = asyncio.ensure_future(client.get_twin())
        await hub_wait(spy, lambda: spy.twin_gets("dev") >= 1, "the twin GET")
        own_hub["hub"] = await asyncio.to_thread(restart, hub)
        assert await asyncio.wait_for(request, TIMEOUT) == {
            "desired": {"before": 1, "$version": 2}, "reported": {"$version": 1}}

    aio.run(body)


def test_client_reconnects_after_an_operation_failed_while_the_hub_was_down(
        own_hub: dict[str, Hub], aio: Aio) -> None:
    hub = own_hub["hub"]
    hub.add_device("dev")

    async def body() -> None:
        client = aio.make("dev", hub, connection_retry_interval=1, operation_timeout=0.5)
        states = state_recorder(client)
        await client.connect()
        await asyncio.to_thread(hub.stop)
        await states.wait(2)
        with pytest.raises(OperationTimeout):  # waits for the reconnection, bounded
            await client.send_message("while down")
        new = own_hub["hub"] = await asyncio.to_thread(
            Hub(mqtt_port=hub.mqtt_port, ws_port=hub.ws_port, state_dir=hub.state_dir).start)
        assert (await states.wait(3, timeout=6))[:3] == [True, False, True]
        await client.send_message("back")
        # The timeout only bounded the wait: the message stayed queued (at least once).
        assert await bodies(new, "dev", 2) == [b"while down", b"back"]

    aio.run(body)


def test_send_while_the_hub_is_down_is_delivered_after_restart(
        own_hub: dict[str, Hub], aio: Aio) -> None:
    hub = own_hub["hub"]
    hub.add_device("dev")

    async def body() -> None:
        client = aio.make("dev", hub, connection_retry_interval=1, operation_timeout=30)
        states = state_recorder(client)
        await client.connect()
        await asyncio.to_thread(hub.stop)
        await states.wait(2)
        sending = asyncio.ensure_future(client.send_message("queued while down"))
        await asyncio.sleep(0)  # one loop turn: it waits for the reconnection
        assert not sending.done()
        new = own_hub["hub"] = await asyncio.to_thread(
            Hub(mqtt_port=hub.mqtt_port, ws_port=hub.ws_port, state_dir=hub.state_dir).start)
        await asyncio.wait_for(sending, TIMEOUT)
        assert await bodies(new, "dev", 1) == [b"queued while down"]

    aio.run(body)


def test_full_offline_queue_raises_a_client_error(own_hub: dict[str, Hub], aio: Aio) -> None:
    hub = own_hub["hub"]
    hub.add_device("dev")

    async def body() -> None:
        client = aio.make("dev", hub, connection_retry_interval=1, operation_timeout=5,
                          max_queued_messages=1)
        states = state_recorder(client)
        await client.connect()
        await asyncio.to_thread(hub.stop)
        await states.wait(2)
        queued = asyncio.ensure_future(client.send_message("queued"))
        await asyncio.sleep(0)  # one loop turn: it is in the queue
        assert not queued.done()
        with pytest.raises(ClientError, match="queue is full"):
            await client.send_message("no room")
        new = own_hub["hub"] = await asyncio.to_thread(
            Hub(mqtt_port=hub.mqtt_port, ws_port=hub.ws_port, state_dir=hub.state_dir).start)
        await asyncio.wait_for(queued, TIMEOUT)
        assert await bodies(new, "dev", 1) == [b"queued"]

    aio.run(body)


def test_max_queued_messages_zero_is_refused_and_one_delivers(hub: Hub, dev: str,
                                                             aio: Aio) -> None:
    """As the sync test: 0 is refused, 1 delivers (checked at the hub)."""
    with pytest.raises(ValueError, match="max_queued_messages must be at least 1"):
        aio.make(dev, max_queued_messages=0)
    device_id = new_id("queue1")
    hub.add_device(device_id)

    async def body() -> None:
        client = aio.make(device_id, max_queued_messages=1)
        await client.send_message("first")  # connects in the background (auto_connect)
        await client.send_message("second")
        assert await bodies(hub, device_id, 2) == [b"first", b"second"]

    aio.run(body)


def test_no_call_hangs_while_the_hub_is_down(own_hub: dict[str, Hub], aio: Aio) -> None:
    hub = own_hub["hub"]
    hub.add_device("dev")

    async def body() -> None:
        client = aio.make("dev", hub, connection_retry_interval=1, operation_timeout=0.5)
        states = state_recorder(client)
        await client.connect()
        await asyncio.to_thread(hub.stop)
        await states.wait(2)
        for call in (lambda: client.send_message("x"), client.get_twin,
                     lambda: client.patch_twin_reported_properties({"a": 1})):
            with pytest.raises(OperationTimeout):  # each waits for the reconnection, bounded
                await asyncio.wait_for(call(), 5.0)
        await asyncio.wait_for(client.disconnect(), 5.0)
        assert not client.connected
        await asyncio.wait_for(client.shutdown(), 5.0)

    aio.run(body)
