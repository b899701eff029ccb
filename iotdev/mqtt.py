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
from typing import Any

from iotdev_mqtt import MessageReceived

from ._errors import OperationTimeout
from ._mqtt_common import MQTTClientBase, client_setup, default_port, tls_context_for
from .transport._endpoint import Endpoint
from .transport._options import ConnectOptions
from .transport._thread import Completion, ThreadDriver

__all__ = ["MQTTClient", "client_setup", "default_port", "tls_context_for"]

MessageHandler = Callable[[MessageReceived], None]


def _wait(fut: Completion, timeout: float | None, what: str) -> Any:
    try:
        return fut.result(timeout)
    except TimeoutError:
        fut.cancel()
        raise OperationTimeout(f"{what} did not complete within {timeout} s") from None


class MQTTClient(MQTTClientBase[ThreadDriver]):
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

    def _new_driver(self, endpoint: Endpoint, options: ConnectOptions,
                    **kwargs: Any) -> ThreadDriver:
        return ThreadDriver(endpoint, options, **kwargs)

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
        subs = self._add_subscriptions(topic_filter, qos, callback)
        codes: tuple[int, ...] = _wait(self._driver.subscribe(subs), timeout, "subscribe")
        return codes

    def unsubscribe(self, topic_filter: str | Iterable[str], *,
                    timeout: float | None = None) -> None:
        filters = self._drop_subscriptions(topic_filter)
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


