"""What the sync (``iotdev.mqtt``) and asyncio (``iotdev.aio``) generic MQTT
clients share: their arguments, validated once into an endpoint and CONNECT
options, the driver they make from them, and the subscription callbacks.
Each face adds only its driver and its way of waiting."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, Generic, Protocol, TypeVar

from iotdev_mqtt import MessageReceived, Will, topic_matches

from .transport._credentials import X509
from .transport._endpoint import Endpoint, TransportName
from .transport._options import ConnectOptions, Credentials, ReconnectPolicy

if TYPE_CHECKING:
    import ssl

__all__ = ["MQTTClientBase", "client_setup", "default_port", "tls_context_for"]

Handler = Callable[[MessageReceived], Any]

_DEFAULT_PORTS = {"tcp": 1883, "tls": 8883, "websockets": 443}


def default_port(transport: str) -> int:
    return _DEFAULT_PORTS[transport]


def tls_context_for(
    transport: str,
    tls_context: ssl.SSLContext | None,
    server_verification_cert: str | None,
    cipher: str | list[str] | None,
    x509: X509 | None,
) -> ssl.SSLContext | None:
    if transport == "tcp":
        return None
    if tls_context is not None:
        return tls_context
    from .transport._tls import make_client_context

    return make_client_context(server_verification_cert=server_verification_cert,
                               cipher=cipher, x509=x509)


def client_setup(
    host: str, port: int | None, transport: TransportName, username: str | None,
    password: bytes | str | None, credentials: Callable[[], Credentials] | None,
    server_verification_cert: str | None, tls_context: ssl.SSLContext | None,
    cipher: str | list[str] | None, x509: X509 | None, ws_path: str, proxy_options: Any,
    connect_timeout: float,
) -> tuple[Endpoint, Credentials | Callable[[], Credentials] | None]:
    """What both generic clients build from their arguments: the endpoint and
    the credentials (validated)."""
    if transport not in _DEFAULT_PORTS:
        raise ValueError(f"transport must be 'tcp', 'tls' or 'websockets', got {transport!r}")
    if isinstance(password, str):
        password = password.encode("utf-8")
    creds: Credentials | Callable[[], Credentials] | None = credentials
    if creds is None and (username is not None or password is not None):
        creds = Credentials(username, password)
    endpoint = Endpoint(
        host=host,
        port=port if port is not None else default_port(transport),
        transport=transport,
        tls_context=tls_context_for(transport, tls_context, server_verification_cert,
                                    cipher, x509),
        ws_path=ws_path,
        proxy=proxy_options,
        connect_timeout=connect_timeout,
    )
    return endpoint, creds


class _Driver(Protocol):
    @property
    def connected(self) -> bool: ...


DriverT = TypeVar("DriverT", bound=_Driver)


class MQTTClientBase(Generic[DriverT]):
    """The arguments and subscriptions of both ``MQTTClient`` faces (the
    arguments are documented on ``iotdev.mqtt.MQTTClient``)."""

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
        self._driver: DriverT = self._new_driver(
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

    def _new_driver(self, endpoint: Endpoint, options: ConnectOptions,
                    **kwargs: Any) -> DriverT:
        raise NotImplementedError

    def _route(self, message: MessageReceived) -> Any:
        """Call the first subscription callback whose filter matches, else
        ``on_message``; return what it returns."""
        for topic_filter, callback in list(self._subscriptions):
            if topic_matches(topic_filter, message.topic):
                return callback(message)
        if self.on_message is not None:
            return self.on_message(message)
        return None

    @property
    def connected(self) -> bool:
        return self._driver.connected

    def _add_subscriptions(self, topic_filter: str | Iterable[tuple[str, int]], qos: int,
                           callback: Handler | None) -> list[tuple[str, int]]:
        subs = [(topic_filter, qos)] if isinstance(topic_filter, str) else list(topic_filter)
        if callback is not None:
            self._subscriptions += [(f, callback) for f, _ in subs]
        return subs

    def _drop_subscriptions(self, topic_filter: str | Iterable[str]) -> list[str]:
        filters = [topic_filter] if isinstance(topic_filter, str) else list(topic_filter)
        self._subscriptions = [(f, cb) for f, cb in self._subscriptions if f not in filters]
        return filters
