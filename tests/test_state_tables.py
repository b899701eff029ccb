"""The state tables of both engines, pair by pair (STYLE section 6).

For every ``(State, Input)`` of ``itertools.product(State, Input)`` and both
roles, the engine is driven into the state through its public API (by one or
more routes) and the input is applied through the public API:

* a pair in the table moves to the listed state;
* a pair not in the table raises (``LocalProtocolError`` for a command,
  ``RemoteProtocolError`` for a packet) and leaves the engine in ``ERROR``,
  where every call raises except ``connection_lost()``.

Some inputs cannot be produced through the public API in some states (the
client has no ``accept()``; ``receive_data()`` ignores bytes in ``CLOSING``; a
timer input only exists while its timer runs...).  ``NO_API`` and
``UNREACHABLE`` name them with the reason, a test checks that every pair is
either exercised or listed there, and separate tests pin down what the engine
does instead.  The tables themselves are checked statically as well.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest

from iotdev_mqtt import (
    ClientConnection,
    ConnectionLost,
    LocalProtocolError,
    RemoteProtocolError,
    ServerConnection,
    State,
)
from iotdev_mqtt._state import CLIENT_TRANSITIONS, SERVER_TRANSITIONS, Input

H = bytes.fromhex
S = State
I = Input  # noqa: E741

CONNECT = H("10 0D 00 04 4D 51 54 54 04 00 00 0A 00 01 70")  # cs=0, ka=10, "p"
CONNACK = H("20 02 00 00")

COMMANDS = {I.CONNECT, I.ACCEPT, I.REFUSE, I.PUBLISH, I.SUBSCRIBE, I.UNSUBSCRIBE, I.SUBACK,
            I.ACK, I.DISCONNECT}
PACKETS = {i for i in Input if i.name.startswith("RECV_")}
TIMERS = {I.PING_DUE, I.TIMEOUT}

Engine = Any
Apply = Callable[[Engine], object]


def recv(data: bytes) -> Apply:
    return lambda e: e.receive_data(data, now=1.0)


def _client_timeout(c: ClientConnection) -> None:
    if c.state is S.CONNECTED:  # PINGREQ at 5 (keep alive 5), no PINGRESP by 10
        c.tick(5.0)
        assert c.data_to_send().endswith(H("C0 00"))
        assert c.state is S.CONNECTED
        assert [type(e) for e in c.tick(10.0)] == [ConnectionLost]
    else:  # CONNECTING: connect_timeout 10
        assert [type(e) for e in c.tick(10.0)] == [ConnectionLost]


def _client_ping_due(c: ClientConnection) -> None:
    assert c.tick(5.0) == []
    assert c.data_to_send().endswith(H("C0 00"))


def _server_timeout(s: ServerConnection) -> None:
    # DISCONNECTED: connect_timeout 10; CONNECTING/CONNECTED: 1.5 x keep alive 10.
    assert [type(e) for e in s.tick(15.0)] == [ConnectionLost]


# Each input of a role: one or more ways to produce it through the public API.
CLIENT_INPUTS: dict[Input, list[tuple[str, Apply]]] = {
    I.CONNECT: [("connect", lambda c: c.connect("c", now=1.0, clean_session=False))],
    I.PUBLISH: [
        (f"qos{q}", lambda c, q=q: c.publish("a/b", b"x", q, now=1.0)) for q in (0, 1, 2)
    ],
    I.SUBSCRIBE: [("subscribe", lambda c: c.subscribe("t", 1, now=1.0))],
    I.UNSUBSCRIBE: [("unsubscribe", lambda c: c.unsubscribe("t", now=1.0))],
    I.ACK: [("ack", lambda c: c.ack(7, now=1.0))],
    I.DISCONNECT: [("disconnect", lambda c: c.disconnect(now=1.0))],
    I.RECV_CONNECT: [("connect", recv(CONNECT))],
    I.RECV_CONNACK_ACCEPTED: [("connack0", recv(CONNACK))],
    I.RECV_CONNACK_REFUSED: [("connack5", recv(H("20 02 00 05")))],
    I.RECV_PUBLISH: [("qos0", recv(H("30 07 00 03 61 2F 62 68 69"))),
                     ("qos2", recv(H("34 09 00 03 61 2F 62 00 09 68 69")))],
    I.RECV_PUBLISH_ACK: [("puback", recv(H("40 02 00 03"))), ("pubrec", recv(H("50 02 00 63"))),
                         ("pubrel", recv(H("62 02 00 63"))), ("pubcomp", recv(H("70 02 00 63")))],
    I.RECV_SUBSCRIBE: [("subscribe", recv(H("82 08 00 01 00 03 61 2F 62 01")))],
    I.RECV_SUBACK: [("suback", recv(H("90 03 00 01 00")))],
    I.RECV_UNSUBSCRIBE: [("unsubscribe", recv(H("A2 07 00 03 00 03 61 2F 62")))],
    I.RECV_UNSUBACK: [("unsuback", recv(H("B0 02 00 02")))],
    I.RECV_PINGREQ: [("pingreq", recv(H("C0 00")))],
    I.RECV_PINGRESP: [("pingresp", recv(H("D0 00")))],
    I.RECV_DISCONNECT: [("disconnect", recv(H("E0 00")))],
    I.PING_DUE: [("tick", _client_ping_due)],
    I.TIMEOUT: [("tick", _client_timeout)],
    I.CONNECTION_LOST: [("connection_lost", lambda c: c.connection_lost())],
}

SERVER_INPUTS: dict[Input, list[tuple[str, Apply]]] = {
    I.ACCEPT: [("accept", lambda s: s.accept(now=1.0))],
    I.REFUSE: [("refuse", lambda s: s.refuse(5, now=1.0))],
    I.PUBLISH: [
        (f"qos{q}", lambda s, q=q: s.publish("a/b", b"x", q, now=1.0)) for q in (0, 1, 2)
    ],
    I.SUBACK: [("suback", lambda s: s.suback(1, [0], now=1.0))],
    I.ACK: [("ack", lambda s: s.ack(7, now=1.0))],
    I.DISCONNECT: [("close", lambda s: s.close())],
    I.RECV_CONNECT: [("connect", recv(CONNECT))],
    I.RECV_CONNACK_ACCEPTED: [("connack0", recv(CONNACK))],
    I.RECV_CONNACK_REFUSED: [("connack5", recv(H("20 02 00 05")))],
    I.RECV_PUBLISH: [("qos0", recv(H("30 07 00 03 61 2F 62 68 69"))),
                     ("qos2", recv(H("34 09 00 03 61 2F 62 00 09 68 69")))],
    I.RECV_PUBLISH_ACK: [("puback", recv(H("40 02 00 01"))), ("pubrec", recv(H("50 02 00 63"))),
                         ("pubrel", recv(H("62 02 00 63"))), ("pubcomp", recv(H("70 02 00 63")))],
    I.RECV_SUBSCRIBE: [("subscribe", recv(H("82 08 00 01 00 03 61 2F 62 01")))],
    I.RECV_SUBACK: [("suback", recv(H("90 03 00 01 00")))],
    I.RECV_UNSUBSCRIBE: [("unsubscribe", recv(H("A2 07 00 03 00 03 61 2F 62")))],
    I.RECV_UNSUBACK: [("unsuback", recv(H("B0 02 00 02")))],
    I.RECV_PINGREQ: [("pingreq", recv(H("C0 00")))],
    I.RECV_PINGRESP: [("pingresp", recv(H("D0 00")))],
    I.RECV_DISCONNECT: [("disconnect", recv(H("E0 00")))],
    I.TIMEOUT: [("tick", _server_timeout)],
    I.CONNECTION_LOST: [("connection_lost", lambda s: s.connection_lost())],
}

# Inputs a role has no public call for at all.
NO_API = {
    "client": {
        I.ACCEPT: "accept() is a server command",
        I.REFUSE: "refuse() is a server command",
        I.SUBACK: "suback() is a server command",
    },
    "server": {
        I.CONNECT: "connect() is a client command",
        I.SUBSCRIBE: "subscribe() is a client command",
        I.UNSUBSCRIBE: "unsubscribe() is a client command",
        I.PING_DUE: "the server sends no PINGREQ: it has no ping timer",
    },
}

# (state, input) pairs the public API cannot produce, with the reason; what
# the engine does instead is tested below.
UNREACHABLE: dict[str, dict[tuple[State, Input], str]] = {
    "client": {
        **{(S.DISCONNECTED, i): "receive_data() without a connection is a LocalProtocolError "
           "of the caller; no packet is decoded" for i in PACKETS},
        **{(S.CLOSING, i): "receive_data() ignores bytes in CLOSING [MQTT-3.1.4-5]"
           for i in PACKETS},
        **{(s, I.PING_DUE): "tick() only pings in CONNECTED"
           for s in (S.DISCONNECTED, S.CONNECTING, S.CLOSING, S.ERROR)},
        **{(s, I.TIMEOUT): "tick() only times out CONNACK (CONNECTING) or PINGRESP (CONNECTED)"
           for s in (S.DISCONNECTED, S.CLOSING, S.ERROR)},
    },
    "server": {
        **{(S.CONNECTING, i): "packets pipelined after CONNECT, a second CONNECT and a "
           "decoding error among them are held and handled by accept() (tested in "
           "test_server_engine.py)" for i in PACKETS},
        **{(S.CLOSING, i): "receive_data() ignores bytes in CLOSING [MQTT-3.1.4-5]"
           for i in PACKETS},
        **{(s, I.TIMEOUT): "no timer runs in CLOSING or ERROR" for s in (S.CLOSING, S.ERROR)},
    },
}


# ------------------------------------------------------------ driving routes


def _client_connected() -> ClientConnection:
    c = ClientConnection(auto_ack=False, connect_timeout=10.0)
    c.connect("c", now=0.0, keep_alive=5, clean_session=False)
    c.receive_data(CONNACK, now=0.0)
    assert c.subscribe("s", 0, now=0.0) == 1
    assert c.unsubscribe("u", now=0.0) == 2
    c.publish("a/b", b"x", 1, now=0.0)  # id 3
    c.receive_data(H("32 09 00 03 61 2F 62 00 07 68 69"), now=0.0)  # to ack: id 7
    c.data_to_send()
    return c


def _client_fresh() -> ClientConnection:
    return ClientConnection(auto_ack=False, connect_timeout=10.0)


def _client_after_loss() -> ClientConnection:
    c = _client_connected()
    c.connection_lost()
    return c


def _client_connecting() -> ClientConnection:
    c = ClientConnection(auto_ack=False, connect_timeout=10.0)
    c.connect("c", now=0.0, keep_alive=5, clean_session=False)
    c.data_to_send()
    return c


def _client_disconnecting() -> ClientConnection:
    c = _client_connected()
    c.disconnect(now=0.0)
    c.data_to_send()
    return c


def _client_refused() -> ClientConnection:
    c = _client_connecting()
    c.receive_data(H("20 02 00 04"), now=0.0)
    return c


def _client_connack_timeout() -> ClientConnection:
    c = _client_connecting()
    c.tick(10.0)
    return c


def _client_ping_timeout() -> ClientConnection:
    c = _client_connected()
    c.tick(5.0)
    c.tick(10.0)
    c.data_to_send()
    return c


def _client_remote_error() -> ClientConnection:
    c = _client_connected()
    with pytest.raises(RemoteProtocolError):
        c.receive_data(CONNACK, now=0.0)
    return c


def _client_local_error() -> ClientConnection:
    c = _client_fresh()
    with pytest.raises(LocalProtocolError):
        c.disconnect(now=0.0)
    return c


def _server_fresh() -> ServerConnection:
    return ServerConnection(now=0.0, connect_timeout=15.0, auto_ack=False)


def _server_connecting() -> ServerConnection:
    s = _server_fresh()
    s.receive_data(CONNECT, now=0.0)
    return s


def _server_connected() -> ServerConnection:
    s = _server_connecting()
    s.accept(now=0.0)
    s.publish("a/b", b"x", 1, now=0.0)  # id 1, awaiting PUBACK
    s.receive_data(H("32 09 00 03 61 2F 62 00 07 68 69"), now=0.0)  # to ack: id 7
    s.receive_data(H("82 08 00 01 00 03 61 2F 62 01"), now=0.0)  # to suback: id 1
    s.data_to_send()
    return s


def _server_closed() -> ServerConnection:
    s = _server_connected()
    s.close()
    return s


def _server_client_disconnected() -> ServerConnection:
    s = _server_connected()
    s.receive_data(H("E0 00"), now=0.0)
    return s


def _server_refused() -> ServerConnection:
    s = _server_connecting()
    s.refuse(4, now=0.0)
    return s


def _server_level3() -> ServerConnection:
    s = _server_fresh()
    s.receive_data(H("10 0D 00 04 4D 51 54 54 03 02 00 0A 00 01 70"), now=0.0)
    return s


def _server_keepalive_expired() -> ServerConnection:
    s = _server_connected()
    s.tick(15.0)
    return s


def _server_remote_error() -> ServerConnection:
    s = _server_connected()
    with pytest.raises(RemoteProtocolError):
        s.receive_data(CONNECT, now=0.0)
    return s


def _server_local_error() -> ServerConnection:
    s = _server_fresh()
    with pytest.raises(LocalProtocolError):
        s.accept(now=0.0)
    return s


ROUTES: dict[str, list[tuple[str, State, Callable[[], Engine]]]] = {
    "client": [
        ("new", S.DISCONNECTED, _client_fresh),
        ("after-loss", S.DISCONNECTED, _client_after_loss),
        ("connect", S.CONNECTING, _client_connecting),
        ("connack", S.CONNECTED, _client_connected),
        ("disconnect", S.CLOSING, _client_disconnecting),
        ("refused", S.CLOSING, _client_refused),
        ("connack-timeout", S.CLOSING, _client_connack_timeout),
        ("ping-timeout", S.CLOSING, _client_ping_timeout),
        ("remote", S.ERROR, _client_remote_error),
        ("local", S.ERROR, _client_local_error),
    ],
    "server": [
        ("new", S.DISCONNECTED, _server_fresh),
        ("connect", S.CONNECTING, _server_connecting),
        ("accept", S.CONNECTED, _server_connected),
        ("close", S.CLOSING, _server_closed),
        ("client-disconnect", S.CLOSING, _server_client_disconnected),
        ("refuse", S.CLOSING, _server_refused),
        ("level-3", S.CLOSING, _server_level3),
        ("keepalive", S.CLOSING, _server_keepalive_expired),
        ("remote", S.ERROR, _server_remote_error),
        ("local", S.ERROR, _server_local_error),
    ],
}

TABLES = {"client": CLIENT_TRANSITIONS, "server": SERVER_TRANSITIONS}
INPUTS = {"client": CLIENT_INPUTS, "server": SERVER_INPUTS}


def _cases() -> list[Any]:
    cases = []
    for role in ("client", "server"):
        for (route, state, build), inp in itertools.product(ROUTES[role], Input):
            if inp in NO_API[role] or (state, inp) in UNREACHABLE[role]:
                continue
            for label, apply in INPUTS[role][inp]:
                cases.append(pytest.param(
                    role, state, build, inp, apply,
                    id=f"{role}-{state.name}({route})-{inp.name}-{label}",
                ))
    return cases


def _poison_calls(role: str) -> list[Apply]:
    """Every call but connection_lost(), each way it can be made."""
    return [
        apply
        for inp, variants in INPUTS[role].items()
        if inp is not I.CONNECTION_LOST and inp not in TIMERS
        for _, apply in variants
    ]


def assert_poisoned(engine: Engine, role: str) -> None:
    """In ERROR every call raises LocalProtocolError except connection_lost()."""
    assert engine.state is S.ERROR
    for call in _poison_calls(role):
        with pytest.raises(LocalProtocolError):
            call(engine)
        assert engine.state is S.ERROR
    engine.connection_lost()
    assert engine.state is S.DISCONNECTED


@pytest.mark.parametrize(("role", "state", "build", "inp", "apply"), _cases())
def test_pair(role: str, state: State, build: Callable[[], Engine], inp: Input,
              apply: Apply) -> None:
    engine = build()
    assert engine.state is state
    target = TABLES[role].get((state, inp))
    if target is not None:
        apply(engine)
        assert engine.state is target
        return
    if state is S.ERROR or inp in COMMANDS:
        expected: type[Exception] = LocalProtocolError
    else:
        assert inp in PACKETS, f"{inp} should be in the table or listed as unreachable"
        expected = RemoteProtocolError
    with pytest.raises(expected) as info:
        apply(engine)
    if expected is RemoteProtocolError:
        assert not isinstance(info.value, LocalProtocolError)
    else:
        assert not isinstance(info.value, RemoteProtocolError)
    assert engine.state is S.ERROR
    assert_poisoned(engine, role)


# ------------------------------------------------------- coverage of pairs


@pytest.mark.parametrize("role", ["client", "server"])
def test_every_pair_is_exercised_or_explained(role: str) -> None:
    table = TABLES[role]
    routed = {state for _, state, _ in ROUTES[role]}
    assert routed == set(State), "a route into every state"
    assert set(INPUTS[role]) | set(NO_API[role]) == set(Input)
    assert not set(INPUTS[role]) & set(NO_API[role])
    exercised = {
        (state, inp)
        for state, inp in itertools.product(State, Input)
        if inp not in NO_API[role] and (state, inp) not in UNREACHABLE[role]
    }
    # Every pair of the table can be produced through the public API.
    assert set(table) <= exercised
    assert not set(table) & set(UNREACHABLE[role])
    assert not {i for _, i in table} & set(NO_API[role])
    # Unreachable pairs are not in the table (else they would be untested).
    assert len(exercised) + len(UNREACHABLE[role]) + len(State) * len(NO_API[role]) == (
        len(State) * len(Input)
    )


# ------------------------------------------------------- static table checks


@pytest.mark.parametrize("role", ["client", "server"])
def test_table_targets_are_valid(role: str) -> None:
    for key, target in TABLES[role].items():
        assert isinstance(key, tuple) and len(key) == 2
        state, inp = key
        assert isinstance(state, State) and isinstance(inp, Input)
        assert isinstance(target, State)
        # ERROR is only ever reached by a pair missing from the table.
        assert target is not S.ERROR


@pytest.mark.parametrize("role", ["client", "server"])
def test_error_only_has_connection_lost(role: str) -> None:
    table = TABLES[role]
    assert {i for s, i in table if s is S.ERROR} == {I.CONNECTION_LOST}
    assert table[(S.ERROR, I.CONNECTION_LOST)] is S.DISCONNECTED


@pytest.mark.parametrize("role", ["client", "server"])
def test_connection_lost_always_leads_to_disconnected(role: str) -> None:
    for state in State:
        assert TABLES[role][(state, I.CONNECTION_LOST)] is S.DISCONNECTED


@pytest.mark.parametrize("role", ["client", "server"])
def test_closing_is_left_only_by_connection_lost(role: str) -> None:
    for (state, inp), target in TABLES[role].items():
        if state is S.CLOSING:
            assert target is S.CLOSING or (inp is I.CONNECTION_LOST and target is S.DISCONNECTED)


@pytest.mark.parametrize("role", ["client", "server"])
def test_every_state_but_error_reachable_from_disconnected(role: str) -> None:
    table = TABLES[role]
    seen = {S.DISCONNECTED}
    frontier = [S.DISCONNECTED]
    while frontier:
        state = frontier.pop()
        for (src, _), dst in table.items():
            if src is state and dst not in seen:
                seen.add(dst)
                frontier.append(dst)
    assert seen == set(State) - {S.ERROR}


def test_tables_hold_only_inputs_of_their_role() -> None:
    client_inputs = {i for _, i in CLIENT_TRANSITIONS}
    server_inputs = {i for _, i in SERVER_TRANSITIONS}
    assert not client_inputs & {I.ACCEPT, I.REFUSE, I.SUBACK, I.RECV_CONNECT, I.RECV_SUBSCRIBE,
                                I.RECV_UNSUBSCRIBE, I.RECV_PINGREQ, I.RECV_DISCONNECT}
    assert not server_inputs & {I.CONNECT, I.SUBSCRIBE, I.UNSUBSCRIBE, I.PING_DUE,
                                I.RECV_CONNACK_ACCEPTED, I.RECV_CONNACK_REFUSED, I.RECV_SUBACK,
                                I.RECV_UNSUBACK, I.RECV_PINGRESP}


# ------------------------------------- what happens where an input cannot be made


PACKET_CASES = [
    pytest.param(apply, id=f"{inp.name}-{label}")
    for inp, variants in CLIENT_INPUTS.items() if inp in PACKETS
    for label, apply in variants
]


@pytest.mark.parametrize("build", [_client_fresh, _client_after_loss])
@pytest.mark.parametrize("packet", PACKET_CASES)
def test_client_receive_without_connection_is_caller_error(
    build: Callable[[], Engine], packet: Apply
) -> None:
    client = build()
    with pytest.raises(LocalProtocolError):
        packet(client)
    assert client.state is S.DISCONNECTED  # no transport: nothing to poison
    assert client.data_to_send() == b""


@pytest.mark.parametrize("role", ["client", "server"])
@pytest.mark.parametrize("packet", PACKET_CASES)
def test_bytes_ignored_in_closing(role: str, packet: Apply) -> None:
    for route, state, build in ROUTES[role]:
        if state is not S.CLOSING:
            continue
        engine = build()
        engine.data_to_send()
        assert packet(engine) == [], route
        assert engine.state is S.CLOSING
        assert engine.data_to_send() == b""


@pytest.mark.parametrize("build", [_client_fresh, _client_after_loss, _client_disconnecting,
                                   _client_refused, _client_connack_timeout])
def test_client_tick_outside_its_timers_does_nothing(build: Callable[[], Engine]) -> None:
    client = build()
    state = client.state
    client.data_to_send()
    assert client.next_deadline() is None
    assert client.tick(1e6) == []
    assert client.state is state
    assert client.data_to_send() == b""


def test_client_tick_while_connecting_never_pings() -> None:
    client = _client_connecting()
    assert client.next_deadline() == 10.0
    assert client.tick(9.0) == []  # past keep alive 5, but no PINGREQ before CONNACK
    assert client.data_to_send() == b""
    assert client.state is S.CONNECTING


@pytest.mark.parametrize("build", [_server_closed, _server_refused, _server_keepalive_expired])
def test_server_tick_in_closing_does_nothing(build: Callable[[], Engine]) -> None:
    server = build()
    server.data_to_send()
    assert server.next_deadline() is None
    assert server.tick(1e6) == []
    assert server.state is S.CLOSING
    assert server.data_to_send() == b""


def test_server_holds_pipelined_packets_while_connecting() -> None:
    server = _server_connecting()
    for inp in (I.RECV_PUBLISH, I.RECV_PUBLISH_ACK, I.RECV_SUBSCRIBE, I.RECV_UNSUBSCRIBE,
                I.RECV_PINGREQ, I.RECV_DISCONNECT):
        for _, apply in SERVER_INPUTS[inp]:
            assert apply(server) == []
            assert server.state is S.CONNECTING
    assert server.data_to_send() == b""
    events = server.accept(now=2.0)
    # Connected, 2 x MessageReceived (QoS 0, QoS 2), SubscribeReceived,
    # UnsubscribeReceived, ClientDisconnected (PUBLISH acks and PINGREQ give none).
    assert [type(e).__name__ for e in events] == [
        "Connected", "MessageReceived", "MessageReceived", "SubscribeReceived",
        "UnsubscribeReceived", "ClientDisconnected",
    ]
    assert server.state is S.CLOSING


@pytest.mark.parametrize("build", [_client_remote_error, _server_remote_error])
def test_tick_in_error_raises(build: Callable[[], Engine]) -> None:
    engine = build()
    with pytest.raises(LocalProtocolError):
        engine.tick(1e6)
