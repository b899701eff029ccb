"""The sync ``IoTHubDeviceClient`` under faults: it loses nothing, never hangs
and never leaks.

The client talks to the local IoT Hub emulator through ``FaultProxy``
(``tests/_faultproxy.py``), which drops, stalls, delays, throttles and mangles
the TLS byte stream when a test says so; ``HubTap`` (``tests/_faultkit.py``)
records what the hub accepted.  A few tests use a hostile TLS server instead
of the hub.  Every wait has a deadline and nothing sleeps except where the
sleep is the fault (a handler that blocks).  Each scenario prints its figures
(``[faults] ...`` lines, shown with ``pytest -s``).

Wall time is asserted once only: half-open detection, whose bound follows from
the keep-alive (PINGREQ after ``keep_alive`` s of silence, the connection
given up ``ping_timeout`` = ``keep_alive`` s later), stated generously as
1.5 x keep-alive + ping timeout.
"""

from __future__ import annotations

import collections
import functools
import itertools
import json
import os
import random
import threading
import time
import tracemalloc
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from iotdev import (
    ClientError,
    ConnectionDroppedError,
    ConnectionFailedError,
    IoTHubDeviceClient,
    Message,
    MethodResponse,
    OperationCancelled,
    OperationTimeout,
    ServiceError,
)
from iotdev.emulator import Hub
from iotdev.mqtt import MQTTClient
from iotdev_mqtt import ConnAck, Connect, MessageReceived, Publish, SubAck, Subscribe, encode
from tests._broker import CertAuthority, Mosquitto, unique_name
from tests._faultkit import (
    HostileConnection,
    HostileServer,
    HubTap,
    Resources,
    Script,
    ThreadGuard,
    check_at_least_once,
    report,
    stopwatch,
)
from tests._faultproxy import C2S, S2C, FaultProxy

HOST = "127.0.0.1"
TIMEOUT = 15.0
TYPED = (ClientError, OperationTimeout, OperationCancelled, ServiceError)

Client = IoTHubDeviceClient


def seed_for(test: str) -> int:
    """The RNG seed: ``IOTDEV_FAULT_SEED`` when set (to replay a run), else new."""
    value = os.environ.get("IOTDEV_FAULT_SEED")
    seed = int(value) if value else random.SystemRandom().randrange(2**32)
    print(f"\n[faults] {test}: seed={seed} (replay with IOTDEV_FAULT_SEED={seed})", flush=True)
    return seed


def new_id(prefix: str = "fault") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


class Outcomes:
    """What each call in a worker thread ended with."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.ok = 0
        self.errors: dict[str, int] = {}
        self.untyped: list[BaseException] = []

    def record(self, error: BaseException | None) -> None:
        with self.lock:
            if error is None:
                self.ok += 1
            elif isinstance(error, TYPED):
                name = type(error).__name__
                self.errors[name] = self.errors.get(name, 0) + 1
            else:
                self.untyped.append(error)

    def run(self, fn: Callable[[], Any]) -> BaseException | None:
        try:
            fn()
        except BaseException as exc:  # recorded, judged by the test
            self.record(exc)
            return exc
        self.record(None)
        return None


def join_all(threads: list[threading.Thread], timeout: float) -> None:
    """Join every thread within one overall deadline; fail naming the stuck ones."""
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    stuck = [t.name for t in threads if t.is_alive()]
    assert not stuck, f"these threads did not finish within {timeout} s: {stuck}"


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    with Hub(mqtt_port=0, ws_port=0, state_dir=tmp_path_factory.mktemp("hub")) as running:
        yield running


@pytest.fixture
def guard() -> Iterator[ThreadGuard]:
    """Fails the test if any thread dies of an exception while it runs."""
    with ThreadGuard() as watching:
        yield watching
    watching.check()


@pytest.fixture
def tap(hub: Hub, monkeypatch: pytest.MonkeyPatch) -> HubTap:
    return HubTap().install(hub, monkeypatch.setattr)


@pytest.fixture
def proxy(hub: Hub) -> Iterator[FaultProxy]:
    with FaultProxy((HOST, hub.mqtt_port), name="proxy-mqtt") as running:
        yield running
    assert running.error is None, f"the proxy failed: {running.error!r}"


@pytest.fixture
def dev(hub: Hub) -> str:
    device_id = new_id()
    hub.add_device(device_id)
    return device_id


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    made: list[Client] = []
    yield made
    for client in made:
        client.shutdown()


@pytest.fixture
def make(hub: Hub, clients: list[Client]) -> Callable[..., Client]:
    """``make(device_id, port, **options)``: a client of ``hub`` dialing ``port``."""

    def make(device_id: str, port: int, hub_: Hub | None = None, **kwargs: Any) -> Client:
        target = hub_ or hub
        kwargs.setdefault("server_verification_cert", target.ca_pem)
        kwargs.setdefault("connection_retry_interval", 1)
        client = Client.create_from_connection_string(target.connection_string(device_id),
                                                      port=port, **kwargs)
        clients.append(client)
        return client

    return make


class States:
    """``on_connection_state_change`` as a list of ``connected`` values, with
    the background exceptions next to them."""

    def __init__(self, client: Client) -> None:
        self.cond = threading.Condition()
        self.states: list[bool] = []
        self.errors: list[BaseException] = []
        self.at: list[float] = []
        client.on_connection_state_change = lambda: self._add(client.connected)
        client.on_background_exception = self._error

    def _add(self, connected: bool) -> None:
        with self.cond:
            self.states.append(connected)
            self.at.append(time.monotonic())
            self.cond.notify_all()

    def _error(self, error: BaseException) -> None:
        with self.cond:
            self.errors.append(error)
            self.cond.notify_all()

    def wait(self, count: int, timeout: float = TIMEOUT) -> list[bool]:
        with self.cond:
            ok = self.cond.wait_for(lambda: len(self.states) >= count, timeout)
            states = list(self.states)
        assert ok, f"timed out waiting for {count} state changes; got {states!r}"
        return states

    def wait_errors(self, count: int, timeout: float = TIMEOUT) -> list[BaseException]:
        with self.cond:
            ok = self.cond.wait_for(lambda: len(self.errors) >= count, timeout)
            errors = list(self.errors)
        assert ok, f"timed out waiting for {count} background exceptions; got {errors!r}"
        return errors

    def downtime(self) -> float:
        """Seconds spent between each drop and the reconnection that followed."""
        with self.cond:
            return downtime(self.states, self.at)


def downtime(states: list[bool], at: list[float]) -> float:
    total, down = 0.0, None
    for state, when in zip(states, at, strict=True):
        if not state and down is None:
            down = when
        elif state and down is not None:
            total += when - down
            down = None
    return total


# ---------------------------------------------------------------- 10,000 through 100 drops


def drop_points(rng: random.Random, messages: int, drops: int) -> list[int]:
    """Where the drops go: at ``drops`` random points of the message sequence
    (a point already passed when the previous drop has fired arms the next one
    at once, so it lands in the reconnection: TLS, CONNECT, the re-sends)."""
    return sorted(rng.randrange(20, messages - 300) for _ in range(drops))


def drop_at_points(proxy: FaultProxy, tap: HubTap, dev: str, rng: random.Random,
                   points: list[int], done: threading.Event, armed: list[Any],
                   kinds: dict[str, int]) -> None:
    """Thread: at each point (distinct messages at the hub) arm a drop after a
    random number of bytes (0-3000) in a random direction, FIN or RST, and wait
    until it fires; stop when ``done`` is set."""
    for point in points:
        with tap.cond:
            tap.cond.wait_for(
                lambda point=point: len(tap.unique[dev]) >= point or done.is_set(), 120)
        if done.is_set():
            return
        direction = rng.choice((C2S, S2C))
        nbytes = rng.randint(0, 3000)
        reset = rng.random() < 0.5
        fault = proxy.drop_after(direction, nbytes, reset=reset)
        armed.append(fault)
        proxy.wait_for(lambda fault=fault: fault.fired.is_set() or fault.cancelled, 120,
                       f"{fault!r} to fire")
        if fault.fired.is_set():
            kind = f"{direction}{'-rst' if reset else ''}"
            kinds[kind] = kinds.get(kind, 0) + 1


def stop_dropping(proxy: FaultProxy, tap: HubTap, done: threading.Event,
                  armed: list[Any]) -> None:
    done.set()
    with tap.cond:
        tap.cond.notify_all()
    for fault in armed:
        proxy.cancel(fault)


def test_ten_thousand_messages_from_eight_threads_through_a_hundred_drops(
        hub: Hub, tap: HubTap, proxy: FaultProxy, dev: str, make: Callable[..., Client],
        guard: ThreadGuard) -> None:
    seed = seed_for("sync 10,000 x 100 drops")
    rng = random.Random(seed)
    threads_n, per_thread, drops_wanted = 8, 1250, 100
    client = make(dev, proxy.port)
    states = States(client)
    client.connect()
    expected = {f"{t}-{i}".encode(): f"m-{t}-{i}" for t in range(threads_n)
                for i in range(per_thread)}
    outcomes = Outcomes()
    done = threading.Event()
    armed: list[Any] = []
    kinds: dict[str, int] = {}

    def sender(t: int) -> None:
        for i in range(per_thread):
            outcomes.run(functools.partial(
                client.send_message, Message(f"{t}-{i}", message_id=f"m-{t}-{i}"), timeout=120))

    points = drop_points(rng, len(expected), drops_wanted)
    chaos = threading.Thread(target=drop_at_points, name="faulter", daemon=True,
                             args=(proxy, tap, dev, rng, points, done, armed, kinds))

    workers = [threading.Thread(target=sender, args=(t,), name=f"sender-{t}", daemon=True)
               for t in range(threads_n)]
    with stopwatch() as elapsed:
        chaos.start()
        for worker in workers:
            worker.start()
        try:
            join_all(workers, 600)
        finally:
            stop_dropping(proxy, tap, done, armed)
            join_all([chaos], 30)
        took = elapsed()
    assert not outcomes.untyped, f"untyped errors: {outcomes.untyped[:3]!r}"
    duplicates, distinct = check_at_least_once(tap, dev, expected)
    reconnects = max(0, tap.connects[dev] - 1)
    report("sync 10,000 msgs / 8 threads / drops", seed=seed, sent=len(expected),
           ok=outcomes.ok, errors=outcomes.errors, distinct=distinct, duplicates=duplicates,
           drops=proxy.drops, drop_kinds=kinds, reconnects=reconnects,
           proxy_connections=proxy.accepted, background_errors=len(states.errors),
           elapsed_s=took, downtime_s=states.downtime(), msgs_per_s=len(expected) / took,
           msgs_per_connected_s=len(expected) / max(0.001, took - states.downtime()))
    assert proxy.drops >= 90, f"only {proxy.drops} drops happened: the test did not test"
    assert outcomes.ok + sum(outcomes.errors.values()) == len(expected)
    assert all(isinstance(e, ClientError) for e in states.errors), states.errors
    assert client.connected


# ---------------------------------------------------------------- half-open connection


@pytest.mark.parametrize("traffic", ["idle", "steady"])
def test_half_open_connection_is_detected_and_pending_sends_complete(
        tap: HubTap, proxy: FaultProxy, dev: str, make: Callable[..., Client],
        guard: ThreadGuard, traffic: str) -> None:
    """The proxy stops forwarding and keeps both sockets open (a dead NAT or
    peer).  ``idle``: the client only has three sends in flight; ``steady``:
    it keeps sending (each call gives up after 0.5 s, the message stays queued),
    so its own traffic never lets the keep-alive timer run out: the dead link
    must be noticed from the silence of the hub."""
    keep_alive = 3
    bound = 1.5 * keep_alive + keep_alive  # 1.5 x keep-alive + ping timeout (= keep alive)
    client = make(dev, proxy.port, keep_alive=keep_alive)
    states = States(client)
    client.connect()
    client.send_message(Message("before", message_id="before"))
    stalled_on = proxy.open_connections()
    proxy.stall()
    proxy.wait_for(lambda: all(c.stalled for c in stalled_on), TIMEOUT, "the stall")
    stalled_at = time.monotonic()
    outcomes = Outcomes()
    blocking = [threading.Thread(target=outcomes.run,
                                 args=(lambda n=n: client.send_message(
                                     Message(f"pending-{n}", message_id=f"pending-{n}"),
                                     timeout=60),), name=f"pending-{n}", daemon=True)
                for n in range(3)]
    for thread in blocking:
        thread.start()
    trickled: list[str] = []
    recovered = threading.Event()

    def trickle() -> None:  # paced by its own 0.5 s operation timeout, not by sleeping
        n = 0
        while not recovered.is_set():
            body = f"trickle-{n}"
            trickled.append(body)
            error = outcomes.run(functools.partial(
                client.send_message, Message(body, message_id=body), timeout=0.5))
            assert error is None or isinstance(error, OperationTimeout), error
            n += 1

    trickler = threading.Thread(target=trickle, name="trickle", daemon=True)
    if traffic == "steady":
        trickler.start()
    states.wait(2, timeout=120)  # True, then False: the client gave up on the link
    detected = states.at[1] - stalled_at
    states.wait(3, timeout=TIMEOUT)  # ... and connected again through the proxy
    recovered.set()
    join_all([*blocking, *([trickler] if traffic == "steady" else [])], 60)
    expected = {b"before": "before", **{f"pending-{n}".encode(): f"pending-{n}"
                                        for n in range(3)},
                **{t.encode(): t for t in trickled}}
    tap.wait_unique(dev, len(expected), 60)
    duplicates, distinct = check_at_least_once(tap, dev, expected)
    report(f"sync half-open ({traffic})", keep_alive=keep_alive, detected_s=detected,
           bound_s=bound, trickled=len(trickled), distinct=distinct, duplicates=duplicates,
           errors=outcomes.errors, background=[type(e).__name__ for e in states.errors],
           blackholed=stalled_on[0].blackholed)
    assert states.states[:3] == [True, False, True]
    assert outcomes.ok >= 3 and not outcomes.untyped
    assert detected <= bound, (
        f"the dead link was noticed after {detected:.1f} s, more than 1.5 x keep-alive + "
        f"ping timeout = {bound:g} s")
    assert stalled_on[0].blackholed[C2S] > 0  # the PINGREQ went into the void


# ---------------------------------------------------------------- shutdown in flight


@pytest.mark.parametrize("link", ["flowing", "stalled", "down"])
def test_shutdown_from_another_thread_ends_every_operation_and_leaks_nothing(
        tmp_path: Path, guard: ThreadGuard, link: str) -> None:
    """8 threads send, one reads the twin, one waits in ``receive_message``,
    while the link flows, is stalled (acks never come) or is down (the client
    is reconnecting); ``shutdown()`` from another thread ends every call with
    ``OperationCancelled`` (or ``ClientError`` for a call that starts after
    it), the client's threads end, and no file descriptor stays open."""
    before = Resources.now()
    hub = Hub(mqtt_port=0, ws_port=None, state_dir=tmp_path / "hub").start()
    proxy = FaultProxy((HOST, hub.mqtt_port), name="proxy-shutdown").start()
    tap = HubTap().install(hub)
    dev = new_id()
    hub.add_device(dev)
    client = Client.create_from_connection_string(
        hub.connection_string(dev), server_verification_cert=hub.ca_pem, port=proxy.port,
        connection_retry_interval=1)
    started = Resources.now()
    client.connect()
    connected = Resources.now()
    ends: dict[str, list[str]] = {}
    calls = {"ok": 0}
    lock = threading.Lock()

    def forever(name: str, call: Callable[[], Any]) -> None:
        """Call until a call fails because the client is shut down: calls racing
        ``shutdown()`` must fail at once too, none may wait for its timeout."""
        while True:
            try:
                call()
            except BaseException as exc:  # judged below
                ends.setdefault(name, []).append(type(exc).__name__)
                assert isinstance(exc, OperationCancelled | ClientError), (name, exc)
                if isinstance(exc, ClientError):
                    assert "shut down" in str(exc), (name, exc)
                    return
                continue
            with lock:
                calls["ok"] += 1

    workers = [threading.Thread(target=forever, name=f"send-{n}", daemon=True,
                                args=(f"send-{n}", lambda n=n: client.send_message(f"{n}")))
               for n in range(8)]
    workers.append(threading.Thread(target=forever, name="twin", daemon=True,
                                    args=("twin", client.get_twin)))
    workers.append(threading.Thread(target=forever, name="receive", daemon=True,
                                    args=("receive", client.receive_message)))
    for worker in workers:
        worker.start()
    tap.wait_for(lambda: len(tap.telemetry[dev]) >= 200, TIMEOUT, "200 messages")
    if link == "stalled":
        proxy.stall()
    elif link == "down":
        proxy.refuse(True)
        proxy.drop_all(reset=True)
    proxy.wait_for(lambda: link == "flowing" or proxy.drops > 0 or all(
        c.stalled for c in proxy.connections if c.open), TIMEOUT, f"the link to be {link}")
    with stopwatch() as elapsed:
        stopper = threading.Thread(target=client.shutdown, name="stopper", daemon=True)
        stopper.start()
        join_all([stopper], 10)
        join_all(workers, 10)
        took = elapsed()
    after_client = Resources.now()
    proxy.close()
    hub.stop()
    after = Resources.now()
    report(f"sync shutdown in flight ({link})", calls_ok=calls["ok"],
           ends={k: "/".join(v) for k, v in sorted(ends.items())},
           shutdown_s=took, threads_before=len(before.threads),
           threads_connected=len(connected.threads), threads_after=len(after.threads),
           fds_before=before.fds, fds_after=after.fds)
    client_threads = {t for t in after_client.threads if t in ("iotdev-io", "iotdev-handlers")}
    assert client_threads == set(), f"client threads still running: {client_threads}"
    assert len(started.threads) <= len(before.threads) + 3  # hub + proxy + client I/O
    assert after.threads == before.threads, (before.threads, after.threads)
    assert after.fds == before.fds, f"{after.fds - before.fds} file descriptors leaked"


@pytest.mark.parametrize(("where", "marker", "call"), [
    ("_submit", "self._commands.append(command)", "get_twin"),
    ("_publish_now", "self.core.publish(fut, topic, payload, qos, retain)", "send_message"),
])
def test_a_call_racing_shutdown_fails_at_once_instead_of_waiting_for_its_timeout(
        hub: Hub, dev: str, guard: ThreadGuard, where: str, marker: str, call: str) -> None:
    """Regression: a call that passed the driver's "shut down?" check just
    before ``shutdown()`` queued its stop command put its own command behind
    it, where the stopped I/O thread never ran it: the call waited for its
    whole timeout (120 s by default) and then raised ``OperationTimeout``.
    A trace function holds the caller exactly in that window (between the
    check and the append in ``ThreadDriver._submit``; for a publish on an idle
    connection, between the check and the hand-over to the engine in
    ``_publish_now``) while ``shutdown()`` runs on another thread; the call
    must complete, or end with ``OperationCancelled`` or ``ClientError``, not
    ``OperationTimeout``."""
    import inspect
    import sys
    from types import FrameType

    from iotdev.transport import _thread

    function = getattr(_thread.ThreadDriver, where)
    source, first = inspect.getsourcelines(function)
    append = [first + n for n, line in enumerate(source) if marker in line]
    assert len(append) == 1, f"ThreadDriver.{where} changed: update this test's window"
    client = Client.create_from_connection_string(
        hub.connection_string(dev), server_verification_cert=hub.ca_pem, port=hub.mqtt_port,
        operation_timeout=5)
    client.connect()
    in_window = threading.Event()
    shutdown_done = threading.Event()

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        if frame.f_code is function.__code__:
            def lines(frame: FrameType, event: str, arg: Any) -> Any:
                if event == "line" and frame.f_lineno == append[0] and not in_window.is_set():
                    in_window.set()
                    shutdown_done.wait(1.0)  # the fault: this caller is descheduled here
                return lines
            return lines
        return None

    outcome: list[BaseException | None] = []

    def caller() -> None:
        sys.settrace(tracer)
        try:
            if call == "send_message":
                client.send_message("racing shutdown")
            else:
                client.get_twin()
        except BaseException as exc:  # judged below
            outcome.append(exc)
        else:
            outcome.append(None)
        finally:
            sys.settrace(None)

    racer = threading.Thread(target=caller, name="racer", daemon=True)
    racer.start()
    assert in_window.wait(TIMEOUT)
    stopper = threading.Thread(target=client.shutdown, name="stopper", daemon=True)
    stopper.start()
    stopper.join(3.0)
    shutdown_done.set()
    with stopwatch() as elapsed:
        join_all([racer, stopper], 10)
        took = elapsed()
    report("sync call racing shutdown", outcome=type(outcome[0]).__name__, ended_after_s=took)
    # Queued before the stop command it completes or is cancelled; after it,
    # it is refused.  What it must not do is wait out its timeout.
    assert outcome[0] is None or isinstance(outcome[0], OperationCancelled | ClientError), outcome


# ---------------------------------------------------------------- handlers


def test_handlers_that_raise_block_or_call_back_neither_deadlock_nor_stall_keep_alive(
        hub: Hub, tap: HubTap, proxy: FaultProxy, dev: str, make: Callable[..., Client],
        guard: ThreadGuard) -> None:
    keep_alive = 2
    block_for = 2.5 * keep_alive  # longer than the hub's 1.5 x keep-alive patience
    client = make(dev, proxy.port, keep_alive=keep_alive)
    states = States(client)
    client.connect()
    blocked = threading.Event()
    handled: list[str] = []
    handled_cond = threading.Condition()
    twins: list[dict[str, Any]] = []

    def on_message(message: Message) -> None:
        text = message.data.decode()
        if text.startswith("block"):
            blocked.set()
            threading.Event().wait(block_for)  # the fault: a handler that blocks
        elif text == "raise":
            raise RuntimeError("a handler failed")
        elif text.startswith("echo"):
            client.send_message(Message(f"re:{text}", message_id=f"re:{text}"))
            twins.append(client.get_twin())
            client.patch_twin_reported_properties({"last": text})
        with handled_cond:
            handled.append(text)
            handled_cond.notify_all()

    def on_method(request: Any) -> None:
        client.send_method_response(MethodResponse.create_from_method_request(
            request, 200, {"echo": request.payload}))

    client.on_message_received = on_message
    client.on_method_request_received = on_method
    # 1. A handler blocks 2.5 x keep-alive with no other traffic: only the I/O
    #    thread's PINGREQs keep the hub (which closes after 1.5 x) from closing.
    hub.send_c2d(dev, b"block-1")
    assert blocked.wait(TIMEOUT)
    conn = proxy.open_connections()[0]
    records_before = conn.records[C2S]
    outcomes = Outcomes()
    with handled_cond:
        assert handled_cond.wait_for(lambda: "block-1" in handled, TIMEOUT)
    records_during = conn.records[C2S] - records_before
    # 2. Another block, while the main thread sends and a method is invoked;
    #    then a raise and ten handlers that call back into the client.
    blocked.clear()
    hub.send_c2d(dev, b"block-2")
    assert blocked.wait(TIMEOUT)
    for n in range(20):
        outcomes.run(lambda n=n: client.send_message(Message(f"main-{n}", message_id=f"main-{n}"),
                                                     timeout=TIMEOUT))
    hub.send_c2d(dev, b"raise")
    for n in range(10):
        hub.send_c2d(dev, f"echo-{n}".encode())
    result = hub.invoke_method(dev, "ping", {"n": 1}, timeout=TIMEOUT + block_for)
    errors = states.wait_errors(1)
    tap.wait_unique(dev, 30, TIMEOUT)
    expected = {**{f"main-{n}".encode(): f"main-{n}" for n in range(20)},
                **{f"re:echo-{n}".encode(): f"re:echo-{n}" for n in range(10)}}
    duplicates, distinct = check_at_least_once(tap, dev, expected)
    report("sync handlers raise / block / call back", keep_alive=keep_alive,
           block_s=block_for, c2s_records_while_blocked=records_during, handled=len(handled),
           method_status=result.status, distinct=distinct, duplicates=duplicates,
           states=states.states, hub_connections=tap.connects[dev])
    assert result.status == 200 and result.payload == {"echo": {"n": 1}}
    assert [e for e in errors if isinstance(e, RuntimeError)], errors
    assert handled == ["block-1", "block-2", *[f"echo-{n}" for n in range(10)]]
    assert len(twins) == 10 and twins[-1]["reported"]["last"] == "echo-8"
    assert outcomes.ok == 20
    assert states.states == [True], "the connection dropped while a handler blocked"
    assert tap.connects[dev] == 1 and proxy.accepted == 1
    assert records_during >= 1, "no PINGREQ left while the handler blocked"


# ---------------------------------------------------------------- emulator restart


def test_emulator_restarts_while_the_client_works(tmp_path: Path, guard: ThreadGuard) -> None:
    """The hub stops and a new one starts on the same port and state folder,
    three times, while a thread sends: the client retries with back-off
    (``connection_retry_interval=1``), ``on_connection_state_change`` sees each
    transition, every message arrives."""
    hub = Hub(mqtt_port=0, ws_port=None, state_dir=tmp_path / "hub").start()
    tap = HubTap().install(hub)
    proxy = FaultProxy((HOST, hub.mqtt_port), name="proxy-restart").start()
    dev = new_id()
    hub.add_device(dev)
    client = Client.create_from_connection_string(
        hub.connection_string(dev), server_verification_cert=hub.ca_pem, port=proxy.port,
        connection_retry_interval=1)
    try:
        states = States(client)
        client.connect()
        sent: list[str] = []
        outcomes = Outcomes()
        stop = threading.Event()

        def sender() -> None:
            n = 0
            while not stop.is_set():
                body = f"r-{n}"
                sent.append(body)
                outcomes.run(functools.partial(
                    client.send_message, Message(body, message_id=body), timeout=60))
                n += 1

        worker = threading.Thread(target=sender, name="sender", daemon=True)
        worker.start()
        gaps: list[list[float]] = []
        with stopwatch() as elapsed:
            for restart in range(3):
                seen = len(tap.telemetry[dev])
                tap.wait_for(lambda seen=seen: len(tap.telemetry[dev]) >= seen + 100, TIMEOUT,
                             "traffic")
                failures = proxy.upstream_failures
                first = len(proxy.attempts)
                hub.stop()
                states.wait(2 * restart + 2)
                refused = 3 if restart == 0 else 1  # the first outage shows the back-off
                proxy.wait_for(
                    lambda failures=failures, refused=refused:
                    proxy.upstream_failures >= failures + refused,
                    60, f"{refused} refused attempts while the hub is down")
                attempts = proxy.attempts[first:]
                gaps.append([round(b - a, 2) for a, b in itertools.pairwise(attempts)])
                hub = Hub(mqtt_port=hub.mqtt_port, ws_port=None, state_dir=hub.state_dir).start()
                tap.install(hub)
                states.wait(2 * restart + 3, timeout=60)
            seen = len(tap.telemetry[dev])
            tap.wait_for(lambda: len(tap.telemetry[dev]) >= seen + 100, TIMEOUT, "traffic")
            stop.set()
            join_all([worker], 60)
            took = elapsed()
        expected = {s.encode(): s for s in sent}
        duplicates, distinct = check_at_least_once(tap, dev, expected)
        report("sync emulator restarts", restarts=3, sent=len(sent), distinct=distinct,
               duplicates=duplicates, states=states.states, retry_gaps_s=gaps,
               background=sorted({type(e).__name__ for e in states.errors}),
               errors=outcomes.errors, elapsed_s=took)
        assert states.states == [True, False] * 3 + [True]
        assert outcomes.ok == len(sent) and not outcomes.untyped
        assert all(isinstance(e, ConnectionFailedError | ConnectionDroppedError)
                   for e in states.errors), states.errors
    finally:
        client.shutdown()
        proxy.close()
        hub.stop()


# ---------------------------------------------------------------- a hostile server

HOSTILE_DEVICE = "hostile-dev"
HOSTILE_KEY = "c2VjcmV0LWtleS1vZi1hLXRlc3QtZGV2aWNlLTAxMjM0NTY3OA=="
C2D_FILTER = f"devices/{HOSTILE_DEVICE}/messages/devicebound/#"
VECTORS = json.loads((Path(__file__).with_name("data") / "mqtt-3.1.1-vectors.json").read_text())
S2C_MALFORMED = [v for v in VECTORS["malformed"] if v["dir"] in ("s2c", "both")]


def hexbytes(text: str) -> bytes:
    return bytes.fromhex(text.replace(" ", ""))


def serve(conn: HostileConnection, connect: Connect) -> None:
    """A well-behaved server for the rest of the connection."""
    conn.send(ConnAck(False, 0))
    conn.serve(120)


def send_first(raw: bytes) -> Script:
    """Send ``raw`` instead of CONNACK, then wait for the client to hang up."""
    def script(conn: HostileConnection, connect: Connect) -> None:
        conn.send(raw)
        while conn.next_packet(10) is not None:
            pass
    return script


def after_connack(raw: bytes) -> Script:
    """Accept, then send ``raw`` once the client's first SUBSCRIBE or PUBLISH
    is in (so it is connected for sure), then wait for it to hang up."""
    def script(conn: HostileConnection, connect: Connect) -> None:
        conn.send(ConnAck(False, 0))
        conn.next_packet(10)
        conn.send(raw)
        while conn.next_packet(10) is not None:
            pass
    return script


def until_c2d_subscribed(conn: HostileConnection) -> bool:
    """Accept, answer SUBSCRIBEs until the C2D one; ``False`` if the client left."""
    conn.send(ConnAck(False, 0))
    while True:
        packet = conn.next_packet(10)
        if packet is None:
            return False
        if isinstance(packet, Subscribe):
            conn.send(SubAck(packet.packet_id, tuple(1 for _ in packet.subscriptions)))
            if any(f == C2D_FILTER for f, _ in packet.subscriptions):
                return True


def c2d_flood(count: int, size: int) -> Script:
    """``count`` C2D PUBLISHes (QoS 1) of ``size`` bytes as fast as TLS takes
    them, never reading the client's PUBACKs."""
    def script(conn: HostileConnection, connect: Connect) -> None:
        if not until_c2d_subscribed(conn):
            return
        payload = b"x" * size
        batch: list[bytes] = []
        for n in range(count):
            batch.append(encode(Publish(f"devices/{HOSTILE_DEVICE}/messages/devicebound/"
                                        f"%24.mid=f{n}", payload, 1, False, False,
                                        n % 65535 + 1)))
            if len(batch) == 64 or n == count - 1:
                if not conn.send(b"".join(batch)):
                    return
                batch = []
        conn.server.stopping.wait(120)  # keep the connection open, read nothing more
    return script


@pytest.fixture
def hostile_client(test_ca: CertAuthority, clients: list[Client]) -> Callable[..., Client]:
    def make(server: HostileServer, **kwargs: Any) -> Client:
        kwargs.setdefault("connection_retry_interval", 1)
        client = Client.create_from_symmetric_key(
            HOSTILE_KEY, HOST, HOSTILE_DEVICE, server_verification_cert=test_ca.ca_cert_pem,
            port=server.port, **kwargs)
        clients.append(client)
        return client
    return make


def hostile(test_ca: CertAuthority, scripts: list[Script]) -> HostileServer:
    """A hostile server with ``test_ca``'s certificate (use it in ``with``)."""
    return HostileServer(str(test_ca.server_cert), str(test_ca.server_key), scripts)


def test_c2d_flood_with_a_slow_handler_keeps_memory_bounded(
        test_ca: CertAuthority, hostile_client: Callable[..., Client],
        guard: ThreadGuard) -> None:
    """Regression: the I/O thread read and queued every message for the
    handler thread however far behind it was, so a server flooding C2D
    messages at a handler slower than the network grew the client's memory
    without bound (20,000 x 1 KB held about 28 MB).  Now reading pauses while
    the handler thread has a few MB waiting (TCP pushes back on the server)."""
    count, size = 20_000, 1_000
    with hostile(test_ca, [c2d_flood(count, size), serve]) as server:
        client = hostile_client(server)
        states = States(client)
        client.connect()
        received = [0]
        cond = threading.Condition()

        def on_message(message: Message) -> None:
            threading.Event().wait(0.0002)  # the fault: a handler slower than the network
            with cond:
                received[0] += 1
                cond.notify_all()

        tracemalloc.start()
        try:
            baseline = tracemalloc.get_traced_memory()[0]
            with stopwatch() as elapsed:
                client.on_message_received = on_message
                with cond:
                    assert cond.wait_for(lambda: received[0] >= count, 300), received
                took = elapsed()
            peak = tracemalloc.get_traced_memory()[1] - baseline
        finally:
            tracemalloc.stop()
        report("sync C2D flood, slow handler", messages=count, size=size, received=received[0],
               peak_mb=peak / 1e6, states=states.states, elapsed_s=took)
        assert received[0] == count
        assert peak < 12e6, f"memory grew by {peak / 1e6:.1f} MB during the flood"


def test_malformed_packets_instead_of_connack_fail_connect_with_a_typed_error(
        test_ca: CertAuthority, hostile_client: Callable[..., Client],
        guard: ThreadGuard) -> None:
    """Every server-to-client malformed vector of the conformance reference
    (and a PUBLISH before CONNACK) as the server's first packet: ``connect()``
    raises ``ConnectionFailedError`` caused by the protocol error; the next
    ``connect()`` (the server behaves) works and so does a send, on the same
    client."""
    raws = [(v["id"], hexbytes(v["hex"])) for v in S2C_MALFORMED]
    raws.append(("V12-before-CONNACK", encode(Publish("a/b", b"hi"))))
    scripts: list[Script] = []
    for _, raw in raws:
        scripts += [send_first(raw), serve]
    causes: dict[str, str] = {}
    with hostile(test_ca, scripts) as server:
        client = hostile_client(server)
        for name, _ in raws:
            with pytest.raises(ConnectionFailedError) as info:
                client.connect(timeout=TIMEOUT)
            cause = info.value.__cause__
            while cause is not None and cause.__cause__ is not None:
                cause = cause.__cause__
            causes[name] = type(cause).__name__
            client.connect(timeout=TIMEOUT)
            client.send_message(name, timeout=TIMEOUT)
            client.disconnect(timeout=TIMEOUT)
        assert not server.errors, server.errors
        assert [p.payload for p in server.received] == [n.encode() for n, _ in raws]
    report("sync malformed first packets", vectors=len(raws),
           causes=dict(sorted(collections.Counter(causes.values()).items())))
    assert all(c.endswith(("ProtocolError", "MalformedPacket", "PacketTooLarge"))
               for c in causes.values()), causes


def test_protocol_violations_after_connack_are_reported_and_the_client_reconnects(
        test_ca: CertAuthority, hostile_client: Callable[..., Client],
        guard: ThreadGuard) -> None:
    """A connected client gets a malformed packet (a sample of the vectors, a
    SUBACK for a SUBSCRIBE never sent, a 256 MB remaining length followed by
    megabytes of junk): each is reported to ``on_background_exception`` as a
    ``ConnectionDroppedError`` caused by the protocol error, the client
    reconnects, and the message it was sending arrives; memory stays flat."""
    sample = [v for v in S2C_MALFORMED if v["id"] in ("M01", "M02", "M05", "M11", "M13",
                                                       "M16", "M21", "M25", "M51", "M56")]
    raws = [(v["id"], hexbytes(v["hex"])) for v in sample]
    raws.append(("unknown SUBACK", encode(SubAck(4242, (1,)))))
    huge_header = b"\x30\xff\xff\xff\x7f"  # PUBLISH, remaining length 268,435,455

    def huge(conn: HostileConnection, connect: Connect) -> None:
        conn.send(ConnAck(False, 0))
        conn.next_packet(10)
        conn.send(huge_header + b"\x00\x03a/b")
        junk = b"\x00" * 65536
        for _ in range(64):  # 4 MB more, while the client should be gone already
            if not conn.send(junk):
                break
        while conn.next_packet(10) is not None:
            pass

    scripts: list[Script] = []
    for _, raw in raws:
        scripts.append(after_connack(raw))
    scripts += [huge, serve]
    with hostile(test_ca, scripts) as server:
        client = hostile_client(server)
        states = States(client)
        client.connect(timeout=TIMEOUT)
        tracemalloc.start()
        try:
            baseline = tracemalloc.get_traced_memory()[0]
            with stopwatch() as elapsed:
                for n in range(len(raws) + 1):
                    # Each connection: the send triggers the violation, the
                    # client drops, reconnects, and the re-sent message lands
                    # on the next connection (a later script).
                    client.send_message(f"msg-{n}", timeout=60)
                took = elapsed()
            peak = tracemalloc.get_traced_memory()[1] - baseline
        finally:
            tracemalloc.stop()
        dropped = [e for e in states.errors if isinstance(e, ConnectionDroppedError)]
        causes = [type(e.__cause__).__name__ for e in dropped]
        report("sync protocol violations after CONNACK", violations=len(raws) + 1,
               reconnects=server.connections - 1, dropped_reported=len(dropped),
               causes=dict(sorted(collections.Counter(causes).items())), peak_mb=peak / 1e6,
               elapsed_s=took)
        assert server.connections == len(raws) + 2
        assert len(dropped) == len(raws) + 1, states.errors
        assert all(c.endswith(("ProtocolError", "MalformedPacket", "PacketTooLarge"))
                   for c in causes), causes
        assert causes[-1] == "PacketTooLarge"
        assert states.states == [True, False] * (len(raws) + 1) + [True]
        assert peak < 8e6, f"memory grew by {peak / 1e6:.1f} MB"


def test_a_never_ending_byte_drip_is_given_up_by_keep_alive(
        test_ca: CertAuthority, hostile_client: Callable[..., Client],
        guard: ThreadGuard) -> None:
    """After CONNACK the server starts a PUBLISH and then sends one byte every
    0.1 s, forever: bytes keep coming but no packet ever completes, so no
    PINGRESP either; the client gives up, reports it, reconnects."""
    keep_alive = 2

    def drip(conn: HostileConnection, connect: Connect) -> None:
        conn.send(ConnAck(False, 0))
        conn.send(b"\x30\xff\xff\x03")  # PUBLISH of 65,535 bytes: never completes
        while not conn.server.stopping.is_set() and conn.send(b"\x00"):
            if conn.server.stopping.wait(0.1):  # the fault: a byte every 0.1 s
                break

    with hostile(test_ca, [drip, serve]) as server:
        client = hostile_client(server, keep_alive=keep_alive)
        states = States(client)
        client.connect(timeout=TIMEOUT)
        with stopwatch() as elapsed:
            client.send_message("after the drip", timeout=60)
            took = elapsed()
        report("sync byte drip", keep_alive=keep_alive, states=states.states,
               background=[f"{type(e).__name__}: {e}" for e in states.errors],
               elapsed_s=took)
        assert states.states[:3] == [True, False, True]
        assert any(isinstance(e, ConnectionDroppedError) and "PINGRESP" in str(e)
                   for e in states.errors), states.errors
        assert [p.payload for p in server.received] == [b"after the drip"]


# ---------------------------------------------------------------- mangled streams


@pytest.mark.parametrize("fault", ["corrupt", "duplicate", "truncate"])
@pytest.mark.parametrize("direction", [C2S, S2C])
def test_mangled_bytes_break_tls_and_the_client_recovers_without_loss(
        tap: HubTap, proxy: FaultProxy, dev: str, make: Callable[..., Client],
        guard: ThreadGuard, fault: str, direction: Any) -> None:
    """One chunk is corrupted, sent twice or cut short while four threads send:
    TLS refuses the stream on one side, the connection ends, the client
    reconnects (a background ``ClientError`` says why when it noticed first),
    and every message arrives at least once."""
    client = make(dev, proxy.port, keep_alive=3)
    states = States(client)
    client.connect()
    expected = {f"{t}-{i}".encode(): f"m-{t}-{i}" for t in range(4) for i in range(100)}
    outcomes = Outcomes()

    def sender(t: int) -> None:
        for i in range(100):
            outcomes.run(functools.partial(
                client.send_message, Message(f"{t}-{i}", message_id=f"m-{t}-{i}"), timeout=60))

    workers = [threading.Thread(target=sender, args=(t,), name=f"sender-{t}", daemon=True)
               for t in range(4)]
    for worker in workers:
        worker.start()
    tap.wait_for(lambda: len(tap.telemetry[dev]) >= 50, TIMEOUT, "50 messages")
    armed = {"corrupt": proxy.corrupt_next, "duplicate": proxy.duplicate_next,
             "truncate": lambda d: proxy.truncate_next(d, 7)}[fault](direction)
    armed.wait(TIMEOUT)
    join_all(workers, 120)
    duplicates, distinct = check_at_least_once(tap, dev, expected)
    report(f"sync {fault} {direction}", distinct=distinct, duplicates=duplicates,
           states=states.states, background=[type(e).__name__ for e in states.errors],
           proxy_connections=proxy.accepted, errors=outcomes.errors)
    assert outcomes.ok == len(expected) and not outcomes.untyped
    assert proxy.accepted >= 2 and states.states[:3] == [True, False, True]
    assert all(isinstance(e, ClientError) for e in states.errors), states.errors


# ---------------------------------------------------------------- handshakes, refusals


def test_drops_during_the_tls_handshake(tap: HubTap, proxy: FaultProxy, dev: str,
                                        make: Callable[..., Client],
                                        guard: ThreadGuard) -> None:
    """Cut while the server's first TLS flight is on its way: a first
    ``connect()`` raises ``ConnectionFailedError``; on a reconnection the
    failure goes to ``on_background_exception`` and the client retries."""
    handshake = lambda chunk: chunk.conn.app_records[C2S] == 0  # noqa: E731
    client = make(dev, proxy.port)
    states = States(client)
    proxy.drop_when(S2C, handshake, forward=40)
    with pytest.raises(ConnectionFailedError):
        client.connect(timeout=TIMEOUT)
    assert tap.connects[dev] == 0
    client.connect(timeout=TIMEOUT)
    first = proxy.drop_when(S2C, handshake, reset=True)
    second = proxy.drop_when(S2C, handshake, forward=100)
    proxy.drop_all()
    client.send_message("after two failed handshakes", timeout=60)
    first.wait(TIMEOUT)
    second.wait(TIMEOUT)
    errors = states.wait_errors(3)
    report("sync TLS handshake drops", proxy_connections=proxy.accepted,
           hub_connections=tap.connects[dev], background=[type(e).__name__ for e in errors],
           states=states.states)
    assert proxy.accepted == 5 and tap.connects[dev] == 2
    assert all(isinstance(e, ConnectionFailedError) for e in errors[1:3]), errors
    assert isinstance(errors[0], ConnectionDroppedError)
    assert list(tap.unique[dev]) == [b"after two failed handshakes"]


def test_drop_during_the_websocket_upgrade(hub: Hub, tap: HubTap, dev: str,
                                           make: Callable[..., Client],
                                           guard: ThreadGuard) -> None:
    """MQTT over WebSocket: the connection is cut after the client's upgrade
    request, before the answer; then after the upgrade, mid-stream."""
    assert hub.ws_port is not None
    with FaultProxy((HOST, hub.ws_port), name="proxy-ws") as ws_proxy:
        client = make(dev, ws_proxy.port, websockets=True)
        states = States(client)
        # TLS 1.3: the client's first application record is its Finished, the
        # second the HTTP upgrade request; cut the server's next answer.
        upgrade = ws_proxy.drop_when(S2C, lambda c: c.conn.app_records[C2S] >= 2)
        with pytest.raises(ConnectionFailedError):
            client.connect(timeout=TIMEOUT)
        upgrade.wait(0)
        assert tap.connects[dev] == 0  # no CONNECT reached the hub
        client.connect(timeout=TIMEOUT)
        for n in range(3):
            ws_proxy.drop_after(C2S, 500 + 300 * n, reset=n == 1)
            for i in range(50):
                client.send_message(f"ws-{n}-{i}", timeout=60)
        expected = {f"ws-{n}-{i}".encode(): None for n in range(3) for i in range(50)}
        copies = tap.copies(dev)
        report("sync WebSocket upgrade and stream drops", proxy_connections=ws_proxy.accepted,
               hub_connections=tap.connects[dev], drops=ws_proxy.drops, distinct=len(copies),
               states=states.states)
        assert set(copies) == set(expected)
        assert ws_proxy.drops == 4 and tap.connects[dev] == 4


def test_refused_connections_are_retried_until_the_network_is_back(
        tap: HubTap, proxy: FaultProxy, dev: str, make: Callable[..., Client],
        guard: ThreadGuard) -> None:
    client = make(dev, proxy.port)
    states = States(client)
    client.connect()
    proxy.refuse(True)
    proxy.drop_all(reset=True)
    outcomes = Outcomes()
    senders = [threading.Thread(target=outcomes.run, name=f"send-{n}", daemon=True,
                                args=(lambda n=n: client.send_message(f"while refused {n}",
                                                                      timeout=60),))
               for n in range(5)]
    for sender in senders:
        sender.start()
    proxy.wait_for(lambda: proxy.refused >= 3, 60, "three refused attempts")
    refused = proxy.refused
    proxy.refuse(False)
    join_all(senders, 60)
    report("sync refused connections", refused=refused, states=states.states,
           background=sorted({type(e).__name__ for e in states.errors}), ok=outcomes.ok)
    assert outcomes.ok == 5
    assert states.states == [True, False, True]
    assert sum(isinstance(e, ConnectionFailedError) for e in states.errors) >= 3


def test_latency_and_a_slow_link(tap: HubTap, proxy: FaultProxy, dev: str,
                                 make: Callable[..., Client], guard: ThreadGuard) -> None:
    """50 ms each way and 64 KB/s: sends complete.  Then 4 KB/s: a 16 KB message
    with a 1 s timeout raises ``OperationTimeout`` (typed) and still arrives."""
    client = make(dev, proxy.port)
    client.connect()
    proxy.set_delay(0.05)
    proxy.set_throttle(64_000)
    outcomes = Outcomes()
    senders = [threading.Thread(target=lambda t=t: [outcomes.run(
        lambda i=i: client.send_message(f"slow-{t}-{i}".ljust(2000, "."), timeout=60))
        for i in range(20)], name=f"send-{t}", daemon=True) for t in range(4)]
    with stopwatch() as elapsed:
        for sender in senders:
            sender.start()
        join_all(senders, 120)
        took = elapsed()
    proxy.set_throttle(4_000)
    big = "big".ljust(16_000, ".")
    with pytest.raises(OperationTimeout):
        client.send_message(big, timeout=1)
    tap.wait_for(lambda: big.encode() in tap.unique[dev], 60, "the big message")
    proxy.clear()
    client.send_message("fast again")
    report("sync latency 50 ms + 64 KB/s", messages=80, ok=outcomes.ok, elapsed_s=took,
           distinct=len(tap.unique[dev]))
    assert outcomes.ok == 80 and len(tap.unique[dev]) == 82


# ---------------------------------------------------------------- the generic client and mosquitto


@pytest.mark.parametrize("qos", [1, 2])
def test_generic_client_through_drops_to_mosquitto(
        mosquitto: Mosquitto, guard: ThreadGuard, qos: int) -> None:
    """``iotdev.mqtt.MQTTClient`` publishes 2,000 messages over plain MQTT
    through the proxy to a real mosquitto; the proxy drops the connection 19
    times at random bytes; a second client subscribed directly gets every
    message, and at QoS 2 exactly once (mosquitto and our session agree on the
    PUBREC state)."""
    seed = seed_for(f"mosquitto QoS {qos}")
    rng = random.Random(seed)
    topic = unique_name("iotdev/faults")
    count = 2000
    got: list[bytes] = []
    cond = threading.Condition()

    def on_message(message: MessageReceived) -> None:
        with cond:
            got.append(message.payload)
            cond.notify_all()

    with FaultProxy((mosquitto.host, mosquitto.tcp_port), name="proxy-mosquitto") as proxy:
        subscriber = MQTTClient(mosquitto.host, mosquitto.tcp_port,
                                client_id=unique_name("sub"), clean_session=False)
        publisher = MQTTClient(HOST, proxy.port, client_id=unique_name("pub"),
                               clean_session=False, retry_interval=0.05, keep_alive=5)
        try:
            subscriber.connect(timeout=TIMEOUT)
            subscriber.subscribe(topic, 2, callback=on_message, timeout=TIMEOUT)
            publisher.connect(timeout=TIMEOUT)
            futures = []
            fired = 0
            for segment in range(20):  # 100 messages each; a drop armed before 19 of them
                fault = None
                if segment:  # at least 400 bytes flow each way per segment
                    fault = proxy.drop_after(rng.choice((C2S, S2C)), rng.randint(0, 150),
                                             reset=rng.random() < 0.5)
                for n in range(segment * 100, segment * 100 + 100):
                    futures.append(publisher.publish(topic, f"{n}", qos))
                if fault is not None:
                    fault.wait(TIMEOUT)
                    fired += 1
            for future in futures:
                future.result(60)
            with cond:
                assert cond.wait_for(lambda: len(set(got)) >= count, 60), len(set(got))
            copies = collections.Counter(got)
        finally:
            publisher.shutdown()
            subscriber.shutdown()
    report(f"mosquitto QoS {qos} through drops", seed=seed, published=count,
           distinct=len(copies), duplicates=sum(c - 1 for c in copies.values()), drops=fired,
           proxy_connections=proxy.accepted)
    assert set(copies) == {f"{n}".encode() for n in range(count)}
    assert fired == 19 and proxy.accepted >= 11
    if qos == 2:
        assert max(copies.values()) == 1, "a QoS 2 message arrived twice"


def test_generic_client_qos2_burst_is_not_dropped_by_mosquitto_defaults(
        mosquitto: Mosquitto, guard: ThreadGuard) -> None:
    """Regression: ``MQTTClient`` kept up to 100 QoS 2 publishes in flight by
    default; mosquitto (default ``max_inflight_messages 20``) answers PUBREC
    and PUBCOMP to a 3.1.1 client over that quota but drops the message, so
    a burst of 2,000 lost 1,600 while every ``publish()`` future reported
    success.  The generic clients now default to 20 in flight (mosquitto's and
    paho's default)."""
    topic = unique_name("iotdev/burst")
    got: list[bytes] = []
    cond = threading.Condition()

    def on_message(message: MessageReceived) -> None:
        with cond:
            got.append(message.payload)
            cond.notify_all()

    subscriber = MQTTClient(mosquitto.host, mosquitto.tcp_port, client_id=unique_name("sub"))
    publisher = MQTTClient(mosquitto.host, mosquitto.tcp_port, client_id=unique_name("pub"))
    try:
        subscriber.connect(timeout=TIMEOUT)
        subscriber.subscribe(topic, 2, callback=on_message, timeout=TIMEOUT)
        publisher.connect(timeout=TIMEOUT)
        futures = [publisher.publish(topic, f"{n}", 2) for n in range(2000)]
        for future in futures:
            future.result(60)  # every publish "succeeded"
        with cond:
            cond.wait_for(lambda: len(got) >= 2000, 30)
            received = len(got)
    finally:
        publisher.shutdown()
        subscriber.shutdown()
    report("mosquitto QoS 2 burst with default settings", published=2000, received=received)
    assert received == 2000, f"mosquitto dropped {2000 - received} acknowledged messages"
