"""The drivers' decision core (``iotdev/transport/_core.py``) alone: no
sockets, threads or loops.  Time is a number, the server's bytes are encoded
packets, and a recording ``DriverIO`` stands for the driver."""

from __future__ import annotations

import random
from concurrent.futures import Future
from typing import Any

import pytest

from iotdev._errors import (
    ConnectionDroppedError,
    ConnectionFailedError,
    ConnectTimeoutError,
    CredentialError,
)
from iotdev.transport._core import DriverCore
from iotdev.transport._endpoint import Endpoint
from iotdev.transport._layer import Stack
from iotdev.transport._options import ConnectOptions, Credentials, ReconnectPolicy
from iotdev_mqtt import ConnAck, MessageReceived, PubAck, Publish, encode


class Recorder:
    """A driver that records what the core asks of it."""

    def __init__(self) -> None:
        self.clock = 0.0
        self.calls: list[tuple[str, Any]] = []

    def now(self) -> float:
        return self.clock

    def drop_transport(self) -> None:
        self.calls.append(("drop", None))

    def deliver(self, event: MessageReceived) -> None:
        self.calls.append(("deliver", event.payload))

    def state_changed(self, connected: bool, reason: str | None) -> None:
        self.calls.append(("state", connected))

    def report(self, exc: BaseException) -> None:
        self.calls.append(("report", type(exc)))

    def attempt_ended(self, error: BaseException | None) -> None:
        self.calls.append(("attempt", None if error is None else type(error)))

    def retry_in(self, delay: float) -> None:
        self.calls.append(("retry", delay))

    def kinds(self, kind: str) -> list[Any]:
        return [value for name, value in self.calls if name == kind]


def make(*, reconnect: bool = True, credentials: Any = None,
         **engine: Any) -> tuple[DriverCore[Future[Any]], Recorder]:
    io = Recorder()
    core: DriverCore[Future[Any]] = DriverCore(
        io, Endpoint("h", 1883, connect_timeout=5.0),
        ConnectOptions("c", clean_session=False, credentials=credentials),
        ReconnectPolicy(enabled=reconnect, interval=4.0, first_window=1.0),
        random.Random(1), engine)
    return core, io


def connected(core: DriverCore[Future[Any]]) -> None:
    core.want_connection()
    core.begin(Stack([]))  # no layers: established at once, CONNECT queued
    assert core.outgoing().startswith(b"\x10")  # CONNECT
    core.receive(encode(ConnAck(False, 0)))
    assert core.connected


def test_publish_resolves_on_puback_and_messages_are_delivered() -> None:
    core, io = make()
    connected(core)
    fut: Future[Any] = Future()
    core.publish(fut, "a/b", b"x", 1, False)
    core.outgoing()
    assert not fut.done()
    core.receive(encode(PubAck(1)) + encode(Publish("t", b"hello", 0)))
    assert fut.result(0) is None
    assert io.kinds("deliver") == [b"hello"]
    assert io.kinds("attempt") == [None] and io.kinds("state") == [True]


def test_a_drop_with_reconnect_keeps_waiters_and_asks_for_a_retry() -> None:
    core, io = make()
    connected(core)
    fut: Future[Any] = Future()
    core.publish(fut, "a/b", b"x", 1, False)
    core.outgoing()
    core.receive(b"")  # EOF
    assert io.kinds("state") == [True, False]
    assert io.kinds("report") == [ConnectionDroppedError]
    [delay] = io.kinds("retry")
    assert 0.0 <= delay <= 1.0  # the first retry within min(first_window, interval / 4)
    assert not fut.done() and core.reconnecting


def test_a_drop_without_reconnect_fails_waiters_and_drops_the_session() -> None:
    core, io = make(reconnect=False)
    connected(core)
    fut: Future[Any] = Future()
    core.publish(fut, "a/b", b"x", 1, False)
    core.receive(b"")
    assert isinstance(fut.exception(0), ConnectionDroppedError)
    assert not core.want_connected and not core.ever_connected and not io.kinds("retry")


@pytest.mark.parametrize("refreshable", [False, True])
def test_bad_credentials_stop_retries_unless_they_can_be_refreshed(refreshable: bool) -> None:
    creds: Any = (lambda: Credentials("u", b"p")) if refreshable else Credentials("u", b"p")
    core, io = make(credentials=creds)
    connected(core)
    core.receive(b"")  # dropped: a reconnection follows
    core.begin(Stack([]))
    core.outgoing()
    core.receive(encode(ConnAck(False, 5)))
    assert io.kinds("attempt")[-1] is CredentialError
    assert len(io.kinds("retry")) == (2 if refreshable else 1)
    assert core.want_connected is refreshable


def test_the_handshake_deadline_and_the_engine_connack_wait_are_timeouts() -> None:
    core, io = make()
    core.want_connection()
    core.begin(Stack([]))
    assert core.next_deadline() == 5.0
    io.clock = 5.0
    core.tick()
    assert io.kinds("attempt") == [ConnectTimeoutError]

    core, io = make(connect_timeout=1.0)  # the engine gives up first
    core.want_connection()
    core.begin(Stack([]))
    core.outgoing()
    io.clock = 1.0
    core.tick()
    assert io.kinds("attempt") == [ConnectTimeoutError]


def test_eof_and_garbage_before_connack_are_connection_failures() -> None:
    for data in (b"", b"\xf0\xff\xff\xff\xff"):
        core, io = make()
        core.want_connection()
        core.begin(Stack([]))
        core.outgoing()
        core.receive(data)
        assert io.kinds("attempt") == [ConnectionFailedError]
        assert not io.kinds("retry")  # the first connect() reports, it does not retry
