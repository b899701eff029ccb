"""``IoTHubDeviceClient``: the azure-iot-device v2 device API on the thread
driver: a thin face over the sans-IO ``hs.HubSession`` (``_session.py``), which
decides everything about the hub; this face waits, delivers and translates.

Threads: the driver's I/O thread feeds the session its facts (connection
changes, acknowledgements, twin answers) so that nothing waits for a busy
handler; user handlers run on the driver's handler thread, in arrival order,
never on the I/O thread and never under the face's one lock, which guards the
session, the waiters and the inboxes.  A handler may call any API (``get_twin``
included) without deadlocking."""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from iotdev_mqtt import MessageReceived

from . import _session as hs
from ._errors import ClientError, NoConnectionError, OperationCancelled, OperationTimeout
from ._face import CLOSED, ClientFace, DeviceFactories, deprecated
from ._hubclient import HubConfig, check_update_sastoken
from ._models import Message, MethodRequest, MethodResponse
from .transport._thread import Completion, ThreadDriver

if TYPE_CHECKING:
    from ._outbox_sender import ThreadSender

__all__ = ["HubClient", "IoTHubDeviceClient"]


class HubClient(ClientFace):
    """What the synchronous device and module clients share (the v2 API less
    the factories and the methods of one kind)."""

    def __init__(self, config: HubConfig) -> None:
        self._config = config
        self._session: hs.HubSession = config.new_session()
        self._lock = threading.Lock()  # the session, the waiters, the inboxes
        self._handlers: dict[str, Callable[..., Any] | None] = {}
        self._inboxes: dict[str, queue.Queue[Any]] = {}
        self._inbox_type, self._inbox_guard = queue.Queue, self._lock
        self._twin_waiters: dict[str, Completion] = {}
        self._sub_waiters: dict[int, Completion] = {}
        self._session_up = Completion()  # resolved once the session heard of CONNACK
        self._armed: float | None = None  # the renewal deadline the driver's timer has
        self._event_connected = False
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

    def connect(self, *, timeout: float | None = None) -> None:
        """Connect to the hub (blocks until connected).

        Raises:
            ConnectionFailedError, CredentialError, OperationTimeout.
        """
        self._check_alive()
        self._wait(self._driver.connect(), timeout, "connect")
        with self._lock:
            up = self._session_up
        if self._driver.connected:  # the I/O thread tells the session right after CONNACK
            self._wait(up, timeout, "connect")

    def _ensure_connected(self) -> None:
        if self._driver.connected or self._driver.reconnecting:
            return  # while reconnecting, operations wait for the new connection
        if not self._config.auto_connect:
            raise NoConnectionError("not connected and auto_connect is False: call connect()")
        self.connect()

    def disconnect(self, *, timeout: float | None = None) -> None:
        """Disconnect; operations still pending end with ``OperationCancelled``."""
        self._disconnecting()
        self._wait(self._driver.disconnect(), timeout, "disconnect")

    def shutdown(self) -> None:
        """Disconnect and release every resource; later calls raise ``ClientError``."""
        if not self._shutting_down():
            return
        if self._outbox is not None:
            self._outbox.stop()
        self._driver.shutdown()
        if self._outbox is not None:  # after the I/O thread: every PUBACK seen is deleted
            self._outbox.close()
        with self._lock:
            boxes = list(self._inboxes.values())
            sessions = list(self._http_sessions)
            waiters = [*self._sub_waiters.values(), self._session_up]
        for session in sessions:  # uploads in other threads end with OperationCancelled
            session.cancel("shutdown() was called")
        for box in boxes:  # wake receive_*() calls blocked without a timeout
            box.put(CLOSED)
        for waiter in waiters:
            waiter.set_exception(OperationCancelled("shutdown() was called"))

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
        """Replace the SAS token (clients made with ``create_from_sastoken``) and
        reauthorize: reconnect at once when connected, connect when not (v2).

        Raises:
            ValueError: the token is malformed, expired or for another identity
                (the current one stays).  ClientError: the client was not made
                from a SAS token.  ConnectionFailedError, CredentialError,
                OperationTimeout: as ``connect``.
        """
        self._check_alive()
        expiry = check_update_sastoken(self._config, sastoken)
        self._feed(lambda s: s.token_updated(time.time(), expiry))
        if self._driver.connected:
            with self._lock:
                self._session.reauthorizing()
            self._wait(self._driver.reauthorize(), None, "reauthorize")
        else:
            self.connect()

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
        publish = self._session.telemetry(message)
        if self._outbox is not None:
            self._outbox.put(publish.topic, publish.payload)  # durable from here on
            return
        self._send(publish, timeout, "send_message")

    def _send(self, publish: hs.Publish, timeout: float | None, what: str) -> None:
        self._ensure_connected()
        self._wait(self._driver.publish(publish.topic, publish.payload, 1, False), timeout, what)

    # ---------------------------------------------------------------- outbox

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

    # ------------------------------------------------- methods, C2D, twin

    def send_method_response(self, method_response: MethodResponse, *,
                             timeout: float | None = None) -> None:
        self._check_alive()
        self._send(hs.HubSession.method_response(method_response), timeout,
                   "send_method_response")

    def receive_method_request(self, method_name: str | None = None, block: bool = True,
                               timeout: float | None = None) -> MethodRequest | None:
        """Deprecated (v2 2.3.0): wait for a method request (of ``method_name``,
        or any)."""
        deprecated("receive_method_request", "on_method_request_received")
        self._want(lambda s: s.use_receive_api(hs.METHODS))
        box = self._inbox(f"method:{method_name}" if method_name else "method:*")
        request: MethodRequest | None = self._take(box, block, timeout)
        return request

    def receive_twin_desired_properties_patch(self, block: bool = True,
                                              timeout: float | None = None) -> Any:
        """Deprecated (v2 2.3.0): wait for a desired-properties patch."""
        deprecated("receive_twin_desired_properties_patch",
                   "on_twin_desired_properties_patch_received")
        self._want(lambda s: s.use_receive_api(hs.DESIRED))
        return self._take(self._inbox(hs.DESIRED), block, timeout)

    def get_twin(self, *, timeout: float | None = None) -> dict[str, Any]:
        """The twin's properties: ``{"desired": {...}, "reported": {...}}``.

        Raises:
            ServiceError: (a ``ClientError``) the hub answered with a status
                >= 300 (``.status``; 429 means throttled).  OperationTimeout.
                ConnectionDroppedError: the connection was lost for good.
        """
        result: dict[str, Any] = self._twin_request("GET", None, timeout)
        return result

    def patch_twin_reported_properties(self, reported_properties_patch: dict[str, Any], *,
                                       timeout: float | None = None) -> None:
        """Update reported properties.  Raises as ``get_twin``; also
        ``ConnectionDroppedError`` when the connection dropped after the hub
        received the patch and before it answered (it may have been applied)."""
        if not isinstance(reported_properties_patch, dict):
            raise TypeError("the reported properties patch must be a dict")
        self._twin_request("PATCH", reported_properties_patch, timeout)

    def _twin_request(self, kind: str, patch: Any, timeout: float | None) -> Any:
        self._check_alive()
        self._ensure_connected()
        waiter = Completion()
        with self._lock:
            rid, outputs = self._session.twin_request(kind, patch)
            self._twin_waiters[rid] = waiter
        self._run(outputs)
        try:
            return self._wait(waiter, timeout, f"twin {kind}")
        finally:
            with self._lock:
                self._twin_waiters.pop(rid, None)
                self._session.twin_abandoned(rid)

    # -------------------------------------------------------------- handlers

    def _handler_changed(self, key: str, feature: str,
                         handler: Callable[..., Any] | None) -> None:
        # As v2: returns once the SUBSCRIBE (or UNSUBSCRIBE) is acknowledged.
        self._want(lambda s: s.set_handler(feature, handler is not None),
                   before=lambda: self._handlers.__setitem__(key, handler),
                   connect=handler is not None)

    def _want(self, change: Callable[[hs.HubSession], list[hs.Output]],
              before: Callable[[], None] | None = None, connect: bool = True) -> None:
        """Apply a feature change to the session (raises ``ClientError`` for
        the receive-mode lock), connect when ``auto_connect`` allows, and wait
        for the SUBSCRIBE / UNSUBSCRIBE it needs, as v2's setters do."""
        self._check_alive()
        with self._lock:
            outputs = change(self._session)
            if before is not None:
                before()
        waits = self._run(outputs)
        if (connect and not self._driver.connected and not self._driver.reconnecting
                and self._config.auto_connect and not self._shutdown):
            self.connect()
        with self._lock:
            waits += [self._sub_waiters[k] for k in self._session.pending_subscriptions()
                      if k in self._sub_waiters]
        for waiter in waits:
            try:
                self._wait(waiter, None, "subscribe")
            except Exception:
                pass  # reported to on_background_exception by the session

    def _take(self, box: queue.Queue[Any], block: bool, timeout: float | None) -> Any:
        try:
            item = box.get(block, timeout)
        except queue.Empty:
            return None
        if item is CLOSED:
            box.put(CLOSED)  # wake the next waiter too
            raise OperationCancelled("the client was shut down")
        return item

    # ------------------------------------------- the session's facts and outputs

    def _feed(self, fact: Callable[[hs.HubSession], list[hs.Output]]) -> list[Completion]:
        with self._lock:
            outputs = fact(self._session)
        return self._run(outputs)

    def _run(self, outputs: list[hs.Output]) -> list[Completion]:
        """Carry out the session's outputs (never under the lock: a completion
        that is already done runs its callback at once).  Returns what a
        caller that changed a feature waits for."""
        waits: list[Completion] = []
        try:
            for out in outputs:
                if isinstance(out, hs.Publish):
                    sent = self._driver.publish(out.topic, out.payload, 1, False)
                    sent.add_done_callback(self._published(out.ref or ""))
                elif isinstance(out, hs.Subscribe):
                    waits.append(self._subscribe(out))
                elif isinstance(out, hs.Unsubscribe):
                    waits.append(self._driver.unsubscribe(list(out.filters)))
                elif isinstance(out, hs.Reauthorize):
                    self._driver.reauthorize()  # a fresh token is made for the new CONNECT
                elif isinstance(out, hs.TokenRequired):
                    self._driver.dispatch(lambda: self._call("on_new_sastoken_required"))
                elif isinstance(out, hs.TwinDone):
                    with self._lock:
                        waiter = self._twin_waiters.pop(out.rid, None)
                    if waiter is not None and out.error is not None:
                        waiter.set_exception(out.error)
                    elif waiter is not None:
                        waiter.set_result(out.result)
                elif threading.current_thread() is self._driver.handler_thread:
                    self._deliver(out)
                else:
                    self._driver.dispatch(lambda out=out: self._deliver(out))  # type: ignore[misc]
        except ClientError:  # shut down meanwhile
            pass
        self._arm_renewal()
        return waits

    def _published(self, ref: str) -> Callable[[Completion], None]:
        def done(sent: Completion) -> None:
            self._feed(lambda s: s.published(ref, sent.exception(0)))
        return done

    def _subscribe(self, out: hs.Subscribe) -> Completion:
        waiter = Completion()
        with self._lock:
            self._sub_waiters[out.key] = waiter

        def done(f: Completion) -> None:
            error = f.exception(0)
            self._feed(lambda s: s.subscribe_failed(out.key, error) if error is not None
                       else s.subscribed_ok(out.key, f.result(0)))
            with self._lock:
                self._sub_waiters.pop(out.key, None)
            waiter.set_result(None)

        self._driver.subscribe([(f, 1) for f in out.filters]).add_done_callback(done)
        return waiter

    def _arm_renewal(self) -> None:
        with self._lock:
            deadline = self._session.next_deadline()
            if deadline == self._armed:
                return
            self._armed = deadline
        when = None if deadline is None else time.monotonic() + max(0.0, deadline - time.time())
        try:
            self._driver.set_timer("sas-renewal", when, self._renew)
        except ClientError:
            pass  # shut down

    def _renew(self) -> None:
        """I/O thread: the session's deadline passed."""
        self._armed = None  # re-armed below, whatever was armed meanwhile
        self._feed(lambda s: s.tick(time.time()))

    def _intercept(self, message: MessageReceived) -> bool:
        """I/O thread: twin answers resolve their callers here, even while the
        handler thread is busy (a handler may be the caller)."""
        if not hs.HubSession.is_twin_answer(message.topic):
            return False
        self._feed(lambda s: s.message(message.topic, message.payload))
        return True

    def _on_io_state(self, connected: bool) -> None:
        """I/O thread, at the moment of the change."""
        if connected:
            if self._outbox is not None:
                self._outbox.connected()  # pending rows (this run's or a previous one's) leave
            with self._lock:
                outputs = self._session.connected_fact(time.time(), self._config.token_expiry)
                up = self._session_up
            self._run(outputs)
            up.set_result(None)
        else:
            retrying = self._driver.reconnecting
            with self._lock:
                outputs = self._session.disconnected(retrying)
                self._session_up = Completion()
            self._run(outputs)

    # ---------------------------------------------------- events (handler thread)

    def _on_message(self, message: MessageReceived) -> None:
        with self._lock:
            outputs = self._session.message(message.topic, message.payload)
        for out in outputs:
            self._deliver(out)

    def _invoke(self, handler: Callable[..., Any], *args: Any) -> None:
        handler(*args)

    def _on_state(self, connected: bool, reason: str | None) -> None:
        self._event_connected = connected
        self._call("on_connection_state_change")


class IoTHubDeviceClient(DeviceFactories, HubClient):
    """A synchronous IoT Hub device client (create it with a factory)."""

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
        from ._upload import upload

        config, source = self._upload_args(blob_name, data, content_type, progress)
        try:
            return self._run_http(
                lambda session: upload(config, session, blob_name, source, content_type),
                progress)
        finally:
            source.close()

    def receive_message(self, block: bool = True,
                        timeout: float | None = None) -> Message | None:
        """Deprecated (v2 2.3.0): wait for a cloud-to-device message."""
        deprecated("receive_message", "on_message_received")
        self._want(lambda s: s.use_receive_api(hs.MESSAGES))
        message: Message | None = self._take(self._inbox(hs.MESSAGES), block, timeout)
        return message
