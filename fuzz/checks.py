"""Invariant helpers shared by the targets.

The central one is ``check_split_invariance``: feed the same bytes to fresh
receivers whole, one byte at a time and in random chunks (sizes, including
empty chunks, and buffer types drawn from a ``random.Random`` seeded by the
input), and require the same items and the same error everywhere.  It works for
anything with a ``feed``-like method that returns a list and raises
``RemoteProtocolError`` on bad input, so the engines' ``receive_data`` fit it
as well as ``PacketReader.feed``.

Every ``AssertionError`` raised here starts with a ``[tag]`` naming the broken
invariant; the minimizer keeps inputs that fail with the same tag.
"""

from __future__ import annotations

import random
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from iotdev_mqtt import RemoteProtocolError

__all__ = [
    "Feeder",
    "Plain",
    "Run",
    "breach",
    "check_split_invariance",
    "diff",
    "error_key",
    "error_label",
    "input_rng",
    "short",
    "splits",
]

Chunk = bytes | bytearray | memoryview


class Feeder(Protocol):
    """A fresh receiver under test, wrapped for ``check_split_invariance``."""

    def feed(self, data: Chunk) -> Sequence[object]:
        """Deliver bytes; return the items (packets, events) they complete."""
        ...

    def check(self) -> None:
        """Invariants that hold after every call (raise ``AssertionError``)."""
        ...

    def state(self) -> object:
        """A comparable summary of the end state (e.g. bytes still buffered)."""
        ...


@dataclass(slots=True)
class Plain:
    """A ``Feeder`` from a bare function: no per-call check, ``state()`` from ``end``.

    E.g. ``Plain(conn.receive_data, conn.data_to_send)``: the bytes an engine
    wants to send at the end must then not depend on the split either.
    """

    feed: Callable[[Chunk], Sequence[object]]
    end: Callable[[], object] | None = None

    def check(self) -> None:
        return None

    def state(self) -> object:
        return self.end() if self.end is not None else None


@dataclass(slots=True)
class Run:
    """What one way of feeding the input produced."""

    split: str
    items: list[object]
    error: RemoteProtocolError | None
    state: object


def breach(tag: str, message: str, data: bytes | None = None) -> AssertionError:
    """An ``AssertionError`` whose message starts with ``[tag]``."""
    text = f"[{tag}] {message}"
    if data is not None:
        text += f"\n  input ({len(data)} bytes): {_hex(data)}"
    return AssertionError(text)


def _hex(data: bytes, limit: int = 256) -> str:
    return data.hex() if len(data) <= limit else f"{data[:limit].hex()}... (cut)"


def short(value: object, limit: int = 200) -> str:
    """``repr(value)``, cut to about ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 20]}...({len(text)} chars)"


def diff(a: Sequence[object], b: Sequence[object]) -> str:
    """Where two item lists first differ, for breach messages."""
    i = 0
    while i < len(a) and i < len(b) and a[i] == b[i]:
        i += 1
    left = short(a[i]) if i < len(a) else "(end)"
    right = short(b[i]) if i < len(b) else "(end)"
    return f"{len(a)} vs {len(b)} items, first difference at {i}: {left} vs {right}"


def error_key(exc: BaseException | None) -> tuple[str, str | None, str | None, str | None] | None:
    """Class, packet, field and rule of an error: what must not depend on the split."""
    if exc is None:
        return None
    return (
        type(exc).__name__,
        getattr(exc, "packet", None),
        getattr(exc, "field", None),
        getattr(exc, "rule", None),
    )


def error_label(exc: BaseException | None) -> str:
    """A short outcome label for an error, e.g. ``MalformedPacket PUBLISH/DUP [MQTT-3.3.1-2]``."""
    key = error_key(exc)
    if key is None:
        return "ok"
    cls, packet, field, rule = key
    where = "/".join(x for x in (packet, field) if x)
    text = cls
    if where:
        text += f" {where}"
    if rule:
        text += f" [{rule}]"
    return text


def input_rng(data: bytes, salt: int = 0) -> random.Random:
    """A ``random.Random`` derived from the input only (targets must be deterministic)."""
    return random.Random(zlib.crc32(data) ^ (salt * 0x9E3779B9))


def splits(
    data: bytes, buffer_types: bool = True, empty_chunks: bool = True
) -> Iterator[tuple[str, list[Chunk]]]:
    """The three ways of delivering ``data``: whole, byte by byte, random chunks.

    Random chunks may be empty (with ``empty_chunks``) and, with
    ``buffer_types``, come as ``bytes``, ``bytearray`` or ``memoryview``; a
    ``bytearray`` (and the one under a ``memoryview``) is overwritten right
    after the call, so a receiver that keeps a reference to the caller's buffer
    instead of copying it is caught.
    """
    yield "whole", [data]
    yield "byte-by-byte", [data[i : i + 1] for i in range(len(data))]
    rng = input_rng(data, 1)
    chunks: list[Chunk] = []
    pos = 0
    n = len(data)
    sizes = (0 if empty_chunks else 1, 1, 1, 2, 3, 4, 5, 7, 16, 64, 300)
    random_ = rng.random
    while pos < n:
        size = sizes[int(random_() * 11)]
        piece = data[pos : pos + size]
        roll = random_() if buffer_types else 0.0
        if roll < 0.4:
            chunks.append(piece)
        elif roll < 0.7:
            chunks.append(bytearray(piece))
        else:
            chunks.append(memoryview(bytearray(piece)))
        pos += size
    yield "random-chunks", chunks


def _clobber(chunk: Chunk) -> None:
    if isinstance(chunk, memoryview):
        target = chunk.obj
        chunk.release()
        if isinstance(target, bytearray):
            target[:] = b"\xa5" * len(target)
    elif isinstance(chunk, bytearray):
        chunk[:] = b"\xa5" * len(chunk)


def _feed_all(
    feeder: Feeder,
    split: str,
    chunks: list[Chunk],
    data: bytes,
    partial: Callable[[RemoteProtocolError], Sequence[object]],
) -> Run:
    items: list[object] = []
    feed = feeder.feed
    check = feeder.check
    fed = 0
    for index, chunk in enumerate(chunks):
        fed += len(chunk)
        try:
            if type(chunk) is bytes:
                got = feed(chunk)
            else:
                try:
                    got = feed(chunk)
                finally:
                    _clobber(chunk)
        except RemoteProtocolError as exc:
            items.extend(partial(exc))
            _check(check, split, fed, data)
            return Run(split, items, exc, feeder.state())
        except Exception as exc:
            raise breach(
                "unexpected-exception",
                f"{type(exc).__name__} escaped ({split}, chunk {index}, {fed} bytes fed): {exc}",
                data,
            ) from exc
        if type(got) is not list:
            raise breach("return-type", f"feed returned {type(got).__name__}, not list", data)
        if got:
            items.extend(got)
        _check(check, split, fed, data)
    return Run(split, items, None, feeder.state())


def _check(check: Callable[[], None], split: str, fed: int, data: bytes) -> None:
    try:
        check()
    except AssertionError as exc:
        raise AssertionError(
            f"{exc} ({split}, {fed} bytes fed)\n  input ({len(data)} bytes): {_hex(data)}"
        ) from None


def check_split_invariance(
    fresh: Callable[[], Feeder],
    data: bytes,
    *,
    partial: Callable[[RemoteProtocolError], Sequence[object]],
    dead_after_error: bytes | None = b"",
    dead_error: type[Exception] = RemoteProtocolError,
    buffer_types: bool = True,
    empty_chunks: bool = True,
    compare_error: Callable[[BaseException | None], object] = error_key,
) -> Run:
    """Feed ``data`` three ways to fresh receivers and require the same result.

    Args:
        fresh: builds a new receiver for each way of feeding.
        data: the input.
        partial: the items an error carries (decoded before it in the same
            call), e.g. ``lambda exc: exc.packets``; they are appended to the
            items returned by earlier calls before comparing.
        dead_after_error: after an error, feed these bytes and require
            ``dead_error`` (``None``: skip).  For an engine whose
            ``receive_data(b"")`` means EOF, pass a non-empty probe.
        dead_error: what a call after an error must raise (default
            ``RemoteProtocolError``; an engine in ``ERROR`` raises
            ``LocalProtocolError``, so pass ``ProtocolError`` there).
        buffer_types: also deliver ``bytearray`` and ``memoryview`` chunks
            (``False``: ``bytes`` only).
        empty_chunks: random chunks may be empty (``False`` for receivers
            that read ``b""`` as EOF).
        compare_error: what of the errors must match between the ways of
            feeding; default ``error_key`` (class, packet, field and rule),
            ``lambda exc: type(exc)`` for the class only.

    Returns:
        The whole-input run.

    Raises:
        AssertionError: an exception other than ``RemoteProtocolError``, a
            different item list, error (class, packet, field, rule) or end
            state between two ways, or a failed ``Feeder.check``.
    """
    runs: list[Run] = []
    for split, chunks in splits(data, buffer_types, empty_chunks):
        feeder = fresh()
        run = _feed_all(feeder, split, chunks, data, partial)
        if dead_after_error is not None and run.error is not None:
            try:
                feeder.feed(dead_after_error)
            except dead_error:
                pass
            except Exception as exc:
                raise breach(
                    "dead-after-error",
                    f"{type(exc).__name__} on a call after an error, not {dead_error.__name__}",
                    data,
                ) from exc
            else:
                raise breach("dead-after-error", "a call after an error did not raise", data)
        runs.append(run)
    whole = runs[0]
    for other in runs[1:]:
        if other.items != whole.items:
            raise breach(
                "split-invariance",
                f"items differ between whole and {other.split}: "
                f"{diff(whole.items, other.items)}",
                data,
            )
        if compare_error(other.error) != compare_error(whole.error):
            raise breach(
                "split-invariance",
                f"errors differ: whole {error_key(whole.error)} ({whole.error}) vs "
                f"{other.split} {error_key(other.error)} ({other.error})",
                data,
            )
        if other.state != whole.state:
            raise breach(
                "split-invariance",
                f"end states differ: whole {whole.state!r} vs {other.split} {other.state!r}",
                data,
            )
    return whole
