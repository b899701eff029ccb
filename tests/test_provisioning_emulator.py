"""Our ProvisioningDeviceClient (sync and asyncio) against the emulator's DPS
on loopback (TLS and WebSocket, free ports), then to the assigned hub."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import iotdev
import iotdev.aio
from iotdev import (
    X509,
    CredentialError,
    Message,
    OperationTimeout,
    ProvisioningDeviceClient,
    ProvisioningServiceError,
    derive_device_key,
)
from iotdev.emulator import Dps, Hub
from tests._proxies import ProxyProcess, TinyProxy, require_proxy_program

SCOPE = "0ne00TEST01"
MODEL = "dtmi:com:example:Thermostat;1"


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[Hub, Dps]]:
    with Hub(mqtt_port=0, ws_port=0, state_dir=tmp_path) as hub, \
            Dps.for_hub(hub, id_scope=SCOPE, mqtt_port=0, ws_port=0, retry_after=0,
                        assigning_polls=1) as dps:
        yield hub, dps


def options(dps: Dps, *, websockets: bool = False) -> dict[str, Any]:
    return {"server_verification_cert": dps.ca_pem, "websockets": websockets,
            "port": dps.ws_port if websockets else dps.mqtt_port}


def send_and_check(hub: Hub, client: iotdev.IoTHubDeviceClient, device_id: str) -> None:
    try:
        client.send_message(Message("hello"))
        assert hub.wait_for_telemetry(device_id, 1)[0].body == b"hello"
    finally:
        client.shutdown()


@pytest.mark.parametrize("websockets", [False, True])
def test_individual_symmetric_key_payload_then_telemetry(env: tuple[Hub, Dps],
                                                         websockets: bool) -> None:
    hub, dps = env
    enrollment = dps.add_enrollment("dev-1", initial_twin={"tags": {"site": "lab"},
                                                           "desired": {"rate": 5}})
    assert enrollment.primary_key is not None
    client = ProvisioningDeviceClient.create_from_symmetric_key(
        "127.0.0.1", "dev-1", SCOPE, enrollment.primary_key, **options(dps, websockets=websockets))
    client.provisioning_payload = {"modelId": MODEL}
    result = client.register(timeout=30)
    assert result.status == "assigned"
    state = result.registration_state
    assert state is not None
    assert (state.device_id, state.assigned_hub, state.sub_status) == (
        "dev-1", "127.0.0.1", "initialAssignment")
    assert json.loads(state.response_payload) == {"modelId": MODEL}
    assert hub.store.device("dev-1") is not None
    twin = hub.get_twin("dev-1")
    assert twin["tags"] == {"site": "lab"} and twin["properties"]["desired"]["rate"] == 5
    device = iotdev.IoTHubDeviceClient.create_from_symmetric_key(
        enrollment.primary_key, state.assigned_hub, state.device_id,
        server_verification_cert=hub.ca_pem, port=hub.mqtt_port, model_id=MODEL)
    send_and_check(hub, device, "dev-1")


def test_group_key_create_device_client_and_cache(env: tuple[Hub, Dps], tmp_path: Path) -> None:
    hub, dps = env
    group = dps.add_group("fleet")
    key = derive_device_key(group.primary_key, "sensor-9")
    client = ProvisioningDeviceClient.create_from_symmetric_key(
        "127.0.0.1", "sensor-9", SCOPE, key, **options(dps))
    client.provisioning_payload = {"modelId": MODEL}
    cache = tmp_path / "assignment.json"
    device = client.create_device_client(cache_path=cache, timeout=30, port=hub.mqtt_port)
    send_and_check(hub, device, "sensor-9")
    assert key not in cache.read_text() and oct(cache.stat().st_mode & 0o777) == "0o600"
    assert dps.logic.requests == 3  # register, poll (assigning), poll
    device = client.create_device_client(cache_path=cache, timeout=30, port=hub.mqtt_port)
    device.shutdown()
    assert dps.logic.requests == 3  # the cache spared a registration
    # the hub forgot the device: the cached assignment fails, the client registers again
    hub.store.remove_device("sensor-9")
    device = client.create_device_client(cache_path=cache, timeout=30, port=hub.mqtt_port)
    device.shutdown()
    assert dps.logic.requests == 6


def test_x509_enrollment(env: tuple[Hub, Dps]) -> None:
    hub, dps = env
    _, cert = dps.add_x509_enrollment("x509-dev")
    x509 = X509(str(cert.cert_file), str(cert.key_file))
    client = ProvisioningDeviceClient.create_from_x509_certificate(
        "127.0.0.1", "x509-dev", SCOPE, x509, **options(dps))
    device = client.create_device_client(timeout=30, port=hub.mqtt_port)
    send_and_check(hub, device, "x509-dev")
    stranger = ProvisioningDeviceClient.create_from_x509_certificate(
        "127.0.0.1", "not-enrolled", SCOPE, x509, **options(dps))
    with pytest.raises(CredentialError):
        stranger.register(timeout=30)


def test_throttled_then_assigned(env: tuple[Hub, Dps]) -> None:
    _, dps = env
    enrollment = dps.add_enrollment("dev-t")
    assert enrollment.primary_key is not None
    dps.throttle(2, retry_after=1)
    client = ProvisioningDeviceClient.create_from_symmetric_key(
        "127.0.0.1", "dev-t", SCOPE, enrollment.primary_key, **options(dps))
    assert client.register(timeout=30).status == "assigned"
    assert dps.logic.requests == 5  # 429, 429, register, poll, poll


def test_disabled_wrong_key_and_timeout(env: tuple[Hub, Dps]) -> None:
    hub, dps = env
    enrollment = dps.add_enrollment("dev-off", enabled=False)
    assert enrollment.primary_key is not None
    client = ProvisioningDeviceClient.create_from_symmetric_key(
        "127.0.0.1", "dev-off", SCOPE, enrollment.primary_key, **options(dps))
    with pytest.raises(ProvisioningServiceError) as info:
        client.register(timeout=30)
    assert info.value.registration_status == "disabled"
    assert isinstance(info.value, iotdev.ClientError)
    assert hub.store.device("dev-off") is None

    dps.add_enrollment("dev-k")
    wrong = ProvisioningDeviceClient.create_from_symmetric_key(
        "127.0.0.1", "dev-k", SCOPE, derive_device_key(enrollment.primary_key, "x"),
        **options(dps))
    with pytest.raises(CredentialError):
        wrong.register(timeout=30)

    dps.throttle(1000, retry_after=5)
    slow = ProvisioningDeviceClient.create_from_symmetric_key(
        "127.0.0.1", "dev-off", SCOPE, enrollment.primary_key, **options(dps))
    with pytest.raises(OperationTimeout):
        slow.register(timeout=1.0)


def test_validation_as_v2() -> None:
    factory = ProvisioningDeviceClient.create_from_symmetric_key
    with pytest.raises(ValueError, match="Registration Id can not be none, empty or blank"):
        factory("h", "  ", "s", "a2V5")
    with pytest.raises(ValueError, match="Invalid Symmetric Key"):
        factory("h", "r", "s", "a2V")
    with pytest.raises(TypeError, match="Unsupported keyword argument 'product_info'"):
        factory("h", "r", "s", "a2V5", product_info="x")
    with pytest.raises(TypeError, match="Unsupported keyword argument 'sastoken_ttl'"):
        ProvisioningDeviceClient.create_from_x509_certificate(
            "h", "r", "s", X509("c", "k"), sastoken_ttl=5)
    client = factory("h", "r", "s", "a2V5", keep_alive=30, websockets=True)
    assert client.provisioning_payload is None


def test_nothing_listening_fails_to_connect() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = ProvisioningDeviceClient.create_from_symmetric_key(
        "127.0.0.1", "r", "s", "a2V5", port=port)
    with pytest.raises(iotdev.ConnectionFailedError):
        client.register(timeout=10)


def test_asyncio_group_and_telemetry(env: tuple[Hub, Dps]) -> None:
    hub, dps = env
    group = dps.add_group("afleet")
    key = derive_device_key(group.primary_key, "a-dev")

    async def main() -> None:
        client = iotdev.aio.ProvisioningDeviceClient.create_from_symmetric_key(
            "127.0.0.1", "a-dev", SCOPE, key, **options(dps, websockets=True))
        client.provisioning_payload = {"modelId": MODEL}
        result = await client.register(timeout=30)
        assert result.registration_state is not None
        assert result.registration_state.device_id == "a-dev"
        dps.throttle(1, retry_after=1)
        device = await client.create_device_client(timeout=30, port=hub.ws_port,
                                                   force_register=True)
        try:
            await device.send_message("hi")
            msgs = await hub.await_telemetry("a-dev", 1)
            assert msgs[0].body == b"hi"
        finally:
            await device.shutdown()
        wrong = iotdev.aio.ProvisioningDeviceClient.create_from_symmetric_key(
            "127.0.0.1", "a-dev", SCOPE, derive_device_key(key, "x"), **options(dps))
        with pytest.raises(CredentialError):
            await wrong.register(timeout=30)

    asyncio.run(main())


def test_no_thread_left_behind(env: tuple[Hub, Dps]) -> None:
    import threading

    _, dps = env
    enrollment = dps.add_enrollment("dev-threads")
    assert enrollment.primary_key is not None
    before = {t for t in threading.enumerate() if t.name.startswith("iotdev-")}
    good = ProvisioningDeviceClient.create_from_symmetric_key(
        "127.0.0.1", "dev-threads", SCOPE, enrollment.primary_key, **options(dps))
    bad = ProvisioningDeviceClient.create_from_symmetric_key(
        "127.0.0.1", "dev-threads", SCOPE, derive_device_key(enrollment.primary_key, "x"),
        **options(dps))
    for _ in range(3):
        good.register(timeout=30)
        with pytest.raises(CredentialError):
            bad.register(timeout=30)
    after = {t for t in threading.enumerate() if t.name.startswith("iotdev-")}
    assert after <= before


def test_a_second_register_while_one_runs_is_refused(env: tuple[Hub, Dps]) -> None:
    import threading

    _, dps = env
    enrollment = dps.add_enrollment("dev-busy")
    assert enrollment.primary_key is not None
    client = ProvisioningDeviceClient.create_from_symmetric_key(
        "127.0.0.1", "dev-busy", SCOPE, enrollment.primary_key, **options(dps))
    dps.throttle(1, retry_after=2)  # keeps the first call waiting 2 s
    outcome: list[object] = []
    first = threading.Thread(target=lambda: outcome.append(client.register(timeout=30)))
    first.start()
    try:
        deadline = time.monotonic() + 10
        while dps.logic.throttled and time.monotonic() < deadline:
            first.join(0.01)  # until the first call's request got its 429
        assert dps.logic.throttled == 0
        with pytest.raises(iotdev.ClientError, match="already in progress"):
            client.register(timeout=30)
    finally:
        first.join(30)
    assert len(outcome) == 1 and getattr(outcome[0], "status", None) == "assigned"


def test_asyncio_x509_disabled_and_timeout(env: tuple[Hub, Dps]) -> None:
    hub, dps = env
    _, cert = dps.add_x509_enrollment("a-x509")
    x509 = X509(str(cert.cert_file), str(cert.key_file))
    off = dps.add_enrollment("a-off", enabled=False)
    assert off.primary_key is not None

    async def main() -> None:
        client = iotdev.aio.ProvisioningDeviceClient.create_from_x509_certificate(
            "127.0.0.1", "a-x509", SCOPE, x509, **options(dps))
        device = await client.create_device_client(timeout=30, port=hub.mqtt_port)
        try:
            await device.send_message("x")
            assert (await hub.await_telemetry("a-x509", 1))[0].body == b"x"
        finally:
            await device.shutdown()
        disabled = iotdev.aio.ProvisioningDeviceClient.create_from_symmetric_key(
            "127.0.0.1", "a-off", SCOPE, off.primary_key, **options(dps))
        with pytest.raises(ProvisioningServiceError) as info:
            await disabled.register(timeout=30)
        assert info.value.registration_status == "disabled"
        dps.throttle(1000, retry_after=5)
        with pytest.raises(OperationTimeout):
            await disabled.register(timeout=1.0)
        dps.throttle(0)

    asyncio.run(main())



@pytest.fixture(scope="module")
def tinyproxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyProcess]:
    proxy = TinyProxy(require_proxy_program("tinyproxy", "tinyproxy"),
                      tmp_path_factory.mktemp("tinyproxy-dps"))
    proxy.start()
    try:
        yield proxy
    finally:
        proxy.stop()


def test_through_an_http_proxy_to_dps_and_hub(env: tuple[Hub, Dps],
                                              tinyproxy: ProxyProcess) -> None:
    hub, dps = env
    enrollment = dps.add_enrollment("dev-proxy")
    assert enrollment.primary_key is not None
    before = tinyproxy.log_text().count("CONNECT")
    client = ProvisioningDeviceClient.create_from_symmetric_key(
        "127.0.0.1", "dev-proxy", SCOPE, enrollment.primary_key,
        proxy_options=iotdev.ProxyOptions("HTTP", tinyproxy.host, tinyproxy.port),
        **options(dps, websockets=True))
    device = client.create_device_client(timeout=30, port=hub.ws_port)  # the proxy too
    send_and_check(hub, device, "dev-proxy")
    assert tinyproxy.log_text().count("CONNECT") >= before + 2
