"""Options shared by both drivers: what CONNECT carries and how to reconnect."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from iotdev_mqtt import ConnAckCode, Will

from .._errors import ClientError, ConnectionFailedError, CredentialError

if TYPE_CHECKING:
    import random

__all__ = ["ConnectOptions", "Credentials", "ReconnectPolicy", "connack_error"]


@dataclass
class Credentials:
    """User name and password for CONNECT (the password of IoT Hub is a SAS token)."""

    username: str | None = None
    password: bytes | None = None

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=<hidden>)"


@dataclass
class ConnectOptions:
    """What goes into CONNECT.

    Attributes:
        client_id: the MQTT client identifier.
        keep_alive: seconds (0 disables keep-alive).
        clean_session: start a new session on the first connection; reconnects
            after a drop always resume (clean session 0) when this is ``False``.
        credentials: user name and password, or a callable returning fresh ones
            before every attempt (e.g. a SAS token renewal).
        will: the Will message, if any.
    """

    client_id: str
    keep_alive: int = 60
    clean_session: bool = True
    credentials: Credentials | Callable[[], Credentials] | None = None
    will: Will | None = None

    def current_credentials(self) -> Credentials:
        creds = self.credentials
        if creds is None:
            return Credentials()
        if callable(creds):
            fresh = creds()
            if not isinstance(fresh, Credentials):
                raise TypeError("the credentials callable must return Credentials")
            return fresh
        return creds

    @property
    def refreshable(self) -> bool:
        return callable(self.credentials)


@dataclass
class ReconnectPolicy:
    """Reconnect after a drop: the first attempt at once (within
    ``first_window`` seconds or a quarter of ``interval``, whichever is less,
    drawn at random so that a fleet cut off together does not return in one
    burst), then ``interval`` seconds, doubling per
    failed attempt up to ``max_interval``, with jitter (each wait drawn from
    50-100 % of the nominal one).  ``enabled=False`` reports the drop and stops."""

    enabled: bool = True
    interval: float = 10.0
    max_interval: float = 120.0
    jitter: bool = True
    first_window: float = 1.0

    def delay(self, attempt: int, rng: random.Random) -> float:
        """Seconds to wait before reconnection attempt ``attempt`` (1 = the first)."""
        if attempt <= 1:
            window = min(self.first_window, self.interval / 4)
            return float(rng.uniform(0.0, window)) if self.jitter else 0.0
        nominal = min(self.max_interval, self.interval * (2 ** (attempt - 2)))
        return float(nominal * rng.uniform(0.5, 1.0)) if self.jitter else float(nominal)


def connack_error(return_code: int, where: str) -> ClientError:
    """The error for a refused CONNACK, as azure-iot-device maps them."""
    try:
        text = ConnAckCode(return_code).description
    except ValueError:
        text = "reserved return code"
    message = f"{where} refused the connection: {text} (CONNACK {return_code})"
    if return_code in (4, 5):
        return CredentialError(message)
    if return_code == 3:
        return ConnectionFailedError(message)
    return ClientError(message)
