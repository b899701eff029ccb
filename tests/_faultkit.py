"""What the fault tests share besides the proxy (``tests/_faultproxy.py``).

* ``HubTap``: wraps three protocol hooks of a running ``Hub`` instance (as
  ``HubSpy`` in ``test_device_client_sync`` does) to record, per device, every
  telemetry PUBLISH the hub accepted with its ``$.mid``, DUP flag and packet
  id (the hub's own store keeps only the last 10,000), and to count the
  device connections it authenticated and closed.
* ``ThreadGuard``: a ``threading.excepthook`` that records every exception
  that ends a thread, and an asyncio exception handler that records what the
  loop reports (a task whose exception was never retrieved, a failed
  callback); ``check()`` fails the test if anything was recorded.
* ``Resources``: open file descriptors, threads and RSS of this process, for
  before/after comparisons.
* ``HostileServer``: a TLS server on a free loopback port that reads CONNECT
  and then runs a per-connection script the test writes in raw bytes.
* ``check_at_least_once``: every message arrived, copies agree on ``$.mid``,
  DUP and packet id; ``report`` prints a scenario's figures on one line.

Nothing here sleeps; every wait has a deadline.
"""

from __future__ import annotations

import asyncio
import collections
import os
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from iotdev import _hub_topics as topics
from iotdev.emulator import Hub, HubConnection, HubObserver, Verdict
from iotdev_mqtt import (
    Connect,
    Disconnect,
    Packet,
    PacketReader,
    PingReq,
    PingResp,
    PubAck,
    Publish,
    SubAck,
    Subscribe,
    encode,
)

__all__ = [
    "HostileConnection",
    "HostileServer",
    "HubTap",
    "Resources",
    "Script",
    "Telemetry",
    "ThreadGuard",
    "check_at_least_once",
    "report",
    "rss_bytes",
    "stopwatch",
]

HOST = "127.0.0.1"


# ------------------------------------------------------------------ the hub side


@dataclass(frozen=True, slots=True)
class Telemetry:
    """One telemetry PUBLISH as the hub accepted it."""

    body: bytes
    message_id: str | None
    dup: bool
    packet_id: int | None
    connection: int  # HubTap's number for the device connection it came on


class HubTap:
    """Records what a ``Hub`` instance accepted (install it on each instance)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.telemetry: dict[str, list[Telemetry]] = collections.defaultdict(list)
        self.unique: dict[str, set[bytes]] = collections.defaultdict(set)
        self.connects: dict[str, int] = collections.Counter()
        self.closes: dict[str, int] = collections.Counter()
        self._conn_numbers: dict[int, int] = {}

    def install(self, hub: Hub,
                setattr_: Callable[[Any, str, Any], None] = setattr) -> HubTap:
        tap = self

        class Observer(HubObserver):
            def on_publish(self, conn: HubConnection, message: Any) -> Verdict | None:
                parsed = topics.parse_telemetry_topic(message.topic)
                if parsed is None or conn.device_id is None:
                    return None
                mid = dict(topics.decode_property_bag(parsed[2])).get("$.mid")
                entry = Telemetry(message.payload, mid, message.dup, message.packet_id,
                                  tap._conn_numbers.get(id(conn), -1))
                with tap.cond:
                    tap.telemetry[conn.device_id].append(entry)
                    tap.unique[conn.device_id].add(message.payload)
                    tap.cond.notify_all()
                return None

            def on_connect(self, conn: HubConnection, packet: Any, refusal: str | None) -> None:
                device_id = conn.device_id
                if device_id is not None and refusal is None:
                    with tap.cond:
                        tap._conn_numbers[id(conn)] = sum(tap.connects.values())
                        tap.connects[device_id] += 1
                        tap.cond.notify_all()

            def on_close(self, conn: HubConnection, reason: str) -> None:
                if conn.device_id is not None:
                    with tap.cond:
                        tap.closes[conn.device_id] += 1
                        tap.cond.notify_all()

        setattr_(hub, "observers", (*hub.observers, Observer()))
        return self

    def wait_for(self, predicate: Callable[[], bool], timeout: float,
                 what: str = "the hub") -> None:
        with self.cond:
            if not self.cond.wait_for(predicate, timeout):
                raise AssertionError(f"timed out after {timeout} s waiting for {what}")

    def wait_unique(self, device_id: str, count: int, timeout: float) -> None:
        self.wait_for(lambda: len(self.unique[device_id]) >= count, timeout,
                      f"{count} distinct messages from {device_id} (have "
                      f"{len(self.unique[device_id])})")

    def unique_count(self, device_id: str) -> int:
        with self.cond:
            return len(self.unique[device_id])

    def copies(self, device_id: str) -> dict[bytes, list[Telemetry]]:
        out: dict[bytes, list[Telemetry]] = collections.defaultdict(list)
        with self.cond:
            for entry in self.telemetry[device_id]:
                out[entry.body].append(entry)
        return out


def check_at_least_once(tap: HubTap, device_id: str,
                        expected: dict[bytes, str]) -> tuple[int, int]:
    """Every expected body (-> its message id) arrived at least once; every
    copy carries the same ``$.mid``; a copy after the first of a message is a
    re-send by the session (DUP=1, the same packet id) or a re-send after a
    clean session.  Returns (duplicates, distinct)."""
    copies = tap.copies(device_id)
    missing = sorted(set(expected) - set(copies))
    assert not missing, (f"{len(missing)} of {len(expected)} messages never reached the hub, "
                         f"e.g. {missing[:5]!r}")
    unexpected = sorted(set(copies) - set(expected))
    assert not unexpected, f"the hub got messages nobody sent: {unexpected[:5]!r}"
    duplicates = 0
    for body, entries in copies.items():
        mids = {e.message_id for e in entries}
        assert mids == {expected[body]}, (
            f"copies of {body!r} carry message ids {mids!r}, expected {expected[body]!r}")
        for later in entries[1:]:
            duplicates += 1
            assert later.dup, f"a second copy of {body!r} without DUP: {entries!r}"
            assert later.packet_id == entries[0].packet_id, (
                f"a re-sent {body!r} under another packet id: {entries!r}")
    return duplicates, len(copies)


# ------------------------------------------------------------------ guards


class ThreadGuard:
    """Records exceptions that end threads, and what an asyncio loop reports."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self._previous: Any = None
        self._lock = threading.Lock()

    def __enter__(self) -> ThreadGuard:
        self._previous = threading.excepthook

        def hook(args: threading.ExceptHookArgs) -> None:
            with self._lock:
                name = args.thread.name if args.thread is not None else "?"
                self.errors.append(f"thread {name} died: {args.exc_type.__name__}: "
                                   f"{args.exc_value}")
            self._previous(args)

        threading.excepthook = hook
        return self

    def __exit__(self, *exc: object) -> None:
        threading.excepthook = self._previous

    def watch_loop(self, loop: asyncio.AbstractEventLoop) -> None:
        """Record what ``loop`` reports to its exception handler."""
        def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            with self._lock:
                self.errors.append(f"event loop: {context.get('message')}: "
                                   f"{context.get('exception')!r}")
            loop.default_exception_handler(context)

        loop.set_exception_handler(handler)

    def check(self) -> None:
        with self._lock:
            errors = list(self.errors)
        assert not errors, "\n".join(errors)


@dataclass(frozen=True)
class Resources:
    """File descriptors, threads and memory of this process at one moment."""

    fds: int
    threads: tuple[str, ...]
    rss: int
    at: float = field(default_factory=time.monotonic)

    @classmethod
    def now(cls) -> Resources:
        return cls(fds=len(os.listdir("/proc/self/fd")),
                   threads=tuple(sorted(t.name for t in threading.enumerate())),
                   rss=rss_bytes())

    def describe(self) -> str:
        return f"fds={self.fds} threads={len(self.threads)} rss={self.rss / 1e6:.1f} MB"


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# ------------------------------------------------------------------ hostile server


class HostileConnection:
    """One accepted TLS connection of a ``HostileServer``, for its script."""

    def __init__(self, server: HostileServer, sock: ssl.SSLSocket, index: int) -> None:
        self.server = server
        self.sock = sock
        self.index = index
        self.reader = PacketReader("server", max_packet_size=1 << 20)
        self.pending: collections.deque[Packet] = collections.deque()
        self.closed = False

    def send(self, *items: Packet | bytes) -> bool:
        """Send packets or raw bytes; ``False`` once the client is gone."""
        data = b"".join(i if isinstance(i, bytes) else encode(i) for i in items)
        try:
            self.sock.settimeout(60)  # a client that reads nothing for a minute is stuck
            self.sock.sendall(data)
        except (OSError, ValueError):
            self.closed = True
            return False
        return True

    def next_packet(self, timeout: float) -> Packet | None:
        """The next packet from the client, or ``None`` at EOF / timeout / stop."""
        deadline = time.monotonic() + timeout
        while not self.pending:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self.server.stopping.is_set():
                return None
            self.sock.settimeout(min(remaining, 0.5))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except (OSError, ValueError):
                data = b""
            if not data:
                self.closed = True
                return None
            self.pending.extend(self.reader.feed(data))
        return self.pending.popleft()

    def serve(self, timeout: float) -> None:
        """Behave like a minimal broker until the client leaves or ``timeout``:
        SUBACK (QoS 1) every SUBSCRIBE, PUBACK every QoS 1 PUBLISH, PINGRESP."""
        deadline = time.monotonic() + timeout
        while not self.closed and not self.server.stopping.is_set():
            packet = self.next_packet(max(0.0, deadline - time.monotonic()))
            if packet is None:
                return
            if isinstance(packet, Subscribe):
                self.send(SubAck(packet.packet_id, tuple(1 for _ in packet.subscriptions)))
            elif isinstance(packet, Publish):
                self.server.received.append(packet)
                if packet.qos == 1 and packet.packet_id is not None:
                    self.send(PubAck(packet.packet_id))
            elif isinstance(packet, PingReq):
                self.send(PingResp())
            elif isinstance(packet, Disconnect):
                return

    def close(self) -> None:
        self.closed = True
        try:
            self.sock.close()
        except OSError:
            pass


Script = Callable[[HostileConnection, Connect], None]


class HostileServer:
    """A TLS server (certificate and key files given) that answers each
    connection with ``script(conn, connect)`` once the client's CONNECT has
    arrived (or with ``raw_script(conn)`` before reading anything).

    ``scripts`` is consulted per connection index; the last entry repeats.
    """

    def __init__(self, cert_file: str, key_file: str, scripts: list[Script], *,
                 read_connect: bool = True) -> None:
        self.scripts = scripts
        self.read_connect = read_connect
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert_file, key_file)
        self.listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind((HOST, 0))
        self.listener.listen(16)
        self.port: int = self.listener.getsockname()[1]
        self.stopping = threading.Event()
        self.cond = threading.Condition()
        self.connections = 0
        self.finished = 0
        self.received: list[Publish] = []
        self.errors: list[BaseException] = []
        self._threads: list[threading.Thread] = []
        self._socks: list[ssl.SSLSocket] = []
        self._acceptor = threading.Thread(target=self._accept, name="hostile-accept",
                                          daemon=True)

    def start(self) -> HostileServer:
        self._acceptor.start()
        return self

    def __enter__(self) -> HostileServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _accept(self) -> None:
        self.listener.settimeout(0.2)
        while not self.stopping.is_set():
            try:
                raw, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self.cond:
                index = self.connections
                self.connections += 1
                self.cond.notify_all()
            worker = threading.Thread(target=self._serve, args=(raw, index),
                                      name=f"hostile-{index}", daemon=True)
            self._threads.append(worker)
            worker.start()

    def _serve(self, raw: socket.socket, index: int) -> None:
        conn: HostileConnection | None = None
        try:
            raw.settimeout(10)
            try:
                sock = self.context.wrap_socket(raw, server_side=True)
            except (OSError, ssl.SSLError):
                raw.close()
                return
            self._socks.append(sock)
            conn = HostileConnection(self, sock, index)
            script = self.scripts[min(index, len(self.scripts) - 1)]
            packet = conn.next_packet(10.0) if self.read_connect else None
            if self.read_connect and not isinstance(packet, Connect):
                return
            script(conn, packet)  # type: ignore[arg-type]
        except Exception as exc:
            self.errors.append(exc)
        finally:
            if conn is not None:
                conn.close()
            with self.cond:
                self.finished += 1
                self.cond.notify_all()

    def wait_connections(self, count: int, timeout: float) -> None:
        with self.cond:
            if not self.cond.wait_for(lambda: self.connections >= count, timeout):
                raise AssertionError(f"the client made {self.connections} connections, "
                                     f"expected {count} within {timeout} s")

    def stop(self) -> None:
        self.stopping.set()
        self.listener.close()
        for sock in list(self._socks):
            try:
                sock.close()
            except OSError:
                pass
        self._acceptor.join(5)
        for worker in self._threads:
            worker.join(5)
        alive = [t.name for t in self._threads if t.is_alive()]
        assert not alive, f"hostile server threads did not stop: {alive}"


# ------------------------------------------------------------------ reporting


@contextmanager
def stopwatch() -> Iterator[Callable[[], float]]:
    started = time.monotonic()
    yield lambda: time.monotonic() - started


def report(title: str, **figures: Any) -> None:
    """Print a scenario's figures on one line (shown with ``pytest -s`` and in
    the captured output of a failure)."""
    shown = ", ".join(f"{k}={v:.2f}" if isinstance(v, float) else f"{k}={v}"
                      for k, v in figures.items())
    print(f"\n[faults] {title}: {shown}", flush=True)


