"""Figure ``module-outputs``: IoT Edge module outputs through a route to
another module's input, ours against azure-iot-device 2.14's module client,
on the same emulator.

The emulator (``iotdev.emulator.Hub``, on a background thread of the
benchmark process, so it shares the GIL with the clients: both sides under the
same handicap) listens on ``127.0.0.155:8883`` (azure-iot-device always dials
8883) and plays the runtime of Edge device ``bench-edge`` with one route per
contestant, ``FROM /messages/modules/{filter}/outputs/out1 INTO
BrokeredEndpoint("/modules/{sink}/inputs/in1")``.  Each contestant is a pair of
module clients of its own package (sync, or asyncio on one loop thread that
all asyncio clients share) made with
``create_from_connection_string`` (module strings, the emulator's CA as
``server_verification_cert``), connected before timing: the filter calls
``send_message_to_output(Message(200 bytes), "out1")`` ``work`` times, one
after the other (each returns on the PUBACK, which the emulator sends once the
route has taken the message), and the run ends when the sink's
``on_message_received`` handler has seen every one of them on input ``in1``.
The sample is messages per second, end to end.
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
import warnings
from typing import Any

from .harness import Contestant, Figure, Session, Skip, register

ADDRESS = "127.0.0.155"
EDGE = "bench-edge"
PAYLOAD = b"x" * 200
WAIT = 30.0


def _azure() -> Any:
    warnings.filterwarnings("ignore", message="ssl.PROTOCOL_TLSv1_2 is deprecated",
                            category=DeprecationWarning)
    try:
        import azure.iot.device
        import azure.iot.device.aio
    except ImportError as exc:
        raise Skip(f"azure-iot-device is not installed ({exc})") from exc
    return azure.iot.device


class _Counter:
    """Input messages the sink's handler saw, waited for with a timeout."""

    def __init__(self) -> None:
        self.count = 0
        self.cond = threading.Condition()

    def add(self, message: Any) -> None:
        assert message.input_name == "in1"
        with self.cond:
            self.count += 1
            self.cond.notify_all()

    def wait(self, count: int) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: self.count >= count, WAIT):
                raise TimeoutError(f"the sink saw {self.count} of {count} inputs")


def _setup(session: Session) -> list[Contestant]:
    import iotdev
    import iotdev.aio
    from iotdev.emulator import Hub

    azure = _azure()
    pairs = {"iotdev": ("filter", "sink"), "azure": ("afilter", "asink"),
             "iotdev-aio": ("filter2", "sink2"), "azure-aio": ("afilter2", "asink2")}
    routes = {f"{name}Route": f'FROM /messages/modules/{filt}/outputs/out1 '
                              f'INTO BrokeredEndpoint("/modules/{sink}/inputs/in1")'
              for name, (filt, sink) in pairs.items()}
    hub = Hub(hub_name="bench-modules.local", host=ADDRESS, mqtt_port=8883, ws_port=None,
              state_dir=tempfile.mkdtemp(prefix="iotdev-bench-modules-"),
              connection_host=ADDRESS)
    hub.add_edge_device(EDGE, routes=routes)
    for filt, sink in pairs.values():
        hub.add_module(EDGE, filt)
        hub.add_module(EDGE, sink)
    try:
        hub.start()
    except OSError as exc:
        raise Skip(f"cannot listen on {ADDRESS}:8883 ({exc})") from exc
    session.stack.callback(hub.stop)

    loop = asyncio.new_event_loop()  # the asyncio clients' loop, shared (same handicap)
    runner = threading.Thread(target=loop.run_forever, name="bench module loop", daemon=True)
    runner.start()

    def stop_loop() -> None:
        loop.call_soon_threadsafe(loop.stop)
        runner.join(WAIT)

    session.stack.callback(stop_loop)

    def on_loop(coro: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, loop).result(WAIT)

    def contestant(name: str, package: Any, aio: bool) -> Any:
        filt_id, sink_id = pairs[name]
        client_class = package.aio.IoTHubModuleClient if aio else package.IoTHubModuleClient
        clients = [client_class.create_from_connection_string(
            hub.connection_string(EDGE, module_id=module_id),
            server_verification_cert=hub.ca_pem) for module_id in (filt_id, sink_id)]
        filt, sink = clients
        counter = _Counter()
        if aio:
            for client in clients:
                session.stack.callback(lambda client=client: on_loop(client.shutdown()))

            async def connect() -> None:
                sink.on_message_received = counter.add
                await sink.connect()
                await filt.connect()

            async def send(work: int) -> None:
                for _ in range(work):
                    await filt.send_message_to_output(package.Message(PAYLOAD), "out1")

            on_loop(connect())
        else:
            for client in clients:
                session.stack.callback(client.shutdown)
            sink.on_message_received = counter.add
            sink.connect()
            filt.connect()

            def send(work: int) -> None:
                for _ in range(work):
                    filt.send_message_to_output(package.Message(PAYLOAD), "out1")

        def run(work: int) -> int:
            start = counter.count
            if aio:
                on_loop(send(work))
            else:
                send(work)
            counter.wait(start + work)
            return work

        run(1)  # the route works
        return run

    return [Contestant("iotdev sync", contestant("iotdev", iotdev, False), ours=True,
                       versus=("azure-iot-device sync",)),
            Contestant("azure-iot-device sync", contestant("azure", azure, False)),
            Contestant("iotdev asyncio", contestant("iotdev-aio", iotdev, True), ours=True,
                       versus=("azure-iot-device asyncio",)),
            Contestant("azure-iot-device asyncio", contestant("azure-aio", azure, True))]


register(Figure(
    name="module-outputs",
    title="Edge module outputs routed to another module's input, end to end",
    unit="msg/s", setup=_setup, work=2000, quick_work=100, kind="rate", rounds=5,
    chart="throughput", description=__doc__ or ""))
