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
from typing import Any

from iotdev_mqtt import MessageReceived

from .._compat import async_timeout
from .._errors import OperationTimeout
from .._mqtt_common import MQTTClientBase
from ..transport._asyncio import AsyncDriver
from ..transport._endpoint import Endpoint
from ..transport._options import ConnectOptions

__all__ = ["MQTTClient", "MessageStream"]

Handler = Callable[[MessageReceived], Any]


class MQTTClient(MQTTClientBase[AsyncDriver]):
    """An asyncio MQTT client on the caller's event loop.  Arguments as for
    ``iotdev.mqtt.MQTTClient``; callbacks may be coroutine functions."""

    _queues: list[asyncio.Queue[MessageReceived]]

    def _new_driver(self, endpoint: Endpoint, options: ConnectOptions,
                    **kwargs: Any) -> AsyncDriver:
        self._queues = []  # the streams' queues (``messages()``): this face's own state
        return AsyncDriver(endpoint, options, **kwargs)

    def _route(self, message: MessageReceived) -> Any:
        for queue in self._queues:
            queue.put_nowait(message)
        return super()._route(message)

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
        subs = self._add_subscriptions(topic_filter, qos, callback)
        codes: tuple[int, ...] = await _bounded(self._driver.subscribe(subs), timeout,
                                                "subscribe")
        return codes

    async def unsubscribe(self, topic_filter: str | Iterable[str], *,
                          timeout: float | None = None) -> None:
        filters = self._drop_subscriptions(topic_filter)
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
