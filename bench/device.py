"""Figures of the IoT Hub device client: iotdev's ``IoTHubDeviceClient`` against
azure-iot-device 2.14 (and, for C2D latency, a plain paho-mqtt 1.6 subscriber).

azure-iot-device always dials port 8883 of the hostname, so these figures run
their own mosquitto on a loopback address of their own, ``127.0.0.149:8883``
(MQTT over TLS, a server certificate for that IP from a CA made at run time),
plus a plain MQTT listener on a free port of the same address for the
"service side" (a paho-mqtt client in this process).  mosquitto allows
anonymous clients, so the SAS token both device clients send as their password
is not checked; both use ``create_from_symmetric_key(key, "127.0.0.149",
device_id, server_verification_cert=<the CA PEM>)`` and keep their connection
across rounds.  The broker logs only errors, warnings and notices and sets
``TCP_NODELAY``.

* ``device-send-sync``: ``send_message(Message(<200 bytes>))``, one at a time
  (each call returns on the PUBACK): ``iotdev.IoTHubDeviceClient`` against
  ``azure.iot.device.IoTHubDeviceClient``.  A new ``Message`` per send, on both
  sides.
* ``device-send-asyncio``: the same through the asyncio clients, 1,000
  ``send_message`` coroutines at a time awaited with ``asyncio.gather``; each
  client on its own event loop, kept across rounds.
* ``c2d-latency``: a service-side paho client publishes a 200-byte message at
  QoS 1 to ``devices/{id}/messages/devicebound/<property bag>``; the sample is
  the median, over the run's messages (sent one at a time), of the time from
  just before that ``publish`` call to the start of the device's
  ``on_message_received`` handler (paho: ``on_message``).  The p99 over every
  timed message goes into a note.
* ``import``: ``import iotdev`` against ``import azure.iot.device`` in a fresh
  ``python -c`` (timed with ``time.perf_counter`` inside the child); the sample is
  the median of several children; the module count (``len(sys.modules)``) goes
  into a note.
* ``rss-threads``: a fresh process imports the client, creates one sync client,
  connects it and, 0.5 s later, reads ``VmRSS`` from ``/proc/self/status`` (the
  sample, MB) and ``threading.active_count()`` (a note).
"""

from __future__ import annotations

import ast
import asyncio
import atexit
import base64
import errno
import os
import pwd
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from .harness import Contestant, Figure, Session, Skip, register

ADDRESS = "127.0.0.149"
PORT = 8883
PAYLOAD = b"x" * 200
KEY = base64.b64encode(b"iotdev bench symmetric key 32 by").decode("ascii")
CONCURRENCY = 1000  # device-send-asyncio: sends awaited together
WAIT = 10.0  # seconds any single wait allows (a delivery, a connect, a shutdown)
REPO = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- prerequisites


def _require_azure(aio: bool = False) -> Any:
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


def _require_paho() -> Any:
    try:
        import paho.mqtt.client as mqtt  # type: ignore[import-untyped]
    except ImportError as exc:
        raise Skip(f"paho-mqtt is not installed ({exc})") from exc
    return mqtt


def _check_bindable() -> None:
    """Skip unless ``ADDRESS:PORT`` can be listened on by us."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((ADDRESS, PORT))
        except PermissionError as exc:
            raise Skip(f"binding {ADDRESS}:{PORT} is not permitted for uid {os.geteuid()} "
                       f"(run as root): {exc}") from exc
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise Skip(f"{ADDRESS}:{PORT} is busy (another broker or hub listens "
                           "there); azure-iot-device can only dial port 8883") from exc
            if exc.errno == errno.EADDRNOTAVAIL:
                raise Skip(f"{ADDRESS} is not a local address here (Linux routes all of "
                           "127.0.0.0/8 to lo; elsewhere add a loopback alias)") from exc
            raise Skip(f"cannot bind {ADDRESS}:{PORT}: {exc}") from exc


# --------------------------------------------------------------------------- the broker


class _HubBroker:
    """One mosquitto for every device figure of a run: TLS on ``ADDRESS:8883``
    (what azure-iot-device dials) and plain MQTT on a free port (the service)."""

    instance: ClassVar[_HubBroker | None] = None

    def __init__(self, program: str, directory: Path) -> None:
        from tests._broker import CertAuthority, free_ports

        self.program = program
        self.directory = directory
        ca = CertAuthority(directory / "ca")
        self.ca_file: Path = ca.ca_cert
        self.ca_pem: str = ca.ca_cert_pem
        server = ca.issue_server_cert(ADDRESS, dns_names=(), ips=(ADDRESS,), file_stem="hub")
        self.tcp_port: int = free_ports(1, ADDRESS)[0]
        self.log_path = directory / "mosquitto.log"
        self.output_path = directory / "mosquitto.out"
        self.config_path = directory / "mosquitto.conf"
        # Run as root, mosquitto would switch to user "mosquitto", which could
        # not read our keys in a 0700 temp dir: stay who we are.
        user = pwd.getpwuid(os.getuid()).pw_name
        self.config_path.write_text(
            "# generated by bench/device.py\n"
            f"user {user}\n"
            "per_listener_settings false\n"
            "allow_anonymous true\n"
            "persistence false\n"
            f"log_dest file {self.log_path}\n"
            "log_type error\nlog_type warning\nlog_type notice\n"
            "set_tcp_nodelay true\n"
            f"listener {PORT} {ADDRESS}\n"
            "protocol mqtt\n"
            f"cafile {ca.ca_cert}\ncertfile {server.cert}\nkeyfile {server.key}\n"
            "\n"
            f"listener {self.tcp_port} {ADDRESS}\n"
            "protocol mqtt\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    @classmethod
    def get(cls) -> _HubBroker:
        if cls.instance is None:
            try:
                from tests._broker import find_program
            except ImportError as exc:  # pragma: no cover - run from the repo root
                raise Skip(f"run from the repository root ({exc})") from exc
            program = find_program("mosquitto")
            if program is None:
                raise Skip("mosquitto is not installed (apt-get install mosquitto)")
            _check_bindable()
            directory = Path(tempfile.mkdtemp(prefix="iotdev-bench-hub-"))
            atexit.register(shutil.rmtree, directory, True)  # runs after broker.stop
            broker = cls(program, directory)
            broker.start()
            atexit.register(broker.stop)
            cls.instance = broker
        return cls.instance

    def _log(self) -> str:
        parts = []
        for path in (self.log_path, self.output_path):
            try:
                parts.append(path.read_text(errors="replace").strip())
            except FileNotFoundError:
                pass
        return "\n".join(p for p in parts if p)[-2000:]

    def start(self) -> None:
        with self.output_path.open("ab") as out:
            self.process = subprocess.Popen(
                [self.program, "-c", str(self.config_path)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + WAIT
        for port in (PORT, self.tcp_port):
            while True:
                if self.process.poll() is not None:
                    log = self._log()
                    self.process = None
                    if "in use" in log:
                        raise Skip(f"{ADDRESS}:{port} is busy: {log.splitlines()[-1]}")
                    raise RuntimeError(f"mosquitto exited before listening on "
                                       f"{ADDRESS}:{port}:\n{log}")
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"mosquitto did not listen on {ADDRESS}:{port} within "
                                       f"{WAIT:g} s:\n{self._log()}")
                try:
                    socket.create_connection((ADDRESS, port), timeout=1).close()
                    break
                except OSError:
                    time.sleep(0.02)

    def stop(self) -> None:
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


# --------------------------------------------------------------------------- helpers


def _with_deadline(fn: Callable[[], Any], what: str, timeout: float = WAIT) -> Any:
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


class _Service:
    """The service side: a paho client on the broker's plain listener."""

    def __init__(self, session: Session, broker: _HubBroker, name: str) -> None:
        mqtt = _require_paho()
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


def _check_telemetry(session: Session, broker: _HubBroker, name: str,
                     senders: dict[str, Callable[[], None]]) -> None:
    """Before timing: one message of each contestant reaches the service, on its
    device's telemetry topic, with the same 200-byte body."""
    service = _Service(session, broker, name)
    service.subscribe("devices/+/messages/events/#")
    try:
        for count, (device_id, send) in enumerate(senders.items(), start=1):
            send()
            topic, body = service.wait_for(count)[-1]
            expected = f"devices/{device_id}/messages/events/"
            if not topic.startswith(expected) or body != PAYLOAD:
                raise RuntimeError(f"{device_id} sent {body[:20]!r}... ({len(body)} bytes) "
                                   f"on {topic!r}, expected {len(PAYLOAD)} bytes on "
                                   f"{expected!r}")
    finally:
        service.unsubscribe("devices/+/messages/events/#")


def _ours_sync(session: Session, broker: _HubBroker, device_id: str) -> Any:
    from iotdev import IoTHubDeviceClient

    client = IoTHubDeviceClient.create_from_symmetric_key(
        KEY, ADDRESS, device_id, server_verification_cert=broker.ca_pem, port=PORT)
    session.stack.callback(_with_deadline, client.shutdown, "iotdev shutdown")
    client.connect(timeout=WAIT)
    return client


def _azure_sync(session: Session, broker: _HubBroker, device_id: str) -> Any:
    cls = _require_azure()
    client = cls.create_from_symmetric_key(
        symmetric_key=KEY, hostname=ADDRESS, device_id=device_id,
        server_verification_cert=broker.ca_pem)
    session.stack.callback(_with_deadline, client.shutdown, "azure-iot-device shutdown")
    _with_deadline(client.connect, "azure-iot-device connect")
    return client


def _message_classes() -> tuple[Any, Any]:
    from iotdev import Message

    try:
        from azure.iot.device import Message as AzureMessage
    except ImportError as exc:
        raise Skip(f"azure-iot-device is not installed ({exc})") from exc
    return Message, AzureMessage


# --------------------------------------------------------------------------- device-send-sync


def _sender(client: Any, message_cls: Any) -> Callable[[int], int]:
    def run(work: int) -> int:
        send, make = client.send_message, message_cls
        for _ in range(work):
            send(make(PAYLOAD))
        return work

    return run


def _setup_send_sync(session: Session) -> list[Contestant]:
    _require_azure()
    broker = _HubBroker.get()
    message, azure_message = _message_classes()
    ours = _ours_sync(session, broker, "bench-send-ours")
    azure = _azure_sync(session, broker, "bench-send-azure")
    _check_telemetry(session, broker, "send-sync", {
        "bench-send-ours": lambda: ours.send_message(message(PAYLOAD)),
        "bench-send-azure": lambda: azure.send_message(azure_message(PAYLOAD)),
    })
    return [
        Contestant("iotdev sync", _sender(ours, message), ours=True),
        Contestant("azure-iot-device sync", _sender(azure, azure_message)),
    ]


# --------------------------------------------------------------------------- device-send-asyncio


class _LoopClient:
    """An asyncio device client on an event loop of its own, kept across rounds."""

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

    def send(self, message: Any) -> None:
        self.loop.run_until_complete(asyncio.wait_for(self.client.send_message(message), WAIT))

    def runner(self, message_cls: Any) -> Callable[[int], int]:
        client, loop = self.client, self.loop

        async def burst(count: int) -> None:
            send, make = client.send_message, message_cls
            await asyncio.gather(*(send(make(PAYLOAD)) for _ in range(count)))

        def run(work: int) -> int:
            done = 0
            while done < work:
                count = min(CONCURRENCY, work - done)
                loop.run_until_complete(burst(count))
                done += count
            return work

        return run


def _setup_send_asyncio(session: Session) -> list[Contestant]:
    azure_cls = _require_azure(aio=True)
    from iotdev.aio import IoTHubDeviceClient

    broker = _HubBroker.get()
    message, azure_message = _message_classes()
    ours = _LoopClient(session, lambda: IoTHubDeviceClient.create_from_symmetric_key(
        KEY, ADDRESS, "bench-aio-ours", server_verification_cert=broker.ca_pem, port=PORT),
        "iotdev asyncio")
    azure = _LoopClient(session, lambda: azure_cls.create_from_symmetric_key(
        symmetric_key=KEY, hostname=ADDRESS, device_id="bench-aio-azure",
        server_verification_cert=broker.ca_pem), "azure-iot-device asyncio")
    _check_telemetry(session, broker, "send-asyncio", {
        "bench-aio-ours": lambda: ours.send(message(PAYLOAD)),
        "bench-aio-azure": lambda: azure.send(azure_message(PAYLOAD)),
    })
    return [
        Contestant("iotdev asyncio", ours.runner(message), ours=True),
        Contestant("azure-iot-device asyncio", azure.runner(azure_message)),
    ]


# --------------------------------------------------------------------------- c2d-latency


def _c2d_topic(device_id: str, seq: int) -> str:
    """A C2D delivery topic as IoT Hub sends it (message id, ``$.to``, ack mode)."""
    return (f"devices/{device_id}/messages/devicebound/%24.mid={seq}"
            f"&%24.to=%2Fdevices%2F{device_id}%2Fmessages%2FdeviceBound&iothub-ack=none")


class _C2DProbe:
    """Times C2D deliveries to one receiver: the service publishes message
    ``seq`` (in the first 8 bytes of the body), the receiver's handler stamps it."""

    def __init__(self, service: _Service, device_id: str, body: Callable[[Any], bytes]) -> None:
        self.service = service
        self.device_id = device_id
        self.body = body
        self.expected = -1
        self.arrived = 0.0
        self.strays = 0
        self.event = threading.Event()
        self.seq = 0
        self.timed: list[float] = []  # seconds, every run after the first (the warm-up)
        self.runs = 0

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

    def run(self, work: int) -> float:
        samples = []
        for _ in range(work):
            latency = self.one()
            if latency is None:
                raise RuntimeError(f"C2D message {self.seq} did not reach {self.device_id} "
                                   f"within {WAIT:g} s")
            samples.append(latency)
        self.runs += 1
        if self.runs > 1:
            self.timed.extend(samples)
        return statistics.median(samples) * 1000.0


def _p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def _setup_c2d(session: Session) -> list[Contestant]:
    _require_azure()
    mqtt = _require_paho()
    broker = _HubBroker.get()
    service = _Service(session, broker, "c2d")

    ours = _ours_sync(session, broker, "bench-c2d-ours")
    ours_probe = _C2DProbe(service, "bench-c2d-ours", lambda m: bytes(m.data))
    ours.on_message_received = ours_probe.handler

    azure = _azure_sync(session, broker, "bench-c2d-azure")
    azure_probe = _C2DProbe(service, "bench-c2d-azure", lambda m: bytes(m.data))
    _with_deadline(lambda: setattr(azure, "on_message_received", azure_probe.handler),
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

    probes = {"iotdev sync": ours_probe, "azure-iot-device sync": azure_probe,
              "paho-mqtt subscriber": paho_probe}
    for probe in probes.values():
        probe.prime()

    def notes() -> None:
        parts = [f"{name} {_p99(p.timed) * 1000:.3f} ms" for name, p in probes.items()
                 if p.timed]
        if parts:
            count = len(next(iter(probes.values())).timed)
            session.note(f"p99 over all {count:,} timed messages of each: " + ", ".join(parts))
        strays = {name: p.strays for name, p in probes.items() if p.strays}
        if strays:
            session.note(f"deliveries that were not the awaited message: {strays}")

    session.stack.callback(notes)  # runs before the clients shut down
    return [Contestant(name, probe.run, ours=name == "iotdev sync")
            for name, probe in probes.items()]


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
    _require_azure()
    modules = {"iotdev": "iotdev", "azure-iot-device": "azure.iot.device"}
    _bytecode_note(session)
    last: dict[str, tuple[float, int, int, list[str]]] = {}

    def runner(name: str) -> Callable[[int], float]:
        def run(work: int) -> float:
            times = []
            for _ in range(work):
                last[name] = _import_once(modules[name])
                times.append(last[name][0])
            return statistics.median(times) * 1000.0

        return run

    def notes() -> None:
        if len(last) == len(modules):
            counts = ", ".join(
                f"import {modules[n]}: {after} modules ({after - before:+d} over the "
                f"interpreter's {before})" for n, (_, before, after, _h) in last.items())
            ours, azure = last["iotdev"], last["azure-iot-device"]
            ratio = (ours[2] - ours[1]) / (azure[2] - azure[1])
            session.note(f"len(sys.modules) after {counts}; modules added, ours / azure: "
                         f"{ratio:.2f}")
            for name, (*_, heavy) in last.items():
                session.note(f"after import {modules[name]}, loaded: {', '.join(heavy)}")

    session.stack.callback(notes)
    return [Contestant("iotdev", runner("iotdev"), ours=True),
            Contestant("azure-iot-device", runner("azure-iot-device"))]


# --------------------------------------------------------------------------- rss-threads


_RSS_SCRIPT = """\
import sys, threading, time, warnings
warnings.filterwarnings("ignore", category=DeprecationWarning)
kind, host, port, ca_file, key, device_id, settle = sys.argv[1:]
ca = open(ca_file).read()
if kind == "iotdev":
    from iotdev import IoTHubDeviceClient
    client = IoTHubDeviceClient.create_from_symmetric_key(
        key, host, device_id, server_verification_cert=ca, port=int(port))
else:
    from azure.iot.device import IoTHubDeviceClient
    client = IoTHubDeviceClient.create_from_symmetric_key(
        symmetric_key=key, hostname=host, device_id=device_id, server_verification_cert=ca)
client.connect()
time.sleep(float(settle))
with open("/proc/self/status") as status:
    rss_kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
def describe(t):
    target = getattr(t, "_target", None) or getattr(t, "function", None)
    what = getattr(target, "__qualname__", None) or type(t).__name__
    return f"{t.name} [{what}]" if t is not threading.main_thread() else t.name
names = sorted(describe(t) for t in threading.enumerate())
print(repr((rss_kb, threading.active_count(), names, client.connected)), flush=True)
client.shutdown()
"""


def _rss_once(broker: _HubBroker, kind: str, run_no: int) -> tuple[float, int, list[str]]:
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


def _setup_rss(session: Session) -> list[Contestant]:
    if not Path("/proc/self/status").exists():
        raise Skip("no /proc/self/status (Linux only)")
    _require_azure()
    broker = _HubBroker.get()
    _bytecode_note(session)
    last: dict[str, tuple[float, int, list[str]]] = {}
    runs = {"iotdev": 0, "azure": 0}

    def runner(kind: str) -> Callable[[int], float]:
        def run(work: int) -> float:
            values = []
            for _ in range(work):
                runs[kind] += 1
                last[kind] = _rss_once(broker, kind, runs[kind])
                values.append(last[kind][0])
            return statistics.median(values)

        return run

    def notes() -> None:
        for kind, (_rss, threads, names) in last.items():
            session.note(f"{kind}: threading.active_count() = {threads} after connect "
                         f"({threads - 1} beyond the main thread): {', '.join(names)}")

    session.stack.callback(notes)
    return [Contestant("iotdev sync", runner("iotdev"), ours=True),
            Contestant("azure-iot-device sync", runner("azure"))]


# --------------------------------------------------------------------------- registry


register(Figure(
    name="device-send-sync",
    title="IoTHubDeviceClient.send_message of a 200-byte Message, one at a time, sync",
    unit="msgs/s", setup=_setup_send_sync, work=3000, quick_work=200,
    description=__doc__ or ""))
register(Figure(
    name="device-send-asyncio",
    title="IoTHubDeviceClient.send_message, 1,000 concurrent awaits (asyncio.gather)",
    unit="msgs/s", setup=_setup_send_asyncio, work=10_000, quick_work=1000,
    description=__doc__ or ""))
register(Figure(
    name="c2d-latency",
    title="C2D latency: service PUBLISH (QoS 1) to the device's on_message_received handler",
    unit="ms", setup=_setup_c2d, work=1000, quick_work=100, kind="value",
    higher_is_better=False, description=__doc__ or ""))
register(Figure(
    name="import",
    title="import time of the package in a fresh interpreter (median of several)",
    unit="ms", setup=_setup_import, work=5, quick_work=2, kind="value",
    higher_is_better=False, description=__doc__ or ""))
register(Figure(
    name="rss-threads",
    title="resident set size of a fresh process after one sync client connected",
    unit="MB", setup=_setup_rss, work=2, quick_work=1, kind="value",
    higher_is_better=False, description=__doc__ or ""))
