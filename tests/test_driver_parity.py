"""The same failure becomes the same exception in both MQTT drivers.

Each scenario runs once through ``ThreadDriver`` and once through
``AsyncDriver`` (on a loop in a helper thread), against the same hostile
TLS server script (``tests/_faultkit.py``), and the exception types must be
identical, and the one ``iotdev/transport/_core.py`` documents.  Two drifts
the drivers had before they shared that core are rows here: a lost CONNACK
wait was ``ConnectionFailedError`` in one driver and ``ConnectTimeoutError``
in the other, and an invalid publish failed its future in one and raised at
once in the other.  Nothing sleeps; every wait has a timeout.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future as ConcurrentFuture
from dataclasses import dataclass, field
from typing import Any

import pytest

from iotdev._errors import (
    ClientError,
    ConnectionDroppedError,
    ConnectionFailedError,
    ConnectionRefusedByHostError,
    ConnectTimeoutError,
    CredentialError,
    OperationCancelled,
)
from iotdev.transport import make_client_context
from iotdev.transport._asyncio import AsyncDriver
from iotdev.transport._endpoint import Endpoint
from iotdev.transport._options import ConnectOptions, ReconnectPolicy
from iotdev.transport._thread import ThreadDriver
from iotdev_mqtt import ConnAck, LocalProtocolError, ProtocolError, PubAck, Publish

from ._broker import CertAuthority
from ._faultkit import HOST, HostileConnection, HostileServer, Script

TIMEOUT = 10.0


# ------------------------------------------------------------------ scripts


def silent(conn: HostileConnection, connect: Any) -> None:
    """Read CONNECT, answer nothing, keep the connection open."""
    conn.server.stopping.wait(60)


def close_after_connect(conn: HostileConnection, connect: Any) -> None:
    conn.close()


def garbage(conn: HostileConnection, connect: Any) -> None:
    conn.send(b"\xf0\xff\xff\xff\xff")  # reserved packet type 15, bad length
    conn.server.stopping.wait(60)


def refuse(code: int) -> Script:
    def script(conn: HostileConnection, connect: Any) -> None:
        conn.send(ConnAck(False, code))
        conn.server.stopping.wait(60)
    return script


def accept_then(after: Callable[[HostileConnection], None]) -> Script:
    """CONNACK 0, then ``after(conn)``."""
    def script(conn: HostileConnection, connect: Any) -> None:
        conn.send(ConnAck(False, 0))
        after(conn)
    return script


def never_ack(conn: HostileConnection) -> None:
    conn.server.stopping.wait(60)


def drop_at_publish(conn: HostileConnection) -> None:
    while True:
        packet = conn.next_packet(TIMEOUT)
        if packet is None or isinstance(packet, Publish):
            conn.close()
            return


def garbage_at_publish(conn: HostileConnection) -> None:
    while True:
        packet = conn.next_packet(TIMEOUT)
        if packet is None:
            return
        if isinstance(packet, Publish):
            conn.send(b"\xf0\xff\xff\xff\xff")
            conn.server.stopping.wait(60)
            return


def ack_publishes(conn: HostileConnection) -> None:
    while True:
        packet = conn.next_packet(TIMEOUT)
        if packet is None:
            return
        if isinstance(packet, Publish) and packet.packet_id is not None:
            conn.send(PubAck(packet.packet_id))


# ------------------------------------------------------------------ two faces, one shape


@dataclass
class Outcome:
    """What one scenario saw: per step, the exception type (``None``: it
    succeeded), and what ``on_error`` got."""

    steps: dict[str, type[BaseException] | None] = field(default_factory=dict)
    causes: dict[str, type[BaseException] | None] = field(default_factory=dict)
    raised_at_once: list[str] = field(default_factory=list)
    background: list[type[BaseException]] = field(default_factory=list)


class Face:
    """Drives one driver from the test thread with the same calls."""

    outcome: Outcome

    def connect(self) -> None: ...

    def publish(self, topic: str, qos: int = 1) -> Any: ...

    def subscribe(self, topic: str) -> Any: ...

    def disconnect(self) -> None: ...

    def close(self) -> None: ...

    def step(self, name: str, call: Callable[[], Any]) -> None:
        try:
            call()
        except Exception as exc:
            self.outcome.steps[name] = type(exc)
            self.outcome.causes[name] = None if exc.__cause__ is None else type(exc.__cause__)
        else:
            self.outcome.steps[name] = None


class ThreadFace(Face):
    def __init__(self, endpoint: Endpoint, reconnect: ReconnectPolicy,
                 engine: dict[str, Any]) -> None:
        self.outcome = Outcome()
        self.driver = ThreadDriver(endpoint, ConnectOptions("parity"), reconnect=reconnect,
                                   on_error=lambda e: self.outcome.background.append(type(e)),
                                   **engine)

    def connect(self) -> None:
        self.driver.connect().result(TIMEOUT)

    def publish(self, topic: str, qos: int = 1) -> Any:
        try:
            fut = self.driver.publish(topic, b"x", qos, False)
        except Exception:
            self.outcome.raised_at_once.append(topic)
            raise
        return fut

    def subscribe(self, topic: str) -> Any:
        return self.driver.subscribe([(topic, 1)])

    def wait(self, fut: Any) -> None:
        fut.result(TIMEOUT)

    def disconnect(self) -> None:
        self.driver.disconnect().result(TIMEOUT)

    def close(self) -> None:
        self.driver.shutdown()
        handlers = self.driver.handler_thread
        assert not self.driver._thread.is_alive()
        assert handlers is None or not handlers.is_alive()


class AsyncFace(Face):
    def __init__(self, endpoint: Endpoint, reconnect: ReconnectPolicy,
                 engine: dict[str, Any]) -> None:
        self.outcome = Outcome()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="parity-loop",
                                       daemon=True)
        self.thread.start()

        async def make() -> AsyncDriver:
            return AsyncDriver(endpoint, ConnectOptions("parity"), reconnect=reconnect,
                               on_error=lambda e: self.outcome.background.append(type(e)),
                               **engine)
        self.driver = self.run(make())

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(TIMEOUT)

    def connect(self) -> None:
        self.run(self.driver.connect())

    def _on_loop(self, call: Callable[[], Any]) -> Any:
        done: ConcurrentFuture[Any] = ConcurrentFuture()

        def run() -> None:
            try:
                done.set_result(call())
            except Exception as exc:
                done.set_exception(exc)
        self.loop.call_soon_threadsafe(run)
        return done.result(TIMEOUT)

    def publish(self, topic: str, qos: int = 1) -> Any:
        try:
            return self._on_loop(lambda: self.driver.publish(topic, b"x", qos, False))
        except Exception:
            self.outcome.raised_at_once.append(topic)
            raise

    def subscribe(self, topic: str) -> Any:
        return self._on_loop(lambda: self.driver.subscribe_nowait([(topic, 1)]))

    def wait(self, fut: Any) -> None:
        async def waited() -> Any:
            return await fut
        self.run(waited())

    def disconnect(self) -> None:
        self.run(self.driver.disconnect())

    def close(self) -> None:
        try:
            self.run(self.driver.shutdown())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(TIMEOUT)
            self.loop.close()


# ------------------------------------------------------------------ scenarios


@dataclass(frozen=True)
class Scenario:
    name: str
    scripts: list[Script]
    expected: dict[str, type[BaseException] | None]
    run: Callable[[Face], None]
    connect_timeout: float = 30.0
    engine: dict[str, Any] = field(default_factory=dict)
    reconnect: bool = False
    background: tuple[type[BaseException], ...] = ()
    causes: dict[str, type[BaseException]] = field(default_factory=dict)


def just_connect(face: Face) -> None:
    face.step("connect", face.connect)


def publish_then_wait(face: Face, topic: str = "a/b") -> None:
    face.step("connect", face.connect)
    fut = None

    def publish() -> None:
        nonlocal fut
        fut = face.publish(topic)
    face.step("publish", publish)
    if fut is not None:
        face.step("outcome", lambda: face.wait(fut))  # type: ignore[attr-defined]


def publish_then_disconnect(face: Face) -> None:
    face.step("connect", face.connect)
    fut = face.publish("a/b")
    face.step("disconnect", face.disconnect)
    face.step("outcome", lambda: face.wait(fut))  # type: ignore[attr-defined]


def queue_full(face: Face) -> None:
    first = face.publish("a/b")  # not connected: waits in the engine's queue
    second = face.publish("a/b")
    face.step("second", lambda: face.wait(second))  # type: ignore[attr-defined]
    face.step("disconnect", face.disconnect)
    face.step("first", lambda: face.wait(first))  # type: ignore[attr-defined]


def subscribe_unconnected(face: Face) -> None:
    fut = face.subscribe("a/#")
    face.step("subscribe", lambda: face.wait(fut))  # type: ignore[attr-defined]


SCENARIOS = [
    Scenario("TCP refused", [], {"connect": ConnectionRefusedByHostError}, just_connect),
    Scenario("EOF before CONNACK", [close_after_connect], {"connect": ConnectionFailedError},
             just_connect),
    # The drift: the engine's CONNACK wait expiring was ConnectionFailedError
    # in the thread driver and ConnectTimeoutError in the asyncio one.
    Scenario("the engine's CONNACK wait expires", [silent], {"connect": ConnectTimeoutError},
             just_connect, engine={"connect_timeout": 0.3}),
    Scenario("the handshake deadline passes", [silent], {"connect": ConnectTimeoutError},
             just_connect, connect_timeout=0.5),
    Scenario("garbage instead of CONNACK", [garbage], {"connect": ConnectionFailedError},
             just_connect, causes={"connect": ProtocolError}),
    Scenario("CONNACK 5", [refuse(5)], {"connect": CredentialError}, just_connect),
    Scenario("CONNACK 3", [refuse(3)], {"connect": ConnectionFailedError}, just_connect),
    Scenario("CONNACK 2", [refuse(2)], {"connect": ClientError}, just_connect),
    # The other drift: an invalid publish raised at once in the asyncio
    # driver and failed its future in the thread driver.
    Scenario("invalid topic", [accept_then(never_ack)],
             {"connect": None, "publish": None, "outcome": LocalProtocolError},
             lambda face: publish_then_wait(face, "a/+")),
    Scenario("acknowledged", [accept_then(ack_publishes)],
             {"connect": None, "publish": None, "outcome": None}, publish_then_wait),
    Scenario("drop while a publish waits, no reconnect", [accept_then(drop_at_publish)],
             {"connect": None, "publish": None, "outcome": ConnectionDroppedError},
             publish_then_wait, background=(ConnectionDroppedError,)),
    Scenario("protocol violation after CONNACK", [accept_then(garbage_at_publish)],
             {"connect": None, "publish": None, "outcome": ConnectionDroppedError},
             publish_then_wait, background=(ConnectionDroppedError,)),
    # A third: a reconnection refused for good was reported to on_error by
    # the asyncio driver only; now by both, and the waiter gets the refusal.
    Scenario("reconnection refused with fixed credentials",
             [accept_then(drop_at_publish), refuse(5)],
             {"connect": None, "publish": None, "outcome": CredentialError},
             publish_then_wait, reconnect=True,
             background=(ConnectionDroppedError, CredentialError)),
    Scenario("disconnect while a publish waits", [accept_then(never_ack)],
             {"connect": None, "disconnect": None, "outcome": OperationCancelled},
             publish_then_disconnect),
    Scenario("the outgoing queue is full", [],
             {"second": ClientError, "disconnect": None, "first": OperationCancelled},
             queue_full, engine={"max_queued": 1}),
    Scenario("subscribe while not connected", [],
             {"subscribe": ConnectionDroppedError}, subscribe_unconnected),
]


def run(scenario: Scenario, face_type: type[Face], ca: CertAuthority) -> Outcome:
    """One scenario through one driver, against a fresh server (its scripts
    are taken per connection)."""
    server = HostileServer(str(ca.server_cert), str(ca.server_key),
                           scenario.scripts or [silent])
    with server:
        port = server.port if scenario.name != "TCP refused" else closed_port()
        endpoint = Endpoint(HOST, port, "tls",
                            tls_context=make_client_context(server_verification_cert=ca.ca_cert_pem),
                            connect_timeout=scenario.connect_timeout)
        policy = ReconnectPolicy(enabled=scenario.reconnect, interval=0.2, first_window=0.05)
        face = face_type(endpoint, policy, dict(scenario.engine))  # type: ignore[call-arg]
        try:
            scenario.run(face)
        finally:
            face.close()
    return face.outcome


def closed_port() -> int:
    import socket

    sock = socket.socket()
    sock.bind((HOST, 0))
    port: int = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    return port


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s.name for s in SCENARIOS])
def test_both_drivers_raise_the_same_exception(scenario: Scenario,
                                               test_ca: CertAuthority) -> None:
    outcomes = {face.__name__: run(scenario, face, test_ca) for face in (ThreadFace, AsyncFace)}
    thread, aio = outcomes["ThreadFace"], outcomes["AsyncFace"]
    assert thread.steps == aio.steps, outcomes
    assert thread.steps == scenario.expected, outcomes
    assert not thread.raised_at_once and not aio.raised_at_once, outcomes
    for step, cause in scenario.causes.items():
        for outcome in (thread, aio):
            got = outcome.causes[step]
            assert got is not None and issubclass(got, cause), outcomes
    assert thread.background == aio.background, outcomes
    assert tuple(thread.background) == scenario.background, outcomes
