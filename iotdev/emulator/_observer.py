"""The hub's public observation and interception hook.

A ``HubObserver`` sees what the hub's device protocol does, as it does it:
a CONNECT and the hub's decision, a SUBSCRIBE before and after it is
answered, every PUBLISH an authenticated connection sends (before the hub
acts on it or acknowledges it), every twin request, and every closed
connection.  The methods that run *before* the hub acts return a ``Verdict``:

* ``Verdict.PROCEED`` (or ``None``): the hub carries on as usual;
* ``Verdict.HOLD``: the hub does nothing with the packet: no SUBACK, no twin
  answer, no PUBACK (a slow or lost answer, for tests of time-outs);
* ``Verdict.ABORT``: the hub aborts the connection at once (no close
  handshake, nothing sent), without acting on the packet (a connection lost
  before the PUBACK, for tests of re-sends).

Observers run on the hub's event-loop thread, in the order they were added,
and must return quickly (record, notify a ``threading.Condition``, return).
An exception raised by an observer is logged and otherwise ignored: the
packet proceeds.  ``Hub.add_observer`` / ``Hub.remove_observer`` /
``Hub.observers`` manage them.
"""

from __future__ import annotations

import enum
from typing import Protocol

from iotdev_mqtt import Connect, MessageReceived

__all__ = ["HubConnection", "HubObserver", "Verdict"]


class Verdict(enum.Enum):
    """What the hub does with a packet an observer saw first."""

    PROCEED = "proceed"
    HOLD = "hold"
    ABORT = "abort"


class HubConnection(Protocol):
    """What an observer may see of, and do to, one device or module connection.

    Attributes:
        device_id: the authenticated device (``None`` before CONNECT is accepted).
        module_id: the authenticated module, or ``None`` for a device.
        peer: ``address:port`` of the client.
        transport_name: ``"mqtt"`` (MQTT over TLS) or ``"mqtt-ws"`` (over WebSocket).
    """

    device_id: str | None
    module_id: str | None
    peer: str

    @property
    def transport_name(self) -> str: ...

    def abort(self) -> None:
        """Drop the connection at once: nothing more is sent or processed."""


class HubObserver:
    """Subclass and override what you need; every method does nothing by default.

    The ``conn`` argument is the connection (``HubConnection``); use
    ``id(conn)`` or identity to tell connections apart.
    """

    def on_connect(self, conn: HubConnection, packet: Connect, refusal: str | None) -> None:
        """A CONNECT was decided, before the CONNACK leaves.

        Args:
            conn: the connection; ``device_id``/``module_id`` are set when accepted.
            packet: the CONNECT as received (client id, user name, password,
                keep-alive, clean session).
            refusal: why the hub refuses it (the CONNACK is 5), or ``None``.
        """

    def on_subscribe(self, conn: HubConnection,
                     subscriptions: list[tuple[str, int]]) -> Verdict | None:
        """A SUBSCRIBE arrived (``(filter, qos)`` pairs), before the hub answers.

        Returns:
            ``HOLD``: no SUBACK is ever sent; ``ABORT``: the connection drops;
            ``None``/``PROCEED``: the hub grants or refuses as usual.
        """
        return None

    def on_subscribed(self, conn: HubConnection, subscriptions: list[tuple[str, int]],
                      codes: list[int]) -> None:
        """The hub answered a SUBSCRIBE with these SUBACK return codes."""

    def on_publish(self, conn: HubConnection, message: MessageReceived) -> Verdict | None:
        """An authenticated connection sent a PUBLISH (telemetry, a method
        response, a twin request...), before the hub acts on or acknowledges it.

        Returns:
            ``HOLD``: the hub ignores it (no PUBACK); ``ABORT``: the connection
            drops before any PUBACK; ``None``/``PROCEED``: handled as usual.
        """
        return None

    def on_twin_request(self, conn: HubConnection, kind: str, request_id: str,
                        body: bytes) -> Verdict | None:
        """A twin request (``kind`` ``"GET"`` or ``"PATCH"``), before the hub answers.

        Returns:
            ``HOLD``: no answer is sent (the request is dropped);
            ``ABORT``: the connection drops; ``None``/``PROCEED``: answered.
        """
        return None

    def on_close(self, conn: HubConnection, reason: str) -> None:
        """A connection closed (after the hub forgot it), with the reason."""
