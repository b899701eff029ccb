"""The generic MQTT client for asyncio (no threads): the same options as
``iotdev.mqtt.MQTTClient``, with coroutines and an async iterator of messages.

    from iotdev.aio import MQTTClient

    async with MQTTClient("broker.example", transport="tls", client_id="dev1") as client:
        await client.subscribe("commands/#", 1)
        await client.publish("telemetry", b"21.5", qos=1)
        async for message in client.messages():
            print(message.topic, message.payload)
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from iotdev_mqtt import MessageReceived, Will, topic_matches

from .._compat import async_timeout
from .._errors import OperationTimeout
from ..mqtt import client_setup
from ..transport._asyncio import AsyncDriver
from ..transport._credentials import X509
from ..transport._endpoint import TransportName
from ..transport._options import ConnectOptions, Credentials, ReconnectPolicy

if TYPE_CHECKING:
    import ssl

__all__ = ["MQTTClient", "MessageStream"]

Handler = Callable[[MessageReceived], Any]


class MQTTClient:
    """An asyncio MQTT client on the caller's event loop.  Arguments as for
    ``iotdev.mqtt.MQTTClient``; callbacks may be coroutine functions."""

    def __init__(
        self,
        host: str,
        port: int | None = None,
        *,
        client_id: str,
        transport: TransportName = "tcp",
        username: str | None = None,
        password: bytes | str | None = None,
        credentials: Callable[[], Credentials] | None = None,
        clean_session: bool = True,
        keep_alive: int = 60,
        will: Will | None = None,
        server_verification_cert: str | None = None,
        tls_context: ssl.SSLContext | None = None,
        cipher: str | list[str] | None = None,
        x509: X509 | None = None,
        ws_path: str = "/mqtt",
        proxy_options: Any = None,
        connect_timeout: float = 30.0,
        reconnect: bool = True,
        retry_interval: float = 10.0,
        # 20, as mosquitto's max_inflight_messages and paho's default: mosquitto
        # acknowledges (PUBREC, PUBCOMP) a 3.1.1 client's QoS 2 publishes beyond
        # its quota and then drops them, so a larger window loses bursts.
        max_inflight: int = 20,
        max_queued: int = 10_000,
        on_message: Handler | None = None,
        on_connection_state_change: Callable[[bool, str | None], Any] | None = None,
        on_background_exception: Callable[[BaseException], Any] | None = None,
    ) -> None:
        self.endpoint, creds = client_setup(
            host, port, transport, username, password, credentials, server_verification_cert,
            tls_context, cipher, x509, ws_path, proxy_options, connect_timeout)
        self.on_message = on_message
        self._subscriptions: list[tuple[str, Handler]] = []
        self._queues: list[asyncio.Queue[MessageReceived]] = []
        self._driver = AsyncDriver(
            self.endpoint,
            ConnectOptions(client_id, keep_alive, clean_session, creds, will),
            reconnect=ReconnectPolicy(enabled=reconnect, interval=retry_interval),
            on_message=self._route,
            on_state=on_connection_state_change,
            on_error=on_background_exception,
            max_inflight=max_inflight,
            max_queued=max_queued,
            connect_timeout=connect_timeout,
        )

    @property
    def connected(self) -> bool:
        return self._driver.connected

    def _route(self, message: MessageReceived) -> Any:
        for queue in self._queues:
            queue.put_nowait(message)
        for topic_filter, callback in self._subscriptions:
            if topic_matches(topic_filter, message.topic):
                return callback(message)
        if self.on_message is not None:
            return self.on_message(message)
        return None

    async def connect(self, timeout: float | None = None) -> None:
        """Connect and wait for CONNACK (errors as for the sync client)."""
        await _bounded(self._driver.connect(), timeout, "connect")

    def publish(self, topic: str, payload: bytes | str = b"", qos: int = 0,
                retain: bool = False) -> asyncio.Future[None]:
        """Publish; await the returned future for PUBACK/PUBCOMP (QoS 0: written)."""
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        return self._driver.publish(topic, payload, qos, retain)

    async def subscribe(self, topic_filter: str | Iterable[tuple[str, int]], qos: int = 0, *,
                        callback: Handler | None = None,
                        timeout: float | None = None) -> tuple[int, ...]:
        subs = [(topic_filter, qos)] if isinstance(topic_filter, str) else list(topic_filter)
        if callback is not None:
            self._subscriptions += [(f, callback) for f, _ in subs]
        codes: tuple[int, ...] = await _bounded(self._driver.subscribe(subs), timeout,
                                                "subscribe")
        return codes

    async def unsubscribe(self, topic_filter: str | Iterable[str], *,
                          timeout: float | None = None) -> None:
        filters = [topic_filter] if isinstance(topic_filter, str) else list(topic_filter)
        self._subscriptions = [(f, cb) for f, cb in self._subscriptions if f not in filters]
        await _bounded(self._driver.unsubscribe(filters), timeout, "unsubscribe")

    def messages(self) -> MessageStream:
        """Every message received from this call on, in order: ``async for m in
        client.messages()``.  The stream starts collecting at once (not at the
        first iteration); ``aclose()`` it, or leave the ``async for``, to stop."""
        return MessageStream(self._queues)

    async def disconnect(self) -> None:
        await self._driver.disconnect()

    async def shutdown(self) -> None:
        await self._driver.shutdown()

    async def __aenter__(self) -> MQTTClient:
        await self.connect()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.shutdown()


class MessageStream:
    """An async iterator over received messages (see ``MQTTClient.messages``)."""

    def __init__(self, queues: list[asyncio.Queue[MessageReceived]]) -> None:
        self._queues = queues
        self._queue: asyncio.Queue[MessageReceived] = asyncio.Queue()
        queues.append(self._queue)
        self._closed = False

    def __aiter__(self) -> MessageStream:
        return self

    async def __anext__(self) -> MessageReceived:
        if self._closed:
            raise StopAsyncIteration
        return await self._queue.get()

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            self._queues.remove(self._queue)


async def _bounded(awaitable: Any, timeout: float | None, what: str) -> Any:
    try:
        async with async_timeout(timeout):
            return await awaitable
    except TimeoutError:
        raise OperationTimeout(f"{what} did not complete within {timeout} s") from None
