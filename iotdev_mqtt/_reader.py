"""The framing reader: ``PacketReader`` takes bytes as they arrive (any split,
down to one byte at a time) and returns whole packets.

It checks every rule that binds a receiver and raises ``MalformedPacket``,
``PacketTooLarge`` or, for a well-formed packet that may not travel towards
this role, ``RemoteProtocolError``.  After an error the reader is dead: every
further ``feed()`` raises again.

Parsing is linear: a complete packet is parsed straight out of the caller's
``bytes`` when nothing is buffered; otherwise input is appended to one
``bytearray`` and consumed from the front once per call.  The fixed header is
checked (type, flags, direction, size limit, fixed lengths) as soon as it has
arrived, with one lookup in ``_rules``' first-byte table, before the body, so
an oversize or impossible packet is refused without buffering it.  The body
goes to its decoder in ``_decode``.
"""

from __future__ import annotations

from ._decode import DECODERS, Buffer, decode_publish
from ._errors import MalformedPacket, PacketTooLarge, RemoteProtocolError
from ._packets import Packet
from ._rules import (
    DEFAULT_MAX_PACKET_SIZE,
    FIRST_BYTE_CLIENT,
    FIRST_BYTE_SERVER,
    FLAG_RULES,
    FROM_CLIENT,
    FROM_SERVER,
    PACKET_NAMES,
    REQUIRED_FLAGS,
    VARIABLE,
    Role,
)

__all__ = ["PacketReader"]


class PacketReader:
    """Incremental decoder for the packets that travel *towards* ``role``.

    ``role="client"`` reads what a server sends; ``role="server"`` reads what a
    client sends.  A packet type that may not travel in that direction is a
    ``RemoteProtocolError`` [MQTT-4.8.0-1].

    Args:
        role: ``"client"`` or ``"server"``.
        max_packet_size: largest whole packet (fixed header included) accepted,
            at least 5; a bigger one raises ``PacketTooLarge`` as soon as its
            header has arrived, so memory stays bounded by this figure.
        strict_remaining_length: also refuse non-minimal remaining lengths such
            as ``80 00`` (legal in 3.1.1, forbidden in MQTT 5).
    """

    __slots__ = ("_accept", "_buf", "_error", "_max", "_strict", "_table", "role")

    def __init__(
        self,
        role: Role,
        max_packet_size: int = DEFAULT_MAX_PACKET_SIZE,
        *,
        strict_remaining_length: bool = False,
    ) -> None:
        if role == "client":
            self._accept = FROM_SERVER
            self._table = FIRST_BYTE_CLIENT
        elif role == "server":
            self._accept = FROM_CLIENT
            self._table = FIRST_BYTE_SERVER
        else:
            raise ValueError(f"role must be 'client' or 'server', got {role!r}")
        if type(max_packet_size) is not int or max_packet_size < 5:
            # >= 5 keeps a partial fixed header (at most 4 bytes) under the limit.
            raise ValueError(f"max_packet_size must be an int >= 5, got {max_packet_size!r}")
        self.role: Role = role
        self._max = max_packet_size
        self._strict = strict_remaining_length
        self._buf = bytearray()
        self._error: RemoteProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received but not yet part of a whole packet."""
        return len(self._buf)

    def feed(self, data: bytes | bytearray | memoryview) -> list[Packet]:
        """Add received bytes; return every packet they complete, in order.

        Args:
            data: the next bytes from the peer, any length (``b""`` is allowed).

        Returns:
            The packets completed by ``data`` (possibly none).

        Raises:
            MalformedPacket: the bytes break an encoding rule.
            PacketTooLarge: a packet announces more than ``max_packet_size``.
            RemoteProtocolError: a well-formed packet not allowed towards this
                role, or any call after an earlier error.  Packets decoded
                before the error in this call are on the exception's
                ``packets``.
        """
        if self._error is not None:
            raise RemoteProtocolError(
                f"the reader failed earlier and cannot continue ({self._error})"
            )
        buf: Buffer
        if self._buf:
            self._buf += data
            buf = self._buf
        elif type(data) is bytes:
            buf = data
        else:
            buf = bytes(data)
        out: list[Packet] = []
        n = len(buf)
        pos = 0
        table = self._table
        limit = self._max
        try:
            # The parse loop lives here rather than in a method: one call less per
            # feed() on the hot path.
            while n - pos >= 2:
                first = buf[pos]
                fixed = table[first]
                if fixed < 0:
                    raise self._header_error(first)
                byte = buf[pos + 1]
                if byte < 128:
                    rl = byte
                    start = pos + 2
                elif n - pos > 2 and 0 < buf[pos + 2] < 128:
                    rl = (byte & 0x7F) | (buf[pos + 2] << 7)
                    start = pos + 3
                else:
                    found = self._long_remaining_length(buf, pos, n)
                    if found is None:
                        break
                    rl, start = found
                if fixed < VARIABLE and rl != fixed:
                    ptype = first >> 4
                    raise MalformedPacket(
                        f"remaining length is {rl}, must be {fixed}", packet=PACKET_NAMES[ptype],
                        field="remaining length", rule=f"3.{ptype}.1",
                    )
                end = start + rl
                if end - pos > limit:
                    raise PacketTooLarge(
                        f"is {end - pos} bytes, the limit is {limit}",
                        packet=PACKET_NAMES[first >> 4], field="remaining length",
                    )
                if end > n:
                    break
                if first & 0xF0 == 0x30:
                    out.append(decode_publish(first, buf, start, end))
                else:
                    out.append(DECODERS[first >> 4](first, buf, start, end))  # type: ignore[misc]
                pos = end
        except RemoteProtocolError as exc:
            exc.packets = tuple(out)
            self._error = exc
            self._buf = bytearray()
            raise
        if buf is self._buf:
            if pos:
                del buf[:pos]
        elif pos < n:
            self._buf = bytearray(buf[pos:])
        return out

    def _long_remaining_length(self, buf: Buffer, pos: int, n: int) -> tuple[int, int] | None:
        """A remaining length of 3 or 4 bytes (or a non-minimal 2-byte one) at
        ``pos + 1``: ``(value, body start)``, or ``None`` if it is incomplete."""
        rl = 0
        i = pos + 1
        shift = 0
        while True:
            if i >= n:
                return None
            byte = buf[i]
            rl |= (byte & 0x7F) << shift
            i += 1
            if byte < 128:
                break
            if shift == 21:
                raise MalformedPacket(
                    "remaining length has a continuation bit in its 4th byte",
                    packet=PACKET_NAMES[buf[pos] >> 4], field="remaining length", rule="2.2.3",
                )
            shift += 7
        if byte == 0 and self._strict:
            raise MalformedPacket("remaining length is not minimally encoded",
                                  packet=PACKET_NAMES[buf[pos] >> 4], field="remaining length",
                                  rule="2.2.3")
        return rl, i

    def _header_error(self, first: int) -> RemoteProtocolError:
        """The error for a first byte that the first-byte table marks as refused."""
        ptype = first >> 4
        flags = first & 0x0F
        name = PACKET_NAMES[ptype]
        if ptype == 0 or ptype == 15:
            return MalformedPacket(f"packet type {ptype} is reserved", packet=name, rule="2.2.1")
        if not self._accept[ptype]:
            towards = "a client" if self.role == "client" else "a server"
            return RemoteProtocolError(
                f"may not be sent to {towards}", packet=name, rule="MQTT-4.8.0-1"
            )
        if ptype == 3:
            if flags & 0x06 == 0x06:
                return MalformedPacket("QoS bits are 11 (QoS 3)", packet=name,
                                       field="fixed header", rule="MQTT-3.3.1-4")
            return MalformedPacket("DUP is 1 at QoS 0", packet=name, field="fixed header",
                                   rule="MQTT-3.3.1-2")
        required = REQUIRED_FLAGS[ptype]
        assert required is not None
        return MalformedPacket(
            f"flags are {flags:04b}, must be {required:04b}", packet=name,
            field="fixed header", rule=FLAG_RULES.get(ptype, "MQTT-2.2.2-2"),
        )
