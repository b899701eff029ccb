"""Fuzz target ``conformance-checker``: the broker checker's response handling.

The input is what a broker answers: every connection a check opens receives
the input's bytes (split into reads by an input-derived RNG), then end of
stream; what the check sends is ignored.  The first byte picks the check.  For
any input:

1. ``run_check`` returns a ``CheckResult`` (nothing escapes) whose outcome is
   ``passed``, ``failed``, ``optional`` or ``skipped``, never an error inside
   the check;
2. a ``failed`` result names the statement broken and carries the bytes
   exchanged, and the result serialises to JSON;
3. it ends without waiting: the scripted stream never blocks, so every wait in
   the checker must stop at end of stream rather than at a deadline.
"""

from __future__ import annotations

import json
import time

from iotdev.conformance import CHECKS, Profile, Target
from iotdev.conformance._runner import run_check

from .checks import breach, input_rng
from .registry import register

_CHECKS = [c for c in CHECKS if c.id != "robust.slow-connect"]  # paces itself with sleeps
_TARGET = Target("fuzz.invalid", 1883, answer_timeout=0.5, quiet_timeout=0.1)
_PROFILE = Profile()


class _Scripted:
    """A connection that answers ``chunks`` whatever is sent, then closes."""

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = list(chunks)
        self.closed = False

    def send(self, data: bytes) -> None:
        pass

    def receive(self, deadline: float) -> bytes | None:
        if self._chunks:
            return self._chunks.pop(0)
        self.closed = True
        return b""

    def close(self) -> None:
        self.closed = True


def _seeds() -> list[bytes]:
    return [bytes([i]) + bytes.fromhex("20 02 00 00 90 03 00 01 01 40 02 00 01 d0 00")
            for i in range(0, len(_CHECKS), 7)] + [b"\x00\x20\x02\x01\x05", b"\x05\x30"]


@register("conformance-checker", "the broker checker against arbitrary broker answers",
          seeds=_seeds, instrument=("iotdev.conformance",))
def conformance_checker(data: bytes) -> str:
    if not data:
        return "empty"
    check = _CHECKS[data[0] % len(_CHECKS)]
    body = data[1:]
    rng = input_rng(data)
    chunks: list[bytes] = []
    i = 0
    while i < len(body):
        n = rng.randint(1, max(1, len(body) - i))
        chunks.append(body[i:i + n])
        i += n

    def connector(target: Target, timeout: float) -> _Scripted:
        return _Scripted(chunks)

    started = time.monotonic()
    try:
        result = run_check(check, _TARGET, _PROFILE, "fuzz", connector)
    except Exception as exc:
        raise breach("escaped", f"{check.id}: {type(exc).__name__}: {exc}", data) from exc
    if result.outcome not in ("passed", "failed", "optional", "skipped"):
        raise breach("outcome", f"{check.id}: {result.outcome!r}", data)
    if result.message.startswith("error in the check"):
        raise breach("check-error", f"{check.id}: {result.message}", data)
    if result.outcome == "failed" and not (result.statement and result.exchanges):
        raise breach("failed-without-evidence", f"{check.id}: {result!r}", data)
    json.dumps(result.to_json())
    if time.monotonic() - started > 5.0:
        raise breach("waited", f"{check.id} waited {time.monotonic() - started:.1f} s on a "
                     "stream that had ended", data)
    label = f"{check.id}={result.outcome}"
    return label + (f" [{result.statement}]" if result.statement else "")
