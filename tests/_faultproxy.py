"""A TCP fault proxy for the reliability tests: it sits on a free loopback port
between a client and a server (the emulator, a broker, a test server) and does
to the byte stream what a bad network does, when the test says so.

Theory of operation
-------------------
One thread runs a ``selectors`` loop over the listening socket, a wake-up
socket pair and both sockets of every proxied connection; nothing else touches
the sockets.  The test arms faults with the methods below (from any thread);
each takes the lock, records the fault and wakes the loop.  Every chunk read
from one side is offered to the armed faults of its direction, in the order
they were armed, before it is forwarded; a fault that fires sets its ``fired``
event, so a test waits for it instead of sleeping.

The proxy works on raw bytes: the emulator speaks TLS, so it cannot see MQTT.
It does track TLS record boundaries per direction (a 5-byte header: content
type, version, length), which lets a test aim at "during the handshake"
(``ProxyConnection.app_records`` still 0, or 1 for the client's TLS 1.3
Finished) or at "the first application bytes" (a WebSocket upgrade, CONNECT).

Faults (``C2S`` is client to server, ``S2C`` server to client):

* ``drop_after(direction, n)``: forward ``n`` more bytes in that direction
  (counted from the moment it is armed, on the current or the next connection),
  then close both sockets: mid-packet, mid-record, mid-handshake.
* ``drop_when(direction, predicate, forward=0)``: on the next chunk for which
  ``predicate(chunk)`` is true, forward ``forward`` of its bytes and close.
* ``drop_all()``: close every open connection now.
* ``stall()`` / ``unstall()``: a half-open connection: the open connections
  stop forwarding (what arrives is read and discarded) and stay open; when the
  client gives up and closes, the server side stays open, as with a dead NAT.
* ``set_delay(seconds)``, ``set_throttle(bytes_per_second)``: latency and
  bandwidth for every chunk forwarded from now on (order is kept).
* ``truncate_next(direction, keep)``, ``duplicate_next(direction)``,
  ``corrupt_next(direction)``: the next chunk loses its tail, is forwarded
  twice, or has one byte inverted; the connection stays up (TLS will not).
* ``refuse(True)``: new connections are accepted and reset at once, until
  ``refuse(False)``.

Closing is a FIN by default; ``reset=True`` sends an RST (``SO_LINGER`` 0).
Counters: ``accepted``, ``refused``, ``upstream_failures``, ``drops``,
``connections`` (every ``ProxyConnection``, open or closed), ``attempts``
(monotonic times of every incoming connection).  ``wait_for(predicate)``
waits on any of them.  ``close()`` ends the thread and closes every socket.
"""

from __future__ import annotations

import collections
import selectors
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

__all__ = ["C2S", "S2C", "Chunk", "Direction", "Fault", "FaultProxy", "ProxyConnection"]

Direction = Literal["c2s", "s2c"]
C2S: Direction = "c2s"
S2C: Direction = "s2c"
DIRECTIONS: tuple[Direction, Direction] = (C2S, S2C)

HOST = "127.0.0.1"
READ_SIZE = 65536
BACKLOG_LIMIT = 1 << 20  # bytes waiting for one destination before its source is paused
TLS_APPLICATION_DATA = 23


class _RecordTracker:
    """Counts TLS records in one direction's byte stream (headers only)."""

    __slots__ = ("app_records", "header", "need", "records")

    def __init__(self) -> None:
        self.header = bytearray()
        self.need = 0
        self.records = 0
        self.app_records = 0

    def feed(self, data: bytes) -> tuple[int, ...]:
        """Content types of the records whose header completes in ``data``."""
        types: list[int] = []
        pos, end = 0, len(data)
        header = self.header
        while pos < end:
            if self.need:
                take = min(self.need, end - pos)
                self.need -= take
                pos += take
                continue
            part = data[pos:pos + 5 - len(header)]
            header += part
            pos += len(part)
            if len(header) == 5:
                kind = header[0]
                self.need = (header[3] << 8) | header[4]
                header.clear()
                types.append(kind)
                self.records += 1
                if kind == TLS_APPLICATION_DATA:
                    self.app_records += 1
        return tuple(types)


@dataclass(eq=False)
class ProxyConnection:
    """One proxied connection, as the tests see it.

    Attributes:
        index: 0 for the first connection the proxy accepted, then 1, 2...
        opened_at / closed_at: monotonic seconds.
        forwarded: bytes forwarded per direction.
        blackholed: bytes read and discarded while stalled, per direction.
        records / app_records: TLS records (all / application data) seen per
            direction, counted on what the source sent.
        close_reason: why the proxy closed it (``None`` while open).
    """

    index: int
    opened_at: float
    forwarded: dict[Direction, int] = field(default_factory=lambda: {C2S: 0, S2C: 0})
    blackholed: dict[Direction, int] = field(default_factory=lambda: {C2S: 0, S2C: 0})
    records: dict[Direction, int] = field(default_factory=lambda: {C2S: 0, S2C: 0})
    app_records: dict[Direction, int] = field(default_factory=lambda: {C2S: 0, S2C: 0})
    closed_at: float | None = None
    close_reason: str | None = None
    stalled: bool = False

    @property
    def open(self) -> bool:
        return self.closed_at is None


@dataclass(frozen=True)
class Chunk:
    """What a ``drop_when`` predicate sees: one read from one side."""

    conn: ProxyConnection
    direction: Direction
    data: bytes
    offset: int  # bytes forwarded in this direction before this chunk
    records: tuple[int, ...]  # TLS content types of records starting in this chunk


class Fault:
    """An armed one-shot fault; ``fired`` is set when it has acted."""

    def __init__(self, kind: str, direction: Direction) -> None:
        self.kind = kind
        self.direction = direction
        self.fired = threading.Event()
        self.conn: ProxyConnection | None = None  # where it fired
        self.cancelled = False

    def wait(self, timeout: float) -> ProxyConnection:
        """The connection it fired on; fails the test after ``timeout`` s."""
        if not self.fired.wait(timeout):
            raise AssertionError(f"the proxy fault {self.kind} ({self.direction}) did not "
                                 f"fire within {timeout} s")
        assert self.conn is not None
        return self.conn

    def __repr__(self) -> str:
        state = "fired" if self.fired.is_set() else "armed"
        return f"<Fault {self.kind} {self.direction} {state}>"


class _DropAfter(Fault):
    def __init__(self, direction: Direction, nbytes: int, reset: bool) -> None:
        super().__init__(f"drop after {nbytes} bytes", direction)
        self.remaining = nbytes
        self.reset = reset


class _DropWhen(Fault):
    def __init__(self, direction: Direction, predicate: Callable[[Chunk], bool],
                 forward: int, reset: bool) -> None:
        super().__init__("drop when", direction)
        self.predicate = predicate
        self.forward = forward
        self.reset = reset


class _Mangle(Fault):
    def __init__(self, kind: str, direction: Direction, argument: int | None) -> None:
        super().__init__(kind, direction)
        self.argument = argument


class _Side:
    """One direction of one connection: from ``src`` to ``dst``."""

    __slots__ = ("backlog", "dst", "last_due", "next_free", "queue", "src", "tracker")

    def __init__(self, src: socket.socket, dst: socket.socket) -> None:
        self.src = src
        self.dst = dst
        self.backlog = bytearray()  # due bytes not yet accepted by dst
        self.queue: collections.deque[tuple[float, bytes, bool]] = collections.deque()
        self.last_due = 0.0
        self.next_free = 0.0
        self.tracker = _RecordTracker()


class _Conn:
    """The loop thread's view of one connection."""

    def __init__(self, public: ProxyConnection, client: socket.socket,
                 server: socket.socket) -> None:
        self.public = public
        self.client = client
        self.server = server
        self.sides: dict[Direction, _Side] = {C2S: _Side(client, server),
                                              S2C: _Side(server, client)}
        self.masks: dict[socket.socket, int] = {client: 0, server: 0}
        self.eof: set[socket.socket] = set()  # sides that sent EOF while stalled
        self.closing = False  # flush what is due toward the other side, then close
        self.close_deadline = 0.0
        self.close_reset = False
        self.close_reason = ""


class FaultProxy:
    """A fault-injecting TCP proxy on ``127.0.0.1:<port>`` to ``upstream``.

    Args:
        upstream: ``(host, port)`` to forward to (connected per client).
        name: for the thread name and messages.
    """

    def __init__(self, upstream: tuple[str, int], *, name: str = "faultproxy") -> None:
        self.upstream = upstream
        self.name = name
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        self._faults: list[Fault] = []
        self._delay: dict[Direction, float] = {C2S: 0.0, S2C: 0.0}
        self._rate: dict[Direction, float | None] = {C2S: None, S2C: None}
        self._refusing = False
        self._stall_new = False
        self._stall_requested = False
        self._unstall = False
        self._drop_all: bool | None = None
        self.accepted = 0
        self.refused = 0
        self.upstream_failures = 0
        self.drops = 0
        self.connections: list[ProxyConnection] = []
        self.attempts: list[float] = []
        self._conns: dict[ProxyConnection, _Conn] = {}
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((HOST, 0))
        self._listener.listen(128)
        self._listener.setblocking(False)
        self.port: int = self._listener.getsockname()[1]
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._listener, selectors.EVENT_READ, "listen")
        self._selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._running = True
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.error: BaseException | None = None

    # ------------------------------------------------------------- lifecycle

    def start(self) -> FaultProxy:
        self._thread.start()
        return self

    def close(self, timeout: float = 5.0) -> None:
        """Stop the loop and close every socket (idempotent)."""
        with self._lock:
            self._running = False
        self._wake()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout)
            assert not self._thread.is_alive(), f"{self.name} thread did not stop"

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def address(self) -> tuple[str, int]:
        return (HOST, self.port)

    # --------------------------------------------------------------- faults

    def _arm(self, fault: Fault) -> Fault:
        with self._lock:
            self._faults.append(fault)
        self._wake()
        return fault

    def drop_after(self, direction: Direction, nbytes: int, *, reset: bool = False) -> Fault:
        """Forward ``nbytes`` more bytes ``direction`` (0: none), then close."""
        if nbytes < 0:
            raise ValueError("nbytes must be >= 0")
        return self._arm(_DropAfter(direction, nbytes, reset))

    def drop_when(self, direction: Direction, predicate: Callable[[Chunk], bool], *,
                  forward: int = 0, reset: bool = False) -> Fault:
        """On the next chunk ``direction`` with ``predicate(chunk)`` true, forward
        its first ``forward`` bytes and close."""
        return self._arm(_DropWhen(direction, predicate, forward, reset))

    def truncate_next(self, direction: Direction, keep: int) -> Fault:
        """Forward only the first ``keep`` bytes of the next chunk; stay open."""
        return self._arm(_Mangle("truncate", direction, keep))

    def duplicate_next(self, direction: Direction) -> Fault:
        """Forward the next chunk twice; stay open."""
        return self._arm(_Mangle("duplicate", direction, None))

    def corrupt_next(self, direction: Direction, position: int | None = None) -> Fault:
        """Invert one byte of the next chunk (its middle by default); stay open."""
        return self._arm(_Mangle("corrupt", direction, position))

    def cancel(self, fault: Fault) -> None:
        """Disarm ``fault`` (if it has not fired) and wake ``wait_for`` callers."""
        with self._cond:
            fault.cancelled = True
            if fault in self._faults:
                self._faults.remove(fault)
            self._cond.notify_all()

    def drop_all(self, *, reset: bool = False) -> None:
        """Close every open connection now."""
        with self._lock:
            self._drop_all = reset
        self._wake()

    def stall(self, *, new_connections: bool = False) -> None:
        """Stop forwarding on every open connection (and, with
        ``new_connections``, on those accepted from now on); sockets stay open."""
        with self._lock:
            self._stall_requested = True
            self._stall_new = new_connections
        self._wake()

    def unstall(self) -> None:
        with self._lock:
            self._unstall = True
            self._stall_new = False
        self._wake()

    def set_delay(self, seconds: float, direction: Direction | None = None) -> None:
        """Add ``seconds`` of latency to every chunk forwarded from now on."""
        with self._lock:
            for d in (direction,) if direction else DIRECTIONS:
                self._delay[d] = seconds
        self._wake()

    def set_throttle(self, bytes_per_second: float | None,
                     direction: Direction | None = None) -> None:
        """Limit the bandwidth (``None``: unlimited)."""
        with self._lock:
            for d in (direction,) if direction else DIRECTIONS:
                self._rate[d] = bytes_per_second
        self._wake()

    def refuse(self, refusing: bool = True) -> None:
        """Reset every new connection at once while ``refusing``."""
        with self._lock:
            self._refusing = refusing
        self._wake()

    def clear(self) -> None:
        """Disarm every fault; no delay, throttle, refusal or stall of new ones."""
        with self._lock:
            for fault in self._faults:
                fault.cancelled = True
            self._faults.clear()
            self._delay = {C2S: 0.0, S2C: 0.0}
            self._rate = {C2S: None, S2C: None}
            self._refusing = False
            self._stall_new = False
        self._wake()

    # -------------------------------------------------------------- waiting

    def wait_for(self, predicate: Callable[[], bool], timeout: float,
                 what: str = "the proxy") -> None:
        """Wait until ``predicate()`` (evaluated under the proxy's lock, after
        every change) is true; fail the test after ``timeout`` s."""
        with self._cond:
            if not self._cond.wait_for(predicate, timeout):
                raise AssertionError(f"timed out after {timeout} s waiting for {what}; "
                                     f"{self.describe()}")

    def open_connections(self) -> list[ProxyConnection]:
        with self._lock:
            return [c for c in self.connections if c.open]

    def describe(self) -> str:
        return (f"{self.name}: accepted {self.accepted}, refused {self.refused}, upstream "
                f"failures {self.upstream_failures}, drops {self.drops}, open "
                f"{sum(1 for c in self.connections if c.open)}")

    # ------------------------------------------------------------ the loop

    def _wake(self) -> None:
        try:
            self._wake_w.send(b"\0")
        except (BlockingIOError, OSError):
            pass

    def _notify(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _run(self) -> None:
        try:
            while True:
                with self._lock:
                    if not self._running:
                        break
                self._turn()
        except BaseException as exc:  # a proxy bug must show, not hang the test
            self.error = exc
            raise
        finally:
            for conn in list(self._conns.values()):
                self._close(conn, "proxy closed", reset=True)
            self._selector.close()
            self._listener.close()
            self._wake_r.close()
            self._wake_w.close()
            self._notify()

    def _timeout(self, now: float) -> float | None:
        due: list[float] = []
        for conn in self._conns.values():
            for side in conn.sides.values():
                if side.queue:
                    due.append(side.queue[0][0])
            if conn.closing:
                due.append(conn.close_deadline)
        return max(0.0, min(due) - now) if due else None

    def _turn(self) -> None:
        for key, mask in self._selector.select(self._timeout(time.monotonic())):
            tag = key.data
            if tag == "listen":
                self._accept()
            elif tag == "wake":
                try:
                    self._wake_r.recv(4096)
                except (BlockingIOError, OSError):
                    pass
            else:
                conn, sock = tag
                if conn.public.closed_at is not None:
                    continue
                if mask & selectors.EVENT_WRITE:
                    self._write(conn, sock)
                if mask & selectors.EVENT_READ and conn.public.closed_at is None:
                    self._read(conn, sock)
        self._control()
        now = time.monotonic()
        for conn in list(self._conns.values()):
            if conn.public.closed_at is not None:
                continue
            for side in conn.sides.values():
                while side.queue and side.queue[0][0] <= now:
                    _, data, close_after = side.queue.popleft()
                    side.backlog += data
                    if close_after:
                        self._begin_close(conn, "drop", conn.close_reset)
                if side.backlog:
                    self._write(conn, side.dst)
            if conn.closing and conn.public.closed_at is None and (
                    now >= conn.close_deadline or not any(
                        s.backlog or s.queue for s in conn.sides.values())):
                self._close(conn, conn.close_reason, conn.close_reset)
            if conn.public.closed_at is None:
                self._update_masks(conn)

    def _control(self) -> None:
        """Apply stall / unstall / drop-all requests from the test."""
        with self._lock:
            stall, self._stall_requested = self._stall_requested, False
            unstall, self._unstall = self._unstall, False
            drop_all, self._drop_all = self._drop_all, None
        for conn in list(self._conns.values()):
            if conn.public.closed_at is not None:
                continue
            if unstall:
                conn.public.stalled = False
            if stall:
                conn.public.stalled = True
                for side in conn.sides.values():  # what was in transit is lost too
                    side.backlog.clear()
                    side.queue.clear()
            if drop_all is not None:
                with self._lock:
                    self.drops += 1
                self._close(conn, "dropped by drop_all()", drop_all)
        if stall or unstall:
            self._notify()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            now = time.monotonic()
            with self._lock:
                self.attempts.append(now)
                refusing = self._refusing
                if refusing:
                    self.refused += 1
            if refusing:
                _abort(client)
                self._notify()
                continue
            try:
                server = socket.create_connection(self.upstream, timeout=2.0)
            except OSError:
                with self._lock:
                    self.upstream_failures += 1
                _abort(client)
                self._notify()
                continue
            for sock in (client, server):
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                public = ProxyConnection(index=len(self.connections), opened_at=now,
                                         stalled=self._stall_new)
                self.connections.append(public)
                self.accepted += 1
            conn = _Conn(public, client, server)
            self._conns[public] = conn
            for sock in (client, server):
                self._selector.register(sock, selectors.EVENT_READ, (conn, sock))
                conn.masks[sock] = selectors.EVENT_READ
            self._notify()

    def _read(self, conn: _Conn, sock: socket.socket) -> None:
        direction: Direction = C2S if sock is conn.client else S2C
        side = conn.sides[direction]
        try:
            data = sock.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        public = conn.public
        if not data:
            if public.stalled:  # half-open: the other side never learns
                conn.eof.add(sock)
                if conn.masks.pop(sock, 0):
                    self._selector.unregister(sock)
                sock.close()
                if len(conn.eof) == 2:
                    self._close(conn, "both sides closed while stalled", False)
                return
            who = "client" if direction == C2S else "server"
            self._begin_close(conn, f"{who} closed", False)
            return
        types = side.tracker.feed(data)
        public.records[direction] = side.tracker.records
        public.app_records[direction] = side.tracker.app_records
        if public.stalled:
            public.blackholed[direction] += len(data)
            return
        if conn.closing:
            return
        chunk = Chunk(public, direction, data, public.forwarded[direction], types)
        out, drop, reset, duplicate = self._apply_faults(chunk)
        if duplicate:
            self._forward(conn, direction, out)
        self._forward(conn, direction, out, close_after=drop, reset=reset)

    def _apply_faults(self, chunk: Chunk) -> tuple[bytes, bool, bool, bool]:
        """The bytes to forward, whether to drop after them (and how), and
        whether to send them twice."""
        data = chunk.data
        fired: list[Fault] = []
        drop = reset = duplicate = False
        with self._lock:
            faults = [f for f in self._faults if f.direction == chunk.direction]
            for fault in faults:
                if isinstance(fault, _DropAfter):
                    if len(data) < fault.remaining:
                        fault.remaining -= len(data)
                        continue
                    data = data[:fault.remaining]
                    drop, reset = True, fault.reset
                elif isinstance(fault, _DropWhen):
                    if not fault.predicate(chunk):
                        continue
                    data = data[:fault.forward]
                    drop, reset = True, fault.reset
                elif isinstance(fault, _Mangle):
                    if fault.kind == "truncate":
                        data = data[:fault.argument or 0]
                    elif fault.kind == "duplicate":
                        duplicate = True
                    else:
                        pos = len(data) // 2 if fault.argument is None else min(
                            fault.argument, len(data) - 1)
                        data = data[:pos] + bytes([data[pos] ^ 0xFF]) + data[pos + 1:]
                fired.append(fault)
                if drop:
                    break
            for fault in fired:
                self._faults.remove(fault)
                fault.conn = chunk.conn
            if drop:
                self.drops += 1
        for fault in fired:
            fault.fired.set()
        if fired:
            self._notify()
        return data, drop, reset, duplicate

    def _forward(self, conn: _Conn, direction: Direction, data: bytes, *,
                 close_after: bool = False, reset: bool = False) -> None:
        side = conn.sides[direction]
        with self._lock:
            delay, rate = self._delay[direction], self._rate[direction]
        conn.public.forwarded[direction] += len(data)
        if close_after:
            conn.close_reset = reset
        now = time.monotonic()
        if not delay and not rate and not side.queue:
            side.backlog += data
            self._write(conn, side.dst)
            if close_after:
                self._begin_close(conn, "drop", reset)
            return
        pieces = [data] if not rate else [
            data[i:i + max(1, int(rate / 20))] for i in range(0, len(data), max(1, int(rate / 20)))
        ] or [b""]
        for n, piece in enumerate(pieces):
            due = now + delay
            if rate:
                start = max(now, side.next_free)
                side.next_free = start + len(piece) / rate
                due = max(due, side.next_free)
            due = max(due, side.last_due)
            side.last_due = due
            side.queue.append((due, piece, close_after and n == len(pieces) - 1))

    def _write(self, conn: _Conn, sock: socket.socket) -> None:
        side = conn.sides[C2S if sock is conn.server else S2C]
        if not side.backlog or sock in conn.eof:
            return
        try:
            sent = sock.send(side.backlog)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            side.backlog.clear()
            self._begin_close(conn, "write failed", True)
            return
        del side.backlog[:sent]

    def _update_masks(self, conn: _Conn) -> None:
        for direction, side in conn.sides.items():
            src = side.src
            if src in conn.eof:
                continue
            want = 0
            reverse = conn.sides[S2C if direction == C2S else C2S]
            if not conn.closing and len(side.backlog) + sum(
                    len(q[1]) for q in side.queue) < BACKLOG_LIMIT:
                want |= selectors.EVENT_READ
            if reverse.backlog:  # src is the destination of the other direction
                want |= selectors.EVENT_WRITE
            if want != conn.masks.get(src):
                if want:
                    if conn.masks.get(src):
                        self._selector.modify(src, want, (conn, src))
                    else:
                        self._selector.register(src, want, (conn, src))
                else:
                    self._selector.unregister(src)
                conn.masks[src] = want

    def _begin_close(self, conn: _Conn, reason: str, reset: bool) -> None:
        """Close once what is due toward either side is written (1 s at most)."""
        if conn.closing:
            return
        conn.closing = True
        conn.close_reason = reason
        conn.close_reset = reset
        conn.close_deadline = time.monotonic() + 1.0
        if not any(s.backlog or s.queue for s in conn.sides.values()):
            self._close(conn, reason, reset)

    def _close(self, conn: _Conn, reason: str, reset: bool) -> None:
        public = conn.public
        if public.closed_at is not None:
            return
        for sock in (conn.client, conn.server):
            if conn.masks.get(sock):
                try:
                    self._selector.unregister(sock)
                except (KeyError, ValueError):
                    pass
            if reset:
                _abort(sock)
            else:
                try:
                    sock.close()
                except OSError:
                    pass
        self._conns.pop(public, None)
        with self._lock:
            public.closed_at = time.monotonic()
            public.close_reason = reason
        self._notify()


def _abort(sock: socket.socket) -> None:
    """Close with an RST instead of a FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    except OSError:
        pass
    try:
        sock.close()
    except OSError:
        pass
