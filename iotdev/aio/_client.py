"""``iotdev.aio.IoTHubDeviceClient``: the azure-iot-device v2 asyncio device
API on the asyncio driver (no threads): a thin face over the sans-IO
``hs.HubSession`` (``_session.py``), which decides everything about the hub; this
face awaits, delivers and translates.  Handlers may be plain functions or
coroutine functions; they run on the client's event loop.  A handler set
before any loop runs takes effect at ``connect()``."""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import inspect
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from iotdev_mqtt import MessageReceived

from .. import _session as hs
from .._compat import async_timeout
from .._errors import NoConnectionError, OperationCancelled, OperationTimeout
from .._face import CLOSED, ClientFace, DeviceFactories, deprecated
from .._hubclient import HubConfig, check_update_sastoken
from .._models import Message, MethodRequest, MethodResponse
from ..transport._asyncio import AsyncDriver

if TYPE_CHECKING:
    from .._outbox_sender import AsyncSender

__all__ = ["HubClient", "IoTHubDeviceClient"]

# Back-pressure: while this many coroutine handlers are still running, the
# client stops reading from the hub (and resumes at a quarter of it), so a
# flood of messages at a handler that falls behind cannot grow memory without
# bound (each waiting task holds its message).
MAX_HANDLER_TASKS = 256


class HubClient(ClientFace):
    """What the asyncio device and module clients share (the v2 API less the
    factories and the methods of one kind)."""

    def __init__(self, config: HubConfig) -> None:
        self._config = config
        self._session: hs.HubSession = config.new_session()
        self._handlers: dict[str, Callable[..., Any] | None] = {}
        self._inboxes: dict[str, asyncio.Queue[Any]] = {}
        self._inbox_type, self._inbox_guard = asyncio.Queue, contextlib.nullcontext()
        self._twin_waiters: dict[str, asyncio.Future[Any]] = {}
        self._sub_waiters: dict[int, asyncio.Future[None]] = {}
        self._shutdown = False
        self._http_sessions: set[Any] = set()  # HTTPSessions of calls in progress
        self._renew_handle: asyncio.TimerHandle | None = None
        self._armed: float | None = None  # the deadline _renew_handle is for
        self._tasks: set[asyncio.Task[Any]] = set()
        self._handler_tasks = 0  # handlers still running (back-pressure)
        # Plain-function handlers run here, off the loop, one at a time in
        # arrival order (v2 runs them in a thread pool too): a blocking or
        # loop-waiting handler cannot stall the connection.  Made on first use.
        self._handler_pool: concurrent.futures.ThreadPoolExecutor | None = None
        outbox = config.open_outbox()  # outbox_path
        self._driver = AsyncDriver(
            config.endpoint(), config.connect_options(),
            reconnect=config.reconnect_policy(),
            on_message=self._on_message, on_state=self._on_state,
            on_error=self._background, max_queued=config.max_queued_messages,
        )
        self._outbox: AsyncSender | None = None
        if outbox is not None:
            from .._outbox_sender import AsyncSender  # SQLite only for outbox users

            self._outbox = AsyncSender(outbox, self._driver, config, self._background,
                                       self.connect)

    # ------------------------------------------------------------ connection

    @property
    def connected(self) -> bool:
        return self._driver.connected

    async def _bounded(self, awaitable: Any, timeout: float | None, what: str) -> Any:
        limit = self._config.operation_timeout if timeout is None else timeout
        try:
            async with async_timeout(limit):
                return await awaitable
        except TimeoutError:
            raise OperationTimeout(f"{what} did not complete within {limit:g} s") from None

    async def connect(self, *, timeout: float | None = None) -> None:
        """As ``iotdev.IoTHubDeviceClient.connect``."""
        self._check_alive()
        await self._bounded(self._driver.connect(), timeout, "connect")

    async def _ensure_connected(self) -> None:
        if self._driver.connected or self._driver.reconnecting:
            return  # while reconnecting, operations wait for the new connection
        if not self._config.auto_connect:
            raise NoConnectionError("not connected and auto_connect is False: call connect()")
        await self.connect()

    async def disconnect(self, *, timeout: float | None = None) -> None:
        """As ``iotdev.IoTHubDeviceClient.disconnect`` (``timeout`` included)."""
        self._disconnecting()
        await self._bounded(self._driver.disconnect(), timeout, "disconnect")

    async def shutdown(self) -> None:
        """As ``iotdev.IoTHubDeviceClient.shutdown``."""
        if not self._shutting_down():
            return
        if self._outbox is not None:
            self._outbox.disconnecting()
        await self._driver.shutdown()
        if self._outbox is not None:
            self._outbox.close()
        for box in self._inboxes.values():  # wake receive_*() calls
            box.put_nowait(CLOSED)
        for session in list(self._http_sessions):  # uploads end with OperationCancelled
            session.cancel("shutdown() was called")
        for task in list(self._tasks):
            task.cancel()
        if self._handler_pool is not None:  # a handler running now finishes on its own
            self._handler_pool.shutdown(wait=False, cancel_futures=True)

    async def _run_http(self, make: Callable[[Any], Any],
                        progress: Callable[[int, int | None], Any] | None = None) -> Any:
        from ..transport._http import HTTPSession, run_async

        session = HTTPSession()
        self._http_sessions.add(session)
        try:
            return await run_async(make(session), session, progress)
        finally:
            self._http_sessions.discard(session)

    async def update_sastoken(self, sastoken: str) -> None:
        """As ``iotdev.IoTHubDeviceClient.update_sastoken``."""
        self._check_alive()
        expiry = check_update_sastoken(self._config, sastoken)
        self._feed(lambda s: s.token_updated(time.time(), expiry))
        if self._driver.connected:
            self._session.reauthorizing()
            await self._driver.reauthorize()
        else:
            await self.connect()

    # ------------------------------------------------------------ operations

    async def send_message(self, message: Any, *, timeout: float | None = None) -> None:
        """Send telemetry (QoS 1; returns on PUBACK).  See the sync client.

        With ``outbox_path``: returns once the message is stored on disk (one
        SQLite transaction with an fsync, on the loop), without waiting for
        the PUBACK; see ``iotdev.IoTHubDeviceClient.send_message``."""
        self._check_alive()
        publish = self._session.telemetry(message)
        if self._outbox is not None:
            self._outbox.put(publish.topic, publish.payload)  # durable from here on
            await asyncio.sleep(0)  # let the sender run: a tight send loop must not starve it
            return
        await self._send(publish, timeout, "send_message")

    async def _send(self, publish: hs.Publish, timeout: float | None, what: str) -> None:
        await self._ensure_connected()
        await self._bounded(self._driver.publish(publish.topic, publish.payload, 1, False),
                            timeout, what)

    # ---------------------------------------------------------------- outbox

    async def wait_outbox_drained(self, *, timeout: float | None = None) -> None:
        """As ``iotdev.IoTHubDeviceClient.wait_outbox_drained``.

        Raises:
            OperationTimeout, OperationCancelled.
        """
        self._check_alive()
        if self._outbox is not None:
            await self._outbox.wait_drained(
                self._config.operation_timeout if timeout is None else timeout)


    async def send_method_response(self, method_response: MethodResponse, *,
                                   timeout: float | None = None) -> None:
        """As ``iotdev.IoTHubDeviceClient.send_method_response``."""
        self._check_alive()
        await self._send(hs.HubSession.method_response(method_response), timeout,
                         "send_method_response")

    async def receive_method_request(self, method_name: str | None = None) -> MethodRequest:
        """Deprecated (v2 2.3.0): the next method request (of ``method_name``,
        or any)."""
        deprecated("receive_method_request", "on_method_request_received")
        await self._want(lambda s: s.use_receive_api(hs.METHODS))
        box = self._inbox(f"method:{method_name}" if method_name else "method:*")
        request: MethodRequest = await self._take(box)
        return request

    async def receive_twin_desired_properties_patch(self) -> Any:
        """Deprecated (v2 2.3.0): the next desired-properties patch."""
        deprecated("receive_twin_desired_properties_patch",
                   "on_twin_desired_properties_patch_received")
        await self._want(lambda s: s.use_receive_api(hs.DESIRED))
        return await self._take(self._inbox(hs.DESIRED))

    async def _take(self, box: asyncio.Queue[Any]) -> Any:
        item = await box.get()
        if item is CLOSED:
            box.put_nowait(CLOSED)
            raise OperationCancelled("the client was shut down")
        return item

    async def get_twin(self, *, timeout: float | None = None) -> dict[str, Any]:
        """As ``iotdev.IoTHubDeviceClient.get_twin``."""
        result: dict[str, Any] = await self._twin_request("GET", None, timeout)
        return result

    async def patch_twin_reported_properties(self, reported_properties_patch: dict[str, Any],
                                             *, timeout: float | None = None) -> None:
        """As ``iotdev.IoTHubDeviceClient.patch_twin_reported_properties``."""
        if not isinstance(reported_properties_patch, dict):
            raise TypeError("the reported properties patch must be a dict")
        await self._twin_request("PATCH", reported_properties_patch, timeout)

    async def _twin_request(self, kind: str, patch: Any, timeout: float | None) -> Any:
        self._check_alive()
        await self._ensure_connected()
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        rid, outputs = self._session.twin_request(kind, patch)
        self._twin_waiters[rid] = waiter
        self._run(outputs)
        try:
            return await self._bounded(waiter, timeout, f"twin {kind}")
        finally:
            self._twin_waiters.pop(rid, None)
            self._session.twin_abandoned(rid)

    # -------------------------------------------------------------- handlers

    def _handler_changed(self, key: str, feature: str,
                         handler: Callable[..., Any] | None) -> None:
        # The SUBSCRIBE (UNSUBSCRIBE) is written before the setter returns when
        # connected; without a running loop, the session subscribes at connect().
        # Set from another thread while the client's loop runs (v2 allows it),
        # the change is made on that loop, within one turn.
        loop = self._driver.loop
        if loop is not None and loop.is_running() and _running_loop() is not loop:
            self._handlers[key] = handler  # what the getter shows from now on
            loop.call_soon_threadsafe(self._handler_changed, key, feature, handler)
            return
        self._run(self._session.set_handler(feature, handler is not None))
        self._handlers[key] = handler
        if handler is not None and not self._driver.connected and _loop_running():
            self._spawn(self._want(lambda s: []))  # auto_connect

    async def _want(self, change: Callable[[hs.HubSession], list[hs.Output]]) -> None:
        """Apply a feature change to the session (raises ``ClientError`` for
        the receive-mode lock), connect when ``auto_connect`` allows, and wait
        for the SUBSCRIBEs in flight."""
        self._check_alive()
        self._run(change(self._session))
        if (not self._driver.connected and not self._driver.reconnecting
                and self._config.auto_connect and not self._shutdown):
            await self.connect()
        for key in self._session.pending_subscriptions():
            waiter = self._sub_waiters.get(key)
            if waiter is not None:
                await self._bounded(asyncio.shield(waiter), None, "subscribe")

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._background(task.exception())  # type: ignore[arg-type]

    # ------------------------------------------- the session's facts and outputs

    def _feed(self, fact: Callable[[hs.HubSession], list[hs.Output]]) -> None:
        self._run(fact(self._session))

    def _run(self, outputs: list[hs.Output]) -> None:
        """Carry out the session's outputs on the driver; deliver its events."""
        for out in outputs:
            if isinstance(out, hs.Publish):
                ref = out.ref or ""
                try:
                    sent = self._driver.publish(out.topic, out.payload, 1, False)
                except Exception as exc:  # the queue is full, or shut down
                    self._run(self._session.published(ref, exc))
                    continue
                sent.add_done_callback(self._published(ref))
            elif isinstance(out, hs.Subscribe):
                self._subscribe(out)
            elif isinstance(out, hs.Unsubscribe):
                self._spawn(self._driver.unsubscribe(list(out.filters)))
            elif isinstance(out, hs.Reauthorize):
                self._spawn(self._driver.reauthorize())  # a fresh token for the new CONNECT
            elif isinstance(out, hs.TokenRequired):
                self._call("on_new_sastoken_required")
            elif isinstance(out, hs.TwinDone):
                waiter = self._twin_waiters.pop(out.rid, None)
                if waiter is not None and not waiter.done():
                    if out.error is not None:
                        waiter.set_exception(out.error)
                    else:
                        waiter.set_result(out.result)
            else:
                self._deliver(out)
        self._arm_renewal()

    def _published(self, ref: str) -> Callable[[asyncio.Future[None]], None]:
        def done(sent: asyncio.Future[None]) -> None:
            if not sent.cancelled():
                self._feed(lambda s: s.published(ref, sent.exception()))
        return done

    def _subscribe(self, out: hs.Subscribe) -> None:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._sub_waiters[out.key] = waiter

        def done(sent: asyncio.Future[Any] | None, error: BaseException | None) -> None:
            if sent is not None and sent.cancelled():
                error = OperationCancelled("the client was shut down")
            elif sent is not None:
                error = sent.exception()
            self._feed(lambda s: s.subscribe_failed(out.key, error) if error is not None
                       else s.subscribed_ok(out.key, sent.result() if sent else ()))
            self._sub_waiters.pop(out.key, None)
            if not waiter.done():
                waiter.set_result(None)

        try:
            sent = self._driver.subscribe_nowait([(f, 1) for f in out.filters])
        except Exception as exc:
            done(None, exc)
            return
        sent.add_done_callback(lambda f: done(f, None))

    def _arm_renewal(self) -> None:
        deadline = self._session.next_deadline()
        if deadline == self._armed and (self._renew_handle is not None or deadline is None):
            return
        self._armed = deadline
        if self._renew_handle is not None:
            self._renew_handle.cancel()
            self._renew_handle = None
        if deadline is not None and _loop_running():
            self._renew_handle = asyncio.get_running_loop().call_later(
                max(0.0, deadline - time.time()), self._renew)

    def _renew(self) -> None:
        self._renew_handle = None
        self._feed(lambda s: s.tick(time.time()))

    def _on_state(self, connected: bool, reason: str | None) -> None:
        if connected:
            if self._outbox is not None:
                self._outbox.connected()  # pending rows (this run's or a previous one's) leave
            self._feed(lambda s: s.connected_fact(time.time(), self._config.token_expiry))
        else:
            retrying = self._driver.reconnecting
            self._feed(lambda s: s.disconnected(retrying))
        self._call("on_connection_state_change")

    # ------------------------------------------------------------------ events

    def _on_message(self, message: MessageReceived) -> None:
        self._feed(lambda s: s.message(message.topic, message.payload))

    def _invoke(self, handler: Callable[..., Any], *args: Any) -> None:
        self._handler_tasks += 1
        if self._handler_tasks >= MAX_HANDLER_TASKS:
            self._driver.pause_reading(True)
        if inspect.iscoroutinefunction(handler):
            self._spawn(self._handler_done(handler(*args)))
            return
        if self._handler_pool is None:
            self._handler_pool = concurrent.futures.ThreadPoolExecutor(
                max_workers=1, thread_name_prefix="iotdev-aio-handler")
        running = asyncio.get_running_loop().run_in_executor(
            self._handler_pool, lambda: handler(*args))
        # A callback, not a task: shutdown() cancels tasks, and a handler's
        # error must still be reported (not left as "never retrieved").
        running.add_done_callback(self._function_done)

    def _function_done(self, running: asyncio.Future[Any]) -> None:
        """A plain-function handler ended on the handler thread."""
        self._handler_finished()
        if running.cancelled():
            return
        error = running.exception()
        if error is not None:
            self._background(error)
        elif inspect.isawaitable(running.result()):  # a function that returned a coroutine
            self._handler_tasks += 1
            self._spawn(self._handler_done(running.result()))

    async def _handler_done(self, running: Any) -> None:
        """Await a coroutine handler, then count it out (see MAX_HANDLER_TASKS)."""
        try:
            await running
        finally:
            self._handler_finished()

    def _handler_finished(self) -> None:
        self._handler_tasks -= 1
        if self._handler_tasks == MAX_HANDLER_TASKS // 4:
            self._driver.pause_reading(False)

class IoTHubDeviceClient(DeviceFactories, HubClient):
    """An asyncio IoT Hub device client (create it with a factory)."""

    # ------------------------------------------------------------ file upload

    async def get_storage_info_for_blob(self, blob_name: str) -> dict[str, Any]:
        """As ``iotdev.IoTHubDeviceClient.get_storage_info_for_blob``, on this loop."""
        self._check_alive()
        from .._upload import check_blob_name, storage_info

        check_blob_name(blob_name)
        config = self._config.upload_config()
        result: dict[str, Any] = await self._run_http(
            lambda session: storage_info(config, session, blob_name))
        return result

    async def notify_blob_upload_status(self, correlation_id: str, is_success: bool,
                                        status_code: int, status_description: str) -> None:
        """As ``iotdev.IoTHubDeviceClient.notify_blob_upload_status``."""
        self._check_alive()
        from .._upload import check_notification, notify

        check_notification(correlation_id, is_success, status_code, status_description)
        config = self._config.upload_config()
        await self._run_http(lambda session: notify(config, session, correlation_id,
                                                    is_success, status_code,
                                                    status_description))

    async def upload_blob(self, blob_name: str, data: Any, *, content_type: str | None = None,
                          progress: Callable[[int, int | None], Any] | None = None) -> Any:
        """As ``iotdev.IoTHubDeviceClient.upload_blob``; ``progress`` may be a
        coroutine function.  Blocks are read from the file on the loop (a few
        milliseconds per 4 MiB block)."""
        from .._upload import upload

        config, source = self._upload_args(blob_name, data, content_type, progress)
        try:
            return await self._run_http(
                lambda session: upload(config, session, blob_name, source, content_type),
                progress)
        finally:
            source.close()

    async def receive_message(self) -> Message:
        """Deprecated (v2 2.3.0): the next cloud-to-device message."""
        deprecated("receive_message", "on_message_received")
        await self._want(lambda s: s.use_receive_api(hs.MESSAGES))
        message: Message = await self._take(self._inbox(hs.MESSAGES))
        return message


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _loop_running() -> bool:
    return _running_loop() is not None
