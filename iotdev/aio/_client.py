"""``iotdev.aio.IoTHubDeviceClient``: the azure-iot-device v2 asyncio device
API on the asyncio driver (no threads).  Handlers may be plain functions or
coroutine functions; they run on the caller's event loop."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any

from iotdev_mqtt import MessageReceived

from .._compat import async_timeout
from .._errors import (
    ClientError,
    ConnectionDroppedError,
    NoConnectionError,
    OperationCancelled,
    OperationTimeout,
)
from .._hubclient import (
    RENEW_MARGIN,
    HubConfig,
    TwinRequests,
    build_config,
    check_update_sastoken,
    config_from_connection_string,
    config_from_sastoken,
    feature_filter,
    method_response_publish,
    parse_incoming,
    telemetry_publish,
)
from .._models import Message, MethodRequest, MethodResponse
from ..transport._asyncio import AsyncDriver
from ..transport._credentials import X509

if TYPE_CHECKING:
    from .._outbox_sender import AsyncSender

__all__ = ["IoTHubDeviceClient"]

_CLOSED = object()  # put in the inboxes at shutdown

log = logging.getLogger(__name__)

# Back-pressure: while this many coroutine handlers are still running, the
# client stops reading from the hub (and resumes at a quarter of it), so a
# flood of messages at a handler that falls behind cannot grow memory without
# bound (each waiting task holds its message).
MAX_HANDLER_TASKS = 256


class IoTHubDeviceClient:
    """An asyncio IoT Hub device client (create it with a factory)."""

    def __init__(self, config: HubConfig) -> None:
        self._config = config
        self._features: set[str] = set()
        self._subscribed: set[str] = set()  # features subscribed on this connection
        self._subscribing: dict[str, asyncio.Future[None]] = {}
        self._acked_at_drop: set[str] = set()
        self._handlers: dict[str, Callable[..., Any] | None] = {}
        self._inboxes: dict[str, asyncio.Queue[Any]] = {}
        self._mode: dict[str, str] = {}
        self._twin = TwinRequests()
        self._twin_waiters: dict[str, asyncio.Future[Any]] = {}
        self._last_desired_version: int | None = None
        self._shutdown = False
        self._http_sessions: set[Any] = set()  # HTTPSessions of calls in progress
        self._renew_handle: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._handler_tasks = 0  # coroutine handlers still running (back-pressure)
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

    # ------------------------------------------------------------- factories

    @classmethod
    def create_from_connection_string(cls, connection_string: str,
                                      **kwargs: Any) -> IoTHubDeviceClient:
        return cls(config_from_connection_string(connection_string, **kwargs))

    @classmethod
    def create_from_sastoken(cls, sastoken: str, **kwargs: Any) -> IoTHubDeviceClient:
        return cls(config_from_sastoken(sastoken, **kwargs))

    @classmethod
    def create_from_symmetric_key(cls, symmetric_key: str, hostname: str, device_id: str,
                                  **kwargs: Any) -> IoTHubDeviceClient:
        return cls(build_config(hostname=hostname, device_id=device_id,
                                symmetric_key=symmetric_key, **kwargs))

    @classmethod
    def create_from_x509_certificate(cls, x509: X509, hostname: str, device_id: str,
                                     **kwargs: Any) -> IoTHubDeviceClient:
        if not isinstance(x509, X509):
            raise TypeError("x509 must be an iotdev.X509")
        return cls(build_config(hostname=hostname, device_id=device_id, x509=x509, **kwargs))

    # ------------------------------------------------------------ connection

    @property
    def connected(self) -> bool:
        return self._driver.connected

    def _check_alive(self) -> None:
        if self._shutdown:
            raise ClientError("the client has been shut down")

    async def _bounded(self, awaitable: Any, timeout: float | None, what: str) -> Any:
        limit = self._config.operation_timeout if timeout is None else timeout
        try:
            async with async_timeout(limit):
                return await awaitable
        except TimeoutError:
            raise OperationTimeout(f"{what} did not complete within {limit:g} s") from None

    async def connect(self, *, timeout: float | None = None) -> None:
        self._check_alive()
        await self._bounded(self._driver.connect(), timeout, "connect")

    async def _ensure_connected(self) -> None:
        if self._driver.connected or self._driver.reconnecting:
            return  # while reconnecting, operations wait in the queue
        if not self._config.auto_connect:
            raise NoConnectionError("not connected and auto_connect is False: call connect()")
        await self.connect()

    async def disconnect(self) -> None:
        self._check_alive()
        self._cancel_renewal()
        if self._outbox is not None:
            self._outbox.disconnecting()
        await self._driver.disconnect()
        self._fail_twin(OperationCancelled("disconnect() was called"))

    async def shutdown(self) -> None:
        if self._shutdown:
            return
        self._shutdown = True
        self._cancel_renewal()
        if self._outbox is not None:
            self._outbox.disconnecting()
        await self._driver.shutdown()
        if self._outbox is not None:
            self._outbox.close()
        self._fail_twin(OperationCancelled("shutdown() was called"))
        for box in self._inboxes.values():  # wake receive_*() calls
            box.put_nowait(_CLOSED)
        for session in list(self._http_sessions):  # uploads end with OperationCancelled
            session.cancel("shutdown() was called")
        for task in list(self._tasks):
            task.cancel()

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
        self._check_alive()
        from .._upload import check_blob_name, open_source, upload

        check_blob_name(blob_name)
        if content_type is not None and not isinstance(content_type, str):
            raise TypeError("content_type must be a str")
        if progress is not None and not callable(progress):
            raise TypeError("progress must be callable")
        source = open_source(data)
        config = self._config.upload_config()
        try:
            return await self._run_http(
                lambda session: upload(config, session, blob_name, source, content_type),
                progress)
        finally:
            source.close()

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
        self._check_alive()
        check_update_sastoken(self._config, sastoken)
        if self._driver.connected:
            await self._driver.reauthorize()
        self._schedule_renewal()

    # ------------------------------------------------------------ operations

    async def send_message(self, message: Any, *, timeout: float | None = None) -> None:
        """Send telemetry (QoS 1; returns on PUBACK).  See the sync client.

        With ``outbox_path``: returns once the message is stored on disk (one
        SQLite transaction with an fsync, on the loop), without waiting for
        the PUBACK; see ``iotdev.IoTHubDeviceClient.send_message``."""
        self._check_alive()
        topic, body = telemetry_publish(self._config, message)
        if self._outbox is not None:
            self._outbox.put(topic, body)  # durable from here on
            await asyncio.sleep(0)  # let the sender run: a tight send loop must not starve it
            return
        await self._ensure_connected()
        await self._bounded(self._driver.publish(topic, body, 1, False), timeout,
                            "send_message")

    # ---------------------------------------------------------------- outbox

    @property
    def outbox_pending(self) -> int:
        """As ``iotdev.IoTHubDeviceClient.outbox_pending``."""
        return self._outbox.outbox.pending if self._outbox is not None else 0

    @property
    def outbox_dropped(self) -> int:
        """As ``iotdev.IoTHubDeviceClient.outbox_dropped``."""
        return self._outbox.outbox.dropped if self._outbox is not None else 0

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
        self._check_alive()
        topic, body = method_response_publish(method_response)
        await self._ensure_connected()
        await self._bounded(self._driver.publish(topic, body, 1, False), timeout,
                            "send_method_response")

    async def receive_message(self) -> Message:
        """Deprecated (v2): the next cloud-to-device message."""
        await self._api_mode("c2d")
        message: Message = await self._take(self._inbox("c2d"))
        return message

    async def receive_method_request(self, method_name: str | None = None) -> MethodRequest:
        """Deprecated (v2): the next method request (of ``method_name``, or any)."""
        await self._api_mode("methods")
        box = self._inbox(f"method:{method_name}" if method_name else "method:*")
        request: MethodRequest = await self._take(box)
        return request

    async def receive_twin_desired_properties_patch(self) -> Any:
        await self._api_mode("twin_patches")
        return await self._take(self._inbox("desired"))

    async def _take(self, box: asyncio.Queue[Any]) -> Any:
        item = await box.get()
        if item is _CLOSED:
            box.put_nowait(_CLOSED)
            raise OperationCancelled("the client was shut down")
        return item

    async def get_twin(self, *, timeout: float | None = None) -> dict[str, Any]:
        result: dict[str, Any] = await self._twin_request("GET", None, timeout)
        return result

    async def patch_twin_reported_properties(self, reported_properties_patch: dict[str, Any],
                                             *, timeout: float | None = None) -> None:
        if not isinstance(reported_properties_patch, dict):
            raise TypeError("the reported properties patch must be a dict")
        await self._twin_request("PATCH", reported_properties_patch, timeout)

    async def _twin_request(self, kind: str, patch: Any, timeout: float | None) -> Any:
        self._check_alive()
        await self._ensure_connected()
        await self._enable("twin")
        rid, topic, body = self._twin.new(kind, patch)
        waiter: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._twin_waiters[rid] = waiter
        self._send_twin(rid, kind, topic, body, waiter)
        try:
            return await self._bounded(waiter, timeout, f"twin {kind}")
        finally:
            self._twin_waiters.pop(rid, None)
            self._twin.pending.pop(rid, None)

    def _send_twin(self, rid: str, kind: str, topic: str, body: bytes,
                   waiter: asyncio.Future[Any]) -> None:
        sent = self._driver.publish(topic, body, 1, False)
        self._twin.pending[rid] = (topic, body, (kind, sent))

        def failed(done: asyncio.Future[None]) -> None:
            if done.cancelled():
                return
            error = done.exception()
            if error is not None and not waiter.done():
                waiter.set_exception(error)

        sent.add_done_callback(failed)

    def _recover_twin_requests(self) -> None:
        """As the sync client: unacknowledged requests are re-sent by the
        session; an acknowledged GET is sent again; an acknowledged PATCH fails
        (it may have been applied)."""
        acked, self._acked_at_drop = self._acked_at_drop, set()
        for rid, (topic, body, state) in list(self._twin.pending.items()):
            if state is None or rid not in acked:
                continue
            kind, _ = state
            waiter = self._twin_waiters.get(rid)
            if waiter is None or waiter.done():
                continue
            if kind == "GET":
                self._send_twin(rid, kind, topic, body, waiter)
            else:
                waiter.set_exception(ConnectionDroppedError(
                    "the connection dropped after the hub received the reported "
                    "properties patch and before it answered; it may have been applied"))

    def _fail_twin(self, error: BaseException) -> None:
        for waiter in list(self._twin_waiters.values()):
            if not waiter.done():
                waiter.set_exception(error)

    # -------------------------------------------------------------- handlers

    def _handler_property(feature: str, key: str) -> Any:  # type: ignore[misc]
        def getter(self: IoTHubDeviceClient) -> Callable[..., Any] | None:
            return self._handlers.get(key)

        def setter(self: IoTHubDeviceClient, handler: Callable[..., Any] | None) -> None:
            self._check_alive()
            if handler is not None and not callable(handler):
                raise TypeError(f"{key} must be callable or None")
            if feature and handler is not None:
                if self._mode.get(feature) == "api":
                    raise ClientError(f"cannot set {key}: the client is in receive-API mode "
                                      "for this feature (v2's receive-mode lock)")
                self._mode[feature] = "handler"
            self._handlers[key] = handler
            if feature and handler is not None:
                if self._driver.connected and _loop_running():
                    # SUBSCRIBE written before the setter returns (v2's setter
                    # even waits for the SUBACK, which a coroutine-free setter
                    # on the loop's own thread cannot do).
                    wanted = {feature, "twin"} if feature == "twin_patches" else {feature}
                    self._features.update(wanted)
                    self._spawn(self._start_subscribe(wanted))
                else:
                    self._spawn(self._enable(feature))

        return property(getter, setter)

    on_message_received = _handler_property("c2d", "on_message_received")
    on_method_request_received = _handler_property("methods", "on_method_request_received")
    on_twin_desired_properties_patch_received = _handler_property(
        "twin_patches", "on_twin_desired_properties_patch_received")
    on_connection_state_change = _handler_property("", "on_connection_state_change")
    on_new_sastoken_required = _handler_property("", "on_new_sastoken_required")
    on_background_exception = _handler_property("", "on_background_exception")
    del _handler_property

    def _spawn(self, coro: Any) -> None:
        try:
            task = asyncio.get_running_loop().create_task(coro)
        except RuntimeError:  # no loop yet: subscribed on connect
            coro.close()
            return
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self._background(task.exception())  # type: ignore[arg-type]

    async def _api_mode(self, feature: str) -> None:
        self._check_alive()
        if self._mode.get(feature) == "handler":
            raise ClientError("cannot use the receive API: a handler is set for this feature "
                              "(v2's receive-mode lock)")
        self._mode[feature] = "api"
        await self._enable(feature)

    def _inbox(self, name: str) -> asyncio.Queue[Any]:
        box = self._inboxes.get(name)
        if box is None:
            box = self._inboxes[name] = asyncio.Queue()
            if self._shutdown:  # created after shutdown() woke the others
                box.put_nowait(_CLOSED)
        return box

    async def _enable(self, feature: str) -> None:
        wanted = {feature, "twin"} if feature == "twin_patches" else {feature}
        self._features.update(wanted)
        if (not self._driver.connected and not self._driver.reconnecting
                and self._config.auto_connect and not self._shutdown):
            await self.connect()
        if self._driver.connected:
            await self._subscribe(wanted)

    async def _subscribe(self, features: set[str]) -> None:
        """As the sync client: one SUBSCRIBE for the features nobody asked for
        yet; wait for it and for those already in flight."""
        await self._start_subscribe(features)

    def _start_subscribe(self, features: set[str]) -> Coroutine[Any, Any, None]:
        """Write the SUBSCRIBE for the features nobody asked for yet *now*
        (synchronously, so a handler setter has it on the wire before it
        returns) and return the coroutine that waits for it and for those
        already in flight."""
        waiting = [self._subscribing[f] for f in features
                   if f in self._subscribing and f not in self._subscribed]
        todo = sorted(f for f in features
                      if f not in self._subscribed and f not in self._subscribing)
        mine: asyncio.Future[None] | None = None
        sent: asyncio.Future[Any] | BaseException | None = None
        if todo:
            mine = asyncio.get_running_loop().create_future()
            _quiet(mine)
            for f in todo:
                self._subscribing[f] = mine
            try:
                sent = self._driver.subscribe_nowait(
                    [(feature_filter(f, self._config), 1) for f in todo])
            except Exception as exc:
                sent = exc
        return self._finish_subscribe(todo, mine, sent, waiting)

    async def _finish_subscribe(self, todo: list[str], mine: asyncio.Future[None] | None,
                                sent: asyncio.Future[Any] | BaseException | None,
                                waiting: list[asyncio.Future[None]]) -> None:
        if mine is not None:
            ok = False
            try:
                if isinstance(sent, BaseException):
                    raise sent
                await self._bounded(sent, None, "subscribe")
                ok = True
            except Exception as exc:
                self._background(exc)
            finally:
                for f in todo:
                    self._subscribing.pop(f, None)
                    if ok:
                        self._subscribed.add(f)
                if not mine.done():
                    mine.set_result(None)
        for other in waiting:
            await asyncio.shield(other)

    # ------------------------------------------------------------------ events

    def _on_message(self, message: MessageReceived) -> None:
        parsed_twin = TwinRequests.parse_response(message)
        if parsed_twin is not None:
            status, rid, _ = parsed_twin
            waiter = self._twin_waiters.get(rid)
            if waiter is not None and not waiter.done():
                try:
                    waiter.set_result(TwinRequests.outcome(status, message.payload))
                except Exception as exc:
                    waiter.set_exception(exc)
            return
        try:
            parsed = parse_incoming(self._config, message)
        except (ValueError, RecursionError) as exc:  # not JSON, or nested too deep
            self._background(exc)
            return
        if parsed.kind == "c2d":
            self._deliver("c2d", "on_message_received", "c2d", parsed.value)
        elif parsed.kind == "method":
            request: MethodRequest = parsed.value
            if self._mode.get("methods") == "api":
                named = self._inboxes.get(f"method:{request.name}")
                (named or self._inbox("method:*")).put_nowait(request)
            else:
                self._call("on_method_request_received", request)
        elif parsed.kind == "desired":
            patch = parsed.value
            if isinstance(patch, dict) and isinstance(patch.get("$version"), int):
                self._last_desired_version = patch["$version"]
            self._deliver("twin_patches", "on_twin_desired_properties_patch_received",
                          "desired", patch)

    def _deliver(self, feature: str, handler: str, inbox: str, value: Any) -> None:
        if self._mode.get(feature) == "api":
            self._inbox(inbox).put_nowait(value)
        else:
            self._call(handler, value)

    def _call(self, name: str, *args: Any) -> None:
        handler = self._handlers.get(name)
        if handler is None:
            return
        try:
            result = handler(*args)
        except Exception as exc:
            log.exception("%s raised", name)
            self._background(exc)
            return
        if inspect.isawaitable(result):
            self._handler_tasks += 1
            if self._handler_tasks >= MAX_HANDLER_TASKS:
                self._driver.pause_reading(True)
            self._spawn(self._handler_done(result))

    async def _handler_done(self, running: Any) -> None:
        """Await a coroutine handler, then count it out (see MAX_HANDLER_TASKS)."""
        try:
            await running
        finally:
            self._handler_tasks -= 1
            if self._handler_tasks == MAX_HANDLER_TASKS // 4:
                self._driver.pause_reading(False)

    def _background(self, exc: BaseException) -> None:
        handler = self._handlers.get("on_background_exception")
        if handler is not None:
            try:
                result = handler(exc)
                if inspect.isawaitable(result):
                    self._spawn(result)
            except Exception:
                log.exception("on_background_exception raised")

    def _on_state(self, connected: bool, reason: str | None) -> None:
        if not connected:
            self._subscribed.clear()
            self._subscribing.clear()
            self._acked_at_drop = {
                rid for rid, (_, _, state) in self._twin.pending.items()
                if state is not None and state[1].done() and not state[1].cancelled()
                and state[1].exception() is None
            }
        self._call("on_connection_state_change")
        if connected:
            if self._outbox is not None:
                self._outbox.connected()  # pending rows (this run's or a previous one's) leave
            self._spawn(self._after_connect())

    async def _after_connect(self) -> None:
        self._schedule_renewal()
        if self._features:
            await self._subscribe(set(self._features))
        self._recover_twin_requests()
        if self._config.ensure_desired_properties and "twin_patches" in self._features:
            try:
                await self._subscribe({"twin"})
                twin = await self.get_twin()
            except Exception as exc:
                self._background(exc)
                return
            desired = twin.get("desired", {}) if isinstance(twin, dict) else {}
            version = desired.get("$version")
            if version != self._last_desired_version:
                self._last_desired_version = version
                self._deliver("twin_patches", "on_twin_desired_properties_patch_received",
                              "desired", desired)

    # ------------------------------------------------------------ SAS renewal

    def _schedule_renewal(self) -> None:
        self._cancel_renewal()
        expiry = self._config.token_expiry
        if expiry is None or self._shutdown:
            return
        delay = max(1.0, expiry - RENEW_MARGIN - time.time())
        self._renew_handle = asyncio.get_running_loop().call_later(delay, self._renew)

    def _cancel_renewal(self) -> None:
        if self._renew_handle is not None:
            self._renew_handle.cancel()
            self._renew_handle = None

    def _renew(self) -> None:
        if self._shutdown:
            return
        if self._config.symmetric_key is not None:
            self._spawn(self._driver.reauthorize())
        else:
            self._call("on_new_sastoken_required")


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


def _quiet(fut: asyncio.Future[Any]) -> None:
    """Retrieve a future's exception so that asyncio does not log it."""
    fut.add_done_callback(lambda f: f.cancelled() or f.exception())
