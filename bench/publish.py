"""Figures ``tls-sync-1by1``, ``tls-pipelined-sync``, ``tls-pipelined-asyncio``:
200-byte QoS 1 publishes over TLS to a local mosquitto (started here, with a CA
made at run time), ours against paho-mqtt 1.6 and the C client ``mosquitto_pub``.

* ``tls-sync-1by1``: publish, wait for the PUBACK, repeat.  Ours:
  ``iotdev.mqtt.MQTTClient.publish(...).result()``; paho: ``publish(...)
  .wait_for_publish()`` with ``loop_start()``.
* ``tls-pipelined-sync``: all messages queued at once, then every completion
  awaited; both clients with 100 in flight.  ``mosquitto_pub -l`` (one line per
  message from stdin, process start included, so it gets more messages) is the
  ceiling.
* ``tls-pipelined-asyncio``: ours ``iotdev.aio.MQTTClient`` with every publish
  awaited through ``asyncio.gather`` (1,000 in flight) against the same peers.
* ``wss-pipelined-asyncio``: the same over MQTT-over-WebSocket-over-TLS, against
  paho-mqtt's websockets transport.

Every client keeps one connection across rounds; the broker is the same for all.
"""

from __future__ import annotations

import asyncio
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .harness import Contestant, Figure, Session, Skip, Timed, register

PAYLOAD = b"x" * 200
TOPIC = "bench/publish"


class _Broker:
    """One mosquitto for all publish figures of a run."""

    instance: Any = None

    @classmethod
    def get(cls, session: Session) -> Any:
        if cls.instance is None:
            try:
                from tests._broker import CertAuthority, Mosquitto, find_program
            except ImportError as exc:  # pragma: no cover - run from the repo root
                raise Skip(f"run from the repository root ({exc})") from exc
            program = find_program("mosquitto")
            if program is None:
                raise Skip("mosquitto is not installed")
            directory = Path(tempfile.mkdtemp(prefix="iotdev-bench-"))
            ca = CertAuthority(directory / "ca")
            broker = Mosquitto(program, directory / "mosquitto", ca)
            broker.start()
            broker.ca = ca
            cls.instance = broker
            import atexit

            atexit.register(broker.stop)
        return cls.instance


def _ours_sync(broker: Any, session: Session, window: int) -> Any:
    from iotdev.mqtt import MQTTClient

    client = MQTTClient("localhost", broker.tls_port, client_id=f"bench-ours-{window}",
                        transport="tls", server_verification_cert=broker.ca.ca_cert_pem,
                        max_inflight=window)
    client.connect(timeout=10)
    session.stack.callback(client.shutdown)
    return client


def _paho(broker: Any, session: Session, window: int, *, websockets: bool = False) -> Any:
    try:
        import paho.mqtt.client as mqtt  # type: ignore[import-untyped]
    except ImportError as exc:
        raise Skip("paho-mqtt is not installed") from exc
    client = mqtt.Client(client_id=f"bench-paho-{window}-{websockets}",
                         transport="websockets" if websockets else "tcp")
    if websockets:
        client.ws_set_options(path="/mqtt")
    client.max_inflight_messages_set(window)
    client.max_queued_messages_set(0)
    client.tls_set(ca_certs=str(broker.ca.ca_cert))
    client.connect("localhost", broker.ws_port if websockets else broker.tls_port)
    client.loop_start()
    session.stack.callback(client.disconnect)
    session.stack.callback(client.loop_stop)
    return client


def _mosquitto_pub(broker: Any) -> Callable[[int], Timed]:
    from tests._broker import find_program

    program = find_program("mosquitto_pub")
    if program is None:
        raise Skip("mosquitto_pub is not installed")
    line = PAYLOAD + b"\n"

    def run(work: int) -> Timed:
        work *= 5  # amortise the process start
        data = line * work
        start = time.perf_counter()
        subprocess.run([program, "-h", "localhost", "-p", str(broker.tls_port), "--cafile",
                        str(broker.ca.ca_cert), "-t", TOPIC, "-q", "1", "-l"],
                       input=data, check=True, capture_output=True)
        return Timed(work, time.perf_counter() - start)

    return run


def _setup_1by1(session: Session) -> list[Contestant]:
    broker = _Broker.get(session)
    ours = _ours_sync(broker, session, 100)
    paho = _paho(broker, session, 20)

    def run_ours(work: int) -> int:
        for _ in range(work):
            ours.publish(TOPIC, PAYLOAD, 1).result(10)
        return work

    def run_paho(work: int) -> int:
        for _ in range(work):
            paho.publish(TOPIC, PAYLOAD, 1).wait_for_publish()
        return work

    return [Contestant("iotdev sync", run_ours, ours=True), Contestant("paho-mqtt", run_paho)]


def _paho_pipelined(paho: Any) -> Callable[[int], int]:
    def run(work: int) -> int:
        infos = [paho.publish(TOPIC, PAYLOAD, 1) for _ in range(work)]
        for info in infos:
            info.wait_for_publish()
        return work

    return run


def _setup_pipelined_sync(session: Session) -> list[Contestant]:
    broker = _Broker.get(session)
    ours = _ours_sync(broker, session, 100)

    def run_ours(work: int) -> int:
        futures = [ours.publish(TOPIC, PAYLOAD, 1) for _ in range(work)]
        for fut in futures:
            fut.result(30)
        return work

    return [
        Contestant("iotdev sync", run_ours, ours=True),
        Contestant("paho-mqtt", _paho_pipelined(_paho(broker, session, 100))),
        Contestant("mosquitto_pub -l", _mosquitto_pub(broker)),
    ]


def _setup_pipelined_asyncio(session: Session, websockets: bool = False) -> list[Contestant]:
    from iotdev.aio import MQTTClient

    broker = _Broker.get(session)
    loop = asyncio.new_event_loop()
    client = MQTTClient("localhost", broker.ws_port if websockets else broker.tls_port,
                        client_id=f"bench-aio-{websockets}",
                        transport="websockets" if websockets else "tls",
                        server_verification_cert=broker.ca.ca_cert_pem, max_inflight=1000)
    loop.run_until_complete(client.connect(timeout=10))
    session.stack.callback(loop.close)
    session.stack.callback(lambda: loop.run_until_complete(client.shutdown()))

    async def burst(work: int) -> None:
        await asyncio.gather(*(client.publish(TOPIC, PAYLOAD, 1) for _ in range(work)))

    def run_ours(work: int) -> int:
        loop.run_until_complete(burst(work))
        return work

    if websockets:
        return [
            Contestant("iotdev asyncio", run_ours, ours=True),
            Contestant("paho-mqtt", _paho_pipelined(_paho(broker, session, 100,
                                                          websockets=True))),
        ]
    return [
        Contestant("iotdev asyncio", run_ours, ours=True),
        Contestant("paho-mqtt", _paho_pipelined(_paho(broker, session, 100))),
        Contestant("mosquitto_pub -l", _mosquitto_pub(broker)),
    ]


def _setup_ws_pipelined_asyncio(session: Session) -> list[Contestant]:
    return _setup_pipelined_asyncio(session, websockets=True)


for _name, _title, _setup, _work in (
    ("tls-sync-1by1", "QoS 1 publish over TLS, one at a time (publish, wait for PUBACK)",
     _setup_1by1, 3000),
    ("tls-pipelined-sync", "QoS 1 publish over TLS, pipelined (100 in flight), sync client",
     _setup_pipelined_sync, 10000),
    ("tls-pipelined-asyncio", "QoS 1 publish over TLS, 1,000 concurrent awaits, asyncio client",
     _setup_pipelined_asyncio, 10000),
    ("wss-pipelined-asyncio", "QoS 1 publish over TLS WebSocket, 1,000 concurrent awaits, "
     "asyncio client", _setup_ws_pipelined_asyncio, 5000),
):
    register(Figure(name=_name, title=_title, unit="msgs/s", setup=_setup, work=_work,
                    quick_work=200, description=__doc__ or ""))
