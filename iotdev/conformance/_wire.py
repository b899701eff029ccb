"""Reading one recorded connection, shared by both sides of the checker: the
``Probe`` (a client talking to the broker under test) and the fake broker's
``Peer`` (a server talking to the client under test).  Each side keeps what
it does with the packets; this is only the reading, the recording and the
waiting."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Protocol, TypeVar

from iotdev_mqtt import Packet

__all__ = ["ByteStream", "read_recorded", "take_first", "until_closed"]

P = TypeVar("P")


class ByteStream(Protocol):
    """What a probe needs from a connection (``RawConnection`` is one)."""

    closed: bool

    def send(self, data: bytes) -> None: ...

    def receive(self, deadline: float) -> bytes | None: ...

    def close(self) -> None: ...


def read_recorded(conn: ByteStream, deadline: float,
                  record: Callable[[str, bytes], None]) -> bytes | None:
    """Read once and record it (``"received"``, or ``"closed"`` at the peer's
    close); ``None`` when nothing came before ``deadline`` or the peer closed."""
    data = conn.receive(deadline)
    if data is None:
        return None
    if not data:
        record("closed", b"")
        return None
    record("received", data)
    return data


def take_first(pending: deque[Packet], kind: type[P]) -> P | None:
    """Remove and return the first ``kind`` packet in ``pending``, if any (the
    others keep their order)."""
    for i, packet in enumerate(pending):
        if isinstance(packet, kind):
            del pending[i]
            return packet
    return None


def until_closed(conn: ByteStream, fill: Callable[[float], bool], deadline: float) -> bool:
    """Call ``fill(deadline)`` until the peer closes; ``True`` if it did in time."""
    while not conn.closed:
        if not fill(deadline) and not conn.closed:
            return False
    return True
