"""The emulator against Microsoft's own device SDK, azure-iot-device 2.14.

azure-iot-device always dials port 8883 (MQTT over TLS) or 443 (``websockets=True``)
of the connection string's ``HostName``, so this module runs one hub on a loopback
address of its own (``ADDRESS``) with exactly those ports, and with
``connection_host=ADDRESS`` so that the connection strings name it (the hub's
certificate covers its bound IP; SAS tokens whose ``sr`` names it are accepted).
Binding ports below 1024 needs root (or ``CAP_NET_BIND_SERVICE``): when the ports
cannot be bound the module is skipped, or fails when ``CI`` is ``true`` or ``1``.

Every blocking SDK call goes through ``_run`` / ``_arun`` with a timeout (the SDK's
own operations never time out), every client is ``shutdown()`` in a ``finally``,
and the SDK's log is captured at DEBUG so that a failing test shows what went over
the wire.

File upload: the SDK's ``get_storage_info_for_blob`` / ``notify_blob_upload_status``
go over HTTPS (``requests``) to port 443 of ``HostName``, the hub's device port,
shared with MQTT over WebSocket; the blob PUT in between is the application's
(``http.client`` here), as in the SDK's samples.
"""

from __future__ import annotations

import asyncio
import http.client
import logging
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar
from urllib.parse import quote, urlsplit

import pytest

from iotdev._auth import device_resource_uri, generate_sas_token
from iotdev.emulator import Hub

_IN_CI = os.environ.get("CI", "").lower() in ("true", "1")

try:  # in the test extra; a missing SDK skips, but fails in CI
    import azure.iot.device as azure_device
    import azure.iot.device.aio as azure_aio
    import azure.iot.device.exceptions as azure_exceptions
except ImportError as exc:
    if _IN_CI:
        raise
    pytest.skip(f"azure-iot-device is not installed: {exc}", allow_module_level=True)

IoTHubDeviceClient: Any = azure_device.IoTHubDeviceClient
AioIoTHubDeviceClient: Any = azure_aio.IoTHubDeviceClient
Message: Any = azure_device.Message
MethodResponse: Any = azure_device.MethodResponse
X509: Any = azure_device.X509
CredentialError: Any = azure_exceptions.CredentialError
ClientError: Any = azure_exceptions.ClientError
ServiceError: Any = azure_exceptions.ServiceError

ADDRESS = "127.0.0.147"
"""This module's own loopback address (no other test module uses it)."""
HUB_NAME = "azure-sdk-test.local"
TIMEOUT = 10.0

T = TypeVar("T")

pytestmark = pytest.mark.filterwarnings(  # azure-iot-device's own ssl.SSLContext(TLSv1_2)
    "ignore:ssl.PROTOCOL_TLSv1_2 is deprecated:DeprecationWarning")


# ------------------------------------------------------------------ fixtures


def _unavailable(reason: str) -> None:
    if _IN_CI:
        pytest.fail(f"azure-iot-device tests cannot run in CI: {reason}", pytrace=False)
    pytest.skip(reason)


def _check_bindable() -> None:
    for port in (8883, 443):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((ADDRESS, port))
            except PermissionError:
                _unavailable(f"binding {ADDRESS}:{port} needs root (uid {os.geteuid()})")
            except OSError as exc:
                _unavailable(f"cannot bind {ADDRESS}:{port}: {exc}")


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    _check_bindable()
    emulator = Hub(hub_name=HUB_NAME, host=ADDRESS, mqtt_port=8883, ws_port=443,
                   state_dir=tmp_path_factory.mktemp("azure-hub"), connection_host=ADDRESS)
    try:
        emulator.start()
    except OSError as exc:
        _unavailable(f"the hub cannot listen on {ADDRESS}:8883/443: {exc}")
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture(autouse=True)
def _sdk_debug_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="azure.iot.device")
    caplog.set_level(logging.DEBUG, logger="iotdev.emulator")
    caplog.set_level(logging.DEBUG, logger="paho")


_next_id = iter(range(1, 1_000_000))


def _device(hub: Hub, prefix: str, **kw: Any) -> str:
    device_id = f"{prefix}-{next(_next_id)}"
    hub.add_device(device_id, **kw)
    return device_id


# ------------------------------------------------------------------ helpers


def _run(fn: Callable[[], T], timeout: float = TIMEOUT) -> T:
    """``fn()`` on a daemon thread; ``TimeoutError`` if it has not returned in time."""
    result: list[T] = []
    error: list[BaseException] = []
    done = threading.Event()

    def target() -> None:
        try:
            result.append(fn())
        except BaseException as exc:
            error.append(exc)
        finally:
            done.set()

    threading.Thread(target=target, name="sdk-call", daemon=True).start()
    if not done.wait(timeout):
        raise TimeoutError(f"{getattr(fn, '__name__', fn)} did not return in {timeout} s")
    if error:
        raise error[0]
    return result[0]


async def _arun(awaitable: Any, timeout: float = TIMEOUT) -> Any:
    return await asyncio.wait_for(awaitable, timeout)


def _sync_client(hub: Hub, device_id: str, **kw: Any) -> Any:
    return IoTHubDeviceClient.create_from_connection_string(
        hub.connection_string(device_id), server_verification_cert=hub.ca_pem, **kw)


def _aio_client(hub: Hub, device_id: str, **kw: Any) -> Any:
    return AioIoTHubDeviceClient.create_from_connection_string(
        hub.connection_string(device_id), server_verification_cert=hub.ca_pem, **kw)


def _shutdown(*clients: Any) -> None:
    """Shut every client down (each once), then raise the first error, if any."""
    errors: list[BaseException] = []
    for client in clients:
        try:
            _run(client.shutdown)
        except Exception as exc:
            errors.append(exc)
    if errors:
        raise errors[0]


class _Inbox:
    """What a handler received, with a wait for it from the test's thread."""

    def __init__(self) -> None:
        self.items: list[Any] = []
        self._cond = threading.Condition()

    def put(self, item: Any) -> None:
        with self._cond:
            self.items.append(item)
            self._cond.notify_all()

    def wait(self, count: int = 1, timeout: float = TIMEOUT) -> list[Any]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.items) >= count, timeout), (
                f"expected {count} item(s), got {self.items!r}")
            return list(self.items)


def _telemetry_message() -> Any:
    message = Message('{"temp": 21.5}', message_id="msg 1", content_encoding="utf-8",
                      content_type="application/json")
    message.correlation_id = "corr/1"
    message.custom_properties = {"zeta": "a+b", "alpha": 1, "sp ace": "x&y=z", "empty": ""}
    return message


def _check_telemetry(hub: Hub, device_id: str) -> None:
    """The first message of ``device_id`` is ``_telemetry_message()``, exactly."""
    received = hub.wait_for_telemetry(device_id, 1, timeout=TIMEOUT)[0]
    assert received.body == b'{"temp": 21.5}'
    assert received.module_id is None
    assert received.system_properties == {
        "$.mid": "msg 1", "$.cid": "corr/1", "$.ct": "application/json", "$.ce": "utf-8"}
    assert received.properties == {"alpha": "1", "empty": "", "sp ace": "x&y=z", "zeta": "a+b"}


def _local_port(hub: Hub, device_id: str) -> int:
    """The hub-side port of the device's current connection (a peek at hub state)."""
    state = hub._devices[device_id]
    assert state.connection is not None and state.connection.transport is not None
    return int(state.connection.transport.get_extra_info("sockname")[1])


def _settle(client: Any) -> None:
    """Two twin GET round trips: paho PUBACKs a PUBLISH before it reads the next
    packet, so whatever the hub sent before the first GET's answer has been
    PUBACKed before the second GET goes out, and the hub (which handles a
    connection's packets in order) has seen those PUBACKs when it answers it."""
    _run(client.get_twin)
    _run(client.get_twin)


# ------------------------------------------------------------- sync client


def test_sync_connect_and_telemetry_with_properties(hub: Hub) -> None:
    device_id = _device(hub, "sync-d2c")
    client = _sync_client(hub, device_id)
    try:
        _run(client.connect)
        assert client.connected
        assert hub.is_connected(device_id)
        assert _local_port(hub, device_id) == 8883
        _run(lambda: client.send_message(_telemetry_message()))
        _run(lambda: client.send_message("plain text"))  # a str is wrapped in a Message
    finally:
        _shutdown(client)
    _check_telemetry(hub, device_id)
    second = hub.wait_for_telemetry(device_id, 2, timeout=TIMEOUT)[1]
    assert (second.body, second.system_properties, second.properties) == (b"plain text", {}, {})
    assert not client.connected


def test_sync_c2d_on_message_received(hub: Hub) -> None:
    device_id = _device(hub, "sync-c2d")
    inbox = _Inbox()
    client = _sync_client(hub, device_id)
    try:
        _run(client.connect)

        def set_handler() -> None:  # the setter subscribes, synchronously
            client.on_message_received = inbox.put

        _run(set_handler)
        hub.send_c2d(device_id, b"hello device", message_id="c2d-1", correlation_id="corr-9",
                     properties={"k": "v w", "plus": "a+b", "eq": "x=y&z"}, ack="full")
        hub.send_c2d(device_id, "second")
        first, second = inbox.wait(2)
        assert first.data == b"hello device"
        assert first.message_id == "c2d-1"
        assert first.correlation_id == "corr-9"
        assert first.ack == "full"
        assert first.input_name is None
        # $.to is dropped by the SDK; the rest are custom properties, exactly.
        assert first.custom_properties == {"k": "v w", "plus": "a+b", "eq": "x=y&z"}
        assert second.data == b"second"
        assert second.message_id  # the hub makes one up
        assert second.custom_properties == {}
        _settle(client)
        assert hub.store.pending_c2d(device_id, now=time.time()) == []  # PUBACK completes
    finally:
        _shutdown(client)


def test_sync_direct_method(hub: Hub) -> None:
    device_id = _device(hub, "sync-method")
    requests = _Inbox()
    client = _sync_client(hub, device_id)

    def on_method(request: Any) -> None:
        requests.put(request)
        status = 201 if request.name == "reboot" else 200
        payload = {"echo": request.payload} if request.payload is not None else None
        client.send_method_response(
            MethodResponse.create_from_method_request(request, status, payload))

    try:
        _run(client.connect)

        def set_handler() -> None:
            client.on_method_request_received = on_method

        _run(set_handler)
        result = hub.invoke_method(device_id, "reboot", {"delay": 5}, timeout=TIMEOUT)
        assert (result.status, result.payload) == (201, {"echo": {"delay": 5}})
        bare = hub.invoke_method(device_id, "ping", timeout=TIMEOUT)
        assert (bare.status, bare.payload) == (200, None)
        first, second = requests.wait(2)
        assert (first.name, first.payload) == ("reboot", {"delay": 5})
        assert (second.name, second.payload) == ("ping", None)
        assert first.request_id != second.request_id
    finally:
        _shutdown(client)


def test_sync_get_twin_and_reported_patch(hub: Hub) -> None:
    device_id = _device(hub, "sync-twin")
    hub.patch_desired(device_id, {"rate": 5, "mode": {"eco": True}})
    client = _sync_client(hub, device_id)
    try:
        _run(client.connect)
        twin = _run(client.get_twin)
        assert twin == {"desired": {"rate": 5, "mode": {"eco": True}, "$version": 2},
                        "reported": {"$version": 1}}
        _run(lambda: client.patch_twin_reported_properties(
            {"battery": 55, "fw": {"version": "1.2.3"}}))
        reported = hub.get_twin(device_id)["properties"]["reported"]
        assert reported["battery"] == 55
        assert reported["fw"] == {"version": "1.2.3"}
        assert reported["$version"] == 2
        _run(lambda: client.patch_twin_reported_properties({"fw": None, "battery": 54}))
        reported = hub.get_twin(device_id)["properties"]["reported"]
        assert "fw" not in reported
        assert (reported["battery"], reported["$version"]) == (54, 3)
        assert _run(client.get_twin)["reported"] == {"battery": 54, "$version": 3}
    finally:
        _shutdown(client)


def test_sync_desired_patch_handler(hub: Hub) -> None:
    device_id = _device(hub, "sync-desired")
    patches = _Inbox()
    client = _sync_client(hub, device_id)
    try:
        _run(client.connect)  # connected first: no synthetic patch from the GET on connect

        def set_handler() -> None:
            client.on_twin_desired_properties_patch_received = patches.put

        _run(set_handler)
        hub.patch_desired(device_id, {"rate": 5})
        hub.patch_desired(device_id, {"rate": None, "mode": "eco"})
        assert patches.wait(2) == [{"rate": 5, "$version": 2},
                                   {"rate": None, "mode": "eco", "$version": 3}]
    finally:
        _shutdown(client)
    assert hub.get_twin(device_id)["properties"]["desired"] == {"mode": "eco", "$version": 3}


def test_sync_desired_changes_while_offline_arrive_on_reconnect(hub: Hub) -> None:
    """ensure_desired_properties: on each connect the SDK GETs the twin and hands
    the whole desired section to the handler when its $version is new."""
    device_id = _device(hub, "sync-resync")
    patches = _Inbox()
    client = _sync_client(hub, device_id, connection_retry=False)
    try:
        _run(client.connect)

        def set_handler() -> None:
            client.on_twin_desired_properties_patch_received = patches.put

        _run(set_handler)
        hub.patch_desired(device_id, {"rate": 1})
        assert patches.wait(1) == [{"rate": 1, "$version": 2}]
        _run(client.disconnect)
        hub.patch_desired(device_id, {"rate": 2})  # missed: the device is offline
        _run(client.connect)
        assert patches.wait(2)[1] == {"rate": 2, "$version": 3}
    finally:
        _shutdown(client)


def test_sync_desired_handler_set_before_connecting_gets_the_full_document(hub: Hub) -> None:
    """Reference 7.3 (4): the handler setter enables the feature, auto-connects,
    and the GET on that connect hands the whole desired section over as a patch.
    The SDK sends that GET before any SUBSCRIBE to ``$iothub/twin/res/#`` (7.3 (6));
    the emulator answers it all the same (the real service: unconfirmed)."""
    device_id = _device(hub, "sync-first-get")
    hub.patch_desired(device_id, {"rate": 7})
    patches = _Inbox()
    client = _sync_client(hub, device_id)
    try:
        def set_handler() -> None:
            client.on_twin_desired_properties_patch_received = patches.put

        _run(set_handler)
        assert patches.wait(1) == [{"rate": 7, "$version": 2}]
    finally:
        _shutdown(client)


def test_sync_websockets_telemetry(hub: Hub) -> None:
    device_id = _device(hub, "sync-ws")
    client = _sync_client(hub, device_id, websockets=True)
    try:
        _run(client.connect)
        assert _local_port(hub, device_id) == 443
        _run(lambda: client.send_message(_telemetry_message()))
    finally:
        _shutdown(client)
    _check_telemetry(hub, device_id)


def _refused_credential(exc: BaseException) -> bool:
    """CredentialError itself, or the SDK's ClientError wrapping one."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, CredentialError):
            return True
        seen = seen.__cause__
    return False


@pytest.mark.parametrize("case", ["wrong-key", "disabled", "unknown-device"])
def test_sync_authentication_refused(hub: Hub, case: str) -> None:
    device_id = _device(hub, f"sync-refused-{case}", enabled=case != "disabled")
    other = hub.add_device(f"{device_id}-other")
    connection_string = hub.connection_string(device_id)
    if case == "wrong-key":
        connection_string = (f"HostName={ADDRESS};DeviceId={device_id};"
                             f"SharedAccessKey={other.primary_key}")
    elif case == "unknown-device":
        connection_string = (f"HostName={ADDRESS};DeviceId=nobody-{device_id};"
                             f"SharedAccessKey={other.primary_key}")
    client = IoTHubDeviceClient.create_from_connection_string(
        connection_string, server_verification_cert=hub.ca_pem, connection_retry=False)
    try:
        with pytest.raises((CredentialError, ClientError)) as info:
            _run(client.connect)
        assert _refused_credential(info.value), repr(info.value)
        assert not client.connected
        assert not hub.is_connected(device_id)
    finally:
        _shutdown(client)


def test_sync_disabling_a_connected_device_drops_it(hub: Hub) -> None:
    device_id = _device(hub, "sync-disable")
    dropped = threading.Event()
    client = _sync_client(hub, device_id, connection_retry=False)

    def on_state() -> None:
        if not client.connected:
            dropped.set()

    try:
        _run(client.connect)
        client.on_connection_state_change = on_state
        hub.set_enabled(device_id, False)
        assert dropped.wait(TIMEOUT)
        with pytest.raises((CredentialError, ClientError)) as info:
            _run(client.connect)
        assert _refused_credential(info.value), repr(info.value)
    finally:
        _shutdown(client)


def test_sync_other_factories(hub: Hub) -> None:
    """``create_from_symmetric_key`` and ``create_from_sastoken`` (a token we sign)."""
    device_id = _device(hub, "sync-factories")
    device = hub.store.device(device_id)
    assert device is not None and device.primary_key is not None
    uri = device_resource_uri(ADDRESS, device_id)
    token = generate_sas_token(uri, device.primary_key, int(time.time() + 600))
    clients = [
        IoTHubDeviceClient.create_from_symmetric_key(
            device.primary_key, ADDRESS, device_id, server_verification_cert=hub.ca_pem),
        IoTHubDeviceClient.create_from_sastoken(token, server_verification_cert=hub.ca_pem),
        # The hub's own name in the user name and the token's sr, dialled as a gateway.
        IoTHubDeviceClient.create_from_symmetric_key(
            device.primary_key, HUB_NAME, device_id, gateway_hostname=ADDRESS,
            server_verification_cert=hub.ca_pem),
        # A Plug and Play model id: api-version=2020-09-30 and model-id=... in the user name.
        IoTHubDeviceClient.create_from_symmetric_key(
            device.primary_key, ADDRESS, device_id, product_info="dtmi:com:example:Thermostat;1",
            server_verification_cert=hub.ca_pem),
    ]
    for number, client in enumerate(clients):
        try:
            _run(lambda client=client, number=number: client.send_message(f"via {number}"))
        finally:
            _shutdown(client)
    bodies = [m.body for m in hub.wait_for_telemetry(device_id, 4, timeout=TIMEOUT)]
    assert bodies == [b"via 0", b"via 1", b"via 2", b"via 3"]


def test_sync_x509_device(hub: Hub) -> None:
    """``create_from_x509_certificate`` with a certificate from the hub's CA (no
    password in CONNECT); a certificate registered for another device is refused."""
    device_id = f"sync-x509-{next(_next_id)}"
    cert = hub.add_x509_device(device_id)
    other_id = f"sync-x509-other-{next(_next_id)}"
    hub.add_x509_device(other_id)
    client = IoTHubDeviceClient.create_from_x509_certificate(
        X509(str(cert.cert_file), str(cert.key_file)), ADDRESS, device_id,
        server_verification_cert=hub.ca_pem)
    try:
        _run(lambda: client.send_message("signed by a certificate"))
    finally:
        _shutdown(client)
    assert hub.wait_for_telemetry(device_id, 1, timeout=TIMEOUT)[0].body == (
        b"signed by a certificate")
    wrong = IoTHubDeviceClient.create_from_x509_certificate(
        X509(str(cert.cert_file), str(cert.key_file)), ADDRESS, other_id,
        server_verification_cert=hub.ca_pem, connection_retry=False)
    try:
        with pytest.raises((CredentialError, ClientError)) as info:
            _run(wrong.connect)
        assert _refused_credential(info.value), repr(info.value)
    finally:
        _shutdown(wrong)


def test_sync_second_connection_of_a_device_takes_over(hub: Hub) -> None:
    """IoT Hub keeps one connection per device: a second CONNECT drops the first."""
    device_id = _device(hub, "sync-takeover")
    first_states = _Inbox()
    first = _sync_client(hub, device_id, connection_retry=False)
    second = _sync_client(hub, device_id, connection_retry=False)
    try:
        _run(first.connect)
        first.on_connection_state_change = lambda: first_states.put(first.connected)
        _run(second.connect)
        assert first_states.wait(1) == [False]
        assert second.connected and hub.is_connected(device_id)
        _run(lambda: second.send_message("from the second"))
    finally:
        _shutdown(first, second)
    assert hub.wait_for_telemetry(device_id, 1, timeout=TIMEOUT)[0].body == b"from the second"


class _LogWatch(logging.Handler):
    """Counts log records whose message contains ``needle``."""

    def __init__(self, needle: str) -> None:
        super().__init__(logging.DEBUG)
        self.needle = needle
        self.inbox = _Inbox()

    def emit(self, record: logging.LogRecord) -> None:
        if self.needle in record.getMessage():
            self.inbox.put(record.getMessage())


def test_sync_keep_alive_pings_are_answered(hub: Hub) -> None:
    """keep_alive=1: paho pings every second and the hub answers each PINGREQ."""
    device_id = _device(hub, "sync-ping")
    watch = _LogWatch("Received PINGRESP")
    paho_log = logging.getLogger("paho")
    paho_log.addHandler(watch)
    client = _sync_client(hub, device_id, keep_alive=1, connection_retry=False)
    try:
        _run(client.connect)
        watch.inbox.wait(2, timeout=TIMEOUT)
        assert client.connected and hub.is_connected(device_id)
        _run(lambda: client.send_message("still here"))
    finally:
        paho_log.removeHandler(watch)
        _shutdown(client)
    assert hub.wait_for_telemetry(device_id, 1, timeout=TIMEOUT)[0].body == b"still here"


def test_sync_sas_renewal_reconnects_and_keeps_the_session(hub: Hub) -> None:
    """sastoken_ttl=122: the SDK renews its token 2 s after creation (120 s margin)
    and reauthorizes (DISCONNECT, then CONNECT with the new token, clean session 0,
    no new SUBSCRIBE); the method subscription must survive on the hub."""
    device_id = _device(hub, "sync-renew")
    states = _Inbox()
    client = _sync_client(hub, device_id, sastoken_ttl=122)

    def on_method(request: Any) -> None:
        client.send_method_response(MethodResponse.create_from_method_request(request, 200))

    try:
        _run(client.connect)

        def set_handlers() -> None:
            client.on_method_request_received = on_method
            client.on_connection_state_change = lambda: states.put(client.connected)

        _run(set_handlers)
        assert hub.invoke_method(device_id, "before", timeout=TIMEOUT).status == 200
        assert states.wait(2, timeout=TIMEOUT)[:2] == [False, True]  # the reauthorization
        assert _run(lambda: client.connected)
        result = hub.invoke_method(device_id, "after", timeout=TIMEOUT)
        assert result.status == 200
    finally:
        _shutdown(client)


def test_sync_reconnects_after_the_hub_drops_it(hub: Hub) -> None:
    """connection_retry: dropped by the hub (another connection of the device took
    over, then left), the SDK reconnects after connection_retry_interval, without a
    new SUBSCRIBE (clean session 0), and gets the C2D message sent meanwhile."""
    device_id = _device(hub, "sync-retry")
    inbox = _Inbox()
    states = _Inbox()
    client = _sync_client(hub, device_id, connection_retry_interval=1)
    intruder = _sync_client(hub, device_id, connection_retry=False)
    try:
        _run(client.connect)

        def set_handlers() -> None:
            client.on_message_received = inbox.put
            client.on_connection_state_change = lambda: states.put(client.connected)

        _run(set_handlers)
        _run(intruder.connect)
        assert states.wait(1)[0] is False
        _run(intruder.disconnect)
        hub.send_c2d(device_id, b"while dropped")
        (message,) = inbox.wait(1)
        assert message.data == b"while dropped"
        assert states.wait(2)[1] is True
    finally:
        _shutdown(intruder, client)


def test_sync_removing_the_method_handler_unsubscribes(hub: Hub) -> None:
    """``on_method_request_received = None`` sends UNSUBSCRIBE ``$iothub/methods/POST/#``;
    the service then answers a method call with 404, as for a device that never
    subscribed.  (Before ff5b2bc the emulator ignored UNSUBSCRIBE: 504 here.)"""
    device_id = _device(hub, "sync-unsub-method")
    client = _sync_client(hub, device_id)
    try:
        _run(client.connect)

        def set_handler(value: Any) -> None:
            client.on_method_request_received = value

        _run(lambda: set_handler(lambda request: None))
        _run(lambda: set_handler(None))
        assert hub.invoke_method(device_id, "gone", timeout=2).status == 404
    finally:
        _shutdown(client)


def test_sync_removing_the_message_handler_keeps_c2d_queued(hub: Hub) -> None:
    """``on_message_received = None`` unsubscribes from C2D: a message sent then stays
    in the hub's queue (and reaches the next handler) instead of being delivered."""
    device_id = _device(hub, "sync-unsub-c2d")
    inbox = _Inbox()
    client = _sync_client(hub, device_id)
    try:
        _run(client.connect)

        def set_handler(value: Any) -> None:
            client.on_message_received = value

        _run(lambda: set_handler(inbox.put))
        _run(lambda: set_handler(None))
        hub.send_c2d(device_id, b"nobody listens")
        _settle(client)  # a delivery, had there been one, would be completed by now
        assert [m.body for m in hub.store.pending_c2d(device_id, now=time.time())] == [
            b"nobody listens"]
        _run(lambda: set_handler(inbox.put))
        assert inbox.wait(1)[0].data == b"nobody listens"
    finally:
        _shutdown(client)


def test_sync_reported_patch_refused_by_the_hub(hub: Hub) -> None:
    """A reported key with '.' gets status 400; v2 raises ClientError("Unexpected
    failure") whose __cause__ is ServiceError, and the twin is unchanged."""
    device_id = _device(hub, "sync-twin-400")
    client = _sync_client(hub, device_id)
    try:
        _run(client.connect)
        with pytest.raises(ClientError) as info:
            _run(lambda: client.patch_twin_reported_properties({"bad.key": 1}))
        assert isinstance(info.value.__cause__, ServiceError), repr(info.value.__cause__)
        assert "400" in str(info.value.__cause__)
        assert _run(client.get_twin)["reported"] == {"$version": 1}
    finally:
        _shutdown(client)


# -------------------------------------------------------------- aio client


def test_aio_client_round_trips(hub: Hub) -> None:
    """The asyncio client: telemetry, C2D, a method, the twin and a desired patch."""
    device_id = _device(hub, "aio-all")
    hub.patch_desired(device_id, {"rate": 5})

    async def main() -> None:
        client = _aio_client(hub, device_id)
        messages = _Inbox()
        patches = _Inbox()
        requests = _Inbox()

        async def on_method(request: Any) -> None:  # a coroutine handler
            requests.put(request)
            await client.send_method_response(
                MethodResponse.create_from_method_request(request, 200, {"ok": True}))

        try:
            await _arun(client.connect())
            assert client.connected
            await _arun(client.send_message(_telemetry_message()))
            await hub.await_telemetry(device_id, 1, timeout=TIMEOUT)

            # Handler setters are plain (blocking) properties even on the aio client.
            def set_handlers() -> None:
                client.on_message_received = messages.put
                client.on_twin_desired_properties_patch_received = patches.put
                client.on_method_request_received = on_method

            await asyncio.to_thread(_run, set_handlers)
            await hub.asend_c2d(device_id, b"to aio", message_id="aio-1",
                                properties={"p": "1"})
            result = await hub.ainvoke_method(device_id, "check", {"n": 1}, timeout=TIMEOUT)
            assert (result.status, result.payload) == (200, {"ok": True})
            twin = await _arun(client.get_twin())
            assert twin == {"desired": {"rate": 5, "$version": 2}, "reported": {"$version": 1}}
            await _arun(client.patch_twin_reported_properties({"seen": 5}))
            await hub.apatch_desired(device_id, {"rate": 6})
            (c2d,) = await asyncio.to_thread(messages.wait, 1)
            assert (c2d.data, c2d.message_id, c2d.custom_properties) == (
                b"to aio", "aio-1", {"p": "1"})
            (request,) = await asyncio.to_thread(requests.wait, 1)
            assert (request.name, request.payload) == ("check", {"n": 1})
            (patch,) = await asyncio.to_thread(patches.wait, 1)
            assert patch == {"rate": 6, "$version": 3}
        finally:
            await _arun(client.shutdown())

    asyncio.run(main())
    _check_telemetry(hub, device_id)
    assert hub.get_twin(device_id)["properties"]["reported"]["seen"] == 5


def test_aio_websockets_telemetry(hub: Hub) -> None:
    device_id = _device(hub, "aio-ws")

    async def main() -> None:
        client = _aio_client(hub, device_id, websockets=True)
        try:
            await _arun(client.connect())
            assert _local_port(hub, device_id) == 443
            await _arun(client.send_message(_telemetry_message()))
        finally:
            await _arun(client.shutdown())

    asyncio.run(main())
    _check_telemetry(hub, device_id)


@pytest.mark.parametrize("case", ["wrong-key", "disabled"])
def test_aio_authentication_refused(hub: Hub, case: str) -> None:
    device_id = _device(hub, f"aio-refused-{case}", enabled=case != "disabled")
    connection_string = hub.connection_string(device_id)
    if case == "wrong-key":
        other = hub.add_device(f"{device_id}-other")
        connection_string = (f"HostName={ADDRESS};DeviceId={device_id};"
                             f"SharedAccessKey={other.primary_key}")

    async def main() -> BaseException:
        client = AioIoTHubDeviceClient.create_from_connection_string(
            connection_string, server_verification_cert=hub.ca_pem, connection_retry=False)
        try:
            with pytest.raises((CredentialError, ClientError)) as info:
                await _arun(client.connect())
            assert not client.connected
            return info.value
        finally:
            await _arun(client.shutdown())

    error = asyncio.run(main())
    assert _refused_credential(error), repr(error)


# -------------------------------------------------------------- file upload


def _put_file(hub: Hub, info: dict[str, Any], body: bytes) -> int:
    """The application's part: PUT the file to the storage info's blob URL."""
    url = urlsplit(f"https://{info['hostName']}/{info['containerName']}/"
                   f"{quote(info['blobName'])}{info['sasToken']}")
    assert url.hostname is not None
    conn = http.client.HTTPSConnection(
        url.hostname, url.port or 443, timeout=TIMEOUT,
        context=ssl.create_default_context(cafile=str(hub.ca_path)))
    try:
        conn.request("PUT", f"{url.path}?{url.query}", body=body,
                     headers={"x-ms-blob-type": "BlockBlob"})
        response = conn.getresponse()
        response.read()
        return response.status
    finally:
        conn.close()


def _check_upload(hub: Hub, device_id: str, blob_name: str, body: bytes, status: str,
                  code: int, description: str) -> None:
    (upload,) = hub.uploads(device_id)
    assert (upload.blob_name, upload.status, upload.status_code, upload.status_description) \
        == (f"{device_id}/{blob_name}", status, code, description)
    assert upload.size == len(body)
    assert upload.path is not None and upload.path.read_bytes() == body


def test_sync_file_upload(hub: Hub) -> None:
    device_id = _device(hub, "sync-upload")
    client = _sync_client(hub, device_id)
    body = b"time,temp\n1,21.5\n"
    try:
        info = _run(lambda: client.get_storage_info_for_blob("reports/day 1.csv"))
        assert info["hostName"] == ADDRESS  # port 443: none in the host name
        assert info["blobName"] == f"{device_id}/reports/day 1.csv"
        assert info["sasToken"].startswith("?sv=2018-03-28&sr=b&sig=")
        assert _put_file(hub, info, body) == 201
        _run(lambda: client.notify_blob_upload_status(
            info["correlationId"], True, 200, "uploaded by the sample"))
        assert not client.connected  # HTTP needs no MQTT connection
    finally:
        _shutdown(client)
    _check_upload(hub, device_id, "reports/day 1.csv", body, "succeeded", 200,
                  "uploaded by the sample")


def test_sync_file_upload_failure_and_refusals(hub: Hub) -> None:
    device_id = _device(hub, "sync-upload-fail")
    client = _sync_client(hub, device_id)
    try:
        info = _run(lambda: client.get_storage_info_for_blob("broken.bin"))
        assert _put_file(hub, info, b"half") == 201
        _run(lambda: client.notify_blob_upload_status(
            info["correlationId"], False, 500, "the device ran out of disk"))
        with pytest.raises(ClientError) as error:  # notified already: 400
            _run(lambda: client.notify_blob_upload_status(info["correlationId"], True, 200,
                                                          "again"))
        assert isinstance(error.value.__cause__, ServiceError), repr(error.value.__cause__)
        assert "400" in str(error.value.__cause__)
    finally:
        _shutdown(client)
    _check_upload(hub, device_id, "broken.bin", b"half", "failed", 500,
                  "the device ran out of disk")
    other = hub.add_device(f"{device_id}-other")
    wrong = IoTHubDeviceClient.create_from_connection_string(
        f"HostName={ADDRESS};DeviceId={device_id};SharedAccessKey={other.primary_key}",
        server_verification_cert=hub.ca_pem)
    try:
        with pytest.raises(ClientError) as error:
            _run(lambda: wrong.get_storage_info_for_blob("nope.txt"))
        assert "401" in str(error.value.__cause__), repr(error.value.__cause__)
    finally:
        _shutdown(wrong)
    assert len(hub.uploads(device_id)) == 1


def test_sync_x509_file_upload(hub: Hub) -> None:
    """The SDK's HTTP presents the client certificate (no Authorization header)."""
    device_id = f"sync-x509-upload-{next(_next_id)}"
    cert = hub.add_x509_device(device_id)
    client = IoTHubDeviceClient.create_from_x509_certificate(
        X509(str(cert.cert_file), str(cert.key_file)), ADDRESS, device_id,
        server_verification_cert=hub.ca_pem)
    body = b"\x00\x01 a signed upload"
    try:
        info = _run(lambda: client.get_storage_info_for_blob("cert.bin"))
        assert _put_file(hub, info, body) == 201
        _run(lambda: client.notify_blob_upload_status(info["correlationId"], True, 201, "ok"))
    finally:
        _shutdown(client)
    _check_upload(hub, device_id, "cert.bin", body, "succeeded", 201, "ok")


def test_aio_file_upload_next_to_mqtt_over_websockets(hub: Hub) -> None:
    """The asyncio client uploads while it is connected over WebSocket: both on 443."""
    device_id = _device(hub, "aio-upload")
    body = b"async file"

    async def main() -> None:
        client = _aio_client(hub, device_id, websockets=True)
        try:
            await _arun(client.connect())
            assert _local_port(hub, device_id) == 443
            info = await _arun(client.get_storage_info_for_blob("aio/file.txt"))
            assert info["blobName"] == f"{device_id}/aio/file.txt"
            assert await asyncio.to_thread(_put_file, hub, info, body) == 201
            await _arun(client.notify_blob_upload_status(info["correlationId"], True, 200,
                                                         "async ok"))
            await _arun(client.send_message("uploaded"))
        finally:
            await _arun(client.shutdown())

    asyncio.run(main())
    _check_upload(hub, device_id, "aio/file.txt", body, "succeeded", 200, "async ok")
    assert hub.wait_for_telemetry(device_id, 1, timeout=TIMEOUT)[0].body == b"uploaded"
