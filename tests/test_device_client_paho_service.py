"""The device client against a service side we did not write.

A real mosquitto (one per test, via ``mosquitto_factory``) plays the broker and
a paho-mqtt 1.6.1 client plays IoT Hub's service side on the same broker
(``HubService``): it reads telemetry on ``devices/{id}/messages/events/#`` and
decodes the property bag with the decoder below, written from the reference's
rules (sections 4-7 of ``iothub-device-protocol.md``) and sharing nothing with
``iotdev._hub_topics``; it answers twin GET and reported PATCH requests, invokes
direct methods, sends cloud-to-device messages and desired-property patches.
``iotdev.IoTHubDeviceClient`` and ``iotdev.aio.IoTHubDeviceClient`` connect
with a symmetric key (mosquitto lets anonymous clients in, so the SAS password
is sent but not checked) over TLS and over WebSocket.

What the broker saw is read from its own log (``log_type all``): the CONNECT's
client id, clean-session flag, keep-alive and user name; the QoS and RETAIN of
every PUBLISH; the device's PUBACK of cloud-to-device messages.

The fault tests restart the broker while a twin GET is pending (the service
leaves the first GET unanswered on purpose) and send telemetry during the
outage.  The device reaches the broker through ``Gate``, a TCP relay that can
hold new connections, so the service side is subscribed again before the
device is let back in: without it, the device's re-sent GET could reach the
restarted broker before anyone listens for it.

Every wait has a deadline; nothing sleeps to paper over a race.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import json
import os
import platform
import queue
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar
from urllib.parse import quote

import paho.mqtt.client as paho
import pytest

import iotdev
import iotdev.aio
from iotdev import Message, MethodRequest, MethodResponse
from iotdev._auth import build_username
from iotdev._compat import async_timeout
from tests._broker import Mosquitto, unique_name

TIMEOUT = 10.0
"""Seconds any single wait allows."""

QUIET = 1.0
"""Seconds to wait for something that must *not* arrive."""

T = TypeVar("T")

TRANSPORTS = ["tls", "ws"]

TWIN = {
    "desired": {"telemetrySendFrequency": "5m", "$version": 12},
    "reported": {"telemetrySendFrequency": "5m", "batteryLevel": 55, "$version": 123},
}
"""The twin document of reference 7.2, what the service answers a GET with."""

SECURITY_INTERFACE_ID = "urn:azureiot:Security:SecurityAgent:1"


# ------------------------------------------------------------------ the decoder


_ENCODED = re.compile(r"(?:[A-Za-z0-9._~-]|%[0-9A-F]{2})*")
"""What ``quote(value, safe="")`` can produce: unreserved characters and
upper-case percent escapes, nothing else (no ``$``, ``+``, space, ``/``)."""


def pct_decode(text: str) -> str:
    """Percent-decoding as ``unquote`` does it (UTF-8; ``+`` stays ``+``), written
    here so that a shared bug cannot hide one."""
    out = bytearray()
    i = 0
    while i < len(text):
        char = text[i]
        if char == "%" and re.fullmatch(r"[0-9A-Fa-f]{2}", text[i + 1:i + 3]):
            out.append(int(text[i + 1:i + 3], 16))
            i += 3
        else:
            out += char.encode("utf-8")
            i += 1
    return out.decode("utf-8")


def decode_bag(bag: str) -> list[tuple[str, str | None]]:
    """A property bag, in order: ``k=v`` pairs joined by ``&`` (reference 5,
    step 2; a bare ``k`` would be None, but a device always writes ``k=v``).
    Every key and value must be exactly what ``quote(..., safe="")`` writes."""
    if bag == "":
        return []
    pairs: list[tuple[str, str | None]] = []
    for item in bag.split("&"):
        key, sep, value = item.partition("=")
        assert sep, f"property {item!r} has no '=' (the device always writes k=v)"
        for part in (key, value):
            assert _ENCODED.fullmatch(part), (
                f"{part!r} in bag {bag!r} is not quote(..., safe='') output")
        pairs.append((pct_decode(key), pct_decode(value)))
    return pairs


D2C_SYSTEM_ORDER = ["$.on", "$.mid", "$.cid", "$.uid", "$.ct", "$.ce", "$.ifid", "$.exp"]
"""Reference 4.1: the system properties a device sends, in the order v2 sends them."""


def decode_telemetry(topic: str, device_id: str) -> tuple[dict[str, str], dict[str, str]]:
    """``devices/{id}/messages/events/{bag}`` -> (system, custom) properties.

    Also checks the bag's shape: system properties first, in reference order,
    then custom properties sorted by key; no key twice."""
    prefix = f"devices/{device_id}/messages/events/"
    assert topic.startswith(prefix), f"telemetry topic {topic!r} does not start with {prefix!r}"
    pairs = decode_bag(topic[len(prefix):])
    keys = [k for k, _ in pairs]
    assert len(set(keys)) == len(keys), f"a key appears twice in {topic!r}"
    system = [k for k in keys if k in D2C_SYSTEM_ORDER]
    custom = [k for k in keys if k not in D2C_SYSTEM_ORDER]
    assert keys == system + custom, f"system properties must come first: {keys}"
    assert system == sorted(system, key=D2C_SYSTEM_ORDER.index), f"system order: {system}"
    assert custom == sorted(custom), f"custom properties must be sorted by key: {custom}"
    values = {k: v for k, v in pairs}
    assert None not in values.values()
    return ({k: values[k] for k in system},  # type: ignore[misc]
            {k: values[k] for k in custom})  # type: ignore[misc]


def query_of(topic: str) -> dict[str, str]:
    """The ``?k=v&...`` part of a twin or method topic, values still encoded."""
    _, sep, query = topic.partition("?")
    assert sep, f"no query in {topic!r}"
    out: dict[str, str] = {}
    for item in query.split("&"):
        key, eq, value = item.partition("=")
        assert eq, f"query item {item!r} in {topic!r} has no '='"
        out[key] = value
    return out


_RID = r"[A-Za-z0-9._~%-]+"
TWIN_GET = re.compile(rf"\$iothub/twin/GET/\?\$rid=({_RID})")
TWIN_PATCH = re.compile(rf"\$iothub/twin/PATCH/properties/reported/\?\$rid=({_RID})")
METHOD_RESPONSE = re.compile(rf"\$iothub/methods/res/(\d+)/\?\$rid=({_RID})")


# ------------------------------------------------------------------ the service side


@dataclass(frozen=True)
class Received:
    topic: str
    payload: bytes
    qos: int
    retain: bool


def take(box: queue.Queue[T], what: str, timeout: float = TIMEOUT) -> T:
    try:
        return box.get(timeout=timeout)
    except queue.Empty:
        raise AssertionError(f"nothing ({what}) within {timeout}s") from None


async def atake(box: queue.Queue[T], what: str, timeout: float = TIMEOUT) -> T:
    """``take`` from a thread queue without blocking the event loop."""
    return await asyncio.to_thread(take, box, what, timeout)


async def aget(box: asyncio.Queue[T], what: str, timeout: float = TIMEOUT) -> T:
    try:
        return await asyncio.wait_for(box.get(), timeout)
    except TimeoutError:
        raise AssertionError(f"nothing ({what}) within {timeout}s") from None


class HubService:
    """IoT Hub's service side for one device, played by paho-mqtt on the plain
    TCP listener.  Twin GETs are answered with ``twin``, reported PATCHes with
    204 and a growing ``$version``; everything received is queued for the test.

    ``hold_next_get`` / ``hold_next_patch``: the next request's ``$rid`` is put
    in ``held``, and no request with a held ``$rid`` is answered (a repeat of
    it neither) until the test clears ``held``."""

    def __init__(self, broker: Mosquitto, device_id: str, twin: dict[str, Any] = TWIN) -> None:
        self.broker = broker
        self.device_id = device_id
        self.twin = twin
        self.hold_next_get = False
        self.hold_next_patch = False
        self.held: set[str] = set()
        self.reported_version = 0
        self.telemetry: queue.Queue[Received] = queue.Queue()
        self.twin_gets: queue.Queue[Received] = queue.Queue()
        self.twin_patches: queue.Queue[Received] = queue.Queue()
        self.method_responses: queue.Queue[Received] = queue.Queue()
        self.unexpected: list[Received] = []
        self._lock = threading.Lock()
        self.client: paho.Client | None = None

    def open(self) -> None:
        """Connect and subscribe; returns once the SUBACK granted QoS 1 to all."""
        client = paho.Client(client_id=unique_name("svc"), clean_session=True,
                             protocol=paho.MQTTv311)
        ready = threading.Event()
        problems: list[object] = []

        def on_connect(c: paho.Client, userdata: Any, flags: Any, rc: int) -> None:
            if rc != 0:
                problems.append(f"CONNACK {rc}")
                ready.set()
                return
            c.subscribe([(f"devices/{self.device_id}/messages/events/#", 1),
                         ("$iothub/twin/GET/#", 1),
                         ("$iothub/twin/PATCH/properties/reported/#", 1),
                         ("$iothub/methods/res/#", 1)])

        def on_subscribe(c: paho.Client, userdata: Any, mid: int, granted: Any) -> None:
            if list(granted) != [1, 1, 1, 1]:
                problems.append(f"granted {granted}")
            ready.set()

        client.on_connect = on_connect
        client.on_subscribe = on_subscribe
        client.on_message = self._on_message
        client.connect(self.broker.host, self.broker.tcp_port, keepalive=30)
        client.loop_start()
        if not ready.wait(TIMEOUT) or problems:
            client.loop_stop()
            raise AssertionError(f"service side not subscribed: {problems or 'no SUBACK'}")
        self.client = client

    def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            client.disconnect()
            client.loop_stop()

    def publish(self, topic: str, payload: bytes, qos: int = 1) -> None:
        """Publish and wait for the broker's PUBACK (QoS 1)."""
        assert self.client is not None
        info = self.client.publish(topic, payload, qos=qos)
        info.wait_for_publish(TIMEOUT)
        assert info.is_published(), f"the broker did not acknowledge {topic!r}"

    def _answer(self, rid: str, kind: str) -> bool:
        with self._lock:
            if getattr(self, f"hold_next_{kind}"):
                setattr(self, f"hold_next_{kind}", False)
                self.held.add(rid)
            return rid not in self.held

    def _on_message(self, client: paho.Client, userdata: Any, message: Any) -> None:
        got = Received(message.topic, bytes(message.payload), message.qos, bool(message.retain))
        topic = got.topic
        if topic.startswith(f"devices/{self.device_id}/messages/events/"):
            self.telemetry.put(got)
        elif topic.startswith("$iothub/twin/GET/"):
            self.twin_gets.put(got)
            match = TWIN_GET.fullmatch(topic)
            if match and self._answer(match.group(1), "get"):  # malformed: not answered
                client.publish(f"$iothub/twin/res/200/?$rid={match.group(1)}",
                               json.dumps(self.twin).encode(), qos=1)
        elif topic.startswith("$iothub/twin/PATCH/properties/reported/"):
            self.twin_patches.put(got)
            match = TWIN_PATCH.fullmatch(topic)
            with self._lock:
                self.reported_version += 1
                version = self.reported_version
            if match and self._answer(match.group(1), "patch"):
                client.publish(f"$iothub/twin/res/204/?$rid={match.group(1)}&$version={version}",
                               b"", qos=1)
        elif topic.startswith("$iothub/methods/res/"):
            self.method_responses.put(got)
        else:
            self.unexpected.append(got)


@pytest.fixture
def broker(mosquitto_factory: Callable[..., Mosquitto]) -> Mosquitto:
    """A broker of this test's own: ``$iothub/...`` topics are not per device on
    a plain broker, so tests must not share one."""
    return mosquitto_factory()


@pytest.fixture
def device_id() -> str:
    return unique_name("dev")


@pytest.fixture
def service(broker: Mosquitto, device_id: str) -> Iterator[HubService]:
    svc = HubService(broker, device_id)
    svc.open()
    try:
        yield svc
    finally:
        svc.close()
    assert svc.unexpected == []


KEY = base64.b64encode(os.urandom(32)).decode("ascii")


def client_kwargs(broker: Mosquitto, transport: str, port: int | None = None,
                  **extra: Any) -> dict[str, Any]:
    ws = transport == "ws"
    return {"server_verification_cert": broker.ca.ca_cert_pem, "websockets": ws,
            "port": port or (broker.ws_port if ws else broker.tls_port),
            "operation_timeout": 30.0, **extra}


def sync_client(broker: Mosquitto, device_id: str, transport: str = "tls",
                **extra: Any) -> iotdev.IoTHubDeviceClient:
    return iotdev.IoTHubDeviceClient.create_from_symmetric_key(
        KEY, hostname="localhost", device_id=device_id,
        **client_kwargs(broker, transport, **extra))


def aio_client(broker: Mosquitto, device_id: str, transport: str = "tls",
               **extra: Any) -> iotdev.aio.IoTHubDeviceClient:
    return iotdev.aio.IoTHubDeviceClient.create_from_symmetric_key(
        KEY, hostname="localhost", device_id=device_id,
        **client_kwargs(broker, transport, **extra))


def run(coro: Any) -> Any:
    async def bounded() -> Any:
        async with async_timeout(60):
            return await coro
    return asyncio.run(bounded())


# ------------------------------------------------------------------ the broker's log


class BrokerLog:
    """The broker's log from a point on: what mosquitto itself saw on the wire."""

    def __init__(self, broker: Mosquitto) -> None:
        self.path = broker.log_path
        self.start = self.path.stat().st_size if self.path.exists() else 0

    def text(self) -> str:
        with self.path.open("rb") as f:
            f.seek(self.start)
            return f.read().decode("utf-8", "replace")

    def wait_for(self, pattern: str, timeout: float = TIMEOUT) -> re.Match[str]:
        """The first match of ``pattern`` (multiline regex) in the log since
        ``start``.  The log is a file: it is read again every 10 ms until the
        line is there or the deadline passes."""
        compiled = re.compile(pattern, re.MULTILINE)
        deadline = time.monotonic() + timeout
        pause = threading.Event()
        while True:
            found = compiled.search(self.text())
            if found is not None:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"{pattern!r} not in the broker log within {timeout}s:\n"
                                     f"{self.text()[-3000:]}")
            pause.wait(0.01)

    async def await_for(self, pattern: str, timeout: float = TIMEOUT) -> re.Match[str]:
        return await asyncio.to_thread(self.wait_for, pattern, timeout)


def subscribed_pattern(device_id: str, topic_filter: str) -> str:
    """mosquitto's lines for one granted subscription, up to its SUBACK."""
    dev = re.escape(device_id)
    return (rf"^\S+ {dev} 1 {re.escape(topic_filter)}$(?:\n.*)*?"
            rf"\n\S+ Sending SUBACK to {dev}$")


def received_publish_pattern(device_id: str, topic: str, size: int) -> str:
    """The broker's line for a PUBLISH from the device: DUP 0, QoS 1, RETAIN 0."""
    return (rf"Received PUBLISH from {re.escape(device_id)} \(d0, q1, r0, m\d+, "
            rf"'{re.escape(topic)}', \.\.\. \({size} bytes\)\)")


# ------------------------------------------------------------------ a holdable relay


class Gate:
    """A TCP relay from a loopback port to a broker listener.  ``hold()`` makes
    new connections wait (accepted, nothing forwarded) until ``release()``."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self.listener.getsockname()[1]
        self._open = threading.Event()
        self._open.set()
        self._closed = False
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        threading.Thread(target=self._serve, name="gate", daemon=True).start()

    def hold(self) -> None:
        self._open.clear()

    def release(self) -> None:
        self._open.set()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self._track(conn)
            threading.Thread(target=self._relay, args=(conn,), daemon=True).start()

    def _relay(self, conn: socket.socket) -> None:
        self._open.wait()
        if self._closed:
            return
        try:
            up = socket.create_connection(self.upstream, timeout=TIMEOUT)
        except OSError:
            conn.close()
            return
        up.settimeout(None)
        self._track(up)
        threading.Thread(target=self._pump, args=(up, conn), daemon=True).start()
        self._pump(conn, up)

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self) -> None:
        self._closed = True
        self._open.set()
        try:
            self.listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


@pytest.fixture
def gate(broker: Mosquitto) -> Iterator[Gate]:
    relay = Gate(broker.host, broker.tls_port)
    try:
        yield relay
    finally:
        relay.close()


class Background:
    """A blocking call on a thread of its own, with its outcome."""

    def __init__(self, fn: Callable[[], Any]) -> None:
        self._fn = fn
        self.value: Any = None
        self.error: BaseException | None = None
        self._done = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        try:
            self.value = self._fn()
        except BaseException as exc:
            self.error = exc
        finally:
            self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float = TIMEOUT) -> Any:
        assert self._done.wait(timeout), f"the call did not return within {timeout}s"
        if self.error is not None:
            raise self.error
        return self.value


# ------------------------------------------------------------------ user name (1.3)


REF_AGENT = "azure-iot-device-iothub-py/2.14.0(3.11.4;Linux #1 SMP;x86_64)"
REF_AGENT_Q = ("azure-iot-device-iothub-py%2F2.14.0%283.11.4%3BLinux%20%231%20SMP"
               "%3Bx86_64%29")


@pytest.mark.parametrize(("client_id", "product_info", "expected"), [
    ("device1", "",
     f"myhub.azure-devices.net/device1/?api-version=2019-10-01&DeviceClientType={REF_AGENT_Q}"),
    ("device1", "my-product/1.0",
     f"myhub.azure-devices.net/device1/?api-version=2019-10-01&DeviceClientType={REF_AGENT_Q}"
     "my-product%2F1.0"),
    ("device1/filtermod", "",
     f"myhub.azure-devices.net/device1/filtermod/?api-version=2019-10-01&DeviceClientType="
     f"{REF_AGENT_Q}"),
    ("device1", "dtmi:com:example:Thermostat;1",
     f"myhub.azure-devices.net/device1/?api-version=2020-09-30&DeviceClientType={REF_AGENT_Q}"
     "&model-id=dtmi%3Acom%3Aexample%3AThermostat%3B1"),
], ids=["device", "product_info", "module", "pnp"])
def test_username_matches_the_reference_worked_examples(
    client_id: str, product_info: str, expected: str
) -> None:
    """Reference 1.3's four worked examples, byte for byte, with v2's user agent."""
    assert build_username("myhub.azure-devices.net", client_id, product_info=product_info,
                          user_agent=REF_AGENT) == expected


def _connect_line(log: BrokerLog, device_id: str) -> re.Match[str]:
    return log.wait_for(rf"New client connected from \S+ as {re.escape(device_id)} "
                        r"\(p(\d+), c(\d), k(\d+), u'([^']*)'\)\.")


def _check_connect(found: re.Match[str], device_id: str, product_info: str = "") -> None:
    """What mosquitto logged of the CONNECT: MQTT 3.1.1 (p2), clean session 0,
    keep-alive 60, and the user name of reference 1.3 with our own user agent
    (``name/version(python;system release;machine)``, any product name)."""
    protocol, clean, keep_alive, username = found.groups()
    assert (protocol, clean, keep_alive) == ("2", "0", "60"), found.group(0)
    pnp = product_info.startswith("dtmi")
    api = "2020-09-30" if pnp else "2019-10-01"
    head = f"localhost/{device_id}/?api-version={api}&DeviceClientType="
    assert username.startswith(head), username
    rest = username[len(head):]
    tail = "" if pnp or not product_info else quote(product_info, safe="")
    if pnp:
        tail_pair = "&model-id=" + quote(product_info, safe="")
        assert rest.endswith(tail_pair), username
        rest = rest[:-len(tail_pair)]
    assert rest.endswith(tail), username
    agent_q = rest[:len(rest) - len(tail)]
    agent = pct_decode(agent_q)
    assert quote(agent, safe="") == agent_q, f"user agent not quote()d: {agent_q!r}"
    inside = (f"{platform.python_version()};{platform.system()} {platform.version()};"
              f"{platform.machine()}")
    assert re.fullmatch(r"[A-Za-z0-9._-]+/\d[^()/]*", agent[:-len(inside) - 2]), agent
    assert agent.endswith(f"({inside})"), agent


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_connect_fields_on_the_wire_sync(broker: Mosquitto, device_id: str,
                                         transport: str) -> None:
    log = BrokerLog(broker)
    client = sync_client(broker, device_id, transport)
    try:
        client.connect(timeout=TIMEOUT)
        _check_connect(_connect_line(log, device_id), device_id)
    finally:
        client.shutdown()


@pytest.mark.parametrize("product_info", ["my-product/1.0 (x)", "dtmi:com:example:Thermostat;1"])
def test_connect_username_with_product_info_on_the_wire(broker: Mosquitto, device_id: str,
                                                        product_info: str) -> None:
    log = BrokerLog(broker)
    client = sync_client(broker, device_id, product_info=product_info)
    try:
        client.connect(timeout=TIMEOUT)
        _check_connect(_connect_line(log, device_id), device_id, product_info)
    finally:
        client.shutdown()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_connect_fields_on_the_wire_aio(broker: Mosquitto, device_id: str,
                                        transport: str) -> None:
    log = BrokerLog(broker)

    async def main() -> re.Match[str]:
        client = aio_client(broker, device_id, transport)
        try:
            await client.connect(timeout=TIMEOUT)
            return await asyncio.to_thread(_connect_line, log, device_id)
        finally:
            await client.shutdown()

    _check_connect(run(main()), device_id)


# ------------------------------------------------------------------ telemetry (4)


REF_BAG = ("%24.mid=msg%201&%24.cid=c%2F1&%24.ct=application%2Fjson&%24.ce=utf-8"
           "&%24.exp=2024-01-02T03%3A04%3A05%2B00%3A00&alpha=1&iothub-creation-time-utc="
           "2024-01-01T00%3A00%3A00Z&sp%20ace=x%26y%3Dz&zeta=a%2Bb")
"""Reference 4.1's worked example, verbatim."""


@dataclass
class TelemetryCase:
    message: Any
    bag: str
    body: bytes
    system: dict[str, str]
    custom: dict[str, str]


def telemetry_cases() -> list[TelemetryCase]:
    reference = Message(b'{"t": 21.5}', message_id="msg 1", content_encoding="utf-8",
                        content_type="application/json")
    reference.correlation_id = "c/1"
    reference.expiry_time_utc = datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
    reference.custom_properties = {"zeta": "a+b", "alpha": 1, "sp ace": "x&y=z",
                                   "iothub-creation-time-utc": "2024-01-01T00:00:00Z"}
    security = Message("héllo wörld")
    security.user_id = "u 1"
    security.set_as_security_message()
    security.custom_properties = {"k": "é/ü", "empty": ""}
    binary = Message(b"\x00\xff\x10")
    binary.custom_properties = {"n": 3}
    return [
        TelemetryCase(reference, REF_BAG, b'{"t": 21.5}',
                      {"$.mid": "msg 1", "$.cid": "c/1", "$.ct": "application/json",
                       "$.ce": "utf-8", "$.exp": "2024-01-02T03:04:05+00:00"},
                      {"alpha": "1", "iothub-creation-time-utc": "2024-01-01T00:00:00Z",
                       "sp ace": "x&y=z", "zeta": "a+b"}),
        TelemetryCase(security,
                      "%24.uid=u%201&%24.ifid=urn%3Aazureiot%3ASecurity%3ASecurityAgent%3A1"
                      "&empty=&k=%C3%A9%2F%C3%BC",
                      "héllo wörld".encode(),
                      {"$.uid": "u 1", "$.ifid": SECURITY_INTERFACE_ID},
                      {"empty": "", "k": "é/ü"}),
        TelemetryCase(binary, "n=3", b"\x00\xff\x10", {}, {"n": "3"}),
        TelemetryCase("plain text", "", b"plain text", {}, {}),  # not a Message: wrapped
    ]


def check_telemetry(service: HubService, log: BrokerLog, device_id: str,
                    cases: list[TelemetryCase]) -> None:
    for number, case in enumerate(cases):
        got = take(service.telemetry, f"telemetry message {number}")
        system, custom = decode_telemetry(got.topic, device_id)
        assert (system, custom) == (case.system, case.custom), f"message {number}"
        assert got.payload == case.body, f"message {number}"
        assert got.topic == f"devices/{device_id}/messages/events/{case.bag}"
        assert got.qos == 1
        log.wait_for(received_publish_pattern(device_id, got.topic, len(case.body)))
    with pytest.raises(queue.Empty):
        service.telemetry.get(timeout=0.05)


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_telemetry_properties_sync(broker: Mosquitto, service: HubService, device_id: str,
                                   transport: str) -> None:
    log = BrokerLog(broker)
    cases = telemetry_cases()
    client = sync_client(broker, device_id, transport)
    try:
        client.connect(timeout=TIMEOUT)
        for case in cases:
            client.send_message(case.message, timeout=TIMEOUT)
        check_telemetry(service, log, device_id, cases)
    finally:
        client.shutdown()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_telemetry_properties_aio(broker: Mosquitto, service: HubService, device_id: str,
                                  transport: str) -> None:
    log = BrokerLog(broker)
    cases = telemetry_cases()

    async def main() -> None:
        client = aio_client(broker, device_id, transport)
        try:
            await client.connect(timeout=TIMEOUT)
            for case in cases:
                await client.send_message(case.message, timeout=TIMEOUT)
        finally:
            await client.shutdown()

    run(main())
    check_telemetry(service, log, device_id, cases)


# ------------------------------------------------------------------ C2D (5)


C2D_BAG = ("%24.mid=123&%24.to=%2Fdevices%2Fdev1%2Fmessages%2FdeviceBound&%24.ct=text%2Fplain"
           "&iothub-ack=full&prop1&prop2=&prop3=a%20b%2Bc&%24.exp=2024-01-01T00%3A00%3A00Z"
           "&%24.cid=corr%2F9&%24.uid=user%201&%24.ce=utf-8&%24.cdid=svc")
"""Reference 5's example plus ``$.cid``, ``$.uid``, ``$.ce`` and ``$.cdid``; its
``prop3=a%20b+c`` is sent as ``a%20b%2Bc``: a PUBLISH topic cannot hold a raw
``+`` (MQTT-3.3.2-2; paho refuses it), so the hub must encode it."""

C2D_EXPECTED = {
    "message_id": "123", "content_type": "text/plain", "ack": "full",
    "expiry_time_utc": "2024-01-01T00:00:00Z", "correlation_id": "corr/9",
    "user_id": "user 1", "content_encoding": "utf-8", "input_name": None,
    "custom_properties": {"prop1": None, "prop2": "", "prop3": "a b+c", "$.cdid": "svc"},
}
C2D_EMPTY = {
    "message_id": None, "content_type": None, "ack": None, "expiry_time_utc": None,
    "correlation_id": None, "user_id": None, "content_encoding": None, "input_name": None,
    "custom_properties": {},
}


def c2d_fields(message: Message) -> dict[str, Any]:
    assert isinstance(message, Message), type(message)
    return {name: getattr(message, name) for name in C2D_EXPECTED}


def send_c2d(service: HubService, log: BrokerLog, device_id: str) -> None:
    """Two C2D messages (QoS 1); the broker must see the device's PUBACK for each."""
    for bag, body in ((C2D_BAG, b"\x01binary\xff"), ("", b"")):
        topic = f"devices/{device_id}/messages/devicebound/{bag}"
        service.publish(topic, body, qos=1)
        dev = re.escape(device_id)
        found = log.wait_for(rf"Sending PUBLISH to {dev} \(d0, q1, r0, m(\d+), "
                             rf"'{re.escape(topic)}', \.\.\. \({len(body)} bytes\)\)")
        log.wait_for(rf"Received PUBACK from {dev} \(Mid: {found.group(1)}, RC:0\)")


def check_c2d(first: Message, second: Message) -> None:
    assert c2d_fields(first) == C2D_EXPECTED
    assert first.data == b"\x01binary\xff"
    assert c2d_fields(second) == C2D_EMPTY
    assert second.data == b""


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_c2d_properties_sync(broker: Mosquitto, service: HubService, device_id: str,
                             transport: str) -> None:
    log = BrokerLog(broker)
    received: queue.Queue[Message] = queue.Queue()
    client = sync_client(broker, device_id, transport)
    try:
        client.connect(timeout=TIMEOUT)
        client.on_message_received = received.put  # subscribes before returning (v2)
        send_c2d(service, log, device_id)
        check_c2d(take(received, "first C2D message"), take(received, "second C2D message"))
    finally:
        client.shutdown()


async def _aio_subscribed(log: BrokerLog, device_id: str, *filters: str) -> None:
    """The asyncio client's handler setters subscribe in a task (see
    ``test_aio_handler_setter_subscribes_before_returning``): wait until the
    broker has granted the subscriptions."""
    for topic_filter in filters:
        await log.await_for(subscribed_pattern(device_id, topic_filter))


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_c2d_properties_aio(broker: Mosquitto, service: HubService, device_id: str,
                            transport: str) -> None:
    log = BrokerLog(broker)

    async def main() -> None:
        received: asyncio.Queue[Message] = asyncio.Queue()
        client = aio_client(broker, device_id, transport)
        try:
            await client.connect(timeout=TIMEOUT)
            client.on_message_received = received.put_nowait
            await _aio_subscribed(log, device_id, f"devices/{device_id}/messages/devicebound/#")
            await asyncio.to_thread(send_c2d, service, log, device_id)
            check_c2d(await aget(received, "first C2D message"),
                      await aget(received, "second C2D message"))
        finally:
            await client.shutdown()

    run(main())


# ------------------------------------------------------------------ direct methods (6)


METHOD_CALLS = [
    # (request topic, body, expected name, rid, payload, response status, payload, body)
    ("$iothub/methods/POST/reboot/?$rid=7", b'{"delay": 5}', "reboot", "7", {"delay": 5},
     200, {"ok": True}, b'{"ok": true}'),
    ("$iothub/methods/POST/get%20state/?$rid=abc-1", b"", "get state", "abc-1", None,
     404, None, b"null"),
]


def method_answer(request: MethodRequest) -> MethodResponse:
    for _, _, name, _, _, status, payload, _ in METHOD_CALLS:
        if request.name == name:
            return MethodResponse.create_from_method_request(request, status, payload)
    return MethodResponse.create_from_method_request(request, 500, {"unknown": request.name})


def invoke_methods(service: HubService) -> None:
    """Invoke each method and check the response topic and body byte for byte."""
    for topic, body, _, rid, _, status, _, response_body in METHOD_CALLS:
        service.publish(topic, body, qos=0)  # the hub sends requests with QoS 0
        got = take(service.method_responses, f"response to {topic}")
        assert METHOD_RESPONSE.fullmatch(got.topic), got.topic
        assert got.topic == f"$iothub/methods/res/{status}/?$rid={rid}"
        assert got.payload == response_body
        assert got.qos == 1


def check_requests(requests: list[MethodRequest]) -> None:
    assert [(r.name, r.request_id, r.payload) for r in requests] == [
        (name, rid, payload) for _, _, name, rid, payload, _, _, _ in METHOD_CALLS]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_method_round_trip_sync(broker: Mosquitto, service: HubService, device_id: str,
                                transport: str) -> None:
    requests: list[MethodRequest] = []
    client = sync_client(broker, device_id, transport)

    def on_method(request: MethodRequest) -> None:
        requests.append(request)
        client.send_method_response(method_answer(request), timeout=TIMEOUT)

    try:
        client.connect(timeout=TIMEOUT)
        client.on_method_request_received = on_method
        invoke_methods(service)
        check_requests(requests)
    finally:
        client.shutdown()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_method_round_trip_aio(broker: Mosquitto, service: HubService, device_id: str,
                               transport: str) -> None:
    log = BrokerLog(broker)

    async def main() -> None:
        requests: list[MethodRequest] = []
        client = aio_client(broker, device_id, transport)

        async def on_method(request: MethodRequest) -> None:
            requests.append(request)
            await client.send_method_response(method_answer(request), timeout=TIMEOUT)

        try:
            await client.connect(timeout=TIMEOUT)
            client.on_method_request_received = on_method
            await _aio_subscribed(log, device_id, "$iothub/methods/POST/#")
            await asyncio.to_thread(invoke_methods, service)
            check_requests(requests)
        finally:
            await client.shutdown()

    run(main())


def test_aio_handler_setter_subscribes_before_returning(
    broker: Mosquitto, service: HubService, device_id: str
) -> None:
    async def main() -> None:
        requests: asyncio.Queue[MethodRequest] = asyncio.Queue()
        client = aio_client(broker, device_id)
        try:
            await client.connect(timeout=TIMEOUT)
            client.on_method_request_received = requests.put_nowait
            # The service invokes right after the setter returned: this blocking
            # publish stands for "before the client's loop gets to run again".
            service.publish("$iothub/methods/POST/reboot/?$rid=1", b"{}", qos=0)
            request = await aget(requests, "the method request", QUIET)
            assert request.request_id == "1"
        finally:
            await client.shutdown()

    run(main())


# ------------------------------------------------------------------ twin (7)


def check_get(got: Received) -> str:
    match = TWIN_GET.fullmatch(got.topic)
    assert match, f"twin GET topic {got.topic!r}"
    assert got.payload == b" ", "v2 sends a single space as the GET body (reference 7.1)"
    assert got.qos == 1
    return match.group(1)


def check_patch(got: Received, patch: dict[str, Any]) -> str:
    match = TWIN_PATCH.fullmatch(got.topic)
    assert match, f"twin PATCH topic {got.topic!r}"
    assert got.payload == json.dumps(patch).encode(), "body is json.dumps(patch) (7.1)"
    assert got.qos == 1
    return match.group(1)


def fence_sync(client: iotdev.IoTHubDeviceClient, service: HubService,
               c2d: queue.Queue[Message]) -> None:
    """Return once the sync client's handler thread has done all it had queued
    (its after-connect work included) and all the client published before has
    reached the service.  Needs ``on_message_received = c2d.put``.

    A C2D message is handled on the handler thread after everything queued
    there before it; a telemetry message sent after that reaches the service
    after everything the client published earlier (one connection, QoS 1, in
    order)."""
    service.publish(f"devices/{service.device_id}/messages/devicebound/", b"fence")
    assert take(c2d, "the fence C2D message").data == b"fence"
    client.send_message("fence", timeout=TIMEOUT)
    assert take(service.telemetry, "the fence telemetry").payload == b"fence"


PATCH = {"batteryLevel": 54, "route": None, "nested": {"a": [1, 2.5, "x"]}}


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_twin_get_and_patch_sync(broker: Mosquitto, service: HubService, device_id: str,
                                 transport: str) -> None:
    """get_twin() twice and one reported PATCH, each on the wire exactly once
    (before 3d8cfab the first GET after connect() went out twice in 27 of 30
    runs)."""
    c2d: queue.Queue[Message] = queue.Queue()
    client = sync_client(broker, device_id, transport)
    try:
        client.connect(timeout=TIMEOUT)
        assert client.get_twin(timeout=TIMEOUT) == TWIN
        assert client.get_twin(timeout=TIMEOUT) == TWIN
        rids = [check_get(take(service.twin_gets, "twin GET")) for _ in range(2)]
        assert rids[0] != rids[1], "every request has its own $rid"
        assert client.patch_twin_reported_properties(PATCH, timeout=TIMEOUT) is None
        check_patch(take(service.twin_patches, "reported PATCH"), PATCH)
        client.on_message_received = c2d.put
        fence_sync(client, service, c2d)
        assert service.twin_gets.empty(), "a twin GET was sent twice"
        assert service.twin_patches.empty(), "the reported PATCH was sent twice"
    finally:
        client.shutdown()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_twin_get_and_patch_aio(broker: Mosquitto, service: HubService, device_id: str,
                                transport: str) -> None:
    async def main() -> None:
        client = aio_client(broker, device_id, transport)
        try:
            await client.connect(timeout=TIMEOUT)
            first, second = await asyncio.gather(client.get_twin(timeout=TIMEOUT),
                                                 client.get_twin(timeout=TIMEOUT))
            assert first == second == TWIN
            rids = {check_get(await atake(service.twin_gets, "twin GET")) for _ in range(2)}
            assert len(rids) == 2, "every request has its own $rid"
            assert await client.patch_twin_reported_properties(PATCH, timeout=TIMEOUT) is None
            check_patch(await atake(service.twin_patches, "reported PATCH"), PATCH)
            await client.send_message("fence", timeout=TIMEOUT)  # after all of the above
            assert (await atake(service.telemetry, "the fence")).payload == b"fence"
            assert service.twin_gets.empty(), "a twin GET was sent twice"
            assert service.twin_patches.empty(), "the reported PATCH was sent twice"
        finally:
            await client.shutdown()

    run(main())


@pytest.mark.parametrize("kind", ["GET", "PATCH"])
def test_twin_request_sent_once_per_connection_sync(broker: Mosquitto, service: HubService,
                                                    device_id: str, kind: str) -> None:
    """One twin request, one PUBLISH on a connection that was never dropped.

    Until 3d8cfab the client's after-connect work (``_on_state``, handler
    thread) re-published every pending twin request, including one already
    sent on this connection.  Here the state-change handler returns only once
    the request is on the wire, which pins that window open; the service holds
    its answer until the fence shows that the client has nothing more to send."""
    on_wire = threading.Event()
    c2d: queue.Queue[Message] = queue.Queue()
    client = sync_client(broker, device_id)
    client.on_connection_state_change = lambda: on_wire.wait(TIMEOUT)
    service.hold_next_get = service.hold_next_patch = True
    box = service.twin_gets if kind == "GET" else service.twin_patches
    try:
        client.connect(timeout=TIMEOUT)
        client.on_message_received = c2d.put
        if kind == "GET":
            pending = Background(lambda: client.get_twin(timeout=30))
            rid = check_get(take(box, "the twin GET"))
        else:
            pending = Background(
                lambda: client.patch_twin_reported_properties(PATCH, timeout=30))
            rid = check_patch(take(box, "the reported PATCH"), PATCH)
        on_wire.set()
        fence_sync(client, service, c2d)
        again = None if box.empty() else box.get()
        assert again is None, f"sent twice on one connection: {again.topic}"
        service.held.clear()
        if kind == "GET":
            service.publish(f"$iothub/twin/res/200/?$rid={rid}", json.dumps(TWIN).encode())
            assert pending.result() == TWIN
        else:
            service.publish(f"$iothub/twin/res/204/?$rid={rid}&$version=1", b"")
            assert pending.result() is None
    finally:
        on_wire.set()
        client.shutdown()


def test_twin_request_sent_once_per_connection_aio(broker: Mosquitto, service: HubService,
                                                   device_id: str) -> None:
    """One twin request, one PUBLISH (until 01ece17, the first twin call after
    a reconnect went out twice in 18 of 20 runs).  Twin features are enabled
    (a desired handler); after disconnect() and connect() a get_twin() is made
    at once, while the client's after-connect work waits for its SUBACK.  The
    service holds that GET's answer.  The after-connect work ends with its own GET
    (ensure_desired_properties, a new $rid): once that one is in, every
    re-send the client was going to make is in too."""
    log = BrokerLog(broker)

    async def main() -> None:
        client = aio_client(broker, device_id)
        pending: asyncio.Task[Any] | None = None
        try:
            await client.connect(timeout=TIMEOUT)
            client.on_twin_desired_properties_patch_received = lambda patch: None
            await _aio_subscribed(log, device_id, "$iothub/twin/res/#")
            await client.disconnect()
            service.hold_next_get = True
            await client.connect(timeout=TIMEOUT)
            pending = asyncio.create_task(client.get_twin(timeout=30))
            rid = check_get(await atake(service.twin_gets, "the twin GET"))
            rids = [rid]
            while rids[-1] == rid:  # up to the client's own after-connect GET
                rids.append(check_get(await atake(service.twin_gets, "the client's GET")))
            assert rids.count(rid) == 1, f"sent twice on one connection: {rid}"
            service.held.clear()
            await asyncio.to_thread(service.publish, f"$iothub/twin/res/200/?$rid={rid}",
                                    json.dumps(TWIN).encode())
            assert await asyncio.wait_for(pending, TIMEOUT) == TWIN
        finally:
            await client.shutdown()
            if pending is not None:
                await asyncio.gather(pending, return_exceptions=True)

    run(main())


def test_get_twin_in_connection_state_handler_sync(broker: Mosquitto, service: HubService,
                                                   device_id: str) -> None:
    """A common pattern: fetch the twin when the connection comes up."""
    outcome: queue.Queue[object] = queue.Queue()
    client = sync_client(broker, device_id, auto_connect=False,
                         ensure_desired_properties=False)

    def on_state() -> None:
        if client.connected:
            try:
                outcome.put(client.get_twin(timeout=QUIET * 2))
            except Exception as exc:
                outcome.put(exc)

    client.on_connection_state_change = on_state
    client.on_twin_desired_properties_patch_received = lambda patch: None
    try:
        client.connect(timeout=TIMEOUT)
        check_get(take(service.twin_gets, "the twin GET"))
        assert take(outcome, "get_twin()'s outcome") == TWIN
    finally:
        client.shutdown()


def test_handler_set_before_connect_is_subscribed_when_setter_returns_sync(
    broker: Mosquitto, service: HubService, device_id: str
) -> None:
    """Reference 9.3: a receive-handler setter subscribes synchronously (and
    thereby auto-connects).  Until 3d8cfab the SUBSCRIBE was left to the
    after-connect work on the handler thread, behind user handlers (here a
    slow on_connection_state_change), and a method invoked meanwhile was lost.

    Not pinned here: when that after-connect work claims the feature first,
    the setter still returns before the SUBSCRIBE is on the wire (a method
    published right after the setter was lost in 9 of 120 runs under load)."""
    release = threading.Event()
    requests: queue.Queue[MethodRequest] = queue.Queue()
    client = sync_client(broker, device_id)
    client.on_connection_state_change = lambda: release.wait(TIMEOUT)
    try:
        client.on_method_request_received = requests.put  # auto-connects
        assert client.connected
        # QoS 1 (the hub uses 0) so that the PUBACK proves the broker routed it.
        service.publish("$iothub/methods/POST/reboot/?$rid=1", b"{}", qos=1)
        release.set()
        assert take(requests, "the method request", QUIET).request_id == "1"
    finally:
        release.set()
        client.shutdown()


DESIRED_BODY = b'{"telemetrySendFrequency": "5m", "route": null, "$version": 8}'


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_desired_patch_reaches_handler_sync(broker: Mosquitto, service: HubService,
                                            device_id: str, transport: str) -> None:
    patches: queue.Queue[Any] = queue.Queue()
    client = sync_client(broker, device_id, transport, ensure_desired_properties=False)
    try:
        client.connect(timeout=TIMEOUT)
        client.on_twin_desired_properties_patch_received = patches.put
        service.publish("$iothub/twin/PATCH/properties/desired/?$version=8", DESIRED_BODY)
        assert take(patches, "desired patch") == json.loads(DESIRED_BODY)
        with pytest.raises(queue.Empty):
            patches.get(timeout=0.05)
        assert service.twin_gets.empty()
    finally:
        client.shutdown()


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_desired_patch_reaches_handler_aio(broker: Mosquitto, service: HubService,
                                           device_id: str, transport: str) -> None:
    log = BrokerLog(broker)

    async def main() -> None:
        patches: asyncio.Queue[Any] = asyncio.Queue()
        client = aio_client(broker, device_id, transport, ensure_desired_properties=False)

        async def on_patch(patch: Any) -> None:
            await patches.put(patch)

        try:
            await client.connect(timeout=TIMEOUT)
            client.on_twin_desired_properties_patch_received = on_patch
            await _aio_subscribed(log, device_id, "$iothub/twin/PATCH/properties/desired/#")
            await asyncio.to_thread(service.publish,
                                    "$iothub/twin/PATCH/properties/desired/?$version=8",
                                    DESIRED_BODY)
            assert await aget(patches, "desired patch") == json.loads(DESIRED_BODY)
            assert patches.empty()
            assert service.twin_gets.empty()
        finally:
            await client.shutdown()

    run(main())


def test_desired_document_delivered_at_connect_sync(broker: Mosquitto, service: HubService,
                                                    device_id: str) -> None:
    """Reference 7.3 step 4: with ensure_desired_properties (default) and the
    handler set before connecting, the connect GETs the twin and hands the whole
    ``desired`` section to the handler; a later patch follows.

    auto_connect=False keeps the setter from connecting by itself.  With the
    default, the setter connects after enabling desired patches and before
    enabling twin responses; the after-connect work on the handler thread can
    publish its GET in between, and the broker drops the answer (the document
    never came in 39 of 120 runs under load; not pinned down here, see
    ``test_get_twin_in_connection_state_handler_sync`` for a deterministic
    case of a GET sent before the twin-response subscription)."""
    patches: queue.Queue[Any] = queue.Queue()
    client = sync_client(broker, device_id, auto_connect=False)
    try:
        client.on_twin_desired_properties_patch_received = patches.put
        client.connect(timeout=TIMEOUT)
        assert take(patches, "desired document") == TWIN["desired"]
        check_get(take(service.twin_gets, "twin GET"))
        service.publish("$iothub/twin/PATCH/properties/desired/?$version=13",
                        b'{"x": 1, "$version": 13}')
        assert take(patches, "desired patch") == {"x": 1, "$version": 13}
    finally:
        client.shutdown()


def test_desired_document_delivered_at_connect_aio(broker: Mosquitto, service: HubService,
                                                   device_id: str) -> None:
    async def main() -> None:
        patches: asyncio.Queue[Any] = asyncio.Queue()
        client = aio_client(broker, device_id)
        try:
            client.on_twin_desired_properties_patch_received = patches.put_nowait
            await client.connect(timeout=TIMEOUT)
            assert await aget(patches, "desired document") == TWIN["desired"]
            check_get(await atake(service.twin_gets, "twin GET"))
            await asyncio.to_thread(service.publish,
                                    "$iothub/twin/PATCH/properties/desired/?$version=13",
                                    b'{"x": 1, "$version": 13}')
            assert await aget(patches, "desired patch") == {"x": 1, "$version": 13}
        finally:
            await client.shutdown()

    run(main())


# ------------------------------------------------------------------ fault: broker restart


OUTAGE_BODY = b"sent during the outage"


def check_after_restart(service: HubService, device_id: str, first_rid: str) -> None:
    """The GET re-sent after the reconnect (same or new $rid: both are fine)
    and the telemetry sent during the outage, each exactly once: a "fence"
    telemetry message, sent last, arrives after them and nothing else does."""
    resent = check_get(take(service.twin_gets, "the twin GET re-sent after the reconnect"))
    got = take(service.telemetry, "the telemetry sent during the outage")
    assert got.topic == f"devices/{device_id}/messages/events/"
    assert got.payload == OUTAGE_BODY
    assert take(service.telemetry, "the fence").payload == b"fence"
    assert service.twin_gets.empty(), f"GET re-sent more than once ({first_rid}, {resent})"
    assert service.telemetry.empty(), "telemetry delivered twice"


def test_broker_restart_pending_get_and_outage_telemetry_sync(
    broker: Mosquitto, service: HubService, device_id: str, gate: Gate
) -> None:
    states: queue.Queue[bool] = queue.Queue()
    c2d: queue.Queue[Message] = queue.Queue()
    client = sync_client(broker, device_id, port=gate.port, connection_retry_interval=1)
    client.on_connection_state_change = lambda: states.put(client.connected)
    try:
        client.connect(timeout=TIMEOUT)
        assert take(states, "connected state") is True
        client.on_message_received = c2d.put  # for the fence at the end
        service.hold_next_get = True
        pending = Background(lambda: client.get_twin(timeout=60))
        first_rid = check_get(take(service.twin_gets, "the first twin GET (held)"))

        gate.hold()
        service.close()
        broker.stop()
        assert take(states, "the disconnect") is False
        outage = Background(lambda: client.send_message(OUTAGE_BODY.decode(), timeout=60))
        broker.start()
        service.held.clear()  # the restarted service answers every GET
        service.open()
        assert not pending.done, f"get_twin ended during the outage: {pending.error!r}"
        assert not outage.done, f"send_message ended during the outage: {outage.error!r}"
        gate.release()

        assert pending.result() == TWIN
        assert outage.result() is None
        assert take(states, "the reconnect") is True
        # The fence: a C2D message handled after the handler thread's
        # after-connect work, then telemetry published after all of it.
        service.publish(f"devices/{device_id}/messages/devicebound/", b"fence")
        assert take(c2d, "the fence C2D message").data == b"fence"
        client.send_message("fence", timeout=TIMEOUT)
        check_after_restart(service, device_id, first_rid)
    finally:
        client.shutdown()


def test_broker_restart_pending_get_and_outage_telemetry_aio(
    broker: Mosquitto, service: HubService, device_id: str, gate: Gate
) -> None:
    async def main() -> None:
        states: asyncio.Queue[bool] = asyncio.Queue()
        client = aio_client(broker, device_id, port=gate.port, connection_retry_interval=1)
        client.on_connection_state_change = lambda: states.put_nowait(client.connected)
        tasks: list[asyncio.Task[Any]] = []
        try:
            await client.connect(timeout=TIMEOUT)
            assert await aget(states, "connected state") is True
            service.hold_next_get = True
            pending = asyncio.create_task(client.get_twin(timeout=60))
            tasks.append(pending)
            first_rid = check_get(await atake(service.twin_gets, "the first twin GET (held)"))

            gate.hold()
            await asyncio.to_thread(service.close)
            await asyncio.to_thread(broker.stop)
            assert await aget(states, "the disconnect") is False
            outage = asyncio.create_task(client.send_message(OUTAGE_BODY.decode(), timeout=60))
            tasks.append(outage)
            await asyncio.to_thread(broker.start)
            service.held.clear()  # the restarted service answers every GET
            await asyncio.to_thread(service.open)
            assert not pending.done(), f"get_twin ended during the outage: {pending!r}"
            assert not outage.done(), f"send_message ended during the outage: {outage!r}"
            gate.release()

            assert await asyncio.wait_for(pending, TIMEOUT) == TWIN
            assert await asyncio.wait_for(outage, TIMEOUT) is None
            assert await aget(states, "the reconnect") is True
            await client.send_message("fence", timeout=TIMEOUT)
            await asyncio.to_thread(check_after_restart, service, device_id, first_rid)
        finally:
            await client.shutdown()
            await asyncio.gather(*tasks, return_exceptions=True)

    run(main())
