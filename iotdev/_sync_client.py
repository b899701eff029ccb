"""``IoTHubDeviceClient``: the azure-iot-device v2 device API on the thread
driver.  Handlers run on the driver's handler thread, in arrival order, never
on the I/O thread; twin responses are matched on the I/O thread, so a handler
may call ``get_twin()`` without deadlocking."""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from iotdev_mqtt import MessageReceived

from ._errors import (
    ClientError,
    ConnectionDroppedError,
    NoConnectionError,
    OperationCancelled,
    OperationTimeout,
)
from ._hubclient import (
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
from ._models import Message, MethodRequest, MethodResponse
from .transport._credentials import X509
from .transport._thread import Completion, ThreadDriver

if TYPE_CHECKING:
    from ._outbox_sender import ThreadSender

__all__ = ["IoTHubDeviceClient"]

_CLOSED = object()  # put in the inboxes at shutdown

log = logging.getLogger(__name__)

class IoTHubDeviceClient:
    """A synchronous IoT Hub device client (create it with a factory)."""

    def __init__(self, config: HubConfig) -> None:
        self._config = config
        self._features: set[str] = set()
        self._subscribed: set[str] = set()  # features subscribed on this connection
        self._subscribing: dict[str, Completion] = {}  # SUBSCRIBE in flight, by feature
        self._event_connected = False
        self._acked_at_drop: set[str] = set()
        self._handlers: dict[str, Callable[..., Any] | None] = {}
        self._inboxes: dict[str, queue.Queue[Any]] = {}
        self._mode: dict[str, str] = {}  # feature -> "handler" | "api"
        self._twin = TwinRequests()
        self._twin_waiters: dict[str, Completion] = {}
        self._lock = threading.Lock()
        self._last_desired_version: int | None = None
        self._shutdown = False
        self._http_sessions: set[Any] = set()  # HTTPSessions of calls in progress
        outbox = config.open_outbox()  # outbox_path: opened before the I/O thread starts
        self._driver = ThreadDriver(
            config.endpoint(), config.connect_options(),
            reconnect=config.reconnect_policy(),
            on_message=self._on_message, on_state=self._on_state,
            on_error=self._background, intercept=self._intercept,
            on_io_state=self._on_io_state, max_queued=config.max_queued_messages,
        )
        self._outbox: ThreadSender | None = None
        if outbox is not None:
            from ._outbox_sender import ThreadSender  # SQLite only for outbox users

            self._outbox = ThreadSender(outbox, self._driver, config, self._report_background)

    # ------------------------------------------------------------- factories

    @classmethod
    def create_from_connection_string(cls, connection_string: str,
                                      **kwargs: Any) -> IoTHubDeviceClient:
        """From ``HostName=...;DeviceId=...;SharedAccessKey=...`` (or ``x509=true``
        with ``x509=X509(...)``).  Keyword options as azure-iot-device."""
        return cls(config_from_connection_string(connection_string, **kwargs))

    @classmethod
    def create_from_sastoken(cls, sastoken: str, **kwargs: Any) -> IoTHubDeviceClient:
        """From a SAS token you renew (``on_new_sastoken_required`` /
        ``update_sastoken``)."""
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
        """Whether the client is connected.  Read from a handler (the handler
        thread), it is the state of the change being reported, so that
        ``on_connection_state_change`` sees each transition in order."""
        if threading.current_thread() is self._driver.handler_thread:
            return self._event_connected
        return self._driver.connected

    def _timeout(self, timeout: float | None) -> float:
        return self._config.operation_timeout if timeout is None else timeout

    def _check_alive(self) -> None:
        if self._shutdown:
            raise ClientError("the client has been shut down")

    def connect(self, *, timeout: float | None = None) -> None:
        """Connect to the hub (blocks until connected).

        Raises:
            ConnectionFailedError, CredentialError, OperationTimeout.
        """
        self._check_alive()
        self._wait(self._driver.connect(), timeout, "connect")

    def _ensure_connected(self) -> None:
        if self._driver.connected or self._driver.reconnecting:
            return  # while reconnecting, operations wait in the queue for the new connection
        if not self._config.auto_connect:
            raise NoConnectionError("not connected and auto_connect is False: call connect()")
        self.connect()

    def disconnect(self, *, timeout: float | None = None) -> None:
        """Disconnect; operations still pending end with ``OperationCancelled``."""
        self._check_alive()
        self._cancel_renewal()
        if self._outbox is not None:
            self._outbox.disconnecting()
        self._wait(self._driver.disconnect(), timeout, "disconnect")
        self._fail_twin(OperationCancelled("disconnect() was called"))

    def shutdown(self) -> None:
        """Disconnect and release every resource; later calls raise ``ClientError``."""
        if self._shutdown:
            return
        self._shutdown = True
        self._cancel_renewal()
        if self._outbox is not None:
            self._outbox.stop()
        self._driver.shutdown()
        if self._outbox is not None:  # after the I/O thread: every PUBACK seen is deleted
            self._outbox.close()
        self._fail_twin(OperationCancelled("shutdown() was called"))
        with self._lock:
            boxes = list(self._inboxes.values())
            sessions = list(self._http_sessions)
        for session in sessions:  # uploads in other threads end with OperationCancelled
            session.cancel("shutdown() was called")
        for box in boxes:  # wake receive_*() calls blocked without a timeout
            box.put(_CLOSED)

    # ------------------------------------------------------------ file upload

    def get_storage_info_for_blob(self, blob_name: str) -> dict[str, Any]:
        """Ask the hub where to upload a file (HTTPS; does not need or use the
        MQTT connection).

        Args:
            blob_name: the file's name; the hub prefixes it with the device id.

        Returns:
            The hub's answer: ``correlationId``, ``hostName``, ``containerName``,
            ``blobName``, ``sasToken``.

        Raises:
            ServiceError: the hub refused (``.status``, ``.code``; 429 after the
                retries is ``.throttled``).  ConnectionFailedError,
                ConnectionDroppedError: after the retries.  OperationTimeout: an
                exchange took over ``operation_timeout``.  OperationCancelled:
                ``shutdown()`` was called meanwhile.
        """
        self._check_alive()
        from ._upload import check_blob_name, storage_info

        check_blob_name(blob_name)
        config = self._config.upload_config()
        info: dict[str, Any] = self._run_http(
            lambda session: storage_info(config, session, blob_name))
        return info

    def notify_blob_upload_status(self, correlation_id: str, is_success: bool,
                                  status_code: int, status_description: str) -> None:
        """Tell the hub how an upload ended (always do, or the hub holds the slot
        until the SAS token expires).  Raises as ``get_storage_info_for_blob``."""
        self._check_alive()
        from ._upload import check_notification, notify

        check_notification(correlation_id, is_success, status_code, status_description)
        config = self._config.upload_config()
        self._run_http(lambda session: notify(config, session, correlation_id, is_success,
                                              status_code, status_description))

    def upload_blob(self, blob_name: str, data: Any, *, content_type: str | None = None,
                    progress: Callable[[int, int | None], Any] | None = None) -> Any:
        """Upload a file to the hub's storage and notify the hub (beyond v2).

        Args:
            blob_name: the file's name in storage (under the device id).
            data: ``bytes``, a path (``str`` or ``os.PathLike``), or a binary file
                object; large files are streamed in blocks (constant memory).
            content_type: the blob's content type (``application/octet-stream``).
            progress: ``progress(bytes_sent, total_or_None)``, called in this
                thread as the data goes out (a retried block is counted again).

        Returns:
            A ``BlobUploadResult`` (blob name, URL without the SAS, size, blocks,
            correlation id, storage status).

        Raises:
            TypeError, ValueError: bad arguments or an unreadable path.
            ServiceError, ConnectionFailedError, ConnectionDroppedError,
            OperationTimeout, OperationCancelled: as ``get_storage_info_for_blob``;
            when the upload itself failed the hub was notified with
            ``is_success=False`` first.
        """
        self._check_alive()
        from ._upload import check_blob_name, open_source, upload

        check_blob_name(blob_name)
        if content_type is not None and not isinstance(content_type, str):
            raise TypeError("content_type must be a str")
        if progress is not None and not callable(progress):
            raise TypeError("progress must be callable")
        source = open_source(data)
        config = self._config.upload_config()
        try:
            return self._run_http(
                lambda session: upload(config, session, blob_name, source, content_type),
                progress)
        finally:
            source.close()

    def _run_http(self, make: Callable[[Any], Any],
                  progress: Callable[[int, int | None], Any] | None = None) -> Any:
        from .transport._http import HTTPSession, run_sync

        session = HTTPSession()
        with self._lock:
            self._http_sessions.add(session)
        try:
            if self._shutdown:
                session.cancel("shutdown() was called")
            return run_sync(make(session), session, progress)
        finally:
            with self._lock:
                self._http_sessions.discard(session)

    def update_sastoken(self, sastoken: str) -> None:
        """Replace the SAS token (clients made with ``create_from_sastoken``);
        reconnects at once when connected."""
        self._check_alive()
        check_update_sastoken(self._config, sastoken)
        if self._driver.connected:
            self._wait(self._driver.reauthorize(), None, "reauthorize")
        self._schedule_renewal()

    def _wait(self, fut: Completion, timeout: float | None, what: str) -> Any:
        try:
            return fut.result(self._timeout(timeout))
        except TimeoutError:
            raise OperationTimeout(f"{what} did not complete within "
                                   f"{self._timeout(timeout):g} s") from None

    # ------------------------------------------------------------ telemetry

    def send_message(self, message: Any, *, timeout: float | None = None) -> None:
        """Send telemetry (QoS 1; returns on PUBACK).  Anything that is not a
        ``Message`` becomes one.  While the connection is down (and retry is
        on) the message waits in a bounded queue and is sent on reconnect.

        With ``outbox_path`` (store and forward): returns once the message is
        stored on disk, connected or not, without waiting for the PUBACK; the
        outbox sends it in order, at least once, across reconnections and
        restarts (``outbox_pending``, ``wait_outbox_drained``).  When not
        connected and ``auto_connect`` is on, a connection is started in the
        background (its failures go to ``on_background_exception``).
        ``timeout`` is then unused.

        Raises:
            ValueError: over 256 KB.  OperationTimeout, ConnectionDroppedError,
            OperationCancelled, NoConnectionError.  With an outbox only
            ``ClientError``: the outbox is full (``outbox_overflow="error"``) or
            the disk failed.
        """
        self._check_alive()
        topic, body = telemetry_publish(self._config, message)
        if self._outbox is not None:
            self._outbox.put(topic, body)  # durable from here on
            return
        self._ensure_connected()
        self._wait(self._driver.publish(topic, body, 1, False), timeout, "send_message")

    # ---------------------------------------------------------------- outbox

    @property
    def outbox_pending(self) -> int:
        """Messages in the outbox not yet acknowledged by the hub (those in
        flight included); 0 without an outbox."""
        return self._outbox.outbox.pending if self._outbox is not None else 0

    @property
    def outbox_dropped(self) -> int:
        """Messages ``outbox_overflow="drop_oldest"`` deleted unsent since this
        client was created; 0 without an outbox."""
        return self._outbox.outbox.dropped if self._outbox is not None else 0

    def wait_outbox_drained(self, *, timeout: float | None = None) -> None:
        """Wait until every message accepted by ``send_message`` before this
        call has left the outbox (acknowledged by the hub, or dropped by
        ``drop_oldest``).  Returns at once without an outbox.  When not
        connected, ``auto_connect`` starts a connection in the background as
        ``send_message`` does (with ``auto_connect=False`` call ``connect()``).

        Raises:
            OperationTimeout: ``timeout`` (default ``operation_timeout``) passed
                first; the messages stay in the outbox.
            OperationCancelled: the client was shut down meanwhile.
        """
        self._check_alive()
        if self._outbox is not None:
            self._outbox.wait_drained(self._timeout(timeout))

    def _report_background(self, exc: BaseException) -> None:
        """From the I/O thread: ``exc`` to ``on_background_exception`` (on the
        handler thread)."""
        self._driver.dispatch(lambda: self._background(exc))

    # --------------------------------------------------------------- methods

    def send_method_response(self, method_response: MethodResponse, *,
                             timeout: float | None = None) -> None:
        self._check_alive()
        topic, body = method_response_publish(method_response)
        self._ensure_connected()
        self._wait(self._driver.publish(topic, body, 1, False), timeout,
                   "send_method_response")

    def receive_method_request(self, method_name: str | None = None, block: bool = True,
                               timeout: float | None = None) -> MethodRequest | None:
        """Deprecated (v2): wait for a method request (of ``method_name``, or any)."""
        self._api_mode("methods")
        box = self._inbox(f"method:{method_name}" if method_name else "method:*")
        request: MethodRequest | None = self._take(box, block, timeout)
        return request

    # ------------------------------------------------------------------ C2D

    def receive_message(self, block: bool = True,
                        timeout: float | None = None) -> Message | None:
        """Deprecated (v2): wait for a cloud-to-device message."""
        self._api_mode("c2d")
        message: Message | None = self._take(self._inbox("c2d"), block, timeout)
        return message

    # ------------------------------------------------------------------ twin

    def get_twin(self, *, timeout: float | None = None) -> dict[str, Any]:
        """The twin's properties: ``{"desired": {...}, "reported": {...}}``.

        Raises:
            ServiceError: the hub answered with a status >= 300 (``.status``;
                429 means throttled).  OperationTimeout.
        """
        result: dict[str, Any] = self._twin_request("GET", None, timeout)
        return result

    def patch_twin_reported_properties(self, reported_properties_patch: dict[str, Any], *,
                                       timeout: float | None = None) -> None:
        if not isinstance(reported_properties_patch, dict):
            raise TypeError("the reported properties patch must be a dict")
        self._twin_request("PATCH", reported_properties_patch, timeout)

    def receive_twin_desired_properties_patch(self, block: bool = True,
                                              timeout: float | None = None) -> Any:
        """Deprecated (v2): wait for a desired-properties patch."""
        self._api_mode("twin_patches")
        return self._take(self._inbox("desired"), block, timeout)

    def _twin_request(self, kind: str, patch: Any, timeout: float | None) -> Any:
        self._check_alive()
        self._ensure_connected()
        self._enable("twin")
        rid, topic, body = self._twin.new(kind, patch)
        waiter = Completion()
        with self._lock:
            self._twin_waiters[rid] = waiter
        self._send_twin(rid, kind, topic, body, waiter)
        try:
            return self._wait(waiter, timeout, f"twin {kind}")
        finally:
            with self._lock:
                self._twin_waiters.pop(rid, None)
                self._twin.pending.pop(rid, None)

    def _send_twin(self, rid: str, kind: str, topic: str, body: bytes,
                   waiter: Completion) -> None:
        """Publish a twin request; remember whether the hub acknowledged it,
        which decides what a reconnect does with it (see ``_on_state``)."""
        sent = self._driver.publish(topic, body, 1, False)
        with self._lock:
            self._twin.pending[rid] = (topic, body, (kind, sent))

        def failed(done: Completion) -> None:
            error = done.exception(0)
            if error is not None:  # not retried: the request cannot be answered
                waiter.set_exception(error)

        sent.add_done_callback(failed)

    def _on_io_state(self, connected: bool) -> None:
        """I/O thread, at the drop itself: note which twin requests the hub had
        acknowledged (decides what the reconnect does with each)."""
        if connected:
            if self._outbox is not None:
                self._outbox.connected()  # pending rows (this run's or a previous one's) leave
            return
        with self._lock:
            self._acked_at_drop = {
                rid for rid, (_, _, state) in self._twin.pending.items()
                if state is not None and state[1].done() and state[1].exception(0) is None
            }

    def _intercept(self, message: MessageReceived) -> bool:
        """I/O thread: twin responses resolve their callers here."""
        parsed = TwinRequests.parse_response(message)
        if parsed is None:
            return False
        status, rid, _ = parsed
        with self._lock:
            waiter = self._twin_waiters.get(rid)
        if waiter is not None:
            try:
                waiter.set_result(TwinRequests.outcome(status, message.payload))
            except Exception as exc:
                waiter.set_exception(exc)
        return True

    def _fail_twin(self, error: BaseException) -> None:
        with self._lock:
            waiters = list(self._twin_waiters.values())
        for waiter in waiters:
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
                self._enable(feature)
            elif feature and handler is None and self._mode.get(feature) == "handler":
                self._mode.pop(feature, None)

        return property(getter, setter)

    on_message_received = _handler_property("c2d", "on_message_received")
    on_method_request_received = _handler_property("methods", "on_method_request_received")
    on_twin_desired_properties_patch_received = _handler_property(
        "twin_patches", "on_twin_desired_properties_patch_received")
    on_connection_state_change = _handler_property("", "on_connection_state_change")
    on_new_sastoken_required = _handler_property("", "on_new_sastoken_required")
    on_background_exception = _handler_property("", "on_background_exception")
    del _handler_property

    def _api_mode(self, feature: str) -> None:
        self._check_alive()
        if self._mode.get(feature) == "handler":
            raise ClientError("cannot use the receive API: a handler is set for this feature "
                              "(v2's receive-mode lock)")
        self._mode[feature] = "api"
        self._enable(feature)

    def _inbox(self, name: str) -> queue.Queue[Any]:
        with self._lock:
            box = self._inboxes.get(name)
            if box is None:
                box = self._inboxes[name] = queue.Queue()
                if self._shutdown:  # created after shutdown() woke the others
                    box.put(_CLOSED)
            return box

    def _take(self, box: queue.Queue[Any], block: bool, timeout: float | None) -> Any:
        try:
            item = box.get(block, timeout)
        except queue.Empty:
            return None
        if item is _CLOSED:
            box.put(_CLOSED)  # wake the next waiter too
            raise OperationCancelled("the client was shut down")
        return item

    def _enable(self, feature: str) -> None:
        """Turn a feature on: subscribe to its topic now (connecting first when
        auto_connect allows) and after every reconnect.  Returns once the
        SUBSCRIBE is acknowledged, as v2's setters do."""
        wanted = {feature, "twin"} if feature == "twin_patches" else {feature}
        with self._lock:
            self._features.update(wanted)
        if (not self._driver.connected and not self._driver.reconnecting
                and self._config.auto_connect and not self._shutdown):
            self.connect()
        if self._driver.connected:
            self._subscribe(wanted)

    def _subscribe(self, features: set[str]) -> None:
        """Make sure ``features`` are subscribed on this connection: send one
        SUBSCRIBE for those nobody has asked for yet, and wait for it and for
        any SUBSCRIBE already in flight for the others."""
        with self._lock:
            waiting = [self._subscribing[f] for f in features
                       if f in self._subscribing and f not in self._subscribed]
            todo = sorted(f for f in features
                          if f not in self._subscribed and f not in self._subscribing)
            mine = Completion() if todo else None
            for f in todo:
                self._subscribing[f] = mine  # type: ignore[assignment]
        if mine is not None:
            subs = [(feature_filter(f, self._config), 1) for f in todo]
            try:
                self._wait(self._driver.subscribe(subs), None, "subscribe")
            except Exception as exc:
                with self._lock:
                    for f in todo:
                        self._subscribing.pop(f, None)
                mine.set_exception(exc)
                self._background(exc)
            else:
                with self._lock:
                    for f in todo:
                        self._subscribing.pop(f, None)
                        self._subscribed.add(f)
                mine.set_result(None)
        for other in waiting:
            try:
                self._wait(other, None, "subscribe")
            except Exception:
                pass  # reported by the thread that sent it

    # ---------------------------------------------------- events (handler thread)

    def _on_message(self, message: MessageReceived) -> None:
        try:
            parsed = parse_incoming(self._config, message)
        except (ValueError, RecursionError) as exc:  # a body that is not JSON, or nested
            # deeper than json can parse (a hostile hub)
            self._background(exc)
            return
        if parsed.kind == "c2d":
            self._deliver("c2d", "on_message_received", "c2d", parsed.value)
        elif parsed.kind == "method":
            request: MethodRequest = parsed.value
            if self._mode.get("methods") == "api":
                named = self._inboxes.get(f"method:{request.name}")
                (named or self._inbox("method:*")).put(request)
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
            self._inbox(inbox).put(value)
        else:
            self._call(handler, value)

    def _call(self, name: str, *args: Any) -> None:
        handler = self._handlers.get(name)
        if handler is None:
            return
        try:
            handler(*args)
        except Exception as exc:
            log.exception("%s raised", name)
            self._background(exc)

    def _background(self, exc: BaseException) -> None:
        handler = self._handlers.get("on_background_exception")
        if handler is not None:
            try:
                handler(exc)
            except Exception:
                log.exception("on_background_exception raised")

    def _on_state(self, connected: bool, reason: str | None) -> None:
        self._event_connected = connected
        if not connected:
            with self._lock:
                self._subscribed.clear()
                self._subscribing.clear()
        self._call("on_connection_state_change")
        if not connected:
            return
        self._schedule_renewal()
        with self._lock:
            features = set(self._features)
        if features:
            self._subscribe(features)
        self._recover_twin_requests()
        if self._config.ensure_desired_properties and "twin_patches" in self._features:
            self._refresh_desired()

    def _recover_twin_requests(self) -> None:
        """After a reconnect: a twin request the hub never acknowledged is
        re-sent by the MQTT session itself (DUP).  One it acknowledged but did
        not answer before the drop: a GET is sent again; a PATCH fails with
        ``ConnectionDroppedError`` (it may have been applied: sending it twice
        could apply it twice)."""
        with self._lock:
            pending = list(self._twin.pending.items())
            acked, self._acked_at_drop = self._acked_at_drop, set()
        for rid, (topic, body, state) in pending:
            if state is None or rid not in acked:
                continue
            kind, _ = state
            with self._lock:
                waiter = self._twin_waiters.get(rid)
            if waiter is None or waiter.done():
                continue
            if kind == "GET":
                self._send_twin(rid, kind, topic, body, waiter)
            else:
                waiter.set_exception(ConnectionDroppedError(
                    "the connection dropped after the hub received the reported "
                    "properties patch and before it answered; it may have been applied"))

    def _refresh_desired(self) -> None:
        """After (re)connecting: deliver the desired document if its version
        moved past the last one delivered (v2's ensure_desired_properties).
        The GET's answer arrives on the I/O thread and is handed to the
        handler thread, so no extra thread is needed."""
        self._subscribe({"twin"})  # the answer needs $iothub/twin/res/# (v2 forgets it)
        rid, topic, body = self._twin.new("GET")
        waiter = Completion()
        with self._lock:
            self._twin_waiters[rid] = waiter

        def answered(done: Completion) -> None:
            with self._lock:
                self._twin_waiters.pop(rid, None)
                self._twin.pending.pop(rid, None)
            self._driver.dispatch(lambda: self._apply_desired(done))

        waiter.add_done_callback(answered)
        self._send_twin(rid, "GET", topic, body, waiter)

    def _apply_desired(self, done: Completion) -> None:
        error = done.exception(0)
        if error is not None:
            self._background(error)
            return
        twin = done.result(0)
        desired = twin.get("desired", {}) if isinstance(twin, dict) else {}
        version = desired.get("$version")
        if version != self._last_desired_version:
            self._last_desired_version = version
            self._deliver("twin_patches", "on_twin_desired_properties_patch_received",
                          "desired", desired)

    # ------------------------------------------------------------ SAS renewal

    def _schedule_renewal(self) -> None:
        """Renew (own key) or ask for a token 120 s before the current one
        expires; the timer lives in the I/O thread (no thread of its own)."""
        expiry = self._config.token_expiry
        if expiry is None or self._shutdown:
            return
        delay = max(1.0, expiry - RENEW_MARGIN - time.time())
        self._driver.set_timer("sas-renewal", time.monotonic() + delay, self._renew)

    def _cancel_renewal(self) -> None:
        try:
            self._driver.set_timer("sas-renewal", None, self._renew)
        except ClientError:
            pass  # the driver is already shut down

    def _renew(self) -> None:
        """I/O thread: reconnect with a fresh token, or ask the application."""
        if self._shutdown:
            return
        if self._config.symmetric_key is not None:
            self._driver.reauthorize()  # a fresh token is generated for the new CONNECT
        else:
            self._driver.dispatch(lambda: self._call("on_new_sastoken_required"))
