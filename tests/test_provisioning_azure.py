"""The emulator's DPS against Microsoft's own provisioning client,
``azure.iot.device.ProvisioningDeviceClient`` 2.14 (sync and asyncio),
unmodified; then its ``IoTHubDeviceClient`` connects to the assigned hub.

The SDK always dials port 8883 (443 with ``websockets=True``), so the DPS
listens on ``DPS_ADDRESS`` and the hub it assigns to on ``HUB_ADDRESS``, both
loopback addresses of this module's own.  Binding ports below 1024 needs
root: when they cannot be bound the module is skipped, or fails when ``CI``
is ``true`` or ``1``.  Every blocking SDK call runs with a timeout."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import pytest

from iotdev import derive_device_key
from iotdev.emulator import Hub
from iotdev.emulator._dps import Dps

_IN_CI = os.environ.get("CI", "").lower() in ("true", "1")

try:
    import azure.iot.device as azure_device
    import azure.iot.device.aio as azure_aio
    import azure.iot.device.exceptions as azure_exceptions
except ImportError as exc:
    if _IN_CI:
        raise
    pytest.skip(f"azure-iot-device is not installed: {exc}", allow_module_level=True)

ProvisioningDeviceClient: Any = azure_device.ProvisioningDeviceClient
AioProvisioningDeviceClient: Any = azure_aio.ProvisioningDeviceClient
IoTHubDeviceClient: Any = azure_device.IoTHubDeviceClient
AioIoTHubDeviceClient: Any = azure_aio.IoTHubDeviceClient
X509: Any = azure_device.X509
CredentialError: Any = azure_exceptions.CredentialError
ClientError: Any = azure_exceptions.ClientError

DPS_ADDRESS = "127.0.0.152"
HUB_ADDRESS = "127.0.0.153"
SCOPE = "0ne00AZURE1"
MODEL = "dtmi:com:example:Thermostat;1"
TIMEOUT = 20.0

T = TypeVar("T")

pytestmark = pytest.mark.filterwarnings(
    "ignore:ssl.PROTOCOL_TLSv1_2 is deprecated:DeprecationWarning")


def _unavailable(reason: str) -> None:
    if _IN_CI:
        pytest.fail(f"azure-iot-device provisioning tests cannot run in CI: {reason}",
                    pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Hub, Dps]]:
    for address in (DPS_ADDRESS, HUB_ADDRESS):
        for port in (8883, 443):
            with socket.socket() as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind((address, port))
                except OSError as exc:
                    _unavailable(f"cannot bind {address}:{port}: {exc}")
    state = tmp_path_factory.mktemp("azure-dps")
    hub = Hub(hub_name="azure-dps-hub.local", host=HUB_ADDRESS, mqtt_port=8883, ws_port=443,
              state_dir=state, connection_host=HUB_ADDRESS)
    hub.start()
    dps = Dps.for_hub(hub, id_scope=SCOPE, host=DPS_ADDRESS, mqtt_port=8883, ws_port=443,
                      retry_after=1)
    try:
        dps.start()
        yield hub, dps
    finally:
        dps.stop()
        hub.stop()


@pytest.fixture(autouse=True)
def _sdk_debug_log(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="azure.iot.device")
    caplog.set_level(logging.DEBUG, logger="iotdev.emulator")


def _run(fn: Callable[[], T], timeout: float = TIMEOUT) -> T:
    """``fn()`` on a daemon thread, with a timeout (the SDK has none)."""
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
        raise TimeoutError(f"{fn} did not return in {timeout} s")
    if error:
        raise error[0]
    return result[0]


def _telemetry(hub: Hub, device_id: str, client: Any) -> None:
    try:
        _run(client.connect)
        _run(lambda: client.send_message("from azure"))
        assert hub.wait_for_telemetry(device_id, 1)[0].body == b"from azure"
    finally:
        _run(client.shutdown)


@pytest.mark.parametrize("websockets", [False, True])
def test_sync_individual_key_payload_then_hub(env: tuple[Hub, Dps], websockets: bool) -> None:
    hub, dps = env
    rid = f"az-sync-{int(websockets)}"
    enrollment = dps.add_enrollment(rid)
    client = ProvisioningDeviceClient.create_from_symmetric_key(
        provisioning_host=DPS_ADDRESS, registration_id=rid, id_scope=SCOPE,
        symmetric_key=enrollment.primary_key, server_verification_cert=dps.ca_pem,
        websockets=websockets)
    client.provisioning_payload = {"modelId": MODEL}
    result = _run(client.register)
    assert result.status == "assigned"
    state = result.registration_state
    assert (state.device_id, state.assigned_hub, state.sub_status) == (
        rid, HUB_ADDRESS, "initialAssignment")
    assert json.loads(state.response_payload) == {"modelId": MODEL}
    device = IoTHubDeviceClient.create_from_symmetric_key(
        symmetric_key=enrollment.primary_key, hostname=state.assigned_hub,
        device_id=state.device_id, server_verification_cert=hub.ca_pem, product_info=MODEL,
        websockets=websockets)
    _telemetry(hub, rid, device)
    assert hub.get_twin(rid).get("modelId") == MODEL


def test_sync_x509(env: tuple[Hub, Dps]) -> None:
    hub, dps = env
    _, cert = dps.add_x509_enrollment("az-x509")
    x509 = X509(cert_file=str(cert.cert_file), key_file=str(cert.key_file))
    client = ProvisioningDeviceClient.create_from_x509_certificate(
        provisioning_host=DPS_ADDRESS, registration_id="az-x509", id_scope=SCOPE, x509=x509,
        server_verification_cert=dps.ca_pem)
    result = _run(client.register)
    assert result.registration_state.device_id == "az-x509"
    device = IoTHubDeviceClient.create_from_x509_certificate(
        x509=x509, hostname=result.registration_state.assigned_hub, device_id="az-x509",
        server_verification_cert=hub.ca_pem)
    _telemetry(hub, "az-x509", device)


def test_sync_wrong_key_and_disabled(env: tuple[Hub, Dps]) -> None:
    _, dps = env
    enrollment = dps.add_enrollment("az-off", enabled=False)
    assert enrollment.primary_key is not None
    client = ProvisioningDeviceClient.create_from_symmetric_key(
        provisioning_host=DPS_ADDRESS, registration_id="az-off", id_scope=SCOPE,
        symmetric_key=enrollment.primary_key, server_verification_cert=dps.ca_pem)
    with pytest.raises(ClientError):  # v2 wraps the unexpected status in ClientError
        _run(client.register)
    wrong = ProvisioningDeviceClient.create_from_symmetric_key(
        provisioning_host=DPS_ADDRESS, registration_id="az-off", id_scope=SCOPE,
        symmetric_key=derive_device_key(enrollment.primary_key, "x"),
        server_verification_cert=dps.ca_pem)
    with pytest.raises(CredentialError):
        _run(wrong.register)


def test_asyncio_group_key_throttled_then_hub(env: tuple[Hub, Dps]) -> None:
    hub, dps = env
    group = dps.add_group("az-group")
    key = derive_device_key(group.primary_key, "az-aio")

    async def main() -> None:
        client = AioProvisioningDeviceClient.create_from_symmetric_key(
            provisioning_host=DPS_ADDRESS, registration_id="az-aio", id_scope=SCOPE,
            symmetric_key=key, server_verification_cert=dps.ca_pem)
        client.provisioning_payload = {"modelId": MODEL}
        dps.throttle(1, retry_after=1)
        result = await asyncio.wait_for(client.register(), TIMEOUT)
        assert result.registration_state.device_id == "az-aio"
        device = AioIoTHubDeviceClient.create_from_symmetric_key(
            symmetric_key=key, hostname=result.registration_state.assigned_hub,
            device_id="az-aio", server_verification_cert=hub.ca_pem)
        try:
            await asyncio.wait_for(device.connect(), TIMEOUT)
            await asyncio.wait_for(device.send_message("aio"), TIMEOUT)
            assert (await hub.await_telemetry("az-aio", 1))[0].body == b"aio"
        finally:
            await asyncio.wait_for(device.shutdown(), TIMEOUT)

    asyncio.run(main())
