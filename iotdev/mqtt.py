"""A small generic MQTT 3.1.1 client on the thread driver: any broker, TCP, TLS
or WebSocket, optionally through a proxy.  The IoT Hub client is built on the
same driver.

    from iotdev.mqtt import MQTTClient

    with MQTTClient("broker.example", transport="tls", client_id="dev1") as client:
        client.subscribe("commands/#", 1, callback=lambda m: print(m.topic, m.payload))
        client.publish("telemetry", b"21.5", qos=1).result(timeout=10)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from iotdev_mqtt import MessageReceived, Will, topic_matches

from ._errors import OperationTimeout
from .transport._credentials import X509
from .transport._endpoint import Endpoint, TransportName
from .transport._options import ConnectOptions, Credentials, ReconnectPolicy
from .transport._thread import Completion, ThreadDriver

if TYPE_CHECKING:
    import ssl

__all__ = ["MQTTClient", "client_setup", "default_port", "tls_context_for"]

MessageHandler = Callable[[MessageReceived], None]

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


def _wait(fut: Completion, timeout: float | None, what: str) -> Any:
    try:
        return fut.result(timeout)
    except TimeoutError:
        fut.cancel()
        raise OperationTimeout(f"{what} did not complete within {timeout} s") from None


class MQTTClient:
    """A blocking MQTT client; I/O runs on one background thread, callbacks on
    another.

    Args:
        host: the broker.
        port: defaults to 1883 (tcp), 8883 (tls) or 443 (websockets).
        client_id: the MQTT client id.
        transport: ``"tcp"``, ``"tls"`` or ``"websockets"`` (over TLS).
        username, password: credentials; or ``credentials``, a callable
            returning ``Credentials`` before every connection attempt.
        clean_session, keep_alive, will: as in CONNECT.
        server_verification_cert: PEM trust anchor instead of certifi's bundle.
        tls_context: a ready ``ssl.SSLContext`` (overrides the three TLS options).
        cipher, x509: cipher list; client certificate.
        ws_path: the WebSocket path.
        proxy_options: ``ProxyOptions`` for an HTTP CONNECT or SOCKS proxy.
        connect_timeout: seconds for TCP connect, handshakes and CONNACK.
        reconnect: reconnect after a drop (back-off from ``retry_interval``).
        max_inflight: QoS 1/2 publishes in flight before they queue (20, the
            in-flight quota of a default mosquitto).
        on_message: called with every ``MessageReceived`` no subscription
            callback took.
        on_connection_state_change: called with ``(connected, reason)``.
        on_background_exception: called with exceptions raised by callbacks
            and failed reconnections.
    """

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
        on_message: MessageHandler | None = None,
        on_connection_state_change: Callable[[bool, str | None], None] | None = None,
        on_background_exception: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.endpoint, creds = client_setup(
            host, port, transport, username, password, credentials, server_verification_cert,
            tls_context, cipher, x509, ws_path, proxy_options, connect_timeout)
        self._subscriptions: list[tuple[str, MessageHandler]] = []
        self.on_message = on_message
        self._driver = ThreadDriver(
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

    def _route(self, message: MessageReceived) -> None:
        for topic_filter, callback in list(self._subscriptions):
            if topic_matches(topic_filter, message.topic):
                callback(message)
                return
        if self.on_message is not None:
            self.on_message(message)

    def connect(self, timeout: float | None = None) -> None:
        """Connect and wait for CONNACK.

        Raises:
            ConnectionFailedError: (or a subclass naming the cause) the
                connection could not be made.
            CredentialError: CONNACK 4 or 5.
            OperationTimeout: ``timeout`` passed first.
        """
        _wait(self._driver.connect(), timeout, "connect")

    def publish(self, topic: str, payload: bytes | str = b"", qos: int = 0,
                retain: bool = False) -> Completion:
        """Publish; returns a future that completes on PUBACK (QoS 1), PUBCOMP
        (QoS 2) or once written (QoS 0).  Call ``.result(timeout)`` to wait.

        Raises (through the future): ``LocalProtocolError`` for an invalid topic
        or QoS, ``ConnectionDroppedError`` when the connection is lost and not
        retried, ``OperationCancelled`` on shutdown.
        """
        if isinstance(payload, str):
            payload = payload.encode("utf-8")
        return self._driver.publish(topic, payload, qos, retain)

    def subscribe(
        self,
        topic_filter: str | Iterable[tuple[str, int]],
        qos: int = 0,
        *,
        callback: MessageHandler | None = None,
        timeout: float | None = None,
    ) -> tuple[int, ...]:
        """Subscribe and wait for SUBACK.

        Returns:
            The granted QoS per filter (0x80 = refused).
        """
        subs = [(topic_filter, qos)] if isinstance(topic_filter, str) else list(topic_filter)
        if callback is not None:
            for f, _ in subs:
                self._subscriptions.append((f, callback))
        codes: tuple[int, ...] = _wait(self._driver.subscribe(subs), timeout, "subscribe")
        return codes

    def unsubscribe(self, topic_filter: str | Iterable[str], *,
                    timeout: float | None = None) -> None:
        filters = [topic_filter] if isinstance(topic_filter, str) else list(topic_filter)
        self._subscriptions = [(f, cb) for f, cb in self._subscriptions if f not in filters]
        _wait(self._driver.unsubscribe(filters), timeout, "unsubscribe")

    def disconnect(self, timeout: float | None = 10.0) -> None:
        """Send DISCONNECT and close; operations still waiting end with
        ``OperationCancelled``."""
        _wait(self._driver.disconnect(), timeout, "disconnect")

    def shutdown(self) -> None:
        """Disconnect and stop the background threads; the client is unusable
        afterwards."""
        self._driver.shutdown()

    def __enter__(self) -> MQTTClient:
        self.connect()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.shutdown()

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            if not self._driver._stopping:
                self._driver.shutdown(timeout=0.5)
        except Exception:
            pass


