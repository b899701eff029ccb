"""Framing helpers written independently of ``iotdev_mqtt`` (oracle and mutator).

Nothing here imports the codec: the targets use these functions as an oracle
for the reader's framing, the mutator to find fixed headers worth mutating.
"""

from __future__ import annotations

__all__ = ["frames", "minimal_remaining_length"]


def minimal_remaining_length(value: int) -> bytes:
    """The variable byte integer of ``value`` (section 2.2.3), minimal form."""
    out = bytearray()
    while True:
        value, digit = divmod(value, 128)
        out.append(digit | (0x80 if value else 0))
        if not value:
            return bytes(out)


def frames(data: bytes | bytearray) -> list[tuple[int, int, int]]:
    """Complete frames at the start of ``data``: ``(start, body start, end)``.

    Only the framing is read (any first byte, 1 to 4 length bytes, minimal or
    not); it stops at the first incomplete frame or 5-byte remaining length.
    The first byte of a frame is ``data[start]``.
    """
    out: list[tuple[int, int, int]] = []
    pos = 0
    n = len(data)
    while pos + 2 <= n:
        value = 0
        i = pos + 1
        for k in range(4):
            if i >= n:
                return out
            byte = data[i]
            i += 1
            value += (byte & 0x7F) << (7 * k)
            if byte < 0x80:
                break
        else:
            return out
        if i + value > n:
            return out
        out.append((pos, i, i + value))
        pos = i + value
    return out
