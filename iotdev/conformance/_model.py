"""What a check is, how it ends, and what a run reports.

A check is a function ``run(ctx) -> Observed | None`` registered with the
``check`` decorator.  It ends in one of four outcomes:

* ``passed``: it returned ``None``;
* ``failed``: it raised ``Violation`` (the broker broke a statement; the bytes
  exchanged are attached by the runner);
* ``optional``: it returned ``Observed(choice)``: the spec allows several
  behaviours and this is the broker's (recorded in the profile);
* ``skipped``: it raised ``Skip`` (a feature the broker refuses by its own
  configuration or by design, e.g. IoT Hub's topics), or the target profile
  marks one of the check's needs as unsupported.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from ._context import Context

__all__ = [
    "CHECKS",
    "Check",
    "CheckResult",
    "Exchange",
    "Observed",
    "Outcome",
    "Skip",
    "Violation",
    "check",
]

Outcome = Literal["passed", "failed", "optional", "skipped"]


class Violation(Exception):
    """The broker broke ``statement`` (an id such as ``"MQTT-3.1.0-1"``)."""

    def __init__(self, statement: str, message: str) -> None:
        super().__init__(f"[{statement}] {message}")
        self.statement = statement
        self.message = message


class Skip(Exception):
    """The check cannot run here; ``by_design`` names the profile that explains it."""

    def __init__(self, reason: str, *, by_design: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.by_design = by_design


@dataclass(frozen=True)
class Observed:
    """An allowed choice the broker made, e.g. ``"closes"`` or ``"one copy"``."""

    choice: str
    detail: str = ""


@dataclass(frozen=True)
class Check:
    """One check: an id (``section.name``), what it tests and how to run it.

    Attributes:
        id: stable id, e.g. ``"connect.second-connect"``.
        title: one line for the report.
        statements: the normative statements it exercises.
        needs: features it uses (``"qos2"``, ``"retain"``, ``"will"``,
            ``"wildcards"``, ``"any-topic"``, ``"any-client-id"``, ``"sessions"``,
            ``"dollar-topics"``, ``"own-topic"``); a profile may declare some unsupported.
        timeout: seconds the whole check may take.
        run: the function.
        serial: timing-sensitive; runs alone, after the parallel ones.
    """

    id: str
    title: str
    statements: tuple[str, ...]
    needs: frozenset[str]
    timeout: float
    run: Callable[[Context], Observed | None]
    serial: bool = False


CHECKS: list[Check] = []


def check(
    id: str, title: str, *statements: str, needs: tuple[str, ...] = (), timeout: float = 15.0,
    serial: bool = False,
) -> Callable[[Callable[[Context], Observed | None]], Callable[[Context], Observed | None]]:
    """Register the decorated function as a check (ids must be unique)."""

    def register(run: Callable[[Context], Observed | None]) -> Callable[[Context], Observed | None]:
        if any(c.id == id for c in CHECKS):
            raise ValueError(f"duplicate check id {id!r}")
        CHECKS.append(Check(id, title, tuple(statements), frozenset(needs), timeout, run, serial))
        return run

    return register


@dataclass(frozen=True)
class Exchange:
    """Bytes that crossed one connection: ``direction`` is ``"sent"`` or
    ``"received"`` (``"closed"`` with empty data marks the peer's close)."""

    connection: str
    direction: str
    data: bytes
    at: float

    def describe(self) -> str:
        arrow = {"sent": "->", "received": "<-", "closed": "x-"}.get(self.direction, "?")
        text = self.data.hex(" ") if self.data else "(close)"
        if len(text) > 240:
            text = text[:240] + f" ... ({len(self.data)} bytes)"
        return f"{self.at:7.3f}s {self.connection:>6} {arrow} {text}"


@dataclass
class CheckResult:
    """The outcome of one check.

    Attributes:
        check_id, title, statements: from the check.
        outcome: ``passed``, ``failed``, ``optional`` or ``skipped``.
        message: why (the violation, the choice observed, the skip reason).
        statement: the statement broken, for ``failed``.
        choice: the behaviour observed, for ``optional``.
        by_design: for ``skipped``: the profile that restricts it by design.
        duration: seconds.
        exchanges: the bytes exchanged (kept for every outcome).
    """

    check_id: str
    title: str
    statements: tuple[str, ...]
    outcome: Outcome
    message: str = ""
    statement: str = ""
    choice: str = ""
    by_design: str = ""
    duration: float = 0.0
    exchanges: list[Exchange] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.check_id,
            "title": self.title,
            "statements": list(self.statements),
            "outcome": self.outcome,
            "message": self.message,
            "statement_broken": self.statement or None,
            "choice": self.choice or None,
            "by_design": self.by_design or None,
            "duration": round(self.duration, 3),
            "exchanges": [
                {"connection": e.connection, "direction": e.direction, "hex": e.data.hex(),
                 "at": round(e.at, 3)} for e in self.exchanges
            ],
        }
