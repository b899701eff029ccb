"""What the sync and asyncio device clients share as v2-API faces over the
``HubSession``: the factories, the handler properties, delivery of the
session's events to handlers or inboxes, background-error reporting, the
outbox counters and the file-upload argument checks.  Each face supplies only
what differs between blocking and awaiting: ``_handler_changed`` (what setting
a receive handler does), ``_put`` (an inbox), ``_invoke`` (a user callable).
No I/O here."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, TypeVar

from ._errors import ClientError, OperationCancelled
from ._hubclient import (
    HubConfig,
    build_config,
    config_from_connection_string,
    config_from_sastoken,
)
from ._session import DESIRED, MESSAGES, METHODS, HubSession, Output, Problem, Received
from .transport._credentials import X509

if TYPE_CHECKING:
    from ._outbox import Outbox
    from ._upload import UploadConfig

__all__ = ["ClientFace", "DeviceFactories", "deprecated"]

log = logging.getLogger(__name__)

RECEIVE_HANDLERS = {"on_message_received": MESSAGES, "on_method_request_received": METHODS,
                    "on_twin_desired_properties_patch_received": DESIRED}
HANDLER_OF = {feature: name for name, feature in RECEIVE_HANDLERS.items()}
CLOSED = object()  # put in the inboxes at shutdown

_Face = TypeVar("_Face", bound="ClientFace")
_Device = TypeVar("_Device", bound="DeviceFactories")


def deprecated(name: str, handler: str) -> None:
    """v2's ``DeprecationWarning`` for the ``receive_*`` APIs (since 2.3.0)."""
    warnings.warn(f"{name}() is deprecated since azure-iot-device 2.3.0: set .{handler} "
                  "instead", DeprecationWarning, stacklevel=3)


def _handler_property(key: str) -> Any:
    feature = RECEIVE_HANDLERS.get(key)

    def getter(self: ClientFace) -> Callable[..., Any] | None:
        return self._handlers.get(key)

    def setter(self: ClientFace, handler: Callable[..., Any] | None) -> None:
        self._check_alive()
        if handler is not None and not callable(handler):
            raise TypeError(f"{key} must be callable or None")
        if feature is None:
            self._handlers[key] = handler
        else:
            self._handler_changed(key, feature, handler)

    return property(getter, setter, doc=f"The ``{key}`` handler (``None``: none).")


class ClientFace:
    """The part of a device client face that neither blocks nor awaits."""

    _config: HubConfig
    _session: HubSession
    _handlers: dict[str, Callable[..., Any] | None]
    _inboxes: dict[str, Any]  # name -> queue.Queue (sync) / asyncio.Queue
    _inbox_type: Callable[[], Any]
    _inbox_guard: AbstractContextManager[Any]  # the sync face's lock
    _outbox: Any
    _shutdown: bool
    _MODULE = False  # IoTHubModuleClient: module strings and tokens only

    # ------------------------------------------------------------- factories

    @classmethod
    def create_from_connection_string(cls: type[_Face], connection_string: str,
                                      **kwargs: Any) -> _Face:
        """From ``HostName=...;DeviceId=...;SharedAccessKey=...`` (a module
        client: with ``ModuleId=...``; or ``x509=true`` with ``x509=X509(...)``).
        Keyword options as azure-iot-device v2.

        Raises:
            TypeError: an unknown option, an option of the wrong type, or one
                v2 refuses here (``gateway_hostname``: use the string's
                ``GatewayHostName``).  ValueError: a malformed string, a bad
                option value, or a module's string on a device client (a
                device's on a module client).
        """
        return cls(config_from_connection_string(  # type: ignore[call-arg]
            connection_string, module=cls._MODULE, **kwargs))

    @classmethod
    def create_from_sastoken(cls: type[_Face], sastoken: str, **kwargs: Any) -> _Face:
        """From a SAS token you renew (``on_new_sastoken_required`` /
        ``update_sastoken``).

        Raises:
            ValueError: a malformed or expired token, or a module's on a
                device client (a device's on a module client), as v2.
            TypeError: as ``create_from_connection_string`` (``sastoken_ttl``
                included).
        """
        return cls(config_from_sastoken(sastoken, module=cls._MODULE,  # type: ignore[call-arg]
                                        **kwargs))

    # -------------------------------------------------------------- handlers

    on_message_received = _handler_property("on_message_received")
    on_method_request_received = _handler_property("on_method_request_received")
    on_twin_desired_properties_patch_received = _handler_property(
        "on_twin_desired_properties_patch_received")
    on_connection_state_change = _handler_property("on_connection_state_change")
    on_new_sastoken_required = _handler_property("on_new_sastoken_required")
    on_background_exception = _handler_property("on_background_exception")

    def _check_alive(self) -> None:
        if self._shutdown:
            raise ClientError("the client has been shut down")

    def _disconnecting(self) -> None:
        """``disconnect()`` begins: twin requests end with ``OperationCancelled``,
        renewal stops, the outbox stops sending."""
        self._check_alive()
        self._feed(lambda s: s.stopping(OperationCancelled("disconnect() was called")))
        if self._outbox is not None:
            self._outbox.disconnecting()

    def _shutting_down(self) -> bool:
        """``shutdown()`` begins (``False``: it already did); as ``_disconnecting``."""
        if self._shutdown:
            return False
        self._shutdown = True
        self._feed(lambda s: s.stopping(OperationCancelled("shutdown() was called")))
        return True

    def _feed(self, fact: Callable[[HubSession], list[Output]]) -> Any:
        raise NotImplementedError

    def _handler_changed(self, key: str, feature: str,
                         handler: Callable[..., Any] | None) -> None:
        raise NotImplementedError

    def _invoke(self, handler: Callable[..., Any], *args: Any) -> None:
        raise NotImplementedError

    # -------------------------------------------------------------- delivery

    def _deliver(self, out: Output) -> None:
        """A session event to its handler, inbox or ``on_background_exception``."""
        if isinstance(out, Problem):
            self._background(out.error)
        elif isinstance(out, Received) and out.api:
            name = out.inbox
            if out.feature == METHODS and name not in self._inboxes:
                name = "method:*"  # nobody waits for this method by name
            self._inbox(name).put_nowait(out.value)
        elif isinstance(out, Received):
            self._call(HANDLER_OF[out.feature], out.value)

    def _inbox(self, name: str) -> Any:
        """The inbox of a ``receive_*`` API: ``messages``, ``desired``,
        ``method:{name}`` or ``method:*``."""
        with self._inbox_guard:
            box = self._inboxes.get(name)
            if box is None:
                box = self._inboxes[name] = self._inbox_type()
                if self._shutdown:  # created after shutdown() woke the others
                    box.put_nowait(CLOSED)
            return box

    def _call(self, name: str, *args: Any) -> None:
        handler = self._handlers.get(name)
        if handler is None:
            return
        try:
            self._invoke(handler, *args)
        except Exception as exc:
            log.exception("%s raised", name)
            self._background(exc)

    def _background(self, exc: BaseException) -> None:
        handler = self._handlers.get("on_background_exception")
        if handler is None:  # as v2: never dropped silently
            log.warning("background error (no on_background_exception handler): %r", exc,
                        exc_info=exc)
            return
        try:
            self._invoke(handler, exc)
        except Exception:
            log.exception("on_background_exception raised")

    # ---------------------------------------------------------------- outbox

    @property
    def outbox_pending(self) -> int:
        """Messages in the outbox not yet acknowledged by the hub (those in
        flight included); 0 without an outbox."""
        outbox: Outbox | None = self._outbox.outbox if self._outbox is not None else None
        return outbox.pending if outbox is not None else 0

    @property
    def outbox_dropped(self) -> int:
        """Messages ``outbox_overflow="drop_oldest"`` deleted unsent since this
        client was created; 0 without an outbox."""
        outbox: Outbox | None = self._outbox.outbox if self._outbox is not None else None
        return outbox.dropped if outbox is not None else 0

    # ----------------------------------------------------------- file upload

    def _upload_args(self, blob_name: str, data: Any, content_type: str | None,
                     progress: Callable[[int, int | None], Any] | None,
                     ) -> tuple[UploadConfig, Any]:
        """Check ``upload_blob``'s arguments; the upload configuration and the
        opened source (close it)."""
        self._check_alive()
        from ._upload import check_blob_name, open_source

        check_blob_name(blob_name)
        if content_type is not None and not isinstance(content_type, str):
            raise TypeError("content_type must be a str")
        if progress is not None and not callable(progress):
            raise TypeError("progress must be callable")
        return self._config.upload_config(), open_source(data)


class DeviceFactories:
    """The factories only ``IoTHubDeviceClient`` has (a module's are in
    ``_module_face.ModuleFactories``)."""

    @classmethod
    def create_from_symmetric_key(cls: type[_Device], symmetric_key: str, hostname: str,
                                  device_id: str, **kwargs: Any) -> _Device:
        """From a device key; tokens are made and renewed from it.

        Raises:
            ValueError: not a base64 key, an empty host name or device id.
        """
        return cls(build_config(hostname=hostname, device_id=device_id,  # type: ignore[call-arg]
                                symmetric_key=symmetric_key, **kwargs))

    @classmethod
    def create_from_x509_certificate(cls: type[_Device], x509: X509, hostname: str,
                                     device_id: str, **kwargs: Any) -> _Device:
        """From a client certificate.

        Raises:
            FileNotFoundError: the certificate or key file is missing.
            TypeError: ``x509`` is not an ``X509``; ``sastoken_ttl`` given (v2).
        """
        if not isinstance(x509, X509):
            raise TypeError("x509 must be an iotdev.X509")
        return cls(build_config(hostname=hostname, device_id=device_id,  # type: ignore[call-arg]
                                x509=x509, **kwargs))
