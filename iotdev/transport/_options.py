"""Options shared by both drivers: what CONNECT carries and how to reconnect.

Plain classes with the ``__init__``, ``__eq__`` and ``__repr__`` a
``@dataclass`` would give them (written out: building dataclasses at import
costs the client's import time, see README "Footprint on small boards").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from iotdev_mqtt import ConnAckCode, Will

from .._errors import ClientError, ConnectionFailedError, CredentialError

if TYPE_CHECKING:
    import random

__all__ = ["ConnectOptions", "Credentials", "ReconnectPolicy", "connack_error"]


class Credentials:
    """User name and password for CONNECT (the password of IoT Hub is a SAS token)."""

    __match_args__ = ("username", "password")

    def __init__(self, username: str | None = None, password: bytes | None = None) -> None:
        self.username = username
        self.password = password

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Credentials) and other.__class__ is self.__class__:
            return (self.username, self.password) == (other.username, other.password)
        return NotImplemented

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=<hidden>)"


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

    __match_args__ = ("client_id", "keep_alive", "clean_session", "credentials", "will")

    def __init__(
        self,
        client_id: str,
        keep_alive: int = 60,
        clean_session: bool = True,
        credentials: Credentials | Callable[[], Credentials] | None = None,
        will: Will | None = None,
    ) -> None:
        self.client_id = client_id
        self.keep_alive = keep_alive
        self.clean_session = clean_session
        self.credentials = credentials
        self.will = will

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ConnectOptions) and other.__class__ is self.__class__:
            return (self.client_id, self.keep_alive, self.clean_session, self.credentials,
                    self.will) == (other.client_id, other.keep_alive, other.clean_session,
                                   other.credentials, other.will)
        return NotImplemented

    def __repr__(self) -> str:
        return (f"{self.__class__.__qualname__}(client_id={self.client_id!r}, "
                f"keep_alive={self.keep_alive!r}, clean_session={self.clean_session!r}, "
                f"credentials={self.credentials!r}, will={self.will!r})")

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


class ReconnectPolicy:
    """Reconnect after a drop: the first attempt at once (within
    ``first_window`` seconds or a quarter of ``interval``, whichever is less,
    drawn at random so that a fleet cut off together does not return in one
    burst), then ``interval`` seconds, doubling per
    failed attempt up to ``max_interval``, with jitter (each wait drawn from
    50-100 % of the nominal one).  ``enabled=False`` reports the drop and stops."""

    __match_args__ = ("enabled", "interval", "max_interval", "jitter", "first_window")

    def __init__(
        self,
        enabled: bool = True,
        interval: float = 10.0,
        max_interval: float = 120.0,
        jitter: bool = True,
        first_window: float = 1.0,
    ) -> None:
        self.enabled = enabled
        self.interval = interval
        self.max_interval = max_interval
        self.jitter = jitter
        self.first_window = first_window

    def __eq__(self, other: object) -> bool:
        if isinstance(other, ReconnectPolicy) and other.__class__ is self.__class__:
            return (self.enabled, self.interval, self.max_interval, self.jitter,
                    self.first_window) == (other.enabled, other.interval, other.max_interval,
                                           other.jitter, other.first_window)
        return NotImplemented

    def __repr__(self) -> str:
        return (f"{self.__class__.__qualname__}(enabled={self.enabled!r}, "
                f"interval={self.interval!r}, max_interval={self.max_interval!r}, "
                f"jitter={self.jitter!r}, first_window={self.first_window!r})")

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
