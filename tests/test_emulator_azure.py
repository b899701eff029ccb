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
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from iotdev.emulator import Hub

azure_device: Any = pytest.importorskip("azure.iot.device")
azure_aio: Any = pytest.importorskip("azure.iot.device.aio")
azure_exceptions: Any = pytest.importorskip("azure.iot.device.exceptions")

IoTHubDeviceClient: Any = azure_device.IoTHubDeviceClient
AioIoTHubDeviceClient: Any = azure_aio.IoTHubDeviceClient
Message: Any = azure_device.Message
MethodResponse: Any = azure_device.MethodResponse
CredentialError: Any = azure_exceptions.CredentialError
ClientError: Any = azure_exceptions.ClientError

ADDRESS = "127.0.0.147"
"""This module's own loopback address (no other test module uses it)."""
HUB_NAME = "azure-sdk-test.local"
TIMEOUT = 10.0

T = TypeVar("T")


# ------------------------------------------------------------------ fixtures


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() in ("true", "1"):
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


def _shutdown(client: Any) -> None:
    _run(client.shutdown)


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


def _completed_c2d(hub: Hub, device_id: str, round_trip: Callable[[], object]) -> bool:
    """True once the hub has the PUBACK of every C2D message; ``round_trip`` is a
    client operation whose reply comes after the PUBACK the SDK already queued."""
    for _ in range(5):
        if not hub.store.pending_c2d(device_id, now=time.time()):
            return True
        round_trip()
    return not hub.store.pending_c2d(device_id, now=time.time())


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
    first, second = hub.wait_for_telemetry(device_id, 2, timeout=TIMEOUT)
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
        assert _completed_c2d(hub, device_id, client.get_twin)
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
