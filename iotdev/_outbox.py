"""Durable telemetry: an on-disk outbox for ``send_message`` (SQLite, WAL).

Theory of operation
-------------------
``put()`` appends one row (sequence number, topic, payload, size) in one
transaction committed with ``synchronous=FULL``: when it returns, the message
survives a crash of the process and, as far as the disk honours ``fsync``, a
power cut.  Sequence numbers come from ``AUTOINCREMENT`` and never go back, so
"every message accepted before this one" is "every row with a smaller
``seq``".

The sender (one of the clients' front-ends) moves rows from the outbox to the
MQTT engine through a bounded window: ``take()`` returns the oldest rows not
already in flight, at most ``window`` rows and about ``window_bytes`` bytes
in flight at once, so a large backlog is never loaded into memory.  The
sender reports each publish's outcome: ``acked(seq)`` (PUBACK) or
``release(seq)`` (the publish failed: the row is taken again, oldest
first).  An acknowledged row stops counting as pending at once and is
deleted by group commit: by the next ``put()`` (in its transaction, for
free) or by ``commit()``, which the sender calls once ``COMMIT_BATCH`` acks
wait, when someone waits for the outbox to drain, when the connection is
down, and ``FLUSH_AFTER`` seconds after an ack at the latest.  Deletes use
``synchronous=NORMAL``: one lost to a power cut only means a duplicate.
Which rows are in flight lives in memory only: after a crash every row left
in the file is sent again (at least once, in order).

The outbox is bounded by the bytes of its messages (topic plus payload, not
the file's size).  A message that does not fit raises ``ClientError`` under
``overflow="error"``; under ``"drop_oldest"`` the oldest rows are deleted in
the same transaction as the insert, counted in ``dropped`` and logged.

One process, one client: the database is opened with
``locking_mode=EXCLUSIVE`` (which in WAL mode also means no ``-shm`` file), so
a second client on the same file, in this process or another, is refused
until the first one is closed (a killed process releases it).  The file
records its owner (device, or device/module) because the stored topics
name it.

Thread safety: the SQLite connection is used under one lock
(``check_same_thread=False``); the in-memory state (in flight, acknowledged,
counters) has a second one, held briefly, so ``acked()`` and the counters
never wait for a ``put()``'s fsync.  Costs, measured on the test
machine's disk: ``put()`` about 0.1-0.2 ms (one fsync of the WAL; on slow
flash it can take milliseconds), ``commit()`` and ``take()`` a few tens of
microseconds; now and then a commit also checkpoints the WAL into the
database file (SQLite's default, every 1000 pages).
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass

from ._errors import ClientError

__all__ = ["DEFAULT_MAX_BYTES", "FLUSH_AFTER", "OVERFLOW_POLICIES", "Outbox", "Row"]

log = logging.getLogger(__name__)

DEFAULT_MAX_BYTES = 64 * 1024 * 1024
OVERFLOW_POLICIES = ("error", "drop_oldest")
DEFAULT_WINDOW = 64
DEFAULT_WINDOW_BYTES = 1024 * 1024
FORMAT = "1"
WARN_EVERY = 60.0  # seconds between two drop warnings (each one gives the totals)
COMMIT_BATCH = 32  # acknowledged rows that make commit(force=False) delete them
FLUSH_AFTER = 0.05  # seconds a sender leaves acknowledged rows before commit()

_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
    "topic TEXT NOT NULL, payload BLOB NOT NULL, size INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
)


@dataclass(frozen=True, slots=True)
class Row:
    """One stored message: what a QoS 1 PUBLISH needs."""

    seq: int
    topic: str
    payload: bytes


class Outbox:
    """A durable FIFO of telemetry messages with an in-flight window.

    Args:
        path: the database file (created when missing).
        max_bytes: the bound on the stored messages (topic plus payload bytes).
        overflow: ``"error"`` or ``"drop_oldest"``.
        owner: who the stored topics belong to (``device`` or ``device/module``);
            a file made by another owner is refused.
        window: rows in flight at most.
        window_bytes: bytes in flight at most (one row may exceed it when
            nothing else is in flight).

    Raises:
        ClientError: the file cannot be opened or created, is not an outbox,
            belongs to another device, or is in use by another client.
    """

    def __init__(self, path: str | os.PathLike[str], *, max_bytes: int = DEFAULT_MAX_BYTES,
                 overflow: str = "error", owner: str = "", window: int = DEFAULT_WINDOW,
                 window_bytes: int = DEFAULT_WINDOW_BYTES) -> None:
        if overflow not in OVERFLOW_POLICIES:
            raise ValueError(f"outbox_overflow must be 'error' or 'drop_oldest', got {overflow!r}")
        self.path = os.fspath(path)
        self.max_bytes = max_bytes
        self.overflow = overflow
        self.window = max(1, window)
        self.window_bytes = max(1, window_bytes)
        self._db_lock = threading.Lock()  # the SQLite connection (taken first)
        self._lock = threading.Lock()  # the in-memory state, held briefly
        self._inflight: dict[int, int] = {}  # seq -> size, handed to the engine
        self._acked: dict[int, int] = {}  # PUBACK'd (seq -> size), not yet deleted
        self._acked_bytes = 0
        self._cursor = 0  # every row up to here is in flight, acked or was released
        # Rows not yet taken, in memory, while the sender keeps up (None: read
        # the file); bounded like the window.
        self._tail: dict[int, tuple[Row, int]] | None = None
        self._tail_bytes = 0
        self._dropped = 0
        self._warned_at: float | None = None
        self._closed = False
        self._db = self._open(owner)
        count, size, oldest, last = self._db.execute(
            "SELECT COUNT(*), COALESCE(SUM(size), 0), MIN(seq), "
            "(SELECT COALESCE(MAX(seq), 0) FROM sqlite_sequence WHERE name = 'outbox') "
            "FROM outbox").fetchone()
        self._count: int = count
        self._bytes: int = size
        self._oldest: int | None = oldest
        self._last_seq: int = last
        if count == 0:
            self._tail = {}

    def _open(self, owner: str) -> sqlite3.Connection:
        where = f"the outbox {self.path!r}"
        try:
            db = sqlite3.connect(self.path, timeout=0.0, isolation_level=None,
                                 check_same_thread=False)
        except sqlite3.Error as exc:
            raise ClientError(f"cannot open {where}: {exc}") from exc
        try:
            db.execute("PRAGMA locking_mode=EXCLUSIVE")
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise ClientError(f"cannot open {where}: SQLite refused WAL mode ({mode})")
            db.execute("PRAGMA synchronous=FULL")
            db.execute("PRAGMA journal_size_limit=4194304")
            db.execute("BEGIN IMMEDIATE")  # takes the exclusive lock, kept until close()
            for statement in _SCHEMA:
                db.execute(statement)
            meta = dict(db.execute("SELECT key, value FROM meta").fetchall())
            if meta.get("format", FORMAT) != FORMAT:
                raise ClientError(f"{where} has format {meta['format']!r}; this version "
                                  f"reads format {FORMAT!r}")
            if meta.get("owner", owner) != owner:
                raise ClientError(f"{where} holds messages of {meta['owner']!r}, not "
                                  f"{owner!r}: use another outbox_path per device")
            db.executemany("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)",
                           [("format", FORMAT), ("owner", owner)])
            db.execute("COMMIT")
        except ClientError:
            db.close()
            raise
        except sqlite3.Error as exc:
            db.close()
            if getattr(exc, "sqlite_errorname", "") in ("SQLITE_BUSY", "SQLITE_LOCKED"):
                raise ClientError(f"{where} is in use by another client (in this process "
                                  "or another): one client per outbox") from exc
            raise ClientError(f"cannot open {where}: {exc}") from exc
        return db

    # ------------------------------------------------------------ observation

    @property
    def pending(self) -> int:
        """Messages stored and not yet acknowledged (in flight included)."""
        return self._count - len(self._acked)

    @property
    def pending_bytes(self) -> int:
        """Their topic and payload bytes (what ``max_bytes`` bounds)."""
        return self._bytes - self._acked_bytes

    @property
    def dropped(self) -> int:
        """Messages deleted by ``drop_oldest`` since this outbox was opened."""
        return self._dropped

    @property
    def in_flight(self) -> int:
        """Rows handed to the sender and not yet settled."""
        return len(self._inflight)

    @property
    def unflushed(self) -> int:
        """Rows acknowledged and not yet deleted (see ``commit``)."""
        return len(self._acked)

    @property
    def last_seq(self) -> int:
        """The sequence number of the last message stored (0: none yet)."""
        return self._last_seq

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def synchronous(self) -> str:
        """SQLite's ``synchronous`` setting on the outbox's connection, read
        from SQLite itself: ``"FULL"`` whenever no delete is running, so a
        ``put()`` is on disk when it returns (a check for tests and
        diagnostics).

        Raises:
            ClientError: the outbox is closed.
        """
        with self._db_lock:
            if self._closed:
                raise ClientError(f"the outbox {self.path!r} is closed")
            level = self._db.execute("PRAGMA synchronous").fetchone()[0]
        return {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}.get(level, str(level))

    def drained_through(self, seq: int) -> bool:
        """Whether every message up to ``seq`` has left the file (deleted
        after its PUBACK, or dropped).  No I/O."""
        oldest = self._oldest
        return oldest is None or oldest > seq

    # -------------------------------------------------------------- producer

    def put(self, topic: str, payload: bytes) -> int:
        """Store a message durably (it survives a crash once this returns).
        The same transaction deletes the rows acknowledged meanwhile.

        Returns:
            Its sequence number.

        Raises:
            ClientError: the outbox is full (``overflow="error"``), the message
                alone is larger than ``max_bytes``, the outbox is closed, or
                the disk failed (full, read-only...).
        """
        size = len(topic.encode("utf-8")) + len(payload)
        with self._db_lock:
            with self._lock:
                self._check_open()
                if size > self.max_bytes:
                    raise ClientError(f"the message takes {size} bytes in the outbox, more "
                                      f"than outbox_max_bytes={self.max_bytes} allows")
                excess = self.pending_bytes + size - self.max_bytes
                if excess > 0 and self.overflow == "error":
                    raise ClientError(
                        f"the outbox is full: {self.pending} messages take "
                        f"{self.pending_bytes} bytes of outbox_max_bytes={self.max_bytes}, "
                        f"no room for {size} more (outbox_overflow='error'): wait for the "
                        "backlog to drain, or choose outbox_overflow='drop_oldest'")
                acked = list(self._acked)
            db = self._db
            dropped = freed = last_dropped = 0
            try:
                db.execute("BEGIN IMMEDIATE")
                deleted, released = self._delete(acked)
                if excess > 0:
                    dropped, freed, last_dropped = self._drop_oldest(excess)
                seq = db.execute("INSERT INTO outbox (topic, payload, size) VALUES (?, ?, ?)",
                                 (topic, payload, size)).lastrowid
                oldest = self._oldest
                if deleted or dropped or oldest is None:
                    oldest = db.execute("SELECT MIN(seq) FROM outbox").fetchone()[0]
                db.execute("COMMIT")  # the fsync: only acked() may run meanwhile
            except sqlite3.Error as exc:
                self._rollback()
                raise ClientError(f"cannot store the message in the outbox {self.path!r}: "
                                  f"{exc}") from exc
            assert seq is not None
            with self._lock:
                self._forget_acked(acked)
                if dropped:  # rows acked or in flight meanwhile may be among them
                    self._forget_acked([k for k in self._acked if k <= last_dropped])
                    self._inflight = {k: v for k, v in self._inflight.items()
                                      if k > last_dropped}
                    self._dropped += dropped
                    self._warn_dropped(dropped, freed)
                self._count += 1 - deleted - dropped
                self._bytes += size - released - freed
                self._last_seq = seq
                self._oldest = oldest
                tail = self._tail
                if tail is not None:
                    if dropped:
                        for old in [k for k in tail if k <= last_dropped]:
                            self._tail_bytes -= tail.pop(old)[1]
                    if len(tail) < self.window and self._tail_bytes + size <= self.window_bytes:
                        tail[seq] = (Row(seq, topic, payload), size)
                        self._tail_bytes += size
                    else:  # a backlog: the sender reads it from the file
                        self._tail = None
            return seq

    def _forget_acked(self, seqs: list[int]) -> None:
        for seq in seqs:
            self._acked_bytes -= self._acked.pop(seq, 0)

    def _delete(self, seqs: list[int]) -> tuple[int, int]:
        """In the caller's transaction: delete rows; their count and bytes."""
        count = freed = 0
        for start in range(0, len(seqs), 500):
            chunk = seqs[start:start + 500]
            marks = ",".join("?" * len(chunk))
            for (size,) in self._db.execute(
                    f"DELETE FROM outbox WHERE seq IN ({marks}) RETURNING size", chunk):
                count += 1
                freed += size
        return count, freed

    def _drop_oldest(self, excess: int) -> tuple[int, int, int]:
        """In the caller's transaction: delete the oldest rows until ``excess``
        bytes are free; their count, bytes and last sequence number.  Rows in
        flight go too (the MQTT session may still deliver them; their
        outcome no longer matters)."""
        count = freed = last = 0
        cur = self._db.execute("SELECT seq, size FROM outbox ORDER BY seq")
        while freed < excess:
            batch = cur.fetchmany(256)
            if not batch:
                break
            for seq, size in batch:
                count += 1
                freed += size
                last = seq
                if freed >= excess:
                    break
        cur.close()
        self._db.execute("DELETE FROM outbox WHERE seq <= ?", (last,))
        return count, freed, last

    def _warn_dropped(self, count: int, size: int) -> None:
        now = time.monotonic()
        if self._warned_at is None or now - self._warned_at >= WARN_EVERY:
            self._warned_at = now
            log.warning("outbox %r is full (outbox_max_bytes=%d): dropped the %d oldest "
                        "message(s), %d bytes, for a new one; %d dropped since it was opened",
                        self.path, self.max_bytes, count, size, self._dropped)

    # ---------------------------------------------------------------- sender

    def take(self) -> list[Row]:
        """The oldest rows not in flight, as many as the window has room for;
        they are in flight from now on (until ``acked`` or ``release``).
        Rows stored since the sender caught up come from memory (no SQL, no
        wait for a ``put()``'s fsync); a backlog is read from the file."""
        with self._lock:
            if self._closed:
                return []
            if self._tail is not None:
                return self._take_tail()
        with self._db_lock, self._lock:
            if self._closed:
                return []
            return self._take_tail() if self._tail is not None else self._take_file()

    def _room(self) -> tuple[int, int]:
        return self.window - len(self._inflight), self.window_bytes - sum(self._inflight.values())

    def _take_tail(self) -> list[Row]:
        tail = self._tail
        assert tail is not None
        room, budget = self._room()
        rows: list[Row] = []
        total = 0
        for row, size in tail.values():
            if len(rows) >= room or ((rows or self._inflight) and total + size > budget):
                break
            rows.append(row)
            total += size
            self._inflight[row.seq] = size
        for row in rows:
            del tail[row.seq]
        self._tail_bytes -= total
        if rows:
            self._cursor = max(self._cursor, rows[-1].seq)
        return rows

    def _take_file(self) -> list[Row]:
        room, budget = self._room()
        if room <= 0 or (budget <= 0 and self._inflight):
            return []
        skip = set(self._inflight).union(self._acked)
        limit = room + len(skip)
        chosen: dict[int, int] = {}
        total = fetched = seen = 0
        complete = True
        for seq, size in self._db.execute(
                "SELECT seq, size FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
                (self._cursor, limit)):
            fetched += 1
            seen = seq
            if seq in skip:
                continue
            if (chosen or self._inflight) and total + size > budget:
                complete = False
                break
            chosen[seq] = size
            total += size
            if len(chosen) >= room:
                complete = False
                break
        rows = [] if not chosen else [
            Row(seq, topic, payload) for seq, topic, payload in self._db.execute(
                "SELECT seq, topic, payload FROM outbox WHERE seq BETWEEN ? AND ? ORDER BY seq",
                (min(chosen), max(chosen))) if seq in chosen]
        self._inflight.update(chosen)
        if chosen:
            self._cursor = max(self._cursor, max(chosen))
        if (complete and fetched < limit) or self._cursor >= self._last_seq:
            # Caught up: every stored row is in flight or acknowledged; new
            # ones are served from memory until something is released.
            self._cursor = max(self._cursor, seen)
            self._tail = {}
            self._tail_bytes = 0
        return rows

    def acked(self, seq: int) -> None:
        """The hub acknowledged row ``seq``: it no longer counts as pending and
        is deleted by the next ``put()`` or ``commit()``."""
        with self._lock:
            size = self._inflight.pop(seq, None)
            if size is not None:
                self._acked[seq] = size
                self._acked_bytes += size

    def release(self, seq: int) -> None:
        """Row ``seq``'s publish failed: it is taken again, oldest first."""
        with self._lock:
            if self._inflight.pop(seq, None) is not None:
                self._cursor = min(self._cursor, seq - 1)
                self._tail = None  # read from the file again, from there

    def release_all(self) -> None:
        with self._lock:
            self._inflight.clear()
            self._cursor = 0
            self._tail = None

    def commit(self, *, force: bool = True) -> int:
        """Delete the acknowledged rows in one transaction (group commit: with
        ``force=False`` only once ``COMMIT_BATCH`` of them wait; meanwhile
        the next ``put()`` deletes them for free).

        Returns:
            How many rows were deleted (0: nothing to do).

        Raises:
            ClientError: the disk failed (the rows stay, to be sent again).
        """
        with self._lock:  # the common case decided without waiting for a put()
            if self._closed or not self._acked or (
                    not force and len(self._acked) < COMMIT_BATCH):
                return 0
        with self._db_lock:
            with self._lock:
                if self._closed or not self._acked:
                    return 0
                acked = list(self._acked)
            return self._commit(acked)

    def _commit(self, acked: list[int]) -> int:
        """Under the database lock: delete ``acked``."""
        db = self._db
        try:
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("BEGIN IMMEDIATE")
            count, freed = self._delete(acked)
            oldest = db.execute("SELECT MIN(seq) FROM outbox").fetchone()[0]
            db.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            raise ClientError(f"cannot delete acknowledged messages from the outbox "
                              f"{self.path!r}: {exc}") from exc
        finally:
            try:
                db.execute("PRAGMA synchronous=FULL")
            except sqlite3.Error:
                pass
        with self._lock:
            self._forget_acked(acked)
            self._count -= count
            self._bytes -= freed
            self._oldest = oldest
        return count

    def _rollback(self) -> None:
        try:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
        except sqlite3.Error:
            pass

    def _check_open(self) -> None:
        if self._closed:
            raise ClientError(f"the outbox {self.path!r} is closed (the client was shut down)")

    def close(self) -> None:
        """Delete what was acknowledged, then close the file (releases it for
        another client).  Idempotent."""
        with self._db_lock:
            if self._closed:
                return
            try:
                if self._acked:
                    self._commit(list(self._acked))
            except ClientError as exc:
                log.warning("%s", exc)
            with self._lock:
                self._closed = True
                self._inflight.clear()
                self._tail = None
            self._db.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self._count} pending"
        return f"<Outbox {self.path!r} {state}>"
