"""Figures of the IoT Hub device client that are not throughput (those are in
``bench/publish.py``): C2D latency, import cost, memory and threads, against
azure-iot-device 2.14 (and, for C2D latency, a plain paho-mqtt 1.6
subscriber), plus the helpers the publish figures share.

The clients connect to the benchmark's mosquitto (``bench/_broker.py``:
``127.0.0.149:8883``, MQTT over TLS with a CA made at run time, because
azure-iot-device always dials port 8883 of its hostname; a plain listener on a
free port for the "service side", a paho-mqtt client in this process).  Both
device clients are made with ``create_from_symmetric_key(key, "127.0.0.149",
device_id, server_verification_cert=<the CA PEM>)``; mosquitto allows anonymous
clients, so the SAS token in the password is not checked.

* ``c2d-latency``: the service publishes a 200-byte message at QoS 1 to
  ``devices/{id}/messages/devicebound/<property bag as IoT Hub sends it>``; the
  latency of one message is the time from just before that ``publish`` call to
  the start of the device's ``on_message_received`` handler (paho:
  ``on_message``); messages go one at a time.  The sample is the median over
  the run's messages; the ``p99`` metric is the 99th percentile over the same
  run.  Ours are the sync ``IoTHubDeviceClient``, whose handlers run on its
  handler thread (never on its I/O thread), and the asyncio one, whose
  handlers run on its event loop (in a thread of its own, as an application's
  loop would be: the probe's event crosses threads as paho's does); paho-mqtt and azure-iot-device's
  paho underneath call ``on_message`` on their network thread (azure then hands
  the message to its own callback thread).
* ``import``: ``import iotdev`` (which loads the sync device client) and
  ``import iotdev_mqtt`` (the codec and engines alone) against ``import
  azure.iot.device`` and ``import paho.mqtt.client`` in a fresh ``python -c``
  (timed with ``time.perf_counter`` inside the child); the sample is the median
  of several children; the ``modules`` metric is how many modules the import
  added to ``sys.modules``.
* ``rss-threads``: a fresh process imports the client, creates one sync client,
  connects it and, 0.5 s later, reads ``VmRSS`` from ``/proc/self/status`` (the
  sample, MB) and ``threading.active_count()`` (the ``threads`` metric).
  paho-mqtt's client connects over TLS with the same CA (``tls_set``) and runs
  its network thread (``loop_start``); "connected" is its ``on_connect``.  The
  ``above_floor`` metric subtracts the RSS of an interpreter that only loaded
  OpenSSL (``import hashlib, ssl``: about 17 MB, paid by any Python client over
  TLS), leaving what each package itself adds.
"""

from __future__ import annotations

import ast
import asyncio
import atexit
import base64
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._broker import ADDRESS, TLS_PORT, Broker
from .harness import Contestant, Figure, Metric, Session, Skip, Target, Value, register

__all__ = [
    "KEY",
    "PAYLOAD",
    "WAIT",
    "LoopClient",
    "Service",
    "azure_sync",
    "message_classes",
    "ours_sync",
    "require_azure",
    "require_paho",
    "with_deadline",
]

PORT = TLS_PORT
PAYLOAD = b"x" * 200
KEY = base64.b64encode(b"iotdev bench symmetric key 32 by").decode("ascii")
WAIT = 10.0  # seconds any single wait allows (a delivery, a connect, a shutdown)
REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- prerequisites


def require_azure(aio: bool = False) -> Any:
    """The ``IoTHubDeviceClient`` class of azure-iot-device (sync or aio), or Skip."""
    warnings.filterwarnings("ignore", message="ssl.PROTOCOL_TLSv1_2 is deprecated",
                            category=DeprecationWarning)
    # azure-iot-device 2.14 ships py.typed: no ``type: ignore`` needed here.
    try:
        import azure.iot.device
        import azure.iot.device.aio
    except ImportError as exc:
        raise Skip(f"azure-iot-device is not installed ({exc})") from exc
    if aio:
        return azure.iot.device.aio.IoTHubDeviceClient
    return azure.iot.device.IoTHubDeviceClient


def require_paho() -> Any:
    try:
        import paho.mqtt.client as mqtt  # type: ignore[import-untyped]
    except ImportError as exc:
        raise Skip(f"paho-mqtt is not installed ({exc})") from exc
    return mqtt


# --------------------------------------------------------------------------- helpers


def with_deadline(fn: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
    """``fn()`` on a daemon thread; ``TimeoutError`` if it has not returned in time
    (so that a client that hangs in connect or shutdown cannot hang the run)."""
    result: list[Any] = []
    error: list[BaseException] = []
    done = threading.Event()

    def target() -> None:
        try:
            result.append(fn())
        except BaseException as exc:
            error.append(exc)
        finally:
            done.set()

    threading.Thread(target=target, name=f"bench {what}", daemon=True).start()
    if not done.wait(timeout):
        raise TimeoutError(f"{what} did not return within {timeout:g} s")
    if error:
        raise error[0]
    return result[0]


class Service:
    """The service side: a paho client on the broker's plain listener."""

    def __init__(self, session: Session, broker: Broker, name: str) -> None:
        mqtt = require_paho()
        self._lock = threading.Lock()
        self._received: list[tuple[str, bytes]] = []
        self._changed = threading.Condition(self._lock)
        self._subscribed = threading.Event()
        client = mqtt.Client(client_id=f"bench-service-{name}", clean_session=True)
        client.on_message = self._on_message
        client.on_subscribe = lambda *_args: self._subscribed.set()
        client.connect(ADDRESS, broker.tcp_port)
        client.loop_start()
        session.stack.callback(client.loop_stop)
        session.stack.callback(client.disconnect)
        self.client = client

    def _on_message(self, _client: Any, _userdata: Any, message: Any) -> None:
        with self._changed:
            self._received.append((message.topic, bytes(message.payload)))
            self._changed.notify_all()

    def subscribe(self, topic: str) -> None:
        self._subscribed.clear()
        self.client.subscribe(topic, 1)
        if not self._subscribed.wait(WAIT):
            raise RuntimeError(f"the service's SUBSCRIBE to {topic} was not acknowledged")

    def unsubscribe(self, topic: str) -> None:
        self.client.unsubscribe(topic)

    def wait_for(self, count: int) -> list[tuple[str, bytes]]:
        with self._changed:
            if not self._changed.wait_for(lambda: len(self._received) >= count, WAIT):
                raise RuntimeError(f"the service received {len(self._received)} of {count} "
                                   f"messages: {self._received!r}")
            return list(self._received)

    def publish(self, topic: str, payload: bytes) -> None:
        self.client.publish(topic, payload, 1)


def ours_sync(session: Session, broker: Broker, device_id: str, *,
              websockets: bool = False) -> Any:
    """iotdev's sync device client, connected (shut down with the figure)."""
    from iotdev import IoTHubDeviceClient

    client = IoTHubDeviceClient.create_from_symmetric_key(
        KEY, ADDRESS, device_id, server_verification_cert=broker.ca_pem, websockets=websockets)
    session.stack.callback(with_deadline, client.shutdown, "iotdev shutdown")
    client.connect(timeout=WAIT)
    return client


def azure_sync(session: Session, broker: Broker, device_id: str, *,
               websockets: bool = False) -> Any:
    """azure-iot-device's sync device client, connected (shut down with the figure)."""
    cls = require_azure()
    client = cls.create_from_symmetric_key(
        symmetric_key=KEY, hostname=ADDRESS, device_id=device_id,
        server_verification_cert=broker.ca_pem, websockets=websockets)
    session.stack.callback(with_deadline, client.shutdown, "azure-iot-device shutdown")
    with_deadline(client.connect, "azure-iot-device connect")
    return client


def message_classes() -> tuple[Any, Any]:
    """``Message`` of iotdev and of azure-iot-device."""
    from iotdev import Message

    try:
        from azure.iot.device import Message as AzureMessage
    except ImportError as exc:
        raise Skip(f"azure-iot-device is not installed ({exc})") from exc
    return Message, AzureMessage


class LoopClient:
    """An asyncio client on an event loop of its own, kept across rounds.

    ``make()`` builds the client (on the loop); ``connect()`` and, at the end
    of the figure, ``shutdown()`` are awaited with a deadline."""

    def __init__(self, session: Session, make: Callable[[], Any], what: str) -> None:
        self.loop = asyncio.new_event_loop()
        session.stack.callback(self.loop.close)
        self.what = what

        async def connect() -> Any:
            client = make()
            await asyncio.wait_for(client.connect(), WAIT)
            return client

        self.client: Any = None
        session.stack.callback(self._shutdown)
        self.client = self.loop.run_until_complete(connect())

    def _shutdown(self) -> None:
        if self.client is not None:
            self.loop.run_until_complete(asyncio.wait_for(self.client.shutdown(), WAIT))

    def call(self, fn: Callable[[Any], Any]) -> Any:
        """Await ``fn(client)`` on the client's loop, with a deadline."""
        async def call() -> Any:
            return await fn(self.client)

        return self.loop.run_until_complete(asyncio.wait_for(call(), WAIT))


# --------------------------------------------------------------------------- c2d-latency


def _c2d_topic(device_id: str, seq: int) -> str:
    """A C2D delivery topic as IoT Hub sends it (message id, ``$.to``, ack mode)."""
    return (f"devices/{device_id}/messages/devicebound/%24.mid={seq}"
            f"&%24.to=%2Fdevices%2F{device_id}%2Fmessages%2FdeviceBound&iothub-ack=none")


class _C2DProbe:
    """Times C2D deliveries to one receiver: the service publishes message
    ``seq`` (in the first 8 bytes of the body), the receiver's handler stamps it."""

    def __init__(self, service: Service, device_id: str, body: Callable[[Any], bytes]) -> None:
        self.service = service
        self.device_id = device_id
        self.body = body
        self.expected = -1
        self.arrived = 0.0
        self.strays = 0
        self.event = threading.Event()
        self.seq = 0

    def handler(self, *args: Any) -> None:
        now = time.perf_counter()
        data = self.body(args[-1])
        if len(data) == len(PAYLOAD) and data[:8].isdigit() and int(data[:8]) == self.expected:
            self.arrived = now
            self.event.set()
        else:
            self.strays += 1

    def one(self, timeout: float = WAIT) -> float | None:
        self.seq += 1
        seq = self.seq
        self.event.clear()
        self.expected = seq
        body = b"%08d" % seq + PAYLOAD[8:]
        start = time.perf_counter()
        self.service.publish(_c2d_topic(self.device_id, seq), body)
        if not self.event.wait(timeout):
            return None
        return self.arrived - start

    def prime(self) -> None:
        """Until one message arrives (the subscription may still be settling)."""
        for _ in range(5):
            if self.one(2.0) is not None:
                return
        raise RuntimeError(f"no C2D message reached {self.device_id}'s handler")

    def run(self, work: int) -> Value:
        samples = []
        for _ in range(work):
            latency = self.one()
            if latency is None:
                raise RuntimeError(f"C2D message {self.seq} did not reach {self.device_id} "
                                   f"within {WAIT:g} s")
            samples.append(latency)
        return Value(statistics.median(samples) * 1000.0, {"p99": _p99(samples) * 1000.0})


def _p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def _setup_c2d(session: Session) -> list[Contestant]:
    require_azure()
    mqtt = require_paho()
    broker = Broker.get()
    service = Service(session, broker, "c2d")

    ours = ours_sync(session, broker, "bench-c2d-ours")
    ours_probe = _C2DProbe(service, "bench-c2d-ours", lambda m: bytes(m.data))
    ours.on_message_received = ours_probe.handler

    azure = azure_sync(session, broker, "bench-c2d-azure")
    azure_probe = _C2DProbe(service, "bench-c2d-azure", lambda m: bytes(m.data))
    with_deadline(lambda: setattr(azure, "on_message_received", azure_probe.handler),
                  "azure-iot-device on_message_received (subscribe)")

    paho_probe = _C2DProbe(service, "bench-c2d-paho", lambda m: bytes(m.payload))
    paho = mqtt.Client(client_id="bench-c2d-paho", clean_session=True)
    paho.tls_set(ca_certs=str(broker.ca_file))
    paho.on_message = paho_probe.handler
    subscribed = threading.Event()
    paho.on_subscribe = lambda *_args: subscribed.set()
    paho.connect(ADDRESS, PORT)
    paho.loop_start()
    session.stack.callback(paho.loop_stop)
    session.stack.callback(paho.disconnect)
    paho.subscribe("devices/bench-c2d-paho/messages/devicebound/#", 1)
    if not subscribed.wait(WAIT):
        raise RuntimeError("paho's C2D SUBSCRIBE was not acknowledged")

    aio_probe = _C2DProbe(service, "bench-c2d-aio", lambda m: bytes(m.data))
    _aio_receiver(session, broker, "bench-c2d-aio", aio_probe.handler)

    probes = {"iotdev sync": ours_probe, "iotdev asyncio": aio_probe,
              "paho-mqtt subscriber": paho_probe, "azure-iot-device sync": azure_probe}
    for probe in probes.values():
        probe.prime()

    def notes() -> None:
        strays = {name: p.strays for name, p in probes.items() if p.strays}
        if strays:
            session.note(f"deliveries that were not the awaited message: {strays}")

    session.stack.callback(notes)  # runs before the clients shut down
    return [Contestant(name, probe.run, ours=name.startswith("iotdev"))
            for name, probe in probes.items()]


def _aio_receiver(session: Session, broker: Broker, device_id: str,
                  handler: Callable[[Any], None]) -> None:
    """iotdev's asyncio device client on a loop running in a thread of its own
    (as an application's loop runs), ``handler`` called by its
    ``on_message_received``: an ``async def`` handler, as asyncio code writes
    it (a plain function would run on the client's handler thread, as in v2)."""
    from iotdev.aio import IoTHubDeviceClient

    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="bench-c2d-aio", daemon=True)
    thread.start()

    async def connect() -> Any:
        client = IoTHubDeviceClient.create_from_symmetric_key(
            KEY, ADDRESS, device_id, server_verification_cert=broker.ca_pem)
        await asyncio.wait_for(client.connect(), WAIT)

        async def on_message(message: Any) -> None:
            handler(message)

        client.on_message_received = on_message
        return client

    client = asyncio.run_coroutine_threadsafe(connect(), loop).result(WAIT + 5)

    def stop() -> None:
        try:
            asyncio.run_coroutine_threadsafe(
                asyncio.wait_for(client.shutdown(), WAIT), loop).result(WAIT + 5)
        finally:
            loop.call_soon_threadsafe(loop.stop)
            thread.join(WAIT)
            loop.close()

    session.stack.callback(stop)

# --------------------------------------------------------------------------- import


_IMPORT_SCRIPT = """\
import sys, time
before = len(sys.modules)
start = time.perf_counter()
import {module}
elapsed = time.perf_counter() - start
after = len(sys.modules)
heavy = sorted(m for m in ("asyncio", "cryptography", "ssl", "json", "uuid", "h11",
                           "wsproto", "paho", "requests", "urllib3", "janus", "socks",
                           "concurrent.futures", "logging", "http.client", "email")
               if m in sys.modules)
print(repr((elapsed, before, after, heavy)))
"""


_PYCACHE: list[str] = []


def _child_env() -> dict[str, str]:
    """The environment of the ``import`` and ``rss-threads`` children.

    Both packages must load from cached bytecode, as after a ``pip install``:
    with ``PYTHONDONTWRITEBYTECODE`` set (as it may be in a development shell)
    iotdev, which runs from its source tree, would be compiled in every child
    while azure-iot-device uses the ``.pyc`` files pip wrote.  So the children
    may write bytecode, all of it (both packages and the standard library) into
    one private ``PYTHONPYCACHEPREFIX``, filled by the warm-up run; the
    repository gets no ``__pycache__`` directories.
    """
    if not _PYCACHE:
        _PYCACHE.append(tempfile.mkdtemp(prefix="iotdev-bench-pycache-"))
        atexit.register(shutil.rmtree, _PYCACHE[0], True)
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = _PYCACHE[0]
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _bytecode_note(session: Session) -> None:
    if os.environ.get("PYTHONDONTWRITEBYTECODE"):
        session.note("PYTHONDONTWRITEBYTECODE is set here; the children ran without it, with "
                     "a private PYTHONPYCACHEPREFIX warmed up by the first run, so that both "
                     "packages load from cached bytecode")


def _import_once(module: str) -> tuple[float, int, int, list[str]]:
    done = subprocess.run([sys.executable, "-c", _IMPORT_SCRIPT.format(module=module)],
                          cwd=REPO, env=_child_env(), capture_output=True, text=True,
                          timeout=60)
    if done.returncode != 0:
        raise RuntimeError(f"import {module} failed in a child: {done.stderr.strip()[-500:]}")
    elapsed, before, after, heavy = ast.literal_eval(done.stdout.strip().splitlines()[-1])
    return float(elapsed), int(before), int(after), list(heavy)


def _setup_import(session: Session) -> list[Contestant]:
    require_azure()
    require_paho()
    modules = {"iotdev": "iotdev", "iotdev_mqtt": "iotdev_mqtt",
               "azure-iot-device": "azure.iot.device", "paho-mqtt": "paho.mqtt.client"}
    _bytecode_note(session)
    last: dict[str, tuple[float, int, int, list[str]]] = {}

    def runner(name: str) -> Callable[[int], Value]:
        def run(work: int) -> Value:
            times = []
            for _ in range(work):
                last[name] = _import_once(modules[name])
                times.append(last[name][0])
            _, before, after, _heavy = last[name]
            return Value(statistics.median(times) * 1000.0, {"modules": after - before})

        return run

    def notes() -> None:
        if len(last) == len(modules):
            counts = ", ".join(
                f"import {modules[n]}: {after} modules ({after - before:+d} over the "
                f"interpreter's {before})" for n, (_, before, after, _h) in last.items())
            session.note(f"len(sys.modules) after {counts}")
            for name, (*_, heavy) in last.items():
                session.note(f"after import {modules[name]}, loaded: {', '.join(heavy)}")

    session.stack.callback(notes)
    return [Contestant("iotdev", runner("iotdev"), ours=True),
            Contestant("iotdev_mqtt", runner("iotdev_mqtt"), ours=True, versus=("paho-mqtt",)),
            Contestant("azure-iot-device", runner("azure-iot-device")),
            Contestant("paho-mqtt", runner("paho-mqtt"))]


# --------------------------------------------------------------------------- rss-threads


_RSS_SCRIPT = """\
import sys, threading, time, warnings
warnings.filterwarnings("ignore", category=DeprecationWarning)
kind, host, port, ca_file, key, device_id, settle = sys.argv[1:]
ca = open(ca_file).read()
if kind == "iotdev":
    from iotdev import IoTHubDeviceClient
    client = IoTHubDeviceClient.create_from_symmetric_key(
        key, host, device_id, server_verification_cert=ca)
elif kind == "paho":
    import paho.mqtt.client as mqtt
    client = mqtt.Client(client_id=device_id, protocol=mqtt.MQTTv311)
    client.tls_set(ca_certs=ca_file)
    up = threading.Event()
    client.on_connect = lambda *args: up.set()
else:
    from azure.iot.device import IoTHubDeviceClient
    client = IoTHubDeviceClient.create_from_symmetric_key(
        symmetric_key=key, hostname=host, device_id=device_id, server_verification_cert=ca)
if kind == "paho":
    client.connect(host, int(port))
    client.loop_start()
    connected = up.wait(10)
else:
    client.connect()
    connected = client.connected
time.sleep(float(settle))
with open("/proc/self/status") as status:
    rss_kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
def describe(t):
    target = getattr(t, "_target", None) or getattr(t, "function", None)
    what = getattr(target, "__qualname__", None) or type(t).__name__
    return f"{t.name} [{what}]" if t is not threading.main_thread() else t.name
names = sorted(describe(t) for t in threading.enumerate())
print(repr((rss_kb, threading.active_count(), names, connected)), flush=True)
if kind == "paho":
    client.disconnect()
    client.loop_stop()
else:
    client.shutdown()
"""


def _rss_once(broker: Broker, kind: str, run_no: int) -> tuple[float, int, list[str]]:
    args = [sys.executable, "-c", _RSS_SCRIPT, kind, ADDRESS, str(PORT), str(broker.ca_file),
            KEY, f"bench-rss-{kind}-{run_no}", "0.5"]
    done = subprocess.run(args, cwd=REPO, env=_child_env(), capture_output=True, text=True,
                          timeout=90)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"the {kind} RSS child exited with {done.returncode}: "
                           f"{done.stderr.strip()[-800:]}")
    rss_kb, threads, names, connected = ast.literal_eval(lines[-1])
    if not connected:
        raise RuntimeError(f"the {kind} RSS child's client was not connected")
    return rss_kb / 1024.0, int(threads), list(names)


_FLOOR_SCRIPT = """\
import hashlib, ssl
with open("/proc/self/status") as status:
    print(next(int(line.split()[1]) for line in status if line.startswith("VmRSS:")))
"""


def _floor_mb() -> float:
    """VmRSS of an interpreter that loaded OpenSSL (``hashlib``, ``ssl``) and
    nothing else: what every Python MQTT client over TLS pays (median of 3)."""
    values = []
    for _ in range(3):
        done = subprocess.run([sys.executable, "-c", _FLOOR_SCRIPT], cwd=REPO, env=_child_env(),
                              capture_output=True, text=True, timeout=60, check=True)
        values.append(int(done.stdout.strip()) / 1024.0)
    return statistics.median(values)


def _setup_rss(session: Session) -> list[Contestant]:
    if not Path("/proc/self/status").exists():
        raise Skip("no /proc/self/status (Linux only)")
    require_azure()
    require_paho()
    broker = Broker.get()
    _bytecode_note(session)
    floor = _floor_mb()
    session.note(f"floor: an interpreter with OpenSSL loaded (import hashlib, ssl) is "
                 f"{floor:.1f} MB; the above_floor metric is RSS minus that")
    last: dict[str, tuple[float, int, list[str]]] = {}
    runs = {"iotdev": 0, "azure": 0, "paho": 0}

    def runner(kind: str) -> Callable[[int], Value]:
        def run(work: int) -> Value:
            values, threads = [], []
            for _ in range(work):
                runs[kind] += 1
                last[kind] = _rss_once(broker, kind, runs[kind])
                values.append(last[kind][0])
                threads.append(last[kind][1])
            rss = statistics.median(values)
            return Value(rss, {"threads": statistics.median(threads),
                               "above_floor": max(0.0, rss - floor)})

        return run

    def notes() -> None:
        for kind, (_rss, threads, names) in last.items():
            session.note(f"{kind}: threading.active_count() = {threads} after connect "
                         f"({threads - 1} beyond the main thread): {', '.join(names)}")

    session.stack.callback(notes)
    return [Contestant("iotdev sync", runner("iotdev"), ours=True),
            Contestant("azure-iot-device sync", runner("azure")),
            Contestant("paho-mqtt (loop_start)", runner("paho"))]


# --------------------------------------------------------------------------- registry


register(Figure(
    name="c2d-latency",
    title="C2D latency: service PUBLISH (QoS 1) to the device's on_message_received handler",
    unit="ms", setup=_setup_c2d, work=1000, quick_work=50, kind="value",
    higher_is_better=False, metrics=(Metric("p99", "ms", title="p99"),),
    targets=(Target("C2D delivery median <= paho-mqtt's", "iotdev sync",
                    "paho-mqtt subscriber", at_least=1.0),
             Target("sync C2D delivery median within 1.2x paho-mqtt's", "iotdev sync",
                    "paho-mqtt subscriber", at_least=1 / 1.2),
             Target("asyncio C2D delivery median <= paho-mqtt's", "iotdev asyncio",
                    "paho-mqtt subscriber", at_least=1.0),
             Target("asyncio C2D delivery p99 <= paho-mqtt's", "iotdev asyncio",
                    "paho-mqtt subscriber", metric="p99", at_least=1.0)),
    chart="latency", description=__doc__ or ""))
register(Figure(
    name="import",
    title="import time of the package in a fresh interpreter (median of several)",
    unit="ms", setup=_setup_import, work=5, quick_work=1, kind="value", rounds=5,
    higher_is_better=False, metrics=(Metric("modules", "modules", title="modules added"),),
    targets=(Target("import time <= 0.5x azure-iot-device's", "iotdev", "azure-iot-device",
                    at_least=2.0),
             Target("import iotdev <= paho-mqtt's", "iotdev", "paho-mqtt", at_least=1.0),
             Target("import iotdev: modules added <= paho-mqtt's", "iotdev", "paho-mqtt",
                    metric="modules", at_least=1.0),
             Target("import iotdev_mqtt <= 1/3 of paho-mqtt's", "iotdev_mqtt", "paho-mqtt",
                    at_least=3.0)),
    description=__doc__ or ""))
register(Figure(
    name="rss-threads",
    title="resident set size of a fresh process after one sync client connected",
    unit="MB", setup=_setup_rss, work=1, quick_work=1, kind="value", rounds=5,
    higher_is_better=False, metrics=(
        Metric("threads", "threads", title="threads"),
        Metric("above_floor", "MB", title="MB above interpreter + OpenSSL")),
    targets=(Target("RSS after connect <= 0.6x azure-iot-device's", "iotdev sync",
                    "azure-iot-device sync", at_least=1 / 0.6),
             Target("RSS after connect <= paho-mqtt's", "iotdev sync",
                    "paho-mqtt (loop_start)", at_least=1.0)),
    description=__doc__ or ""))
