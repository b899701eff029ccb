"""A byte-level mutator that knows where MQTT keeps its lengths.

``Mutator(rng).mutate(data, corpus)`` applies one to eight stacked mutations:
bit flips, byte insert/delete/replace, interesting values (``00 7F 80 FF``...)
for remaining-length bytes and two-byte string lengths, new first bytes,
dictionary tokens (``MQTT``, wildcards, bad UTF-8), truncation, duplication,
splicing and concatenation with another corpus input, and frame-level edits
(drop, repeat, swap a frame; mutate a frame's body and fix its remaining
length).  Positions lean towards the first bytes of the input and of each frame,
where the fixed header and the remaining length live.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence

from .wire import frames, minimal_remaining_length

__all__ = ["Mutator"]

_INTERESTING = (0x00, 0x01, 0x02, 0x7F, 0x80, 0x81, 0xFF, 0xFE, 0x40, 0x20, 0x10, 0x04)
_INTERESTING_16 = (0, 1, 2, 3, 4, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0x8000, 0xFFFE, 0xFFFF)
_TOKENS = (
    b"\x00\x04MQTT\x04", b"MQTT", b"MQIsdp", b"\x00", b"+", b"#", b"/", b"$", b"/#", b"+/",
    b"\xc0\xaf", b"\xed\xa0\x80", b"\xef\xbb\xbf", b"\xf0\xaa\x9b\x94", b"\xff", b"\xc3",
    b"\x80\x80\x80\x80", b"\xff\xff\xff\x7f", b"\x80\x00", b"\x00\x00", b"\xff\xff",
    b"\xc0\x00", b"\xd0\x00", b"\xe0\x00", b"\x62\x02\x00\x01", b"\x20\x02\x00\x00",
)
# First bytes: every type with its legal flags, plus every PUBLISH flag nibble.
_FIRST = tuple(
    [(t << 4) | f for t, f in ((1, 0), (2, 0), (4, 0), (5, 0), (6, 2), (7, 0), (8, 2), (9, 0),
                               (10, 2), (11, 0), (12, 0), (13, 0), (14, 0))]
    + [0x30 | f for f in range(16)]
)

Op = Callable[[bytearray, Sequence[bytes]], bytearray]


class Mutator:
    """Random mutations of MQTT byte streams.

    Args:
        rng: the only source of randomness (seed it for a repeatable run).
        max_len: inputs are cut to this many bytes.
        tokens: dictionary words of the target (``Target.tokens``), inserted or
            written over as often as the MQTT ones.
    """

    def __init__(self, rng: random.Random, max_len: int = 4096,
                 tokens: Sequence[bytes] = ()) -> None:
        self.rng = rng
        self.max_len = max_len
        self.tokens = (*_TOKENS, *tokens) if tokens else _TOKENS
        weighted: list[tuple[Op, int]] = [
            (self._flip_bit, 6),
            (self._set_byte, 6),
            (self._interesting_byte, 6),
            (self._length_byte, 8),
            (self._first_byte, 5),
            (self._u16, 6),
            (self._insert, 5),
            (self._token, 5),
            (self._delete, 6),
            (self._duplicate, 3),
            (self._truncate, 3),
            (self._splice, 3),
            (self._concat, 3),
            (self._frame_edit, 5),
            (self._frame_body, 8),
        ]
        self._ops = [op for op, _ in weighted]
        self._weights = [w for _, w in weighted]

    def mutate(self, data: bytes, corpus: Sequence[bytes]) -> bytes:
        """A mutant of ``data``; ``corpus`` supplies splice partners."""
        out = bytearray(data)
        count = 1
        while count < 8 and self.rng.random() < 0.5:
            count += 1
        for op in self.rng.choices(self._ops, self._weights, k=count):
            out = op(out, corpus)
        if len(out) > self.max_len:
            del out[self.max_len :]
        return bytes(out)

    # ------------------------------------------------------------------ positions

    def _pos(self, d: bytearray, n: int | None = None) -> int:
        """A position in ``range(n)`` (default ``len(d)``, > 0), leaning to the first
        bytes and to the fixed headers of the frames of ``d``."""
        rng = self.rng
        if n is None:
            n = len(d)
        roll = rng.random()
        if roll < 0.3:
            return rng.randrange(min(n, 6))
        if roll < 0.5:
            found = frames(d)
            if found:
                return min(n - 1, rng.choice(found)[0] + rng.randrange(5))
        return rng.randrange(n)

    def _gap(self, d: bytearray) -> int:
        """An insertion point in ``range(len(d) + 1)``."""
        return self._pos(d, len(d) + 1) if d else 0

    # ------------------------------------------------------------------ byte ops

    def _flip_bit(self, d: bytearray, corpus: Sequence[bytes]) -> bytearray:
        if d:
            d[self._pos(d)] ^= 1 << self.rng.randrange(8)
        return d

    def _set_byte(self, d: bytearray, corpus: Sequence[bytes]) -> bytearray:
        if d:
            d[self._pos(d)] = self.rng.randrange(256)
        return d

    def _interesting_byte(self, d: bytearray, corpus: Sequence[bytes]) -> bytearray:
        if d:
            d[self._pos(d)] = self.rng.choice(_INTERESTING)
        return d

    def _length_byte(self, d: bytearray, corpus: Sequence[bytes]) -> bytearray:
        """Rewrite a frame's remaining length: a byte, or the whole field."""
        rng = self.rng
        if len(d) < 2:
            d.append(rng.choice(_INTERESTING))
            return d
        found = frames(d)
        start = rng.choice(found)[0] if found and rng.random() < 0.7 else 0
        if rng.random() < 0.5:
            at = min(len(d) - 1, start + 1 + rng.randrange(4 if rng.random() < 0.3 else 1))
            d[at] = rng.choice(_INTERESTING)
            return d
        # Replace the whole field: off by one, non-minimal, maximum, 5 bytes...
        i = start + 1
        while i < len(d) and i < start + 5 and d[i] & 0x80:
            i += 1
        old_end = min(i + 1, len(d))
        body = len(d) - old_end
        value = rng.choice((0, 1, 2, 127, 128, 16383, 16384, 268_435_455, body, body - 1,
                            body + 1, body + rng.randint(2, 300)))
        field = minimal_remaining_length(max(0, min(value, 268_435_455)))
        roll = rng.random()
        if roll < 0.2 and len(field) < 4:
            field = bytes(b | 0x80 for b in field) + b"\x00"  # non-minimal
        elif roll < 0.25:
            field = b"\xff\xff\xff\xff\x7f"  # five bytes
        d[start + 1 : old_end] = field
        return d

    def _first_byte(self, d: bytearray, corpus: Sequence[bytes]) -> bytearray:
        rng = self.rng
        if not d:
            d.append(rng.choice(_FIRST))
            return d
        found = frames(d)
        at = rng.choice(found)[0] if found and rng.random() < 0.8 else 0
        d[at] = rng.choice(_FIRST) if rng.random() < 0.8 else rng.randrange(256)
        return d

    def _u16(self, d: bytearray, corpus: Sequence[bytes]) -> bytearray:
        """A two-byte big-endian value (string length, packet id) at some position."""
        if len(d) < 2:
            return d
        rng = self.rng
        at = self._pos(d, len(d) - 1)
        rest = len(d) - at - 2
        value = rng.choice((*_INTERESTING_16, rest, rest + 1, max(0, rest - 1)))
        d[at : at + 2] = min(value, 0xFFFF).to_bytes(2, "big")
        return d

    def _insert(self, d: bytearray, corpus: Sequence[bytes]) -> bytearray:
        rng = self.rng
        at = self._gap(d)
        if rng.random() < 0.5:
            blob = bytes([rng.choice(_INTERESTING)]) * rng.randint(1, 4)
        else:
            blob = rng.randbytes(rng.randint(1, 8))
        d[at:at] = blob
        return d

    def _token(self, d: bytearray, corpus: Sequence[bytes]) -> bytearray:
        rng = self.rng
        token = rng.choice(self.tokens)
        at = self._gap(d)
        if rng.random() < 0.5 or not d:
            d[at:at] = token
        else:
            d[at : at + len(token)] = token
        return d

    def _delete(self, d: bytearray, corpus: Sequence[bytes]) -> bytearray:
        if d:
            at = self._pos(d)
            size = self.rng.choice((1, 1, 1, 2, 4, self.rng.randint(1, max(1, len(d) // 4))))
            del d[at : at + size]
        return d

    def _duplicate(self, d: bytearray, corpus: Sequence[bytes]) -> bytearray:
        rng = self.rng
        if not d:
            return d
        if rng.random() < 0.3:
            return d * rng.randint(2, 3)
        a = rng.randrange(len(d))
        b = min(len(d), a + rng.randint(1, 32))
        at = self._gap(d)
        d[at:at] = d[a:b]
        return d

    def _truncate(self, d: bytearray, corpus: Sequence[bytes]) -> bytearray:
        if d:
            del d[self.rng.randrange(len(d)) :]
        return d

    def _splice(self, d: bytearray, corpus: Sequence[bytes]) -> bytearray:
        """Head of this input, tail of another."""
        other = self.rng.choice(corpus) if corpus else b""
        i = self.rng.randint(0, len(d))
        j = self.rng.randint(0, len(other))
        return d[:i] + other[j:]

    def _concat(self, d: bytearray, corpus: Sequence[bytes]) -> bytearray:
        other = self.rng.choice(corpus) if corpus else b""
        return d + other if self.rng.random() < 0.5 else bytearray(other) + d

    # ------------------------------------------------------------------ frame ops

    def _frame_edit(self, d: bytearray, corpus: Sequence[bytes]) -> bytearray:
        """Drop, repeat or swap whole frames; or insert one from another input."""
        rng = self.rng
        found = frames(d)
        if not found:
            return self._concat(d, corpus)
        parts = [bytes(d[s:e]) for s, _, e in found]
        tail = bytes(d[found[-1][2] :])
        roll = rng.random()
        i = rng.randrange(len(parts))
        if roll < 0.3:
            del parts[i]
        elif roll < 0.55:
            parts.insert(i, parts[i])
        elif roll < 0.75 and len(parts) > 1:
            j = rng.randrange(len(parts))
            parts[i], parts[j] = parts[j], parts[i]
        elif corpus:
            donor = rng.choice(corpus)
            donor_frames = frames(donor)
            if donor_frames:
                s, _, e = rng.choice(donor_frames)
                parts.insert(i, donor[s:e])
        return bytearray(b"".join(parts) + tail)

    def _frame_body(self, d: bytearray, corpus: Sequence[bytes]) -> bytearray:
        """Mutate one frame's body, then write its remaining length to match."""
        rng = self.rng
        found = frames(d)
        if not found:
            return self._set_byte(d, corpus)
        start, body_start, end = rng.choice(found)
        body = bytearray(d[body_start:end])
        op = rng.choice((self._flip_bit, self._set_byte, self._interesting_byte, self._u16,
                         self._insert, self._token, self._delete, self._duplicate,
                         self._truncate))
        body = op(body, corpus)
        return d[: start + 1] + minimal_remaining_length(len(body)) + body + d[end:]

