"""The asyncio ``IoTHubDeviceClient`` under faults: the twin of
``test_faults_sync.py`` (whose proxy, hub tap, hostile-server scripts and
helpers are reused), with tasks where the sync tests have threads.

Each test body is a coroutine run by ``asyncio.run`` under a deadline, with
the loop's exception handler watched (a task that died with an exception
nobody retrieved fails the test); clients are shut down on the same loop.
Blocking waits on the hub, the proxy or the hostile server run in worker
threads (``asyncio.to_thread``) so that the client's loop keeps running.
Nothing sleeps except where the sleep is the fault.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import random
import threading
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from iotdev import (
    ClientError,
    ConnectionDroppedError,
    ConnectionFailedError,
    Message,
    MethodResponse,
    OperationCancelled,
    OperationTimeout,
)
from iotdev._compat import async_timeout
from iotdev.aio import IoTHubDeviceClient
from iotdev.emulator import Hub
from iotdev_mqtt import ConnAck, Connect, Publish, SubAck, encode
from tests._broker import CertAuthority
from tests._faultkit import (
    HostileConnection,
    HubTap,
    Resources,
    Script,
    ThreadGuard,
    check_at_least_once,
    report,
    stopwatch,
)
from tests._faultproxy import C2S, S2C, FaultProxy
from tests.test_device_client_sync import HubSpy
from tests.test_faults_sync import (
    HOSTILE_DEVICE,
    HOSTILE_KEY,
    S2C_MALFORMED,
    TYPED,
    after_connack,
    c2d_flood,
    downtime,
    drop_at_points,
    drop_points,
    hexbytes,
    hostile,
    join_all,
    new_id,
    seed_for,
    send_first,
    serve,
    stop_dropping,
)

HOST = "127.0.0.1"
TIMEOUT = 15.0

Client = IoTHubDeviceClient


# ---------------------------------------------------------------- helpers


class AOutcomes:
    """What each awaited call ended with."""

    def __init__(self) -> None:
        self.ok = 0
        self.errors: dict[str, int] = {}
        self.untyped: list[BaseException] = []

    async def run(self, call: Awaitable[Any]) -> BaseException | None:
        try:
            await call
        except Exception as exc:  # recorded, judged by the test
            if isinstance(exc, TYPED):
                name = type(exc).__name__
                self.errors[name] = self.errors.get(name, 0) + 1
            else:
                self.untyped.append(exc)
            return exc
        self.ok += 1
        return None


class AStates:
    """``on_connection_state_change`` and ``on_background_exception`` of an
    asyncio client, recorded on its loop."""

    def __init__(self, client: Client) -> None:
        self.states: list[bool] = []
        self.at: list[float] = []
        self.errors: list[BaseException] = []
        self._changed = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        # Plain functions: the client runs them on its handler thread (as v2).
        client.on_connection_state_change = lambda: self._add(client.connected)
        client.on_background_exception = self._error

    def _add(self, connected: bool) -> None:
        self.states.append(connected)
        self.at.append(time.monotonic())
        self._loop.call_soon_threadsafe(self._changed.set)

    def _error(self, error: BaseException) -> None:
        self.errors.append(error)
        self._loop.call_soon_threadsafe(self._changed.set)

    async def wait_for(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        try:
            async with async_timeout(timeout):
                while not predicate():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            pytest.fail(f"timed out after {timeout} s waiting for {what}; states "
                        f"{self.states!r}, errors {self.errors!r}")

    async def wait(self, count: int, timeout: float = TIMEOUT) -> list[bool]:
        await self.wait_for(lambda: len(self.states) >= count, timeout,
                            f"{count} state changes")
        return list(self.states)

    async def wait_errors(self, count: int, timeout: float = TIMEOUT) -> list[BaseException]:
        await self.wait_for(lambda: len(self.errors) >= count, timeout,
                            f"{count} background exceptions")
        return list(self.errors)

    def downtime(self) -> float:
        return downtime(self.states, self.at)


def run(guard: ThreadGuard, body: Callable[[], Awaitable[Any]], deadline: float = 300) -> Any:
    """``body()`` on a new event loop whose exception handler ``guard`` watches."""
    async def main() -> Any:
        guard.watch_loop(asyncio.get_running_loop())
        async with async_timeout(deadline):
            return await body()

    return asyncio.run(main())


def make_client(hub: Hub, device_id: str, port: int, **kwargs: Any) -> Client:
    kwargs.setdefault("server_verification_cert", hub.ca_pem)
    kwargs.setdefault("connection_retry_interval", 1)
    return Client.create_from_connection_string(hub.connection_string(device_id), port=port,
                                                **kwargs)


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    return await asyncio.to_thread(fn, *args)


# ---------------------------------------------------------------- fixtures (as the sync module's)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    with Hub(mqtt_port=0, ws_port=0, state_dir=tmp_path_factory.mktemp("hub")) as running:
        yield running


@pytest.fixture
def guard() -> Iterator[ThreadGuard]:
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
def hostile_aio(test_ca: CertAuthority) -> Callable[..., Client]:
    def make(server: Any, **kwargs: Any) -> Client:
        kwargs.setdefault("connection_retry_interval", 1)
        return Client.create_from_symmetric_key(
            HOSTILE_KEY, HOST, HOSTILE_DEVICE, server_verification_cert=test_ca.ca_cert_pem,
            port=server.port, **kwargs)
    return make


# ---------------------------------------------------------------- 10,000 through 100 drops


def test_ten_thousand_messages_from_eight_tasks_through_a_hundred_drops(
        hub: Hub, tap: HubTap, proxy: FaultProxy, dev: str, guard: ThreadGuard) -> None:
    seed = seed_for("asyncio 10,000 x 100 drops")
    rng = random.Random(seed)
    tasks_n, per_task, drops_wanted = 8, 1250, 100
    expected = {f"{t}-{i}".encode(): f"m-{t}-{i}" for t in range(tasks_n)
                for i in range(per_task)}
    outcomes = AOutcomes()
    done = threading.Event()
    armed: list[Any] = []
    kinds: dict[str, int] = {}
    figures: dict[str, Any] = {}

    async def body() -> None:
        client = make_client(hub, dev, proxy.port)
        states = AStates(client)
        try:
            await client.connect()

            async def sender(t: int) -> None:
                for i in range(per_task):
                    await outcomes.run(client.send_message(
                        Message(f"{t}-{i}", message_id=f"m-{t}-{i}"), timeout=120))

            chaos = threading.Thread(target=drop_at_points, name="faulter", daemon=True,
                                     args=(proxy, tap, dev, rng,
                                           drop_points(rng, len(expected), drops_wanted),
                                           done, armed, kinds))
            with stopwatch() as elapsed:
                chaos.start()
                try:
                    await asyncio.gather(*(sender(t) for t in range(tasks_n)))
                finally:
                    stop_dropping(proxy, tap, done, armed)
                    await in_thread(join_all, [chaos], 30)
                figures["took"] = elapsed()
            figures["background"] = list(states.errors)
            figures["downtime"] = states.downtime()
            figures["connected"] = client.connected
        finally:
            await client.shutdown()

    run(guard, body, deadline=900)
    took = figures["took"]
    assert not outcomes.untyped, f"untyped errors: {outcomes.untyped[:3]!r}"
    duplicates, distinct = check_at_least_once(tap, dev, expected)
    report("asyncio 10,000 msgs / 8 tasks / drops", seed=seed, sent=len(expected),
           ok=outcomes.ok, errors=outcomes.errors, distinct=distinct, duplicates=duplicates,
           drops=proxy.drops, drop_kinds=kinds, reconnects=max(0, tap.connects[dev] - 1),
           proxy_connections=proxy.accepted, background_errors=len(figures["background"]),
           elapsed_s=took, downtime_s=figures["downtime"], msgs_per_s=len(expected) / took,
           msgs_per_connected_s=len(expected) / max(0.001, took - figures["downtime"]))
    assert proxy.drops >= 90, f"only {proxy.drops} drops happened: the test did not test"
    assert outcomes.ok + sum(outcomes.errors.values()) == len(expected)
    assert all(isinstance(e, ClientError) for e in figures["background"])
    assert figures["connected"]


# ---------------------------------------------------------------- half-open connection


@pytest.mark.parametrize("traffic", ["idle", "steady"])
def test_half_open_connection_is_detected_and_pending_sends_complete(
        tap: HubTap, proxy: FaultProxy, dev: str, hub: Hub, guard: ThreadGuard,
        traffic: str) -> None:
    """As the sync test: the link goes silent with both sockets open; detected
    within 1.5 x keep-alive + ping timeout, even while the client keeps
    sending; everything sent arrives after the reconnection."""
    keep_alive = 3
    bound = 1.5 * keep_alive + keep_alive
    figures: dict[str, Any] = {}
    outcomes = AOutcomes()
    trickled: list[str] = []

    async def body() -> None:
        client = make_client(hub, dev, proxy.port, keep_alive=keep_alive)
        states = AStates(client)
        try:
            await client.connect()
            await client.send_message(Message("before", message_id="before"))
            stalled_on = proxy.open_connections()
            proxy.stall()
            await in_thread(proxy.wait_for, lambda: all(c.stalled for c in stalled_on),
                            TIMEOUT, "the stall")
            stalled_at = time.monotonic()
            pending = [asyncio.ensure_future(outcomes.run(client.send_message(
                Message(f"pending-{n}", message_id=f"pending-{n}"), timeout=60)))
                for n in range(3)]
            recovered = asyncio.Event()

            async def trickle() -> None:  # paced by its own 0.5 s timeout, not by sleeping
                n = 0
                while not recovered.is_set():
                    body = f"trickle-{n}"
                    trickled.append(body)
                    error = await outcomes.run(client.send_message(
                        Message(body, message_id=body), timeout=0.5))
                    assert error is None or isinstance(error, OperationTimeout), error
                    n += 1

            trickler = asyncio.ensure_future(trickle()) if traffic == "steady" else None
            await states.wait(2, timeout=120)
            figures["detected"] = states.at[1] - stalled_at
            await states.wait(3)
            recovered.set()
            await asyncio.gather(*pending, *([trickler] if trickler else []))
            figures["states"] = list(states.states)
            figures["background"] = [type(e).__name__ for e in states.errors]
            figures["blackholed"] = stalled_on[0].blackholed
        finally:
            await client.shutdown()

    run(guard, body)
    expected = {b"before": "before", **{f"pending-{n}".encode(): f"pending-{n}"
                                        for n in range(3)},
                **{t.encode(): t for t in trickled}}
    tap.wait_unique(dev, len(expected), 60)
    duplicates, distinct = check_at_least_once(tap, dev, expected)
    report(f"asyncio half-open ({traffic})", keep_alive=keep_alive,
           detected_s=figures["detected"], bound_s=bound, trickled=len(trickled),
           distinct=distinct, duplicates=duplicates, errors=outcomes.errors,
           background=figures["background"], blackholed=figures["blackholed"])
    assert figures["states"][:3] == [True, False, True]
    assert outcomes.ok >= 3 and not outcomes.untyped
    assert figures["detected"] <= bound, (
        f"the dead link was noticed after {figures['detected']:.1f} s, more than 1.5 x "
        f"keep-alive + ping timeout = {bound:g} s")
    assert figures["blackholed"][C2S] > 0


# ---------------------------------------------------------------- shutdown in flight


@pytest.mark.parametrize("link", ["flowing", "stalled", "down"])
def test_shutdown_from_another_thread_ends_every_operation_and_leaks_nothing(
        tmp_path: Path, guard: ThreadGuard, link: str) -> None:
    """8 tasks send, one reads the twin, one waits in ``receive_message``;
    another thread calls ``shutdown()`` (on the client's loop, with
    ``run_coroutine_threadsafe``): every call ends with ``OperationCancelled``
    or ``ClientError``, and once the loop is closed no thread or file
    descriptor is left."""
    before = Resources.now()
    hub = Hub(mqtt_port=0, ws_port=None, state_dir=tmp_path / "hub").start()
    proxy = FaultProxy((HOST, hub.mqtt_port), name="proxy-shutdown").start()
    tap = HubTap().install(hub)
    dev = new_id()
    hub.add_device(dev)
    ends: dict[str, list[str]] = {}
    calls = {"ok": 0}

    async def body() -> None:
        client = make_client(hub, dev, proxy.port)
        await client.connect()
        loop = asyncio.get_running_loop()

        async def forever(name: str, call: Callable[[], Awaitable[Any]]) -> None:
            while True:
                try:
                    await call()
                except Exception as exc:  # judged below
                    ends.setdefault(name, []).append(type(exc).__name__)
                    assert isinstance(exc, OperationCancelled | ClientError), (name, exc)
                    if isinstance(exc, ClientError):
                        assert "shut down" in str(exc), (name, exc)
                        return
                    continue
                calls["ok"] += 1

        tasks = [asyncio.ensure_future(forever(f"send-{n}",
                                               lambda n=n: client.send_message(f"{n}")))
                 for n in range(8)]
        tasks.append(asyncio.ensure_future(forever("twin", client.get_twin)))
        tasks.append(asyncio.ensure_future(forever("receive", client.receive_message)))
        await in_thread(tap.wait_for, lambda: len(tap.telemetry[dev]) >= 200, TIMEOUT,
                        "200 messages")
        if link == "stalled":
            proxy.stall()
        elif link == "down":
            proxy.refuse(True)
            proxy.drop_all(reset=True)
        await in_thread(proxy.wait_for, lambda: link == "flowing" or proxy.drops > 0 or all(
            c.stalled for c in proxy.connections if c.open), TIMEOUT, f"the link to be {link}")

        def stop() -> None:
            asyncio.run_coroutine_threadsafe(client.shutdown(), loop).result(10)

        with stopwatch() as elapsed:
            await in_thread(stop)
            async with async_timeout(10):
                await asyncio.gather(*tasks)
            figures["took"] = elapsed()

    figures: dict[str, Any] = {}
    run(guard, body)
    proxy.close()
    hub.stop()
    after = Resources.now()
    report(f"asyncio shutdown in flight ({link})", calls_ok=calls["ok"],
           ends={k: "/".join(v) for k, v in sorted(ends.items())}, shutdown_s=figures["took"],
           threads_before=len(before.threads), threads_after=len(after.threads),
           fds_before=before.fds, fds_after=after.fds)
    assert len(ends) == 10 and all(v[-1] == "ClientError" for v in ends.values()), ends
    assert after.threads == before.threads, (before.threads, after.threads)
    assert after.fds == before.fds, f"{after.fds - before.fds} file descriptors leaked"


# ---------------------------------------------------------------- handlers


def test_handlers_that_raise_block_or_call_back_neither_deadlock_nor_stall_keep_alive(
        hub: Hub, tap: HubTap, proxy: FaultProxy, dev: str, guard: ThreadGuard,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Coroutine handlers: one awaits 2.5 x keep-alive (the loop stays free,
    so keep-alive continues), one raises, ten call back into the client
    (send, twin GET and PATCH); a plain method handler answers."""
    keep_alive = 2
    block_for = 2.5 * keep_alive
    figures: dict[str, Any] = {}
    handled: list[str] = []
    twins: list[dict[str, Any]] = []
    spy = HubSpy().install(hub, monkeypatch.setattr)

    async def body() -> None:
        client = make_client(hub, dev, proxy.port, keep_alive=keep_alive)
        states = AStates(client)
        done = asyncio.Event()
        try:
            await client.connect()

            async def on_message(message: Message) -> None:
                text = message.data.decode()
                if text == "block":
                    await asyncio.sleep(block_for)  # the fault: a handler that takes long
                elif text == "raise":
                    raise RuntimeError("a handler failed")
                elif text.startswith("echo"):
                    await client.send_message(Message(f"re:{text}", message_id=f"re:{text}"))
                    twins.append(await client.get_twin())
                    await client.patch_twin_reported_properties({"last": text})
                handled.append(text)
                if len(handled) == 11:
                    done.set()

            def on_method(request: Any) -> Awaitable[None]:
                return client.send_method_response(MethodResponse.create_from_method_request(
                    request, 200, {"echo": request.payload}))

            client.on_message_received = on_message
            client.on_method_request_received = on_method
            # The asyncio setters subscribe in a task (README: a known gap).
            await in_thread(spy.wait_subscribed, dev, "$iothub/methods/POST/#")
            conn = proxy.open_connections()[0]
            await hub.asend_c2d(dev, b"block")
            records_before = conn.records[C2S]
            await hub.asend_c2d(dev, b"raise")
            for n in range(10):
                await hub.asend_c2d(dev, f"echo-{n}".encode())
            figures["method"] = await hub.ainvoke_method(dev, "ping", {"n": 1}, timeout=TIMEOUT)
            async with async_timeout(TIMEOUT + block_for):
                await done.wait()
            figures["records"] = conn.records[C2S] - records_before
            figures["errors"] = await states.wait_errors(1)
            figures["states"] = list(states.states)
        finally:
            await client.shutdown()

    run(guard, body)
    expected = {f"re:echo-{n}".encode(): f"re:echo-{n}" for n in range(10)}
    _, distinct = check_at_least_once(tap, dev, expected)
    report("asyncio handlers raise / block / call back", keep_alive=keep_alive,
           block_s=block_for, c2s_records_while_blocked=figures["records"],
           handled=len(handled), method_status=figures["method"].status, distinct=distinct,
           states=figures["states"], hub_connections=tap.connects[dev])
    assert figures["method"].status == 200 and figures["method"].payload == {"echo": {"n": 1}}
    assert any(isinstance(e, RuntimeError) for e in figures["errors"]), figures["errors"]
    assert sorted(handled) == sorted(["block", *[f"echo-{n}" for n in range(10)]])
    assert handled[-1] == "block"  # the others ran while it waited
    assert len(twins) == 10
    assert figures["states"] == [True], "the connection dropped while a handler blocked"
    assert tap.connects[dev] == 1 and proxy.accepted == 1
    assert figures["records"] >= 1, "no PINGREQ left while the handler blocked"


# ---------------------------------------------------------------- emulator restart


def test_emulator_restarts_while_the_client_works(tmp_path: Path, guard: ThreadGuard) -> None:
    box = {"hub": Hub(mqtt_port=0, ws_port=None, state_dir=tmp_path / "hub").start()}
    tap = HubTap().install(box["hub"])
    proxy = FaultProxy((HOST, box["hub"].mqtt_port), name="proxy-restart").start()
    dev = new_id()
    box["hub"].add_device(dev)
    sent: list[str] = []
    outcomes = AOutcomes()
    figures: dict[str, Any] = {"gaps": []}

    def restart() -> None:
        old = box["hub"]
        box["hub"] = Hub(mqtt_port=old.mqtt_port, ws_port=None, state_dir=old.state_dir).start()
        tap.install(box["hub"])

    async def body() -> None:
        client = make_client(box["hub"], dev, proxy.port)
        states = AStates(client)
        stop = asyncio.Event()
        try:
            await client.connect()

            async def sender() -> None:
                n = 0
                while not stop.is_set():
                    text = f"r-{n}"
                    sent.append(text)
                    await outcomes.run(client.send_message(Message(text, message_id=text),
                                                           timeout=60))
                    n += 1

            task = asyncio.ensure_future(sender())
            with stopwatch() as elapsed:
                for n in range(3):
                    seen = len(tap.telemetry[dev])
                    await in_thread(tap.wait_for, lambda seen=seen: len(tap.telemetry[dev])
                                    >= seen + 100, TIMEOUT, "traffic")
                    failures, first = proxy.upstream_failures, len(proxy.attempts)
                    await in_thread(box["hub"].stop)
                    await states.wait(2 * n + 2)
                    refused = 3 if n == 0 else 1
                    await in_thread(proxy.wait_for, lambda failures=failures, refused=refused:
                                    proxy.upstream_failures >= failures + refused, 60,
                                    "refused attempts")
                    attempts = proxy.attempts[first:]
                    figures["gaps"].append([round(b - a, 2)
                                            for a, b in itertools.pairwise(attempts)])
                    await in_thread(restart)
                    await states.wait(2 * n + 3, timeout=60)
                seen = len(tap.telemetry[dev])
                await in_thread(tap.wait_for, lambda: len(tap.telemetry[dev]) >= seen + 100,
                                TIMEOUT, "traffic")
                stop.set()
                await task
                figures["took"] = elapsed()
            figures["states"] = list(states.states)
            figures["errors"] = list(states.errors)
        finally:
            await client.shutdown()

    try:
        run(guard, body)
    finally:
        proxy.close()
        box["hub"].stop()
    expected = {s.encode(): s for s in sent}
    duplicates, distinct = check_at_least_once(tap, dev, expected)
    report("asyncio emulator restarts", restarts=3, sent=len(sent), distinct=distinct,
           duplicates=duplicates, states=figures["states"], retry_gaps_s=figures["gaps"],
           background=sorted({type(e).__name__ for e in figures["errors"]}),
           errors=outcomes.errors, elapsed_s=figures["took"])
    assert figures["states"] == [True, False] * 3 + [True]
    assert outcomes.ok == len(sent) and not outcomes.untyped
    assert all(isinstance(e, ConnectionFailedError | ConnectionDroppedError)
               for e in figures["errors"]), figures["errors"]


# ---------------------------------------------------------------- a hostile server


def test_c2d_flood_with_a_slow_coroutine_handler_keeps_memory_bounded(
        test_ca: CertAuthority, hostile_aio: Callable[..., Client], guard: ThreadGuard) -> None:
    """Regression: every coroutine handler call became a task at once, so a
    server flooding C2D messages at a handler that works through them one at a
    time (here: under a lock) held every message in a waiting task (10,000 x
    1 KB took about 32 MB, growing with the flood).  Now the client stops
    reading while a few hundred handler tasks are pending."""
    count, size = 10_000, 1_000
    figures: dict[str, Any] = {}

    async def body() -> None:
        with hostile(test_ca, [c2d_flood(count, size), serve]) as server:
            client = hostile_aio(server)
            states = AStates(client)
            received = [0]
            finished = asyncio.Event()
            lock = asyncio.Lock()
            try:
                await client.connect()

                async def on_message(message: Message) -> None:
                    async with lock:  # the fault: one at a time, slower than the network
                        await asyncio.sleep(0)
                    received[0] += 1
                    if received[0] == count:
                        finished.set()

                tracemalloc.start()
                try:
                    baseline = tracemalloc.get_traced_memory()[0]
                    with stopwatch() as elapsed:
                        client.on_message_received = on_message
                        async with async_timeout(300):
                            await finished.wait()
                        figures["took"] = elapsed()
                    figures["peak"] = tracemalloc.get_traced_memory()[1] - baseline
                finally:
                    tracemalloc.stop()
                figures["received"] = received[0]
                figures["states"] = list(states.states)
            finally:
                await client.shutdown()

    run(guard, body)
    report("asyncio C2D flood, slow coroutine handler", messages=count, size=size,
           received=figures["received"], peak_mb=figures["peak"] / 1e6,
           states=figures["states"], elapsed_s=figures["took"])
    assert figures["received"] == count
    assert figures["peak"] < 12e6, f"memory grew by {figures['peak'] / 1e6:.1f} MB"


def test_malformed_packets_instead_of_connack_fail_connect_with_a_typed_error(
        test_ca: CertAuthority, hostile_aio: Callable[..., Client], guard: ThreadGuard) -> None:
    raws = [(v["id"], hexbytes(v["hex"])) for v in S2C_MALFORMED]
    raws.append(("V12-before-CONNACK", encode(Publish("a/b", b"hi"))))
    scripts: list[Script] = []
    for _, raw in raws:
        scripts += [send_first(raw), serve]
    causes: dict[str, str] = {}
    received: list[bytes] = []

    async def body() -> None:
        with hostile(test_ca, scripts) as server:
            client = hostile_aio(server)
            try:
                for name, _ in raws:
                    with pytest.raises(ConnectionFailedError) as info:
                        await client.connect(timeout=TIMEOUT)
                    cause = info.value.__cause__
                    while cause is not None and cause.__cause__ is not None:
                        cause = cause.__cause__
                    causes[name] = type(cause).__name__
                    await client.connect(timeout=TIMEOUT)
                    await client.send_message(name, timeout=TIMEOUT)
                    await client.disconnect()
            finally:
                await client.shutdown()
            await in_thread(server.wait_connections, 2 * len(raws), TIMEOUT)
            received.extend(p.payload for p in server.received)
            assert not server.errors, server.errors

    run(guard, body)
    report("asyncio malformed first packets", vectors=len(raws),
           causes=dict(sorted(collections.Counter(causes.values()).items())))
    assert sorted(received) == sorted(n.encode() for n, _ in raws)
    assert all(c.endswith(("ProtocolError", "MalformedPacket", "PacketTooLarge"))
               for c in causes.values()), causes


def test_protocol_violations_after_connack_are_reported_and_the_client_reconnects(
        test_ca: CertAuthority, hostile_aio: Callable[..., Client], guard: ThreadGuard) -> None:
    sample = [v for v in S2C_MALFORMED if v["id"] in ("M01", "M02", "M05", "M11", "M13",
                                                       "M16", "M21", "M25", "M51", "M56")]
    raws = [(v["id"], hexbytes(v["hex"])) for v in sample]
    raws.append(("unknown SUBACK", encode(SubAck(4242, (1,)))))

    def huge(conn: HostileConnection, connect: Connect) -> None:
        conn.send(ConnAck(False, 0))
        conn.next_packet(10)
        conn.send(b"\x30\xff\xff\xff\x7f\x00\x03a/b")  # remaining length 268,435,455
        junk = b"\x00" * 65536
        for _ in range(64):
            if not conn.send(junk):
                break
        while conn.next_packet(10) is not None:
            pass

    scripts: list[Script] = [after_connack(raw) for _, raw in raws] + [huge, serve]
    figures: dict[str, Any] = {}

    async def body() -> None:
        with hostile(test_ca, scripts) as server:
            client = hostile_aio(server)
            states = AStates(client)
            try:
                await client.connect(timeout=TIMEOUT)
                tracemalloc.start()
                try:
                    baseline = tracemalloc.get_traced_memory()[0]
                    with stopwatch() as elapsed:
                        for n in range(len(raws) + 1):
                            await client.send_message(f"msg-{n}", timeout=60)
                        figures["took"] = elapsed()
                    figures["peak"] = tracemalloc.get_traced_memory()[1] - baseline
                finally:
                    tracemalloc.stop()
                figures["connections"] = server.connections
                figures["errors"] = list(states.errors)
                figures["states"] = list(states.states)
            finally:
                await client.shutdown()

    run(guard, body)
    dropped = [e for e in figures["errors"] if isinstance(e, ConnectionDroppedError)]
    causes = [type(e.__cause__).__name__ for e in dropped]
    report("asyncio protocol violations after CONNACK", violations=len(raws) + 1,
           reconnects=figures["connections"] - 1, dropped_reported=len(dropped),
           causes=dict(sorted(collections.Counter(causes).items())),
           peak_mb=figures["peak"] / 1e6, elapsed_s=figures["took"])
    assert figures["connections"] == len(raws) + 2
    assert len(dropped) == len(raws) + 1, figures["errors"]
    assert all(c.endswith(("ProtocolError", "MalformedPacket", "PacketTooLarge"))
               for c in causes), causes
    assert causes[-1] == "PacketTooLarge"
    assert figures["states"] == [True, False] * (len(raws) + 1) + [True]
    assert figures["peak"] < 8e6, f"memory grew by {figures['peak'] / 1e6:.1f} MB"


def test_a_never_ending_byte_drip_is_given_up_by_keep_alive(
        test_ca: CertAuthority, hostile_aio: Callable[..., Client], guard: ThreadGuard) -> None:
    keep_alive = 2

    def drip(conn: HostileConnection, connect: Connect) -> None:
        conn.send(ConnAck(False, 0))
        conn.send(b"\x30\xff\xff\x03")
        while not conn.server.stopping.is_set() and conn.send(b"\x00"):
            if conn.server.stopping.wait(0.1):  # the fault: a byte every 0.1 s
                break

    figures: dict[str, Any] = {}

    async def body() -> None:
        with hostile(test_ca, [drip, serve]) as server:
            client = hostile_aio(server, keep_alive=keep_alive)
            states = AStates(client)
            try:
                await client.connect(timeout=TIMEOUT)
                with stopwatch() as elapsed:
                    await client.send_message("after the drip", timeout=60)
                    figures["took"] = elapsed()
                figures["states"] = list(states.states)
                figures["errors"] = list(states.errors)
                figures["received"] = [p.payload for p in server.received]
            finally:
                await client.shutdown()

    run(guard, body)
    report("asyncio byte drip", keep_alive=keep_alive, states=figures["states"],
           background=[f"{type(e).__name__}: {e}" for e in figures["errors"]],
           elapsed_s=figures["took"])
    assert figures["states"][:3] == [True, False, True]
    assert any(isinstance(e, ConnectionDroppedError) and "PINGRESP" in str(e)
               for e in figures["errors"]), figures["errors"]
    assert figures["received"] == [b"after the drip"]


# ---------------------------------------------------------------- mangled streams, handshakes


@pytest.mark.parametrize(("fault", "direction"), [("corrupt", S2C), ("duplicate", C2S),
                                                  ("truncate", S2C)])
def test_mangled_bytes_break_tls_and_the_client_recovers_without_loss(
        hub: Hub, tap: HubTap, proxy: FaultProxy, dev: str, guard: ThreadGuard, fault: str,
        direction: Any) -> None:
    expected = {f"{t}-{i}".encode(): f"m-{t}-{i}" for t in range(4) for i in range(100)}
    outcomes = AOutcomes()
    figures: dict[str, Any] = {}

    async def body() -> None:
        client = make_client(hub, dev, proxy.port, keep_alive=3)
        states = AStates(client)
        try:
            await client.connect()

            async def sender(t: int) -> None:
                for i in range(100):
                    await outcomes.run(client.send_message(
                        Message(f"{t}-{i}", message_id=f"m-{t}-{i}"), timeout=60))

            tasks = [asyncio.ensure_future(sender(t)) for t in range(4)]
            await in_thread(tap.wait_for, lambda: len(tap.telemetry[dev]) >= 50, TIMEOUT,
                            "50 messages")
            armed = {"corrupt": proxy.corrupt_next, "duplicate": proxy.duplicate_next,
                     "truncate": lambda d: proxy.truncate_next(d, 7)}[fault](direction)
            await in_thread(armed.wait, TIMEOUT)
            await asyncio.gather(*tasks)
            figures["states"] = list(states.states)
            figures["errors"] = list(states.errors)
        finally:
            await client.shutdown()

    run(guard, body)
    duplicates, distinct = check_at_least_once(tap, dev, expected)
    report(f"asyncio {fault} {direction}", distinct=distinct, duplicates=duplicates,
           states=figures["states"], background=[type(e).__name__ for e in figures["errors"]],
           proxy_connections=proxy.accepted)
    assert outcomes.ok == len(expected) and not outcomes.untyped
    assert proxy.accepted >= 2 and figures["states"][:3] == [True, False, True]
    assert all(isinstance(e, ClientError) for e in figures["errors"]), figures["errors"]


def test_drops_during_the_tls_handshake_and_the_websocket_upgrade(
        hub: Hub, tap: HubTap, dev: str, guard: ThreadGuard) -> None:
    assert hub.ws_port is not None
    figures: dict[str, Any] = {}

    async def body() -> None:
        with FaultProxy((HOST, hub.ws_port), name="proxy-ws") as ws_proxy:
            client = make_client(hub, dev, ws_proxy.port, websockets=True)
            states = AStates(client)
            try:
                handshake = ws_proxy.drop_when(S2C, lambda c: c.conn.app_records[C2S] == 0,
                                               forward=40)
                with pytest.raises(ConnectionFailedError):
                    await client.connect(timeout=TIMEOUT)
                assert handshake.fired.is_set()
                upgrade = ws_proxy.drop_when(S2C, lambda c: c.conn.app_records[C2S] >= 2)
                with pytest.raises(ConnectionFailedError):
                    await client.connect(timeout=TIMEOUT)
                assert upgrade.fired.is_set() and tap.connects[dev] == 0
                await client.connect(timeout=TIMEOUT)
                again = ws_proxy.drop_when(S2C, lambda c: c.conn.app_records[C2S] >= 2,
                                           reset=True)
                ws_proxy.drop_all()
                await client.send_message("after a failed upgrade", timeout=60)
                assert again.fired.is_set()
                figures["errors"] = await states.wait_errors(2)
                figures["states"] = list(states.states)
                figures["accepted"] = ws_proxy.accepted
            finally:
                await client.shutdown()

    run(guard, body)
    report("asyncio TLS handshake and WebSocket upgrade drops",
           proxy_connections=figures["accepted"], hub_connections=tap.connects[dev],
           background=[type(e).__name__ for e in figures["errors"]],
           states=figures["states"])
    assert figures["accepted"] == 5 and tap.connects[dev] == 2
    assert isinstance(figures["errors"][0], ConnectionDroppedError)
    assert isinstance(figures["errors"][1], ConnectionFailedError)
    assert list(tap.unique[dev]) == [b"after a failed upgrade"]


def test_refused_connections_are_retried_until_the_network_is_back(
        hub: Hub, tap: HubTap, proxy: FaultProxy, dev: str, guard: ThreadGuard) -> None:
    outcomes = AOutcomes()
    figures: dict[str, Any] = {}

    async def body() -> None:
        client = make_client(hub, dev, proxy.port)
        states = AStates(client)
        try:
            await client.connect()
            proxy.refuse(True)
            proxy.drop_all(reset=True)
            sends = [asyncio.ensure_future(outcomes.run(client.send_message(
                f"while refused {n}", timeout=60))) for n in range(5)]
            await in_thread(proxy.wait_for, lambda: proxy.refused >= 3, 60, "3 refusals")
            figures["refused"] = proxy.refused
            proxy.refuse(False)
            await asyncio.gather(*sends)
            figures["states"] = list(states.states)
            figures["errors"] = list(states.errors)
        finally:
            await client.shutdown()

    run(guard, body)
    report("asyncio refused connections", refused=figures["refused"], states=figures["states"],
           background=sorted({type(e).__name__ for e in figures["errors"]}), ok=outcomes.ok)
    assert outcomes.ok == 5
    assert figures["states"] == [True, False, True]
    assert sum(isinstance(e, ConnectionFailedError) for e in figures["errors"]) >= 3
