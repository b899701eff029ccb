"""The codec's tables: what MQTT 3.1.1 fixes per packet type, in one place.

Indexed by packet type (the high nibble of the first byte): the packet's name,
its required fixed-header flags, its remaining length where the spec fixes
one, and which direction it may travel.  ``first_byte_table()`` folds them into
one 256-entry table per reader role, so the framing reader (``_reader``)
checks a first byte with a single lookup.
"""

from __future__ import annotations

from typing import Literal

__all__ = [
    "DEFAULT_MAX_PACKET_SIZE",
    "FIRST_BYTE_CLIENT",
    "FIRST_BYTE_SERVER",
    "FIXED_REMAINING_LENGTH",
    "FLAG_RULES",
    "FROM_CLIENT",
    "FROM_SERVER",
    "MAX_REMAINING_LENGTH",
    "PACKET_NAMES",
    "REQUIRED_FLAGS",
    "TOPIC_CACHE_LONGEST",
    "TOPIC_CACHE_MAX",
    "VARIABLE",
    "Role",
    "first_byte_table",
]

Role = Literal["client", "server"]

MAX_REMAINING_LENGTH = 268_435_455
DEFAULT_MAX_PACKET_SIZE = 1 << 20
# Entries in each topic cache (encoded names in _encode, decoded ones in _decode):
# one per device of a fleet in one process, or per device a hub serves (the
# caches are cleared when full, so a fleet larger than this gains nothing from
# them; 512 was ~2 us a message beyond 512 devices).  Only names up to
# TOPIC_CACHE_LONGEST bytes are kept: at most ~11 MB per cache.
TOPIC_CACHE_MAX = 16_384
TOPIC_CACHE_LONGEST = 256

PACKET_NAMES = (
    "reserved type 0",
    "CONNECT",
    "CONNACK",
    "PUBLISH",
    "PUBACK",
    "PUBREC",
    "PUBREL",
    "PUBCOMP",
    "SUBSCRIBE",
    "SUBACK",
    "UNSUBSCRIBE",
    "UNSUBACK",
    "PINGREQ",
    "PINGRESP",
    "DISCONNECT",
    "reserved type 15",
)
# Required fixed-header flags per type (None: PUBLISH, checked on its own).
REQUIRED_FLAGS: tuple[int | None, ...] = (0, 0, 0, None, 0, 0, 2, 0, 2, 0, 2, 0, 0, 0, 0, 0)
FLAG_RULES = {6: "MQTT-3.6.1-1", 8: "MQTT-3.8.1-1", 10: "MQTT-3.10.1-1", 14: "MQTT-3.14.1-1"}
# Exact remaining lengths where 3.1.1 fixes them.
FIXED_REMAINING_LENGTH: tuple[int | None, ...] = (
    None, None, 2, None, 2, 2, 2, 2, None, None, None, 2, 0, 0, 0, None
)
# Which types a reader of each role accepts (what the *other* side sends).
FROM_CLIENT = tuple(t in {1, 3, 4, 5, 6, 7, 8, 10, 12, 14} for t in range(16))
FROM_SERVER = tuple(t in {2, 3, 4, 5, 6, 7, 9, 11, 13} for t in range(16))

# A first-byte table entry for packets whose remaining length varies.
VARIABLE = 1 << 30


def first_byte_table(accept: tuple[bool, ...]) -> tuple[int, ...]:
    """Per first byte: -1 if refused (type, direction or flags), else the
    packet's fixed remaining length, or ``VARIABLE``."""
    table = []
    for first in range(256):
        ptype, flags = first >> 4, first & 0x0F
        if not accept[ptype]:
            table.append(-1)
        elif ptype == 3:
            ok = flags & 0x06 != 0x06 and flags & 0x0E != 0x08
            table.append(VARIABLE if ok else -1)
        elif flags != REQUIRED_FLAGS[ptype]:
            table.append(-1)
        else:
            fixed = FIXED_REMAINING_LENGTH[ptype]
            table.append(VARIABLE if fixed is None else fixed)
    return tuple(table)


# What a client's reader accepts (packets a server sends), and a server's.
FIRST_BYTE_CLIENT = first_byte_table(FROM_SERVER)
FIRST_BYTE_SERVER = first_byte_table(FROM_CLIENT)
