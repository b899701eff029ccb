"""The generic asyncio MQTT client against a real mosquitto (no pytest plugin:
each test runs its own event loop)."""

from __future__ import annotations

import asyncio
import socket
import threading
from typing import Any

import pytest

from iotdev._errors import (
    ConnectionRefusedByHostError,
    ConnectTimeoutError,
    OperationCancelled,
    TLSVerificationError,
)
from iotdev.aio import MQTTClient
from iotdev_mqtt import MessageReceived
from tests._broker import CertAuthority, Mosquitto, MosquittoClients, free_ports, unique_name

TIMEOUT = 10.0


def _client(broker: Mosquitto, ca: CertAuthority, transport: str, **kw: Any) -> MQTTClient:
    port = {"tcp": broker.tcp_port, "tls": broker.tls_port, "websockets": broker.ws_port}
    return MQTTClient(
        "localhost" if transport != "tcp" else broker.host,
        port[transport],
        client_id=unique_name("aio"),
        transport=transport,  # type: ignore[arg-type]
        server_verification_cert=ca.ca_cert_pem if transport != "tcp" else None,
        connect_timeout=TIMEOUT,
        **kw,
    )


@pytest.mark.mosquitto
@pytest.mark.parametrize("transport", ["tcp", "tls"])
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_publish_and_receive(mosquitto: Mosquitto, test_ca: CertAuthority, transport: str,
                             qos: int) -> None:
    async def main() -> list[MessageReceived]:
        topic = unique_name("iotdev/aio")
        async with _client(mosquitto, test_ca, transport) as client:
            assert client.connected
            got: list[MessageReceived] = []

            async def collect() -> None:
                async for message in client.messages():
                    got.append(message)
                    if len(got) == 5:
                        return

            collector = asyncio.create_task(collect())
            assert await client.subscribe(topic, qos, timeout=TIMEOUT) == (qos,)
            await asyncio.wait_for(
                asyncio.gather(*(client.publish(topic, b"m%d" % i, qos) for i in range(5))),
                TIMEOUT)
            await asyncio.wait_for(collector, TIMEOUT)
            return got

    got = asyncio.run(main())
    assert [m.payload for m in got] == [b"m%d" % i for i in range(5)]
    assert {m.qos for m in got} == {qos}


@pytest.mark.mosquitto
def test_no_threads_and_mosquitto_pub_reaches_a_coroutine_callback(
    mosquitto: Mosquitto, test_ca: CertAuthority, mosquitto_clients: MosquittoClients
) -> None:
    async def main() -> list[bytes]:
        before = threading.active_count()
        got: list[bytes] = []
        arrived = asyncio.Event()

        async def on_message(message: MessageReceived) -> None:
            got.append(message.payload)
            arrived.set()

        topic = unique_name("iotdev/aio/in")
        async with _client(mosquitto, test_ca, "tls", on_message=on_message) as client:
            await client.subscribe(topic, 1, timeout=TIMEOUT)
            # The driver starts no thread; asyncio's own resolver executor may run
            # getaddrinfo("localhost") on a worker named "asyncio_N".
            extra = [t.name for t in threading.enumerate()][before:]
            assert all(name.startswith("asyncio_") for name in extra), extra
            await asyncio.to_thread(mosquitto_clients.publish, mosquitto, topic, b"hi", qos=1)
            await asyncio.wait_for(arrived.wait(), TIMEOUT)
        return got

    assert asyncio.run(main()) == [b"hi"]


def test_refused_port() -> None:
    (port,) = free_ports(1)

    async def main() -> None:
        client = MQTTClient("127.0.0.1", port, client_id="x", connect_timeout=5)
        with pytest.raises(ConnectionRefusedByHostError):
            await client.connect()

    asyncio.run(main())


def test_silent_server_times_out() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    async def main() -> None:
        client = MQTTClient("127.0.0.1", listener.getsockname()[1], client_id="x",
                            connect_timeout=0.5)
        with pytest.raises(ConnectTimeoutError):
            await client.connect(timeout=TIMEOUT)

    try:
        asyncio.run(main())
    finally:
        listener.close()


@pytest.mark.mosquitto
def test_wrong_ca(mosquitto: Mosquitto, tmp_path: Any) -> None:
    other = CertAuthority(tmp_path / "other", name="other CA")

    async def main() -> None:
        client = MQTTClient("localhost", mosquitto.tls_port, client_id="x", transport="tls",
                            server_verification_cert=other.ca_cert_pem, connect_timeout=5)
        with pytest.raises(TLSVerificationError):
            await client.connect()

    asyncio.run(main())


@pytest.mark.mosquitto
def test_reconnects_after_restart(mosquitto_factory: Any, test_ca: CertAuthority) -> None:
    broker = mosquitto_factory()

    async def main() -> list[bool]:
        states: list[bool] = []
        back = asyncio.Event()

        def on_state(connected: bool, reason: str | None) -> None:
            states.append(connected)
            if states[-2:] == [False, True]:
                back.set()

        client = _client(broker, test_ca, "tcp", retry_interval=0.2,
                         on_connection_state_change=on_state)
        await client.connect()
        await asyncio.wait_for(client.publish(unique_name("t"), b"x", 1), TIMEOUT)
        await asyncio.to_thread(broker.restart)
        await asyncio.wait_for(back.wait(), TIMEOUT)
        await asyncio.wait_for(client.publish(unique_name("t"), b"y", 1), TIMEOUT)
        await client.shutdown()
        return states

    assert asyncio.run(main())[:3] == [True, False, True]


def test_disconnect_cancels_waiting_publish() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()

    async def main() -> None:
        client = MQTTClient("127.0.0.1", listener.getsockname()[1], client_id="x",
                            connect_timeout=30)
        fut = client.publish("a/b", b"x", 1)
        await client.disconnect()
        with pytest.raises(OperationCancelled):
            await fut

    try:
        asyncio.run(main())
    finally:
        listener.close()


@pytest.mark.mosquitto
@pytest.mark.parametrize("qos", [0, 1, 2])
def test_websocket_transport(mosquitto: Mosquitto, test_ca: CertAuthority, qos: int) -> None:
    async def main() -> list[MessageReceived]:
        topic = unique_name("iotdev/aio/ws")
        async with _client(mosquitto, test_ca, "websockets") as client:
            stream = client.messages()
            await client.subscribe(topic, qos, timeout=TIMEOUT)
            await asyncio.wait_for(client.publish(topic, b"over websocket", qos), TIMEOUT)
            return [await asyncio.wait_for(anext(stream), TIMEOUT)]

    got = asyncio.run(main())
    assert [(m.payload, m.qos) for m in got] == [(b"over websocket", qos)]
