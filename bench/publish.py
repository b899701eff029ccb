"""Figures ``tls-1by1``, ``tls-pipelined``, ``wss-1by1``, ``wss-pipelined``:
200-byte QoS 1 publishes to the benchmark's mosquitto (``bench/_broker.py``:
``127.0.0.149``, TLS on 8883, TLS WebSocket on 443, a CA made at run time),
every client of every library in the same figure, in alternation.

Contestants (each keeps one connection across the rounds of its figure):

* ``iotdev MQTTClient sync``: ``iotdev.mqtt.MQTTClient(...).publish(topic,
  payload, qos=1)`` (a ``Completion``); compared with **paho-mqtt** 1.6
  (``publish(...)`` with ``loop_start()``) and, over TLS, with the C client
  ``mosquitto_pub -l`` (one message per stdin line, its process start included,
  so it gets more messages: the ceiling).
* ``iotdev MQTTClient asyncio`` (pipelined figures): ``iotdev.aio.MQTTClient``;
  compared with the same peers.
* ``iotdev device sync`` / ``iotdev device asyncio``: ``iotdev.IoTHubDeviceClient``
  / ``iotdev.aio.IoTHubDeviceClient``, ``send_message(Message(<200 bytes>))`` (a
  new ``Message`` per send); compared with **azure-iot-device 2.14**'s
  ``IoTHubDeviceClient`` of the same kind, created the same way:
  ``create_from_symmetric_key(key, "127.0.0.149", device_id,
  server_verification_cert=<CA PEM>[, websockets=True])``.  mosquitto allows
  anonymous clients, so the SAS token in the password is not checked.

One at a time (``*-1by1``): each call waits for its PUBACK before the next
(``publish().result()``, ``wait_for_publish()``, ``send_message()``, ``await
send_message()``).  Pipelined (``*-pipelined``): the sync MQTT clients queue
every message and then wait for every completion (100 in flight for both ours
and paho's ``max_inflight_messages_set(100)``); the asyncio clients await
1,000 publishes or ``send_message`` calls at a time with ``asyncio.gather``
(ours with ``max_inflight=1000``).  Each asyncio client runs on an event loop of
its own, kept across rounds.  A slow contestant does a fraction of the work
(its ``work`` column); rates are per second, so they compare.

Before timing, one message of each contestant must reach a service-side
subscriber on the broker's plain listener, on the expected topic with the
expected body.

A property of the broker bounds the WebSocket figures: mosquitto 2.0's
WebSocket listener (libwebsockets, which does its own TLS) reads part of a TLS
record and leaves the rest inside OpenSSL, where ``epoll`` cannot see it, until
its next service tick 100 ms later.  A client that writes 16 KB TLS records
(ours, when 1,000 publishes leave in one write) waits for that tick at the end
of each burst; one that writes a record per packet (paho-mqtt) does not.  With
writes capped at 4 KB, our asyncio client does about 50,000 msgs/s on the same
listener instead of about 9,000; over plain TLS (mosquitto's own socket code)
there is no such stall.
"""

from __future__ import annotations

import asyncio
import subprocess
import threading
import time
from collections.abc import Callable
from typing import Any

from ._broker import ADDRESS, Broker, require_program
from .device import (
    KEY,
    PAYLOAD,
    WAIT,
    LoopClient,
    Service,
    azure_sync,
    message_classes,
    ours_sync,
    require_azure,
    require_paho,
    with_deadline,
)
from .harness import Contestant, Figure, Session, Target, Timed, register

__all__ = ["CONCURRENCY", "WINDOW"]

WINDOW = 100  # sync pipelined: messages in flight
CONCURRENCY = 1000  # asyncio pipelined: awaits at a time

OURS_SYNC = "iotdev MQTTClient sync"
OURS_AIO = "iotdev MQTTClient asyncio"
DEV_SYNC = "iotdev device sync"
DEV_AIO = "iotdev device asyncio"
PAHO = "paho-mqtt"
AZ_SYNC = "azure-iot-device sync"
AZ_AIO = "azure-iot-device asyncio"
MOSQ = "mosquitto_pub -l"


def _topic(client_id: str) -> str:
    return f"devices/{client_id}/messages/events/"


# --------------------------------------------------------------------------- clients


class _Clients:
    """Builds every contestant's client for one figure, cleaned up with it."""

    def __init__(self, session: Session, broker: Broker, figure: str, websockets: bool) -> None:
        self.session = session
        self.broker = broker
        self.figure = figure
        self.websockets = websockets
        self.port = broker.ws_port if websockets else broker.tls_port
        self.checks: dict[str, tuple[str, Callable[[], None]]] = {}

    def name(self, what: str) -> str:
        return f"bench-{self.figure}-{what}"

    def mqtt_sync(self, window: int) -> Any:
        from iotdev.mqtt import MQTTClient

        client_id = self.name("mqtt")
        client = MQTTClient(ADDRESS, self.port, client_id=client_id,
                            transport="websockets" if self.websockets else "tls",
                            ws_path="/mqtt", server_verification_cert=self.broker.ca_pem,
                            max_inflight=window)
        self.session.stack.callback(with_deadline, client.shutdown, "iotdev shutdown")
        client.connect(timeout=WAIT)
        topic = _topic(client_id)
        self.checks[client_id] = (topic, lambda: client.publish(topic, PAYLOAD, 1).result(WAIT))
        return client, topic

    def mqtt_aio(self) -> tuple[LoopClient, str]:
        from iotdev.aio import MQTTClient

        client_id = self.name("mqtt-aio")
        holder = LoopClient(self.session, lambda: MQTTClient(
            ADDRESS, self.port, client_id=client_id,
            transport="websockets" if self.websockets else "tls", ws_path="/mqtt",
            server_verification_cert=self.broker.ca_pem, max_inflight=CONCURRENCY),
            "iotdev asyncio MQTTClient")
        topic = _topic(client_id)
        self.checks[client_id] = (topic, lambda: holder.call(
            lambda c: c.publish(topic, PAYLOAD, 1)))
        return holder, topic

    def paho(self, window: int) -> tuple[Any, str]:
        mqtt = require_paho()
        client_id = self.name("paho")
        client = mqtt.Client(client_id=client_id,
                             transport="websockets" if self.websockets else "tcp")
        if self.websockets:
            client.ws_set_options(path="/mqtt")
        client.max_inflight_messages_set(window)
        client.max_queued_messages_set(0)
        client.tls_set(ca_certs=str(self.broker.ca_file))
        connected = threading.Event()
        client.on_connect = lambda *_args: connected.set()
        client.connect(ADDRESS, self.port)
        client.loop_start()
        self.session.stack.callback(client.loop_stop)
        self.session.stack.callback(client.disconnect)
        if not connected.wait(WAIT):
            raise RuntimeError("paho-mqtt did not connect")
        topic = _topic(client_id)
        self.checks[client_id] = (topic, lambda: client.publish(topic, PAYLOAD, 1)
                                  .wait_for_publish(WAIT))
        return client, topic

    def device_sync(self) -> Any:
        message, _ = message_classes()
        device_id = self.name("dev")
        client = ours_sync(self.session, self.broker, device_id, websockets=self.websockets)
        self.checks[device_id] = (_topic(device_id),
                                  lambda: client.send_message(message(PAYLOAD)))
        return client

    def azure_sync(self) -> Any:
        _, azure_message = message_classes()
        device_id = self.name("azure")
        client = azure_sync(self.session, self.broker, device_id, websockets=self.websockets)
        self.checks[device_id] = (_topic(device_id),
                                  lambda: client.send_message(azure_message(PAYLOAD)))
        return client

    def device_aio(self) -> LoopClient:
        from iotdev.aio import IoTHubDeviceClient

        message, _ = message_classes()
        device_id = self.name("dev-aio")
        holder = LoopClient(self.session, lambda: IoTHubDeviceClient.create_from_symmetric_key(
            KEY, ADDRESS, device_id, server_verification_cert=self.broker.ca_pem,
            websockets=self.websockets), "iotdev asyncio device client")
        self.checks[device_id] = (_topic(device_id), lambda: holder.call(
            lambda c: c.send_message(message(PAYLOAD))))
        return holder

    def azure_aio(self) -> LoopClient:
        cls = require_azure(aio=True)
        _, azure_message = message_classes()
        device_id = self.name("azure-aio")
        holder = LoopClient(self.session, lambda: cls.create_from_symmetric_key(
            symmetric_key=KEY, hostname=ADDRESS, device_id=device_id,
            server_verification_cert=self.broker.ca_pem, websockets=self.websockets),
            "azure-iot-device asyncio")
        self.checks[device_id] = (_topic(device_id), lambda: holder.call(
            lambda c: c.send_message(azure_message(PAYLOAD))))
        return holder

    def check(self) -> None:
        """One message of each client reaches the service, on its topic, intact."""
        service = Service(self.session, self.broker, self.figure)
        service.subscribe("devices/+/messages/events/#")
        try:
            for count, (client_id, (topic, send)) in enumerate(self.checks.items(), start=1):
                send()
                got_topic, body = service.wait_for(count)[-1]
                if not got_topic.startswith(topic) or body != PAYLOAD:
                    raise RuntimeError(f"{client_id} sent {body[:20]!r}... ({len(body)} bytes) "
                                       f"on {got_topic!r}, expected {len(PAYLOAD)} bytes on "
                                       f"{topic!r}")
        finally:
            service.unsubscribe("devices/+/messages/events/#")


# --------------------------------------------------------------------------- runners


def _sync_one_by_one(send: Callable[[], Any]) -> Callable[[int], int]:
    def run(work: int) -> int:
        for _ in range(work):
            send()
        return work

    return run


def _aio_one_by_one(holder: LoopClient, send: Callable[[Any], Any]) -> Callable[[int], int]:
    async def sequence(count: int) -> None:
        client = holder.client
        for _ in range(count):
            await send(client)

    def run(work: int) -> int:
        holder.loop.run_until_complete(sequence(work))
        return work

    return run


def _aio_concurrent(holder: LoopClient, send: Callable[[Any], Any]) -> Callable[[int], int]:
    async def burst(count: int) -> None:
        client = holder.client
        await asyncio.gather(*(send(client) for _ in range(count)))

    def run(work: int) -> int:
        done = 0
        while done < work:
            count = min(CONCURRENCY, work - done)
            holder.loop.run_until_complete(burst(count))
            done += count
        return work

    return run


def _mqtt_pipelined(client: Any, topic: str) -> Callable[[int], int]:
    def run(work: int) -> int:
        publish = client.publish
        futures = [publish(topic, PAYLOAD, 1) for _ in range(work)]
        for fut in futures:
            fut.result(30)
        return work

    return run


def _paho_pipelined(client: Any, topic: str) -> Callable[[int], int]:
    def run(work: int) -> int:
        publish = client.publish
        infos = [publish(topic, PAYLOAD, 1) for _ in range(work)]
        for info in infos:
            info.wait_for_publish(30)
            if not info.is_published():
                raise RuntimeError("paho-mqtt: a publish was not acknowledged within 30 s")
        return work

    return run


def _mosquitto_pub(broker: Broker) -> Callable[[int], Timed]:
    program = require_program("mosquitto_pub")
    line = PAYLOAD + b"\n"

    def run(work: int) -> Timed:
        data = line * work
        start = time.perf_counter()
        subprocess.run([program, "-h", ADDRESS, "-p", str(broker.tls_port), "--cafile",
                        str(broker.ca_file), "-i", "bench-mosquitto-pub",
                        "-t", _topic("bench-mosquitto-pub"), "-q", "1", "-l"],
                       input=data, check=True, capture_output=True, timeout=120)
        return Timed(work, time.perf_counter() - start)

    return run


# --------------------------------------------------------------------------- setups


def _setup_1by1(websockets: bool) -> Callable[[Session], list[Contestant]]:
    def setup(session: Session) -> list[Contestant]:
        require_azure()
        broker = Broker.get()
        message, azure_message = message_classes()
        made = _Clients(session, broker, "wss-1by1" if websockets else "tls-1by1", websockets)
        mqtt, mqtt_topic = made.mqtt_sync(WINDOW)
        paho, paho_topic = made.paho(WINDOW)
        dev, azure = made.device_sync(), made.azure_sync()
        dev_aio, azure_aio = made.device_aio(), made.azure_aio()
        made.check()
        return [
            Contestant(OURS_SYNC, _sync_one_by_one(
                lambda: mqtt.publish(mqtt_topic, PAYLOAD, 1).result(WAIT)),
                ours=True, versus=(PAHO,)),
            Contestant(PAHO, _sync_one_by_one(
                lambda: paho.publish(paho_topic, PAYLOAD, 1).wait_for_publish(WAIT))),
            Contestant(DEV_SYNC, _sync_one_by_one(lambda: dev.send_message(message(PAYLOAD))),
                       ours=True, versus=(AZ_SYNC,)),
            Contestant(AZ_SYNC, _sync_one_by_one(
                lambda: azure.send_message(azure_message(PAYLOAD))), work_scale=0.4),
            Contestant(DEV_AIO, _aio_one_by_one(
                dev_aio, lambda c: c.send_message(message(PAYLOAD))),
                ours=True, versus=(AZ_AIO,)),
            Contestant(AZ_AIO, _aio_one_by_one(
                azure_aio, lambda c: c.send_message(azure_message(PAYLOAD))), work_scale=0.4),
        ]

    return setup


def _setup_pipelined(websockets: bool) -> Callable[[Session], list[Contestant]]:
    def setup(session: Session) -> list[Contestant]:
        require_azure()
        broker = Broker.get()
        message, azure_message = message_classes()
        made = _Clients(session, broker, "wss-pipe" if websockets else "tls-pipe", websockets)
        mqtt, mqtt_topic = made.mqtt_sync(WINDOW)
        mqtt_aio, aio_topic = made.mqtt_aio()
        paho, paho_topic = made.paho(WINDOW)
        dev_aio, azure_aio = made.device_aio(), made.azure_aio()
        made.check()
        mqtt_peers: tuple[str, ...] = (PAHO,) if websockets else (PAHO, MOSQ)
        contestants = [
            Contestant(OURS_SYNC, _mqtt_pipelined(mqtt, mqtt_topic), ours=True,
                       versus=mqtt_peers),
            Contestant(OURS_AIO, _aio_concurrent(
                mqtt_aio, lambda c: c.publish(aio_topic, PAYLOAD, 1)), ours=True,
                versus=mqtt_peers),
            Contestant(PAHO, _paho_pipelined(paho, paho_topic), work_scale=0.5),
            Contestant(DEV_AIO, _aio_concurrent(
                dev_aio, lambda c: c.send_message(message(PAYLOAD))), ours=True,
                versus=(AZ_AIO,)),
            Contestant(AZ_AIO, _aio_concurrent(
                azure_aio, lambda c: c.send_message(azure_message(PAYLOAD))), work_scale=0.3),
        ]
        if not websockets:
            contestants.append(Contestant(MOSQ, _mosquitto_pub(broker), work_scale=3.0))
        return contestants

    return setup


def _targets_1by1(websockets: bool) -> tuple[Target, ...]:
    if websockets:
        return ()
    return (
        Target("sync one at a time over TLS: device client >= 2.5x azure-iot-device",
               DEV_SYNC, AZ_SYNC, at_least=2.5),
        Target("sync one at a time over TLS: MQTT client >= 1.0x paho-mqtt",
               OURS_SYNC, PAHO, at_least=1.0),
    )


def _targets_pipelined(websockets: bool) -> tuple[Target, ...]:
    if websockets:
        return ()
    return (
        Target("asyncio, 1,000 concurrent over TLS: device client >= 5x azure-iot-device",
               DEV_AIO, AZ_AIO, at_least=5.0),
        Target("pipelined over TLS: sync MQTT client >= 1.2x paho-mqtt",
               OURS_SYNC, PAHO, at_least=1.2),
    )


for _ws in (False, True):
    _prefix = "wss" if _ws else "tls"
    _over = "TLS WebSocket" if _ws else "TLS"
    register(Figure(
        name=f"{_prefix}-1by1",
        title=f"QoS 1 publish of 200 bytes over {_over}, one at a time (wait for each PUBACK)",
        unit="msgs/s", setup=_setup_1by1(_ws), work=2000, quick_work=50,
        targets=_targets_1by1(_ws), chart="throughput", description=__doc__ or ""))
    register(Figure(
        name=f"{_prefix}-pipelined",
        title=f"QoS 1 publish of 200 bytes over {_over}, pipelined (sync: {WINDOW} in flight) "
        f"and concurrent (asyncio: {CONCURRENCY:,} awaits)",
        unit="msgs/s", setup=_setup_pipelined(_ws), work=10_000, quick_work=200,
        targets=_targets_pipelined(_ws), chart="throughput", description=__doc__ or ""))


