"""Soak: a sync and an asyncio device client under mixed traffic and periodic
faults, with memory, threads and file descriptors sampled over time.

    python -m tests.soak --minutes 60          # `make soak`
    python -m tests.soak --seconds 120 --seed 7

``test_faults_soak.py`` runs two minutes of it in ``make test``.

What runs, against a local emulator (TLS and WebSocket listeners) behind two
``FaultProxy`` instances:

* device ``soak-sync``: ``iotdev.IoTHubDeviceClient`` over MQTT/TLS, two
  sender threads; device ``soak-aio``: ``iotdev.aio.IoTHubDeviceClient`` over
  MQTT/WebSocket on its own event loop (a thread), two sender tasks.  Senders
  send numbered telemetry (``$.mid`` = the number) and, every 50 messages, a
  reported-properties patch; each paced to about 150 messages/s.
* the service side: C2D to both devices (at most 20 outstanding each), a direct
  method every 0.5 s, a desired-properties patch every 2 s.
* faults every few seconds (seeded): a drop after random bytes (either way,
  FIN or RST), a drop of everything, a stall (half-open) until the clients
  give up, a corrupted / duplicated / truncated chunk, refused connections
  for 2 s, 100 ms latency or 8 KB/s for 3 s, and every sixth fault a restart
  of the emulator (same ports, same state folder).

At the end traffic stops, faults are cleared, and the run waits for every
message to land.  It fails (exit status 1) when a telemetry message or a C2D
message is missing, a copy carries another ``$.mid``, a call raised something
that is not an iotdev error, a device does not end on the hub's last desired
version, a thread died, RSS grew more than ``--max-growth-mb`` between the end
of the warm-up (a quarter of the run) and the end, or threads or file
descriptors are left after shutdown.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import random
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import iotdev
import iotdev.aio
from iotdev import (
    ClientError,
    Message,
    MethodResponse,
    OperationCancelled,
    OperationTimeout,
    ServiceError,
)
from iotdev import _hub_topics as topics
from iotdev.emulator import Hub, HubConnection, HubObserver, Verdict
from tests._faultkit import Resources, ThreadGuard
from tests._faultproxy import DIRECTIONS, FaultProxy

__all__ = ["SoakResult", "main", "run_soak"]

HOST = "127.0.0.1"
KEEP_ALIVE = 3
TYPED = (ClientError, OperationTimeout, OperationCancelled, ServiceError)
SYNC_DEV, AIO_DEV = "soak-sync", "soak-aio"
RATE = 150.0  # telemetry messages per second per client (two senders share it)


# ------------------------------------------------------------------ ledgers


class Ledger:
    """What one device sent and what arrived, in a form that stays small for
    an hour: message numbers index bytearrays of copy counts."""

    def __init__(self, device_id: str) -> None:
        self.device_id = device_id
        self.lock = threading.Condition()
        self.next = 0  # telemetry numbers handed out
        self.arrived = bytearray()  # copies seen at the hub, per number (255 max)
        self.bad_mid: list[str] = []
        self.ok = 0
        self.errors: dict[str, int] = {}
        self.untyped: list[str] = []
        self.c2d_sent = 0
        self.c2d_seen = bytearray()
        self.desired_version: int | None = None
        self.connects = 0

    def take(self) -> int:
        with self.lock:
            n = self.next
            self.next += 1
            if n >= len(self.arrived):
                self.arrived.extend(bytes(max(4096, len(self.arrived))))
            return n

    def outcome(self, error: BaseException | None) -> None:
        with self.lock:
            if error is None:
                self.ok += 1
            elif isinstance(error, TYPED):
                name = type(error).__name__
                self.errors[name] = self.errors.get(name, 0) + 1
            else:
                self.untyped.append(repr(error))

    def arrive(self, n: int, mid: str | None) -> None:
        with self.lock:
            if mid != f"{self.device_id}-{n}":
                self.bad_mid.append(f"{n}: {mid}")
            if n < len(self.arrived) and self.arrived[n] < 255:
                self.arrived[n] += 1
            self.lock.notify_all()

    def c2d(self, n: int) -> None:
        with self.lock:
            while n >= len(self.c2d_seen):
                self.c2d_seen.extend(bytes(1024))
            self.c2d_seen[n] = min(255, self.c2d_seen[n] + 1)
            self.lock.notify_all()

    def missing(self) -> int:
        with self.lock:
            return self.arrived[:self.next].count(0)

    def duplicates(self) -> int:
        with self.lock:
            return sum(max(0, c - 1) for c in self.arrived[:self.next])

    def c2d_missing(self) -> int:
        with self.lock:
            return self._c2d_missing()

    def _c2d_missing(self) -> int:  # with the lock held
        seen = self.c2d_seen
        return seen[:self.c2d_sent].count(0) + max(0, self.c2d_sent - len(seen))


def install(hub: Hub, ledgers: dict[str, Ledger]) -> None:
    """Observe the hub's telemetry and connects (``Hub.add_observer``).
    The ledgers do the counting, so the hub keeps only its last 1,000 messages
    per device (a small, quickly steady footprint: RSS then shows the clients)."""
    hub.store.telemetry_limit = 1000

    class Observer(HubObserver):
        def on_publish(self, conn: HubConnection, message: Any) -> Verdict | None:
            parsed = topics.parse_telemetry_topic(message.topic)
            ledger = ledgers.get(conn.device_id or "")
            if parsed is None or ledger is None:
                return None
            mid = dict(topics.decode_property_bag(parsed[2])).get("$.mid")
            try:
                n = int(message.payload.split(b":", 1)[1])
            except (IndexError, ValueError):
                ledger.bad_mid.append(f"unexpected body {message.payload[:40]!r}")
            else:
                ledger.arrive(n, mid)
            return None

        def on_connect(self, conn: HubConnection, packet: Any, refusal: str | None) -> None:
            ledger = ledgers.get(conn.device_id or "")
            if ledger is not None and refusal is None:
                with ledger.lock:
                    ledger.connects += 1

    hub.add_observer(Observer())


# ------------------------------------------------------------------ the run


@dataclass
class Sample:
    at: float
    rss_mb: float
    threads: int
    fds: int
    sent: int
    arrived: int
    reconnects: int

    def line(self) -> str:
        return (f"t={self.at:6.0f}s rss={self.rss_mb:6.1f}MB threads={self.threads:3d} "
                f"fds={self.fds:4d} sent={self.sent:7d} arrived={self.arrived:7d} "
                f"reconnects={self.reconnects:4d}")


@dataclass
class SoakResult:
    failures: list[str] = field(default_factory=list)
    samples: list[Sample] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.failures


class _Soak:
    def __init__(self, seconds: float, seed: int, report_every: float,
                 out: Callable[[str], None], max_growth_mb: float, state: Path) -> None:
        self.seconds = seconds
        self.rng = random.Random(seed)
        self.seed = seed
        self.report_every = report_every
        self.out = out
        self.max_growth_mb = max_growth_mb
        self.state = state
        self.result = SoakResult()
        self.ledgers = {SYNC_DEV: Ledger(SYNC_DEV), AIO_DEV: Ledger(AIO_DEV)}
        self.stop_traffic = threading.Event()
        self.stop_all = threading.Event()
        self.hub_lock = threading.Lock()
        self.faults: dict[str, int] = {}
        self.methods: dict[str, int] = {}
        self.desired_sent = 0
        self.threads: list[threading.Thread] = []
        self.hub = Hub(mqtt_port=0, ws_port=0, state_dir=state / "hub").start()
        install(self.hub, self.ledgers)
        for device_id in self.ledgers:
            self.hub.add_device(device_id)
        self.proxy = FaultProxy((HOST, self.hub.mqtt_port), name="soak-proxy-mqtt").start()
        assert self.hub.ws_port is not None
        self.ws_proxy = FaultProxy((HOST, self.hub.ws_port), name="soak-proxy-ws").start()
        self.started = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def fail(self, text: str) -> None:
        self.result.failures.append(text)
        self.out(f"[soak] FAIL: {text}")

    def spawn(self, target: Callable[[], None], name: str) -> None:
        thread = threading.Thread(target=target, name=name, daemon=True)
        self.threads.append(thread)
        thread.start()

    # ---------------------------------------------------------- the devices

    def sync_client(self) -> iotdev.IoTHubDeviceClient:
        hub = self.hub
        client = iotdev.IoTHubDeviceClient.create_from_connection_string(
            hub.connection_string(SYNC_DEV), server_verification_cert=hub.ca_pem,
            port=self.proxy.port, keep_alive=KEEP_ALIVE, connection_retry_interval=1)
        ledger = self.ledgers[SYNC_DEV]
        client.on_message_received = lambda m: ledger.c2d(int(m.data.split(b":")[1]))
        client.on_method_request_received = lambda r: client.send_method_response(
            MethodResponse.create_from_method_request(r, 200, r.payload))
        client.on_twin_desired_properties_patch_received = (
            lambda patch: self._desired(ledger, patch))
        client.on_background_exception = lambda e: self._background(ledger, e)
        client.connect()
        return client

    def _desired(self, ledger: Ledger, patch: Any) -> None:
        if isinstance(patch, dict) and isinstance(patch.get("$version"), int):
            with ledger.lock:
                ledger.desired_version = patch["$version"]
                ledger.lock.notify_all()

    def _background(self, ledger: Ledger, error: BaseException) -> None:
        if not isinstance(error, TYPED):
            with ledger.lock:
                ledger.untyped.append(f"background: {error!r}")

    def pace(self, sent: int, started: float, rate: float) -> None:
        """Wait until ``sent`` messages are due at ``rate`` (traffic pacing)."""
        due = started + sent / rate
        delay = due - time.monotonic()
        if delay > 0:
            self.stop_traffic.wait(delay)

    def sync_sender(self, client: iotdev.IoTHubDeviceClient, ledger: Ledger) -> None:
        started, count = time.monotonic(), 0
        while not self.stop_traffic.is_set():
            n = ledger.take()
            error: BaseException | None = None
            try:
                client.send_message(Message(f"{ledger.device_id}:{n}",
                                            message_id=f"{ledger.device_id}-{n}"), timeout=30)
            except BaseException as exc:  # judged by the ledger
                error = exc
            ledger.outcome(error)
            count += 1
            if count % 50 == 0:
                with contextlib.suppress(*TYPED):
                    client.patch_twin_reported_properties({"count": count}, timeout=30)
            self.pace(count, started, RATE / 2)

    def run_aio(self, ready: threading.Event, done: threading.Event) -> None:
        ledger = self.ledgers[AIO_DEV]

        async def main() -> None:
            loop = asyncio.get_running_loop()
            guard_errors: list[str] = []

            def on_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
                guard_errors.append(f"{context.get('message')}: {context.get('exception')!r}")

            loop.set_exception_handler(on_loop_error)
            hub = self.hub
            client = iotdev.aio.IoTHubDeviceClient.create_from_connection_string(
                hub.connection_string(AIO_DEV), server_verification_cert=hub.ca_pem,
                port=self.ws_proxy.port, websockets=True, keep_alive=KEEP_ALIVE,
                connection_retry_interval=1)
            client.on_message_received = lambda m: ledger.c2d(int(m.data.split(b":")[1]))

            async def on_method(request: Any) -> None:
                await client.send_method_response(
                    MethodResponse.create_from_method_request(request, 200, request.payload))

            client.on_method_request_received = on_method
            client.on_twin_desired_properties_patch_received = (
                lambda patch: self._desired(ledger, patch))
            client.on_background_exception = lambda e: self._background(ledger, e)
            await client.connect()
            ready.set()

            async def sender() -> None:
                started, count = time.monotonic(), 0
                while not self.stop_traffic.is_set():
                    n = ledger.take()
                    error: BaseException | None = None
                    try:
                        await client.send_message(Message(f"{AIO_DEV}:{n}",
                                                          message_id=f"{AIO_DEV}-{n}"),
                                                  timeout=30)
                    except Exception as exc:  # judged by the ledger
                        error = exc
                    ledger.outcome(error)
                    count += 1
                    if count % 50 == 0:
                        with contextlib.suppress(*TYPED):
                            await client.patch_twin_reported_properties({"count": count},
                                                                        timeout=30)
                    delay = started + count / (RATE / 2) - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)

            try:
                await asyncio.gather(sender(), sender())
                await asyncio.to_thread(self.stop_all.wait)
            finally:
                await client.shutdown()
                if guard_errors:
                    with ledger.lock:
                        ledger.untyped.extend(guard_errors)

        try:
            asyncio.run(main())
        finally:
            ready.set()
            done.set()

    # ------------------------------------------------------- the service side

    def service(self) -> None:
        c2d_next = {d: 0 for d in self.ledgers}
        last_method = last_desired = 0.0
        while not self.stop_traffic.wait(0.05):
            with self.hub_lock:
                hub = self.hub
                for device_id, ledger in self.ledgers.items():
                    with ledger.lock:
                        outstanding = ledger._c2d_missing()
                    if outstanding < 20:
                        n = c2d_next[device_id]
                        try:
                            hub.send_c2d(device_id, f"c2d:{n}", message_id=f"c2d-{n}")
                        except Exception:  # the hub is restarting, or its queue is full
                            continue
                        c2d_next[device_id] = n + 1
                        with ledger.lock:
                            ledger.c2d_sent = n + 1
                now = time.monotonic()
                if now - last_desired >= 2.0:
                    last_desired = now
                    for device_id in self.ledgers:
                        with contextlib.suppress(Exception):
                            hub.patch_desired(device_id, {"tick": self.desired_sent})
                    self.desired_sent += 1
            if time.monotonic() - last_method >= 0.5:
                last_method = time.monotonic()
                for device_id in self.ledgers:
                    try:
                        status = str(self.hub.invoke_method(device_id, "echo", {"n": 1},
                                                            timeout=5).status)
                    except Exception as exc:  # the hub is restarting
                        status = type(exc).__name__
                    self.methods[status] = self.methods.get(status, 0) + 1

    # ---------------------------------------------------------------- faults

    def fault_loop(self) -> None:
        count = 0
        while not self.stop_traffic.wait(self.rng.uniform(2.0, 5.0)):
            count += 1
            proxy = self.rng.choice((self.proxy, self.ws_proxy))
            if count % 6 == 0:
                kind = "restart"
            else:
                kind = self.rng.choice(("drop", "drop", "drop_all", "stall", "corrupt",
                                        "duplicate", "truncate", "refuse", "delay",
                                        "throttle"))
            self.faults[kind] = self.faults.get(kind, 0) + 1
            direction = self.rng.choice(DIRECTIONS)
            if kind == "drop":
                proxy.drop_after(direction, self.rng.randint(0, 4000),
                                 reset=self.rng.random() < 0.5)
            elif kind == "drop_all":
                proxy.drop_all(reset=self.rng.random() < 0.5)
            elif kind == "stall":
                proxy.stall()
                self.stop_traffic.wait(2.5 * KEEP_ALIVE)  # the clients give up meanwhile
                proxy.unstall()
            elif kind == "corrupt":
                proxy.corrupt_next(direction)
            elif kind == "duplicate":
                proxy.duplicate_next(direction)
            elif kind == "truncate":
                proxy.truncate_next(direction, self.rng.randint(1, 40))
            elif kind == "refuse":
                proxy.refuse(True)
                proxy.drop_all()
                self.stop_traffic.wait(2.0)
                proxy.refuse(False)
            elif kind == "delay":
                proxy.set_delay(0.1)
                self.stop_traffic.wait(3.0)
                proxy.set_delay(0.0)
            elif kind == "throttle":
                proxy.set_throttle(8_000)
                self.stop_traffic.wait(3.0)
                proxy.set_throttle(None)
            else:
                self.restart_hub()
            if kind in ("corrupt", "duplicate", "truncate", "drop"):
                self.stop_traffic.wait(0.5)
                proxy.clear()  # an armed fault that did not fire yet does not linger

    def restart_hub(self) -> None:
        with self.hub_lock:
            old = self.hub
            old.stop()
            hub = Hub(mqtt_port=old.mqtt_port, ws_port=old.ws_port, state_dir=old.state_dir)
            install(hub, self.ledgers)
            hub.start()
            self.hub = hub

    # --------------------------------------------------------------- sampling

    def sample(self) -> Sample:
        res = Resources.now()
        sent = sum(ledger.next for ledger in self.ledgers.values())
        arrived = sum(ledger.next - ledger.missing() for ledger in self.ledgers.values())
        reconnects = sum(max(0, ledger.connects - 1) for ledger in self.ledgers.values())
        sample = Sample(self.elapsed(), res.rss / 1e6, len(res.threads), res.fds, sent,
                        arrived, reconnects)
        self.result.samples.append(sample)
        self.out(f"[soak] {sample.line()}")
        return sample

    # ------------------------------------------------------------------ run

    def run(self, before: Resources) -> SoakResult:
        self.out(f"[soak] {self.seconds:.0f} s, seed {self.seed} (replay with --seed "
                 f"{self.seed}); keep-alive {KEEP_ALIVE} s")
        sync = self.sync_client()
        ready, aio_done = threading.Event(), threading.Event()
        self.spawn(lambda: self.run_aio(ready, aio_done), "soak-aio-loop")
        ready.wait(60)
        for n in range(2):
            self.spawn(lambda: self.sync_sender(sync, self.ledgers[SYNC_DEV]), f"soak-sync-{n}")
        self.spawn(self.service, "soak-service")
        self.spawn(self.fault_loop, "soak-faults")
        warm = self.started + self.seconds / 4
        baseline: Sample | None = None
        next_report = time.monotonic()
        while self.elapsed() < self.seconds:
            if time.monotonic() >= next_report:
                sample = self.sample()
                if baseline is None and time.monotonic() >= warm:
                    baseline = sample
                next_report += self.report_every
            self.stop_all.wait(max(0.0, min(next_report, self.started + self.seconds)
                                   - time.monotonic()))
        end = self.sample()
        self.stop_traffic.set()
        for thread in self.threads:
            if thread.name != "soak-aio-loop":
                thread.join(60)
        for proxy in (self.proxy, self.ws_proxy):
            proxy.clear()
            proxy.unstall()
        self.settle()
        self.stop_all.set()
        aio_done.wait(60)
        sync.shutdown()
        for thread in self.threads:
            thread.join(30)
        self.proxy.close()
        self.ws_proxy.close()
        self.hub.stop()
        after = Resources.now()
        self.judge(baseline or end, end, before, after)
        return self.result

    def settle(self) -> None:
        """Wait (up to 120 s) for every message to land and the last desired
        version to reach both devices."""
        deadline = time.monotonic() + 120
        for ledger in self.ledgers.values():
            with ledger.lock:
                ledger.lock.wait_for(
                    lambda ledger=ledger: not ledger.arrived[:ledger.next].count(0)
                    and not ledger._c2d_missing(),
                    max(0.0, deadline - time.monotonic()))
        with self.hub_lock:
            final = {d: self.hub.get_twin(d)["properties"]["desired"]["$version"]
                     for d in self.ledgers}
        for device_id, ledger in self.ledgers.items():
            with ledger.lock:
                ledger.lock.wait_for(lambda ledger=ledger, device_id=device_id:
                                     ledger.desired_version == final[device_id],
                                     max(0.0, deadline - time.monotonic()))
        self.result.figures["final_desired"] = final

    def judge(self, baseline: Sample, end: Sample, before: Resources,
              after: Resources) -> None:
        figures = self.result.figures
        for device_id, ledger in self.ledgers.items():
            missing, duplicates = ledger.missing(), ledger.duplicates()
            figures[device_id] = {
                "sent": ledger.next, "ok": ledger.ok, "errors": dict(ledger.errors),
                "missing": missing, "duplicates": duplicates, "c2d_sent": ledger.c2d_sent,
                "c2d_missing": ledger.c2d_missing(), "reconnects": max(0, ledger.connects - 1),
                "desired_version": ledger.desired_version,
            }
            self.out(f"[soak] {device_id}: {figures[device_id]}")
            if missing:
                self.fail(f"{device_id}: {missing} of {ledger.next} telemetry messages missing")
            if ledger.bad_mid:
                self.fail(f"{device_id}: copies with another $.mid: {ledger.bad_mid[:5]}")
            if ledger.untyped:
                self.fail(f"{device_id}: untyped errors: {ledger.untyped[:5]}")
            if ledger.c2d_missing():
                self.fail(f"{device_id}: {ledger.c2d_missing()} of {ledger.c2d_sent} C2D "
                          f"messages never reached the handler")
            want = figures["final_desired"][device_id]
            if ledger.desired_version != want:
                self.fail(f"{device_id}: ended on desired version {ledger.desired_version}, "
                          f"the hub's is {want}")
        growth = end.rss_mb - baseline.rss_mb
        figures.update(faults=dict(sorted(self.faults.items())),
                       methods=dict(sorted(self.methods.items())),
                       rss_growth_mb=round(growth, 1), threads_before=len(before.threads),
                       threads_after=len(after.threads), fds_before=before.fds,
                       fds_after=after.fds)
        self.out(f"[soak] faults={figures['faults']} methods={figures['methods']} "
                 f"rss growth after warm-up {growth:+.1f} MB; threads {len(before.threads)}"
                 f" -> {len(after.threads)}; fds {before.fds} -> {after.fds}")
        if growth > self.max_growth_mb:
            self.fail(f"RSS grew {growth:.1f} MB after the warm-up (limit "
                      f"{self.max_growth_mb} MB)")
        left = collections.Counter(after.threads) - collections.Counter(before.threads)
        if left:
            self.fail(f"threads left: {sorted(left.elements())}")
        if after.fds != before.fds:
            self.fail(f"{after.fds - before.fds} file descriptors left open")


def run_soak(seconds: float, *, seed: int | None = None, report_every: float = 10.0,
             out: Callable[[str], None] = print, max_growth_mb: float = 40.0) -> SoakResult:
    """Run the soak for ``seconds``; see the module docstring."""
    if seed is None:
        seed = random.SystemRandom().randrange(2**32)
    before = Resources.now()
    with ThreadGuard() as guard, _state_dir() as state:
        soak = _Soak(seconds, seed, report_every, out, max_growth_mb, state)
        try:
            result = soak.run(before)
        finally:
            soak.stop_traffic.set()
            soak.stop_all.set()
        try:
            guard.check()
        except AssertionError as exc:
            result.failures.append(str(exc))
    result.figures["seed"] = seed
    return result


@contextlib.contextmanager
def _state_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="iotdev-soak-") as name:
        yield Path(name)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, help="how long (default 60)")
    length.add_argument("--seconds", type=float, help="how long, in seconds")
    parser.add_argument("--seed", type=int, help="replay a run (printed at the start)")
    parser.add_argument("--report-every", type=float, default=60.0, metavar="SECONDS",
                        help="sample memory, threads and counts this often (default 60)")
    parser.add_argument("--max-growth-mb", type=float, default=40.0,
                        help="RSS growth allowed after the warm-up (default 40)")
    args = parser.parse_args(argv)
    seconds = args.seconds if args.seconds is not None else 60 * (args.minutes or 60)
    result = run_soak(seconds, seed=args.seed, report_every=args.report_every,
                      max_growth_mb=args.max_growth_mb,
                      out=lambda line: print(line, flush=True))
    print("[soak] PASSED" if result.ok else f"[soak] FAILED: {len(result.failures)} problem(s)",
          flush=True)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
