"""Figure ``module-outputs``: IoT Edge module outputs through a route to
another module's input, ours against azure-iot-device 2.14's module client,
on the same emulator.

The emulator (``iotdev.emulator.Hub``, on a background thread of the
benchmark process, so it shares the GIL with the clients: both sides under the
same handicap) listens on ``127.0.0.155:8883`` (azure-iot-device always dials
8883) and plays the runtime of Edge device ``bench-edge`` with one route per
contestant, ``FROM /messages/modules/{filter}/outputs/out1 INTO
BrokeredEndpoint("/modules/{sink}/inputs/in1")``.  Each contestant is a pair of
sync module clients of its own package made with
``create_from_connection_string`` (module strings, the emulator's CA as
``server_verification_cert``), connected before timing: the filter calls
``send_message_to_output(Message(200 bytes), "out1")`` ``work`` times, one
after the other (each returns on the PUBACK, which the emulator sends once the
route has taken the message), and the run ends when the sink's
``on_message_received`` handler has seen every one of them on input ``in1``.
The sample is messages per second, end to end.
"""

from __future__ import annotations

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
    from iotdev.emulator import Hub

    azure = _azure()
    pairs = {"iotdev": ("filter", "sink"), "azure": ("afilter", "asink")}
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

    def contestant(name: str, package: Any) -> Any:
        filt_id, sink_id = pairs[name]
        clients = [package.IoTHubModuleClient.create_from_connection_string(
            hub.connection_string(EDGE, module_id=module_id),
            server_verification_cert=hub.ca_pem) for module_id in (filt_id, sink_id)]
        filt, sink = clients
        for client in clients:
            session.stack.callback(client.shutdown)
        counter = _Counter()
        sink.on_message_received = counter.add
        sink.connect()
        filt.connect()
        filt.send_message_to_output(package.Message(PAYLOAD), "out1")  # the route works
        counter.wait(1)

        def run(work: int) -> int:
            start = counter.count
            for _ in range(work):
                filt.send_message_to_output(package.Message(PAYLOAD), "out1")
            counter.wait(start + work)
            return work

        return run

    return [Contestant("iotdev sync", contestant("iotdev", iotdev), ours=True),
            Contestant("azure-iot-device sync", contestant("azure", azure))]


register(Figure(
    name="module-outputs",
    title="Edge module outputs routed to another module's input, end to end (sync clients)",
    unit="msg/s", setup=_setup, work=2000, quick_work=100, kind="rate", rounds=5,
    chart="throughput", description=__doc__ or ""))
