"""Figures ``dps-register`` and ``dps-storm``: registration with the Device
Provisioning Service, ours against azure-iot-device 2.14, on the same
emulator.

The emulator's DPS (``iotdev.emulator.Dps``) listens on ``127.0.0.152:8883``
(azure-iot-device always dials 8883) and assigns to the emulator's hub on
``127.0.0.153``; both run on background threads of the benchmark process (so
they share its GIL with the clients: the figures compare clients under the
same handicap).  Every registration is of a fresh registration id of one
symmetric-key group enrollment, so each one creates its device on the hub.
DPS answers ``202 assigning`` with ``retry-after: 0`` and the next poll gets
``200 assigned``.

* ``dps-register``: the median wall time of one registration (connect, TLS,
  subscribe, register, poll, disconnect), sync clients, one at a time.
  azure-iot-device waits a fixed 2 s after the first ``assigning`` whatever
  ``retry-after`` says, which dominates its figure: that is what its users wait.
* ``dps-storm``: registrations completed per second when N devices register at
  once on one asyncio loop, 64 in flight at most (1,000 for ours;
  azure-iot-device's asyncio client starts threads per client, so it gets a
  twentieth of the devices).
"""

from __future__ import annotations

import asyncio
import itertools
import statistics
import tempfile
import time
import warnings
from typing import Any

from .harness import Contestant, Figure, Metric, Session, Skip, Value, register

DPS_ADDRESS = "127.0.0.152"
HUB_ADDRESS = "127.0.0.153"
SCOPE = "0ne00BENCH1"
IN_FLIGHT = 64
"""Registrations in flight at most in the storm (the listen backlog is 100)."""

_ids = itertools.count()


def _emulator(session: Session) -> tuple[Any, str]:
    from iotdev.emulator import Dps, Hub

    state = tempfile.mkdtemp(prefix="iotdev-bench-dps-")
    hub = Hub(host=HUB_ADDRESS, mqtt_port=8883, ws_port=None, state_dir=state,
              connection_host=HUB_ADDRESS)
    try:
        hub.start()
    except OSError as exc:
        raise Skip(f"cannot listen on {HUB_ADDRESS}:8883 ({exc})") from exc
    session.stack.callback(hub.stop)
    dps = Dps.for_hub(hub, id_scope=SCOPE, host=DPS_ADDRESS, mqtt_port=8883, ws_port=None,
                      retry_after=0)
    try:
        dps.start()
    except OSError as exc:
        raise Skip(f"cannot listen on {DPS_ADDRESS}:8883 ({exc})") from exc
    session.stack.callback(dps.stop)
    group = dps.add_group("bench")
    return dps, group.primary_key


def _azure(aio: bool) -> Any:
    warnings.filterwarnings("ignore", message="ssl.PROTOCOL_TLSv1_2 is deprecated",
                            category=DeprecationWarning)
    try:
        import azure.iot.device
        import azure.iot.device.aio
    except ImportError as exc:
        raise Skip(f"azure-iot-device is not installed ({exc})") from exc
    if aio:
        return azure.iot.device.aio.ProvisioningDeviceClient
    return azure.iot.device.ProvisioningDeviceClient


def _setup_register(session: Session) -> list[Contestant]:
    import iotdev

    azure_client = _azure(aio=False)
    dps, group_key = _emulator(session)

    def runner(factory: Any) -> Any:
        def run(work: int) -> Value:
            times = []
            for _ in range(work):
                rid = f"bench-{next(_ids)}"
                client = factory.create_from_symmetric_key(
                    provisioning_host=DPS_ADDRESS, registration_id=rid, id_scope=SCOPE,
                    symmetric_key=iotdev.derive_device_key(group_key, rid),
                    server_verification_cert=dps.ca_pem)
                start = time.perf_counter()
                result = client.register()
                times.append(time.perf_counter() - start)
                assert result.registration_state.device_id == rid
            return Value(statistics.median(times) * 1000.0, {"max": max(times) * 1000.0})
        return run

    return [Contestant("iotdev sync", runner(iotdev.ProvisioningDeviceClient), ours=True),
            Contestant("azure-iot-device sync", runner(azure_client), work_scale=0.2)]


def _setup_storm(session: Session) -> list[Contestant]:
    import iotdev
    import iotdev.aio

    azure_client = _azure(aio=True)
    dps, group_key = _emulator(session)

    def runner(factory: Any) -> Any:
        async def one(gate: asyncio.Semaphore) -> None:
            async with gate:
                await register_one()

        async def register_one() -> None:
            rid = f"storm-{next(_ids)}"
            client = factory.create_from_symmetric_key(
                provisioning_host=DPS_ADDRESS, registration_id=rid, id_scope=SCOPE,
                symmetric_key=iotdev.derive_device_key(group_key, rid),
                server_verification_cert=dps.ca_pem)
            result = await client.register()
            assert result.registration_state.device_id == rid

        async def storm(work: int) -> int:
            gate = asyncio.Semaphore(IN_FLIGHT)
            await asyncio.gather(*(one(gate) for _ in range(work)))
            return work

        def run(work: int) -> int:
            return asyncio.run(storm(work))
        return run

    return [Contestant("iotdev asyncio", runner(iotdev.aio.ProvisioningDeviceClient), ours=True),
            Contestant("azure-iot-device asyncio", runner(azure_client), work_scale=0.05)]


register(Figure(
    name="dps-register",
    title="DPS registration latency, one device at a time (sync clients)",
    unit="ms", setup=_setup_register, work=20, quick_work=3, kind="value",
    higher_is_better=False, rounds=3, metrics=(Metric("max", "ms", title="max"),),
    description=__doc__ or ""))
register(Figure(
    name="dps-storm",
    title="DPS provisioning storm: registrations per second, N devices at once (asyncio)",
    unit="registrations/s", setup=_setup_storm, work=1000, quick_work=100, kind="rate",
    rounds=3, description=__doc__ or ""))
