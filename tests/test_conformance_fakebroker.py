"""The fake-broker mode against real clients: our ``iotdev.mqtt.MQTTClient``
and paho-mqtt.  Each scenario's verdict is pinned per client (with what the
client did), so a change in either shows up."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as paho
import pytest

from iotdev.conformance import SCENARIOS, FakeBroker, ScenarioResult
from iotdev.mqtt import MQTTClient

HOST = "127.0.0.154"
WAIT = 10.0

# scenario -> whether the client behaves as the statements require
EXPECTED_IOTDEV = {
    "session-present-after-clean": True,
    "redelivery-with-dup": True,
    "qos-downgrade": True,
    "acks-out-of-order": True,
    "pingresp-withheld": True,
    "disconnect-mid-flow": True,
    "malformed-packet": True,
    "unexpected-acks": True,
}
EXPECTED_PAHO = {
    "session-present-after-clean": False,  # paho 1.6 ignores the flag
    "redelivery-with-dup": True,
    "qos-downgrade": True,
    "acks-out-of-order": True,
    "pingresp-withheld": True,
    "disconnect-mid-flow": True,
    "malformed-packet": False,  # paho's decoder does not check DUP on QoS 0
    "unexpected-acks": True,
}


class Received:
    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes, int]] = []
        self.cond = threading.Condition()

    def add(self, topic: str, payload: bytes, qos: int) -> None:
        with self.cond:
            self.messages.append((topic, payload, qos))
            self.cond.notify_all()

    def wait(self, count: int, timeout: float = WAIT) -> list[tuple[str, bytes, int]]:
        with self.cond:
            self.cond.wait_for(lambda: len(self.messages) >= count, timeout)
            return list(self.messages)


def _drive_iotdev(name: str, broker: FakeBroker, received: Received) -> dict[str, Any]:
    client = MQTTClient(HOST, broker.port, client_id=f"iotdev-{name}",
                        keep_alive=1 if name == "pingresp-withheld" else 30,
                        reconnect=name == "disconnect-mid-flow", retry_interval=0.2,
                        connect_timeout=WAIT,
                        on_message=lambda m: received.add(m.topic, m.payload, m.qos))
    facts: dict[str, Any] = {}
    try:
        try:
            client.connect(timeout=WAIT)
        except Exception as exc:  # a refused or dropped connection is a reaction too
            facts["connect_error"] = type(exc).__name__
            return facts
        if name == "qos-downgrade":
            facts["granted"] = client.subscribe("fake/#", 1, timeout=WAIT)
        elif name in ("acks-out-of-order", "disconnect-mid-flow"):
            count = 3 if name == "acks-out-of-order" else 1
            done = [client.publish("fake/up", b"%d" % i, 1) for i in range(count)]
            for completion in done:
                completion.result(WAIT * 2)
            facts["completed"] = count
        broker.result(WAIT * 3)
    finally:
        client.shutdown()
    return facts


def _drive_paho(name: str, broker: FakeBroker, received: Received) -> dict[str, Any]:
    client = paho.Client(client_id=f"paho-{name}", clean_session=True)
    client.reconnect_delay_set(1, 1)
    client.on_message = lambda c, u, m: received.add(m.topic, m.payload, m.qos)
    granted: list[tuple[int, ...]] = []
    subscribed = threading.Event()

    def on_subscribe(c: Any, u: Any, mid: int, codes: tuple[int, ...]) -> None:
        granted.append(codes)
        subscribed.set()

    client.on_subscribe = on_subscribe
    connected = threading.Event()
    client.on_connect = lambda c, u, flags, rc: connected.set()
    facts: dict[str, Any] = {}
    client.connect(HOST, broker.port, keepalive=1 if name == "pingresp-withheld" else 30)
    client.loop_start()
    try:
        if name == "qos-downgrade":
            # As paho's users do: subscribe once connected (a SUBSCRIBE written
            # before paho's loop thread has read the CONNACK raced it).
            assert connected.wait(WAIT)
            client.subscribe("fake/#", 1)
            assert subscribed.wait(WAIT)
            facts["granted"] = granted[0]
        elif name in ("acks-out-of-order", "disconnect-mid-flow"):
            count = 3 if name == "acks-out-of-order" else 1
            infos = [client.publish("fake/up", b"%d" % i, 1) for i in range(count)]
            for info in infos:
                info.wait_for_publish(WAIT * 2)
            facts["completed"] = sum(info.is_published() for info in infos)
        broker.result(WAIT * 3)
    finally:
        client.loop_stop()
        client.disconnect()
    return facts


DRIVERS: dict[str, tuple[Callable[[str, FakeBroker, Received], dict[str, Any]],
                         dict[str, bool]]] = {
    "iotdev": (_drive_iotdev, EXPECTED_IOTDEV),
    "paho": (_drive_paho, EXPECTED_PAHO),
}


@pytest.mark.parametrize("client", sorted(DRIVERS))
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_client_against_scenario(client: str, scenario: str) -> None:
    drive, expected = DRIVERS[client]
    received = Received()
    with FakeBroker(SCENARIOS[scenario], HOST, timeout=WAIT, name=scenario) as broker:
        facts = drive(scenario, broker, received)
        result: ScenarioResult = broker.result(WAIT * 3)
    story = "; ".join(result.observations) + (f"; error: {result.error}" if result.error else "")
    assert not result.error, story
    assert result.passed is expected[scenario], f"{client} in {scenario}: {story}; {facts}"
    if scenario == "redelivery-with-dup":
        payloads = [m[1] for m in received.wait(3)]
        assert payloads.count(b"q1") == 2, payloads  # a new message after PUBACK [4.3.2-2]
        assert payloads.count(b"q2") == 1, payloads  # QoS 2 deduplicated until PUBREL
    if scenario == "qos-downgrade":
        assert tuple(facts["granted"]) == (0,)
        assert received.wait(1) == [("fake/down", b"downgraded", 0)]
    if scenario in ("acks-out-of-order", "disconnect-mid-flow"):
        assert facts["completed"] == (3 if scenario == "acks-out-of-order" else 1)
