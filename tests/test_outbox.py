"""Durable telemetry: the on-disk outbox (``outbox_path``).

The store alone (``iotdev._outbox.Outbox``): order, the in-flight window,
both overflow policies, reopening, one client per file, concurrent appends.
Then both device clients against the local hub: messages accepted before
``connect()`` or while the hub is down are delivered in order afterwards; a
backlog left by an earlier client is sent when the next one connects; the
overflow policies end to end; bad option values.  Last, a client process
killed with SIGKILL at seeded random moments and restarted on the same
outbox: every number it reported as accepted reaches the hub, in order.

Nothing sleeps: tests wait on events and conditions with deadlines.
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import random
import subprocess
import sys
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from iotdev import (
    ClientError,
    ConnectionFailedError,
    IoTHubDeviceClient,
    OperationCancelled,
    OperationTimeout,
)
from iotdev._compat import async_timeout
from iotdev._outbox import Outbox
from iotdev.aio import IoTHubDeviceClient as AsyncClient
from iotdev.emulator import Hub
from tests._faultproxy import C2S, FaultProxy
from tests._faultproxy import HOST as FAULT_HOST
from tests.test_device_client_sync import (
    HubSpy,
    Recorder,
    in_thread,
    new_id,
    restart,
    state_recorder,
)

TIMEOUT = 10.0
CHILD = Path(__file__).with_name("_outbox_child.py")
ROOT = Path(__file__).resolve().parent.parent
TOPIC = "devices/dev/messages/events/"


def topic_of(device_id: str) -> str:
    return f"devices/{device_id}/messages/events/"


def size_of(device_id: str, body: bytes | str) -> int:
    """What a plain message takes in the outbox (topic plus body)."""
    data = body.encode() if isinstance(body, str) else body
    return len(topic_of(device_id)) + len(data)


# ================================================================ the store


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "outbox.db"


@pytest.fixture
def stores() -> Iterator[list[Outbox]]:
    made: list[Outbox] = []
    yield made
    for store in made:
        store.close()


@pytest.fixture
def open_store(db: Path, stores: list[Outbox]) -> Callable[..., Outbox]:
    def open_(path: Path | None = None, **kwargs: Any) -> Outbox:
        kwargs.setdefault("owner", "dev")
        store = Outbox(path or db, **kwargs)
        stores.append(store)
        return store

    return open_


def payloads(rows: list[Any]) -> list[bytes]:
    return [row.payload for row in rows]


def test_store_is_fifo_and_feeds_a_bounded_window(open_store: Callable[..., Outbox]) -> None:
    store = open_store(window=4)
    seqs = [store.put(TOPIC, b"m%d" % i) for i in range(10)]
    assert seqs == sorted(seqs) and len(set(seqs)) == 10
    assert (store.pending, store.last_seq) == (10, seqs[-1])
    first = store.take()
    assert payloads(first) == [b"m0", b"m1", b"m2", b"m3"]
    assert all(row.topic == TOPIC for row in first)
    assert store.take() == []  # the window is full
    store.acked(first[0].seq)
    store.acked(first[1].seq)
    assert (store.pending, store.unflushed) == (8, 2)  # acknowledged: no longer pending
    assert not store.drained_through(first[0].seq)  # ... but still in the file
    assert store.commit(force=False) == 0  # group commit: fewer than COMMIT_BATCH wait
    assert store.commit() == 2
    assert (store.pending, store.unflushed) == (8, 0)
    assert store.drained_through(first[1].seq)
    assert not store.drained_through(first[2].seq)
    assert payloads(store.take()) == [b"m4", b"m5"]
    store.release(first[2].seq)  # its publish failed: taken again, oldest first
    assert payloads(store.take()) == [b"m2"]
    store.release_all()  # the session was given up: everything left is taken again
    assert payloads(store.take()) == [b"m2", b"m3", b"m4", b"m5"]


def test_store_group_commit(open_store: Callable[..., Outbox]) -> None:
    store = open_store(window=100)
    for i in range(40):
        store.put(TOPIC, b"m%d" % i)
    rows = store.take()
    for row in rows[:3]:
        store.acked(row.seq)
    store.put(TOPIC, b"next")  # deletes the acknowledged rows in its own transaction
    assert (store.pending, store.unflushed) == (38, 0)
    assert store.drained_through(rows[2].seq) and not store.drained_through(rows[3].seq)
    for row in rows[3:34]:
        store.acked(row.seq)
    assert store.commit(force=False) == 0  # 31 wait
    store.acked(rows[34].seq)
    assert store.commit(force=False) == 32  # COMMIT_BATCH reached
    assert (store.pending, store.unflushed) == (6, 0)


def test_store_window_is_bounded_in_bytes(open_store: Callable[..., Outbox]) -> None:
    store = open_store(window=100, window_bytes=1000)
    big = b"x" * (400 - len(TOPIC))  # 400 bytes a row
    huge = b"y" * 5000
    for body in (big, big, big, huge):
        store.put(TOPIC, body)
    first = store.take()
    assert payloads(first) == [big, big]  # 800 bytes in flight; a third would pass 1000
    assert store.take() == []  # 200 bytes of room: the next row does not fit
    for row in first:
        store.acked(row.seq)
    store.commit()
    (third,) = store.take()  # the huge one would pass the budget
    assert third.payload == big
    store.acked(third.seq)
    store.commit()
    assert payloads(store.take()) == [huge]  # alone, a row over the budget still goes


def test_store_reopened_after_close_keeps_rows_order_and_sequence(
        open_store: Callable[..., Outbox], db: Path) -> None:
    store = open_store()
    for i in range(5):
        store.put(TOPIC, b"m%d" % i)
    acked = store.take()[:2]
    for row in acked:
        store.acked(row.seq)
    store.close()  # deletes what was acknowledged, releases the file
    again = open_store()
    assert (again.pending, again.last_seq) == (3, 5)
    assert payloads(again.take()) == [b"m2", b"m3", b"m4"]
    again.release_all()
    for row in again.take():
        again.acked(row.seq)
    again.commit()
    assert again.pending == 0
    again.close()
    third = open_store()
    assert third.put(TOPIC, b"next") == 6  # sequence numbers never go back
    assert third.pending_bytes == len(TOPIC) + 4


def test_store_overflow_error_names_the_limit(open_store: Callable[..., Outbox]) -> None:
    size = len(TOPIC) + 10
    store = open_store(max_bytes=3 * size, overflow="error")
    for i in range(3):
        store.put(TOPIC, b"%010d" % i)
    with pytest.raises(ClientError, match=rf"outbox is full.*outbox_max_bytes={3 * size}"):
        store.put(TOPIC, b"%010d" % 3)
    assert (store.pending, store.pending_bytes, store.dropped) == (3, 3 * size, 0)
    first = store.take()[0]
    store.acked(first.seq)
    store.commit()
    store.put(TOPIC, b"%010d" % 3)  # room again
    assert payloads(store.take()) == [b"%010d" % 3]  # the others are still in flight
    store.release_all()
    assert payloads(store.take()) == [b"%010d" % i for i in (1, 2, 3)]


def test_store_overflow_drop_oldest_counts_and_warns(
        open_store: Callable[..., Outbox], caplog: pytest.LogCaptureFixture) -> None:
    size = len(TOPIC) + 10
    store = open_store(max_bytes=3 * size, overflow="drop_oldest")
    with caplog.at_level(logging.WARNING, logger="iotdev._outbox"):
        for i in range(10):
            store.put(TOPIC, b"%010d" % i)
    assert (store.pending, store.pending_bytes, store.dropped) == (3, 3 * size, 7)
    assert payloads(store.take()) == [b"%010d" % i for i in (7, 8, 9)]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings and "dropped the 1 oldest message(s)" in warnings[0]
    assert f"outbox_max_bytes={3 * size}" in warnings[0]
    # A bigger message drops as many as it needs; rows in flight go too.
    store.put(TOPIC, b"z" * (2 * size - len(TOPIC)))
    assert (store.pending, store.dropped) == (2, 9)
    for seq in range(8, 11):
        store.acked(seq)  # acks of the dropped rows change nothing
    assert store.commit() == 1
    assert (store.pending, store.pending_bytes) == (1, 2 * size)


@pytest.mark.parametrize("overflow", ["error", "drop_oldest"])
def test_store_refuses_a_message_larger_than_the_whole_outbox(
        open_store: Callable[..., Outbox], overflow: str) -> None:
    store = open_store(max_bytes=100, overflow=overflow)
    store.put(TOPIC, b"small")
    with pytest.raises(ClientError, match="outbox_max_bytes=100"):
        store.put(TOPIC, b"x" * 100)
    assert (store.pending, store.dropped) == (1, 0)


def test_store_concurrent_appends_from_threads(open_store: Callable[..., Outbox]) -> None:
    store = open_store(window=10_000, window_bytes=1 << 30)
    threads, per_thread = 8, 150
    start = threading.Barrier(threads)
    errors: list[BaseException] = []

    def producer(index: int) -> None:
        try:
            start.wait(TIMEOUT)
            for n in range(per_thread):
                store.put(TOPIC, f"{index}:{n}".encode())
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=producer, args=(i,)) for i in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(TIMEOUT * 3)
    assert not errors and not any(w.is_alive() for w in workers)
    assert store.pending == threads * per_thread == store.last_seq
    rows = store.take()
    assert [row.seq for row in rows] == list(range(1, threads * per_thread + 1))
    seen: dict[int, list[int]] = {}
    for row in rows:
        index, n = row.payload.decode().split(":")
        seen.setdefault(int(index), []).append(int(n))
    assert seen == {i: list(range(per_thread)) for i in range(threads)}  # each in its order


def test_one_client_per_outbox_file_and_owner_checks(
        open_store: Callable[..., Outbox], db: Path, tmp_path: Path) -> None:
    store = open_store()
    store.put(TOPIC, b"held")
    with pytest.raises(ClientError, match="in use by another client"):
        Outbox(db, owner="dev")
    store.close()
    with pytest.raises(ClientError, match="holds messages of 'dev', not 'other'"):
        Outbox(db, owner="other")
    assert open_store().pending == 1
    junk = tmp_path / "junk.db"
    junk.write_bytes(b"not a database, just some bytes " * 100)
    with pytest.raises(ClientError, match="cannot open the outbox"):
        Outbox(junk, owner="dev")
    with pytest.raises(ClientError, match="cannot open the outbox"):
        Outbox(tmp_path / "missing" / "dir" / "outbox.db", owner="dev")


@pytest.mark.parametrize("seed", range(6))
def test_store_against_a_model(db: Path, seed: int) -> None:
    """Random puts (with drop_oldest), takes, acks, failures, commits and
    reopenings, checked against a plain model after every step: ``take()``
    always hands out the oldest rows available, never one in flight, and the
    counters match (memory tail and file reads alike)."""
    rng = random.Random(seed)
    max_bytes = 40 * (len(TOPIC) + 20)
    store = Outbox(db, owner="dev", max_bytes=max_bytes, overflow="drop_oldest",
                   window=rng.choice([1, 4, 16]), window_bytes=rng.choice([100, 400, 5000]))
    rows: dict[int, int] = {}  # in the file: seq -> size
    acked: set[int] = set()  # acknowledged, not deleted yet
    inflight: set[int] = set()
    last = dropped = 0
    try:
        for _ in range(1500):
            op = rng.choices(["put", "take", "ack", "fail", "fail_all", "commit", "reopen"],
                             [30, 25, 25, 3, 1, 5, 1])[0]
            if op == "put":
                body = bytes(rng.randrange(256) for _ in range(rng.randint(0, 40)))
                size = len(TOPIC) + len(body)
                for seq in acked:
                    del rows[seq]
                acked.clear()
                excess = sum(rows.values()) + size - max_bytes
                for seq in sorted(rows):
                    if excess <= 0:
                        break
                    excess -= rows.pop(seq)
                    inflight.discard(seq)
                    dropped += 1
                last = store.put(TOPIC, body)
                rows[last] = size
            elif op == "take":
                taken = [row.seq for row in store.take()]
                available = sorted(set(rows) - acked - inflight)
                assert taken == available[:len(taken)]
                assert taken or not available or inflight, "nothing taken, nothing in flight"
                inflight.update(taken)
            elif op in ("ack", "fail") and inflight:
                seq = rng.choice(sorted(inflight))
                inflight.discard(seq)
                if op == "ack":
                    store.acked(seq)
                    acked.add(seq)
                else:
                    store.release(seq)
            elif op == "fail_all":
                store.release_all()
                inflight.clear()
            elif op == "commit":
                force = rng.random() < 0.5
                if force or len(acked) >= 32:
                    for seq in acked:
                        del rows[seq]
                    acked.clear()
                store.commit(force=force)
            elif op == "reopen":
                store.close()
                for seq in acked:
                    del rows[seq]
                acked.clear()
                inflight.clear()
                store = Outbox(db, owner="dev", max_bytes=max_bytes, overflow="drop_oldest",
                               window=store.window, window_bytes=store.window_bytes)
                dropped = store.dropped  # counted per opening
            assert store.pending == len(rows) - len(acked)
            assert store.pending_bytes == sum(v for k, v in rows.items() if k not in acked)
            assert store.pending_bytes <= max_bytes
            assert store.last_seq == last and store.dropped == dropped
            assert store.drained_through(min(rows) - 1 if rows else last)
            assert not rows or not store.drained_through(min(rows))
    finally:
        store.close()


def test_store_after_close(open_store: Callable[..., Outbox]) -> None:
    store = open_store()
    store.put(TOPIC, b"kept")
    store.close()
    store.close()  # idempotent
    with pytest.raises(ClientError, match="closed"):
        store.put(TOPIC, b"late")
    assert store.take() == [] and store.commit() == 0


# ========================================================== the sync client


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    with Hub(mqtt_port=0, ws_port=0, state_dir=tmp_path_factory.mktemp("hub")) as running:
        yield running


@pytest.fixture
def dev(hub: Hub) -> str:
    device_id = new_id()
    hub.add_device(device_id)
    return device_id


@pytest.fixture
def own_hub(tmp_path: Path) -> Iterator[dict[str, Hub]]:
    box = {"hub": Hub(mqtt_port=0, ws_port=0, state_dir=tmp_path / "hub").start()}
    yield box
    box["hub"].stop()


@pytest.fixture
def clients() -> Iterator[list[IoTHubDeviceClient]]:
    made: list[IoTHubDeviceClient] = []
    yield made
    for client in made:
        client.shutdown()


@pytest.fixture
def make(hub: Hub, db: Path,
         clients: list[IoTHubDeviceClient]) -> Callable[..., IoTHubDeviceClient]:
    """``make(device_id, hub=None, **options)``: a client with an outbox at ``db``."""

    def make(device_id: str, hub_: Hub | None = None, **kwargs: Any) -> IoTHubDeviceClient:
        target = hub_ or hub
        kwargs.setdefault("server_verification_cert", target.ca_pem)
        kwargs.setdefault("port", target.mqtt_port)
        kwargs.setdefault("outbox_path", db)
        client = IoTHubDeviceClient.create_from_connection_string(
            target.connection_string(device_id), **kwargs)
        clients.append(client)
        return client

    return make


def bodies(hub: Hub, device_id: str, count: int) -> list[bytes]:
    return [m.body for m in hub.wait_for_telemetry(device_id, count, TIMEOUT)]


def numbered(prefix: str, count: int, start: int = 0) -> list[bytes]:
    return [f"{prefix}{n:04d}".encode() for n in range(start, start + count)]


def test_sync_messages_accepted_before_connect_are_delivered_in_order(
        hub: Hub, dev: str, make: Callable[..., IoTHubDeviceClient]) -> None:
    client = make(dev, auto_connect=False)
    for body in numbered("m", 50):
        client.send_message(body)  # stored: no connection needed
    assert client.outbox_pending == 50 and not client.connected
    assert hub.telemetry(dev) == []
    with pytest.raises(OperationTimeout, match="50 messages pending"):
        client.wait_outbox_drained(timeout=0.05)  # auto_connect is off: nothing moves
    client.connect()
    client.wait_outbox_drained(timeout=TIMEOUT)
    assert client.outbox_pending == 0
    assert bodies(hub, dev, 50) == numbered("m", 50)
    client.send_message(b"after")
    client.wait_outbox_drained(timeout=TIMEOUT)
    assert bodies(hub, dev, 51)[-1] == b"after"


def test_sync_send_message_connects_in_the_background(
        hub: Hub, dev: str, make: Callable[..., IoTHubDeviceClient]) -> None:
    client = make(dev)  # auto_connect: the first send starts connecting, does not wait
    states = state_recorder(client)
    for body in numbered("bg", 20):
        client.send_message(body)
    client.wait_outbox_drained(timeout=TIMEOUT)
    assert bodies(hub, dev, 20) == numbered("bg", 20)
    assert states.wait(1)[0] is True


def test_sync_backlog_of_an_earlier_client_is_sent_when_the_next_one_connects(
        hub: Hub, dev: str, make: Callable[..., IoTHubDeviceClient]) -> None:
    first = make(dev, auto_connect=False)
    for body in numbered("old", 5):
        first.send_message(body)
    first.shutdown()
    second = make(dev, auto_connect=False)
    assert second.outbox_pending == 5
    second.send_message(b"new")
    second.connect()
    second.wait_outbox_drained(timeout=TIMEOUT)
    assert bodies(hub, dev, 6) == [*numbered("old", 5), b"new"]


def test_sync_messages_accepted_while_the_hub_is_down_arrive_in_order(
        own_hub: dict[str, Hub], make: Callable[..., IoTHubDeviceClient]) -> None:
    hub = own_hub["hub"]
    hub.add_device("dev")
    client = make("dev", hub, connection_retry_interval=1)
    states = state_recorder(client)
    client.connect()
    client.send_message(b"before")
    client.wait_outbox_drained(timeout=TIMEOUT)
    assert bodies(hub, "dev", 1) == [b"before"]
    hub.stop()
    states.wait(2)  # the drop is seen; the client retries in the background
    for body in numbered("down", 30):
        client.send_message(body)  # never fails, never waits
    assert client.outbox_pending == 30
    hub = own_hub["hub"] = restart(hub)
    client.wait_outbox_drained(timeout=TIMEOUT)
    assert bodies(hub, "dev", 30) == numbered("down", 30)


def test_sync_background_connect_failure_is_reported_and_retried(
        own_hub: dict[str, Hub], make: Callable[..., IoTHubDeviceClient]) -> None:
    hub = own_hub["hub"]
    hub.add_device("dev")
    client = make("dev", hub, connection_retry_interval=1)
    hub.stop()  # down before the client ever connected
    errors = Recorder()
    client.on_background_exception = errors
    client.send_message(b"while down")  # accepted; the connection fails in the background
    assert isinstance(errors.wait(1)[0], ConnectionFailedError)
    assert client.outbox_pending == 1
    hub = own_hub["hub"] = restart(hub)
    # The client retries on its own (back-off 0.5-1 s, doubling).
    client.wait_outbox_drained(timeout=3 * TIMEOUT)
    assert bodies(hub, "dev", 1) == [b"while down"]


def test_sync_disconnect_keeps_the_backlog_for_the_next_connect(
        hub: Hub, dev: str, make: Callable[..., IoTHubDeviceClient]) -> None:
    client = make(dev, auto_connect=False)
    client.connect()
    client.disconnect()
    for body in numbered("d", 10):
        client.send_message(body)
    assert client.outbox_pending == 10
    client.connect()
    client.wait_outbox_drained(timeout=TIMEOUT)
    assert bodies(hub, dev, 10) == numbered("d", 10)


def first_arrivals(items: list[bytes]) -> list[bytes]:
    """Each message once, in the order it first arrived (at least once means
    a message may come again after a drop)."""
    seen: set[bytes] = set()
    first: list[bytes] = []
    for item in items:
        if item not in seen:
            seen.add(item)
            first.append(item)
    return first


@pytest.mark.parametrize("retry", [True, False], ids=["retry", "no-retry"])
def test_sync_messages_in_flight_at_a_drop_are_sent_again_in_order(
        hub: Hub, dev: str, make: Callable[..., IoTHubDeviceClient],
        monkeypatch: pytest.MonkeyPatch, retry: bool) -> None:
    """The hub cuts the connection at one PUBLISH (no PUBACK): with retry the
    session re-sends what was in flight after the reconnect; without, the
    driver gives the session up, the rows go back to the outbox and leave on
    the next ``connect()``."""
    spy = HubSpy().install(hub, monkeypatch.setattr)
    cut = spy.cut_at[b"m0010"] = threading.Event()
    client = make(dev, auto_connect=False, connection_retry=retry,
                  connection_retry_interval=1)
    states = state_recorder(client)
    client.connect()
    for body in numbered("m", 30):
        client.send_message(body)
    assert cut.wait(TIMEOUT)
    states.wait(2)  # the drop is seen
    if not retry:
        client.connect()
    client.wait_outbox_drained(timeout=TIMEOUT)
    with spy.cond:
        received = [p for d, _, p in spy.publishes if d == dev]
    assert first_arrivals(received) == numbered("m", 30)  # on the wire: in order
    # The hub stored them all.  (Not necessarily in order: the emulator still
    # processes the PUBLISHes that came in the same read as the cut one.)
    assert {m.body for m in hub.telemetry(dev)} == set(numbered("m", 30))
    print(f"\n[outbox drop, {'retry' if retry else 'no retry'}] publishes={len(received)} "
          f"unique=30")


def test_sync_shutdown_ends_a_drain_wait(dev: str,
                                         make: Callable[..., IoTHubDeviceClient]) -> None:
    client = make(dev, auto_connect=False)
    client.send_message(b"stuck")
    join = in_thread(client.wait_outbox_drained, timeout=60)
    join.wait_blocked()
    client.shutdown()
    with pytest.raises(OperationCancelled):
        join(TIMEOUT)


def test_sync_overflow_error_end_to_end(hub: Hub, dev: str,
                                        make: Callable[..., IoTHubDeviceClient]) -> None:
    size = size_of(dev, "m0000")
    client = make(dev, auto_connect=False, outbox_max_bytes=5 * size)
    for body in numbered("m", 5):
        client.send_message(body)
    with pytest.raises(ClientError, match=f"outbox is full.*outbox_max_bytes={5 * size}"):
        client.send_message(b"m0005")
    assert (client.outbox_pending, client.outbox_dropped) == (5, 0)
    client.connect()
    client.wait_outbox_drained(timeout=TIMEOUT)
    client.send_message(b"m0005")  # room again
    client.wait_outbox_drained(timeout=TIMEOUT)
    assert bodies(hub, dev, 6) == numbered("m", 6)


def test_sync_overflow_drop_oldest_end_to_end(
        hub: Hub, dev: str, make: Callable[..., IoTHubDeviceClient],
        caplog: pytest.LogCaptureFixture) -> None:
    size = size_of(dev, "m0000")
    client = make(dev, auto_connect=False, outbox_max_bytes=5 * size,
                  outbox_overflow="drop_oldest")
    with caplog.at_level(logging.WARNING, logger="iotdev._outbox"):
        for body in numbered("m", 12):
            client.send_message(body)
    assert (client.outbox_pending, client.outbox_dropped) == (5, 7)
    assert any("dropped the 1 oldest" in r.getMessage() for r in caplog.records)
    client.connect()
    client.wait_outbox_drained(timeout=TIMEOUT)
    assert bodies(hub, dev, 5) == numbered("m", 5, start=7)


def test_sync_send_message_still_validates_before_storing(
        dev: str, make: Callable[..., IoTHubDeviceClient]) -> None:
    client = make(dev, auto_connect=False)
    with pytest.raises(ValueError, match="256 KB"):
        client.send_message(b"x" * 262_145)
    assert client.outbox_pending == 0


def test_sync_outbox_is_released_at_shutdown(
        dev: str, make: Callable[..., IoTHubDeviceClient], db: Path) -> None:
    first = make(dev, auto_connect=False)
    with pytest.raises(ClientError, match="in use by another client"):
        make(dev, auto_connect=False)
    first.send_message(b"kept")
    first.shutdown()
    with pytest.raises(ClientError, match="shut down"):
        first.send_message(b"late")
    assert make(dev, auto_connect=False).outbox_pending == 1


def test_without_an_outbox_nothing_changes(hub: Hub, dev: str,
                                           make: Callable[..., IoTHubDeviceClient]) -> None:
    client = make(dev, outbox_path=None)
    client.send_message(b"direct")  # returns on PUBACK, as before
    assert (client.outbox_pending, client.outbox_dropped) == (0, 0)
    client.wait_outbox_drained(timeout=0.01)  # nothing to wait for
    assert bodies(hub, dev, 1) == [b"direct"]


@pytest.mark.parametrize(("option", "value", "error"), [
    ("outbox_path", 42, TypeError),
    ("outbox_path", b"/tmp/outbox.db", TypeError),
    ("outbox_path", "", ValueError),
    ("outbox_path", ":memory:", ValueError),
    ("outbox_max_bytes", 0, ValueError),
    ("outbox_max_bytes", -1, ValueError),
    ("outbox_max_bytes", "1024", TypeError),
    ("outbox_max_bytes", 1024.0, TypeError),
    ("outbox_max_bytes", True, TypeError),
    ("outbox_overflow", "drop", ValueError),
    ("outbox_overflow", "ERROR", ValueError),
    ("outbox_overflow", 1, TypeError),
])
@pytest.mark.parametrize("client_class", [IoTHubDeviceClient, AsyncClient],
                         ids=["sync", "aio"])
def test_bad_outbox_option_values(hub: Hub, dev: str, option: str, value: Any,
                                  error: type[Exception], client_class: Any) -> None:
    with pytest.raises(error, match=option):
        client_class.create_from_connection_string(
            hub.connection_string(dev), server_verification_cert=hub.ca_pem, **{option: value})


def test_outbox_path_takes_a_path_object_and_bounds_are_accepted(
        hub: Hub, dev: str, make: Callable[..., IoTHubDeviceClient], tmp_path: Path) -> None:
    client = make(dev, outbox_path=tmp_path / "as-path.db", outbox_max_bytes=1,
                  outbox_overflow="drop_oldest", auto_connect=False)
    with pytest.raises(ClientError, match="outbox_max_bytes=1"):
        client.send_message(b"x")
    assert (tmp_path / "as-path.db").exists()


# ========================================================= the asyncio client


class Aio:
    """``make(device_id, **options)`` builds asyncio clients with an outbox;
    ``run(body)`` runs ``body()`` on a new loop under a deadline and shuts
    the clients down on that loop."""

    def __init__(self, hub: Hub, db: Path) -> None:
        self.hub = hub
        self.db = db
        self.made: list[AsyncClient] = []

    def make(self, device_id: str, hub: Hub | None = None, **kwargs: Any) -> AsyncClient:
        target = hub or self.hub
        kwargs.setdefault("server_verification_cert", target.ca_pem)
        kwargs.setdefault("port", target.mqtt_port)
        kwargs.setdefault("outbox_path", self.db)
        client = AsyncClient.create_from_connection_string(target.connection_string(device_id),
                                                           **kwargs)
        self.made.append(client)
        return client

    def run(self, body: Callable[[], Awaitable[Any]], deadline: float = 30.0) -> Any:
        async def main() -> Any:
            try:
                async with async_timeout(deadline):
                    return await body()
            finally:
                for client in self.made:
                    await asyncio.wait_for(client.shutdown(), 5.0)

        return asyncio.run(main())


@pytest.fixture
def aio(hub: Hub, db: Path) -> Aio:
    return Aio(hub, db)


async def abodies(hub: Hub, device_id: str, count: int) -> list[bytes]:
    return [m.body for m in await hub.await_telemetry(device_id, count, TIMEOUT)]


def test_aio_messages_accepted_before_connect_are_delivered_in_order(
        hub: Hub, dev: str, aio: Aio) -> None:
    async def body() -> None:
        client = aio.make(dev, auto_connect=False)
        for message in numbered("a", 40):
            await client.send_message(message)
        assert client.outbox_pending == 40 and not client.connected
        with pytest.raises(OperationTimeout):
            await client.wait_outbox_drained(timeout=0.05)
        assert hub.telemetry(dev) == []
        await client.connect()
        await client.wait_outbox_drained(timeout=TIMEOUT)
        assert await abodies(hub, dev, 40) == numbered("a", 40)
        assert client.outbox_pending == 0

    aio.run(body)


def test_aio_send_message_connects_in_the_background_and_backlog_survives(
        hub: Hub, dev: str, aio: Aio) -> None:
    async def body() -> None:
        first = aio.make(dev, auto_connect=False)
        for message in numbered("old", 3):
            await first.send_message(message)
        await first.shutdown()
        second = aio.make(dev)  # auto_connect
        assert second.outbox_pending == 3
        await second.send_message(b"new")  # starts connecting, does not wait
        await second.wait_outbox_drained(timeout=TIMEOUT)
        assert second.connected
        assert await abodies(hub, dev, 4) == [*numbered("old", 3), b"new"]

    aio.run(body)


def test_aio_messages_accepted_while_the_hub_is_down_arrive_in_order(
        own_hub: dict[str, Hub], aio: Aio) -> None:
    hub = own_hub["hub"]
    hub.add_device("dev")

    async def body() -> None:
        client = aio.make("dev", hub, connection_retry_interval=1)
        dropped = asyncio.Event()
        loop = asyncio.get_running_loop()  # the handler runs on the handler thread
        client.on_connection_state_change = (
            lambda: None if client.connected else loop.call_soon_threadsafe(dropped.set))
        await client.connect()
        await asyncio.to_thread(hub.stop)
        await asyncio.wait_for(dropped.wait(), TIMEOUT)
        for message in numbered("down", 25):
            await client.send_message(message)
        assert client.outbox_pending == 25
        own_hub["hub"] = await asyncio.to_thread(restart, hub)
        await client.wait_outbox_drained(timeout=TIMEOUT)
        assert await abodies(own_hub["hub"], "dev", 25) == numbered("down", 25)

    aio.run(body)


@pytest.mark.parametrize("overflow", ["error", "drop_oldest"])
def test_aio_overflow_end_to_end(hub: Hub, dev: str, aio: Aio, overflow: str) -> None:
    size = size_of(dev, "m0000")

    async def body() -> None:
        client = aio.make(dev, auto_connect=False, outbox_max_bytes=4 * size,
                          outbox_overflow=overflow)
        for message in numbered("m", 4):
            await client.send_message(message)
        if overflow == "error":
            with pytest.raises(ClientError, match=f"outbox_max_bytes={4 * size}"):
                await client.send_message(b"m0004")
            expected = numbered("m", 4)
        else:
            for message in numbered("m", 6, start=4):
                await client.send_message(message)
            assert client.outbox_dropped == 6
            expected = numbered("m", 4, start=6)
        await client.connect()
        await client.wait_outbox_drained(timeout=TIMEOUT)
        assert await abodies(hub, dev, 4) == expected

    aio.run(body)


# ================================================= killed at random moments


class Child:
    """One run of ``_outbox_child.py``: its stdout lines arrive on a queue
    (a reader thread), so every wait has a deadline."""

    def __init__(self, hub: Hub, device_id: str, outbox: Path, run: int, count: int,
                 use_aio: bool, stderr: Path, *, port: int | None = None,
                 gated: bool = False) -> None:
        command = [sys.executable, str(CHILD), "--conn", hub.connection_string(device_id),
                   "--ca", str(hub.ca_path), "--port", str(port or hub.mqtt_port),
                   "--outbox", str(outbox), "--run", str(run), "--count", str(count)]
        if use_aio:
            command.append("--aio")
        if gated:
            command.append("--gated")
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        self.stderr = stderr
        with stderr.open("w") as err:
            self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err,
                                            stdin=subprocess.PIPE if gated else None,
                                            env=env, cwd=ROOT, text=True)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.accepted: list[int] = []
        self.backlog: int | None = None
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)

    def next_line(self, timeout: float = 30.0) -> str | None:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            self.process.kill()
            pytest.fail(f"the child said nothing for {timeout} s")
        if line is not None and line.isdigit():
            self.accepted.append(int(line))
        elif line is not None and line.startswith("ready "):
            self.backlog = int(line.split()[1])
        return line

    def wait_for(self, predicate: Callable[[str], bool]) -> None:
        while True:
            line = self.next_line()
            if line is None:
                self.process.wait(TIMEOUT)
                pytest.fail(f"the child ended early (exit {self.process.returncode}): "
                            f"{self.stderr.read_text()}")
            if predicate(line):
                return

    def go(self) -> None:
        """A ``gated`` child: start sending."""
        assert self.process.stdin is not None
        self.process.stdin.write("go\n")
        self.process.stdin.flush()

    def kill(self) -> None:
        self.process.kill()  # SIGKILL
        self.process.wait(TIMEOUT)
        while self.next_line() is not None:  # numbers printed before it died count too
            pass
        self.reader.join(TIMEOUT)

    def finish(self) -> None:
        while self.next_line(timeout=90.0) is not None:
            pass
        assert self.process.wait(TIMEOUT) == 0, self.stderr.read_text()
        self.reader.join(TIMEOUT)


@pytest.mark.parametrize("use_aio", [False, True], ids=["sync", "aio"])
def test_sigkill_at_random_moments_loses_no_accepted_message(
        hub: Hub, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, use_aio: bool) -> None:
    device_id = new_id("kill")
    hub.add_device(device_id)
    spy = HubSpy().install(hub, monkeypatch.setattr)  # raw PUBLISHes, duplicates included
    outbox = tmp_path / "outbox.db"
    rng = random.Random(20240611 + use_aio)
    runs = 7
    accepted: dict[int, list[int]] = {}
    backlogs: list[int] = []
    kills = 0
    for run in range(runs):
        final = run == runs - 1
        moment = "end" if final else rng.choice(["ready", "lines", "lines", "lines", "sent"])
        count = 30 if final else (rng.randint(1, 80) if moment == "sent" else 100_000)
        child = Child(hub, device_id, outbox, run, count, use_aio, tmp_path / f"err-{run}")
        if moment == "ready":  # killed while starting to connect
            child.wait_for(lambda line: line.startswith("ready"))
            child.kill()
        elif moment == "lines":  # killed while sending
            target = str(rng.randint(1, 400))
            child.wait_for(target.__eq__)
            child.kill()
        elif moment == "sent":  # killed with a backlog in flight or waiting
            child.wait_for(lambda line: line == "sent")
            child.kill()
        else:
            child.finish()
        kills += moment != "end"
        accepted[run] = child.accepted
        backlogs.append(child.backlog or 0)
        assert child.accepted == list(range(len(child.accepted)))
    assert accepted[runs - 1] == list(range(30))

    with spy.cond:
        received = [payload.decode() for device, _, payload in spy.publishes
                    if device == device_id]
    arrived = [(int(run), int(n)) for run, n in (text.split(":") for text in received)]
    first_seen: list[tuple[int, int]] = []
    unique: set[tuple[int, int]] = set()
    for item in arrived:
        if item not in unique:
            unique.add(item)
            first_seen.append(item)
    # In order: the outbox is one FIFO across runs, so the first arrival of
    # each message follows (run, number) order; a crash only re-sends.
    assert first_seen == sorted(first_seen)
    for run, numbers in accepted.items():
        mine = sorted(n for r, n in unique if r == run)
        assert set(numbers) <= set(mine), f"run {run}: accepted messages missing"
        assert mine == list(range(len(mine))), f"run {run}: a gap in {mine[:10]}..."
    total_accepted = sum(len(numbers) for numbers in accepted.values())
    print(f"\n[outbox kill test, {'aio' if use_aio else 'sync'}] runs={runs} kills={kills} "
          f"accepted={total_accepted} stored-unreported={len(unique) - total_accepted} "
          f"publishes={len(arrived)} unique={len(unique)} "
          f"duplicates={len(arrived) - len(unique)} backlog-at-start={backlogs}")


@pytest.mark.parametrize("use_aio", [False, True], ids=["sync", "aio"])
def test_sigkill_inside_the_hand_off_window_loses_no_accepted_message(
        hub: Hub, tmp_path: Path, use_aio: bool) -> None:
    """Regression for a test that let a bug through: marking a row
    acknowledged when it is handed to the engine (not on PUBACK) passed the
    random kill test, because on loopback the PUBLISH reached the hub before
    the kill.  Here a fault proxy swallows everything the client sends after
    CONNACK: the PUBLISHes are handed over and written, none reaches the hub,
    no PUBACK comes back, and the child is killed in that window.  Every
    accepted message must still be in the outbox and reach the hub on the
    next run."""
    device_id = new_id("window")
    hub.add_device(device_id)
    outbox = tmp_path / "outbox.db"
    count = 12
    with FaultProxy((FAULT_HOST, hub.mqtt_port), name="proxy-window") as proxy:
        child = Child(hub, device_id, outbox, 0, count, use_aio, tmp_path / "err-0",
                      port=proxy.port, gated=True)
        child.wait_for("connected".__eq__)
        proxy.stall()  # from now on the client's bytes are read and discarded
        proxy.wait_for(lambda: any(c.stalled for c in proxy.connections), TIMEOUT,
                       "the stall")
        child.go()
        child.wait_for("sent".__eq__)
        # Proof that the rows were handed to the engine and written: the
        # proxy swallowed at least a topic's worth of bytes per message.
        need = count * len(topic_of(device_id))
        proxy.wait_for(lambda: sum(c.blackholed[C2S] for c in proxy.connections) >= need,
                       TIMEOUT, "the PUBLISHes")
        assert hub.telemetry(device_id) == []  # inside the window: nothing arrived
        child.kill()
        assert proxy.error is None, f"the proxy failed: {proxy.error!r}"
    assert child.accepted == list(range(count))
    final = Child(hub, device_id, outbox, 1, 0, use_aio, tmp_path / "err-1")
    final.finish()
    assert final.backlog == count, "accepted messages left the outbox without a PUBACK"
    arrived = {message.body.decode() for message in hub.telemetry(device_id)}
    assert {f"0:{n}" for n in range(count)} <= arrived


def test_store_commits_puts_with_synchronous_full(open_store: Callable[..., Outbox]) -> None:
    """Regression for a test gap: turning the ``synchronous`` pragma off (a
    ``put()`` no longer on disk when it returns) passed every test.  SQLite's
    own setting is read back before and after puts and deletes."""
    store = open_store(window=4)
    assert store.synchronous == "FULL"
    for n in range(6):
        store.put(TOPIC, b"%d" % n)
        assert store.synchronous == "FULL"
    for row in store.take():
        store.acked(row.seq)
    assert store.commit(force=True)
    assert store.synchronous == "FULL"  # deletes run NORMAL, then FULL again
    store.close()
    with pytest.raises(ClientError):
        store.synchronous  # noqa: B018
