"""The registered fuzz targets (see ``registry.py`` for how to add one).

``reader-client`` and ``reader-server`` feed the input to ``PacketReader`` of
that role and check, for any bytes:

1. ``feed`` returns packets or raises ``RemoteProtocolError`` (subclasses
   included), nothing else; after an error every call raises again;
2. whole, byte by byte and in random chunks give the same packets (returned
   lists plus ``exc.packets``), the same error (class, packet, field, rule) and
   the same number of bytes left buffered;
3. ``reader.buffered`` never exceeds ``max_packet_size``;
4. every packet may travel towards the role, re-encodes with ``encode()``
   without error to the very bytes it came from (fixed header byte and body;
   the remaining length in its minimal form) and decodes back to an equal
   packet; with no error, the packets account for every complete frame of the
   input (an independent frame splitter is the oracle);
5. a strict reader (``strict_remaining_length=True`` and a small
   ``max_packet_size`` drawn from the input) decodes a prefix of the lax
   reader's packets, and all of them when it raises nothing.

Each input is checked with the default reader (1 MiB limit, lax remaining
length) and with the strict one.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import Literal

from iotdev_mqtt import Connect, LocalProtocolError, PacketReader, RemoteProtocolError, encode

from .checks import (
    Chunk,
    Run,
    breach,
    check_split_invariance,
    diff,
    error_label,
    input_rng,
    short,
)
from .registry import register
from .wire import frames, minimal_remaining_length

__all__ = ["check_reader"]

Role = Literal["client", "server"]

_NAMES = ("", "CONNECT", "CONNACK", "PUBLISH", "PUBACK", "PUBREC", "PUBREL", "PUBCOMP",
          "SUBSCRIBE", "SUBACK", "UNSUBSCRIBE", "UNSUBACK", "PINGREQ", "PINGRESP", "DISCONNECT")
# MQTT-4.8.0-1: the types that may travel towards each role.
_TOWARDS: dict[Role, frozenset[int]] = {
    "client": frozenset({2, 3, 4, 5, 6, 7, 9, 11, 13}),
    "server": frozenset({1, 3, 4, 5, 6, 7, 8, 10, 12, 14}),
}
# max_packet_size of the strict reader: around the fixed-header sizes (2 to 5
# bytes), the one/two byte remaining-length boundary and the two/three one.
_DEFAULT_LIMIT: int = inspect.signature(PacketReader).parameters["max_packet_size"].default
_SMALL_LIMITS = (5, 6, 7, 16, 127, 128, 129, 130, 131, 16386, 16387)


class _Reader:
    """``PacketReader`` as a ``checks.Feeder``."""

    __slots__ = ("feed", "limit", "reader")

    def __init__(self, role: Role, limit: int | None, strict: bool) -> None:
        if limit is None:
            self.reader = PacketReader(role, strict_remaining_length=strict)
        else:
            self.reader = PacketReader(role, limit, strict_remaining_length=strict)
        self.limit = limit if limit is not None else _DEFAULT_LIMIT
        self.feed: Callable[[Chunk], Sequence[object]] = self.reader.feed

    def check(self) -> None:
        if self.reader.buffered > self.limit:
            raise breach(
                "buffer-bound",
                f"reader.buffered is {self.reader.buffered}, max_packet_size is {self.limit} "
                f"(role {self.reader.role})",
            )

    def state(self) -> object:
        return self.reader.buffered


def _packets(exc: RemoteProtocolError) -> Sequence[object]:
    return exc.packets


def _reencode(packet: object) -> bytes:
    """``encode(packet)``; for the one packet the decoder accepts and the encoder
    refuses on purpose, the bytes it would have.

    A CONNECT with an empty client identifier and clean session 0 is
    well-formed: a server decodes it and answers CONNACK 0x02 (vector S02,
    MQTT-3.1.3-8), but a client must not send it (MQTT-3.1.3-7), so ``encode``
    refuses it.  Its bytes are those of the same packet with clean session 1,
    with that flag (bit 1 of the connect flags, body byte 7) cleared.
    """
    try:
        return encode(packet)  # type: ignore[arg-type]
    except LocalProtocolError as exc:
        if not (
            isinstance(packet, Connect) and exc.rule == "MQTT-3.1.3-7"
            and packet.client_id == "" and not packet.clean_session
        ):
            raise
    wire = bytearray(encode(packet.__replace__(clean_session=True)))  # copy.replace on 3.13
    body_start = frames(wire)[0][1]
    wire[body_start + 7] &= ~0x02
    return bytes(wire)


def _check_packets(role: Role, run: Run, data: bytes) -> None:
    found = frames(data)
    towards = _TOWARDS[role]
    for index, packet in enumerate(run.items):
        ptype = getattr(packet, "packet_type", None)
        if ptype not in towards:
            raise breach("direction", f"a {role} reader returned {short(packet)}", data)
        if index >= len(found):
            raise breach(
                "framing", f"packet {index} {short(packet)} has no frame in the input", data
            )
        head, start, end = found[index]
        first = data[head]
        try:
            wire = _reencode(packet)
        except Exception as exc:
            raise breach(
                "roundtrip", f"decoded {short(packet)} does not re-encode: {exc!r}", data
            ) from exc
        body = data[start:end]
        expected = bytes((first,)) + minimal_remaining_length(len(body)) + body
        if wire != expected:
            raise breach(
                "byte-exact",
                f"packet {index} {short(packet)} re-encodes to {short(wire.hex())}, "
                f"its frame (remaining length made minimal) is {short(expected.hex())}",
                data,
            )
        again = PacketReader(role)
        try:
            back = again.feed(wire)
        except Exception as exc:
            raise breach(
                "roundtrip",
                f"{short(packet)} re-encoded as {short(wire.hex())} does not decode: {exc!r}",
                data,
            ) from exc
        if back != [packet] or again.buffered:
            raise breach(
                "roundtrip",
                f"{short(packet)} re-encoded as {short(wire.hex())} decodes to {short(back)}",
                data,
            )
    if run.error is None:
        consumed = found[len(run.items) - 1][2] if run.items else 0
        buffered = run.state
        assert isinstance(buffered, int)
        if len(found) != len(run.items) or consumed + buffered != len(data):
            raise breach(
                "framing",
                f"{len(run.items)} packets, {run.state} bytes buffered, but the input has "
                f"{len(found)} complete frames ending at {consumed} of {len(data)} bytes",
                data,
            )


def _label(packets: Sequence[object], exc: BaseException | None, buffered: object) -> str:
    """The packet types decoded, or the error (class, packet, field, rule)."""
    if exc is not None:
        return error_label(exc) + (" after packets" if packets else "")
    kinds = sorted({int(getattr(p, "packet_type", 0)) for p in packets})
    text = "+".join(_NAMES[k] for k in kinds) or "nothing"
    return text + (" + partial" if buffered else "")


def check_reader(data: bytes, role: Role) -> str:
    """Check every ``PacketReader`` invariant on ``data`` for ``role``; return a label.

    Raises:
        AssertionError: a broken invariant; the message starts with its tag.
    """
    lax = check_split_invariance(lambda: _Reader(role, None, False), data, partial=_packets)
    _check_packets(role, lax, data)
    limit = input_rng(data, 2).choice(_SMALL_LIMITS)
    strict = check_split_invariance(lambda: _Reader(role, limit, True), data, partial=_packets)
    n = len(strict.items)
    if strict.items != lax.items[:n] or (strict.error is None and lax.error is not None):
        raise breach(
            "strictness",
            f"strict reader (max_packet_size={limit}) gave {len(strict.items)} packets, "
            f"error {strict.error!r}; the lax one {len(lax.items)}, error {lax.error!r}; "
            f"{diff(lax.items, strict.items)}",
            data,
        )
    if strict.error is None and (n != len(lax.items) or strict.state != lax.state):
        raise breach(
            "strictness",
            f"strict reader (max_packet_size={limit}) stopped after {n} packets with "
            f"{strict.state} bytes buffered; the lax one after {len(lax.items)} with {lax.state}",
            data,
        )
    label = _label(lax.items, lax.error, lax.state)
    if type(strict.error) is not type(lax.error):
        label += f" | strict: {type(strict.error).__name__}"
    return label


@register("reader-client", "PacketReader(role='client'): what a server sends")
def reader_client(data: bytes) -> str:
    return check_reader(data, "client")


@register("reader-server", "PacketReader(role='server'): what a client sends")
def reader_server(data: bytes) -> str:
    return check_reader(data, "server")
