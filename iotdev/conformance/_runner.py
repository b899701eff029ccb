"""Select checks, run each one under its deadline, and tally coverage.

A check never takes the run down: its waits are bounded by its deadline, a
``Violation`` becomes ``failed``, a ``Skip`` becomes ``skipped``, and anything
else it raises (a broker that cannot be reached, a bug in the check) becomes
``skipped`` with ``error`` set, so one bad answer costs one check.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field

from .._errors import ClientError
from . import _checks_connect, _checks_malformed, _checks_publish, _checks_subscribe
from ._context import Connector, Context, Profile, Target, dial
from ._model import CHECKS, Check, CheckResult, Observed, Skip, Violation
from ._statements import SECTIONS, STATEMENTS, section_of

__all__ = ["Coverage", "Report", "run_check", "run_checks", "select_checks"]

_LOADED = (_checks_connect, _checks_malformed, _checks_publish, _checks_subscribe)
log = logging.getLogger(__name__)


def select_checks(patterns: Iterable[str] = (), statements: Iterable[str] = ()) -> list[Check]:
    """Checks whose id matches one of ``patterns`` (glob, or a prefix such as
    ``"connect"``) and that name one of ``statements`` (``"MQTT-3.1.0-1"`` or
    ``"3.1.0-1"``); empty means no filter.

    Raises:
        ValueError: a pattern or statement that selects nothing.
    """
    chosen = list(CHECKS)
    pats = list(patterns)
    if pats:
        def matches(c: Check, p: str) -> bool:
            return fnmatch.fnmatchcase(c.id, p) or c.id == p or c.id.startswith(p + ".")

        for p in pats:
            if not any(matches(c, p) for c in chosen):
                raise ValueError(f"--select {p!r} matches no check")
        chosen = [c for c in chosen if any(matches(c, p) for p in pats)]
    wanted = {s if s.startswith("MQTT-") else f"MQTT-{s}" for s in statements}
    if wanted:
        unknown = wanted - {s for c in CHECKS for s in c.statements}
        if unknown:
            raise ValueError(f"no check exercises {', '.join(sorted(unknown))}")
        chosen = [c for c in chosen if wanted & set(c.statements)]
    return chosen


@dataclass
class Coverage:
    """One statement's standing after a run.

    ``status``: ``passed``, ``failed`` (a check found it broken), ``optional``
    (only allowed choices recorded), ``skipped`` (its checks were skipped),
    ``untestable`` (cannot be tested from the wire: ``reason``) or
    ``not-run`` (no selected check names it).
    """

    statement: str
    section: str
    summary: str
    status: str
    checks: list[str] = field(default_factory=list)
    reason: str = ""


@dataclass
class Report:
    """Everything one run found.  ``failed``/``passed``... are result lists."""

    target: str
    profile: str
    results: list[CheckResult]
    duration: float

    def by_outcome(self, outcome: str) -> list[CheckResult]:
        return [r for r in self.results if r.outcome == outcome]

    @property
    def failed(self) -> list[CheckResult]:
        return self.by_outcome("failed")

    def outcomes(self) -> dict[str, str]:
        """``{check id: outcome}``: the shape the broker tests pin."""
        return {r.check_id: r.outcome for r in self.results}

    def choices(self) -> dict[str, str]:
        """``{check id: choice}`` for every optional behaviour observed."""
        return {r.check_id: r.choice for r in self.results if r.outcome == "optional"}

    def coverage(self) -> list[Coverage]:
        rows = []
        for statement, (summary, reason) in STATEMENTS.items():
            related = [r for r in self.results if statement in r.statements]
            ran = [r for r in related if r.outcome != "skipped"]
            if any(r.outcome == "failed" and r.statement == statement for r in related):
                status = "failed"
            elif reason:
                status = "untestable"
            elif any(r.outcome in ("passed", "failed") for r in ran):
                status = "passed"
            elif ran:
                status = "optional"
            elif related:
                status = "skipped"
            else:
                status = "not-run"
            rows.append(Coverage(statement, section_of(statement), summary, status,
                                 [r.check_id for r in related], reason))
        return rows

    def coverage_by_section(self) -> dict[str, dict[str, int]]:
        """``{section: {"total", "exercised", "passed", "failed", "untestable"}}``."""
        out: dict[str, dict[str, int]] = {
            key: {"total": 0, "exercised": 0, "passed": 0, "failed": 0, "untestable": 0}
            for key in SECTIONS}
        for row in self.coverage():
            counts = out[row.section]
            counts["total"] += 1
            if row.status in ("passed", "failed", "optional"):
                counts["exercised"] += 1
            if row.status in ("passed", "optional"):
                counts["passed"] += 1
            if row.status in ("failed", "untestable"):
                counts[row.status] += 1
        return out


def run_check(check: Check, target: Target, profile: Profile, token: str,
              connector: Connector = dial) -> CheckResult:
    """Run one check; whatever the broker answers, return its result.

    Args:
        check: the check.
        target, profile: as for ``run_checks``.
        token: makes client ids and topics unique to this run.
        connector: how connections are opened (default: dial the target).
    """
    result = CheckResult(check.id, check.title, check.statements, "passed")
    for need in sorted(check.needs, key=lambda n: (n == "any-topic", n)):
        if need in profile.unsupported:
            result.outcome = "skipped"
            result.message = profile.unsupported[need]
            result.by_design = profile.name
            return result
    ctx = Context(target, profile, check, token, connector)
    try:
        observed = check.run(ctx)
        if isinstance(observed, Observed):
            result.outcome = "optional"
            result.choice = observed.choice
            result.message = observed.detail or observed.choice
    except Violation as exc:
        result.outcome = "failed"
        result.statement = exc.statement
        result.message = exc.message
    except Skip as exc:
        result.outcome = "skipped"
        result.message = exc.reason
        result.by_design = exc.by_design
    except ClientError as exc:
        result.outcome = "skipped"
        result.message = f"error: cannot reach the broker: {exc}"
    except Exception as exc:  # a bug in the check must not end the run
        log.exception("check %s raised", check.id)
        result.outcome = "skipped"
        result.message = f"error in the check: {type(exc).__name__}: {exc}"
    finally:
        ctx.close_all()
        result.duration = time.monotonic() - ctx.start
        result.exchanges = ctx.exchanges
    return result


def run_checks(
    target: Target,
    *,
    profile: Profile | None = None,
    checks: list[Check] | None = None,
    jobs: int = 1,
    connector: Connector = dial,
    on_start: Callable[[int, int, Check], None] | None = None,
    on_result: Callable[[int, int, CheckResult], None] | None = None,
) -> Report:
    """Run ``checks`` (default: all) against ``target``.

    Args:
        target: where the broker is.
        profile: its deliberate restrictions (default: plain MQTT 3.1.1).
        checks: from ``select_checks()``.
        jobs: checks run at once (each on its own connections, client ids and
            topics); timing-sensitive checks (``Check.serial``) and those that
            leave retained messages run alone after.
        connector: how connections are opened (default: dial the target).
        on_start, on_result: progress callbacks ``(index, total, check|result)``,
            called on the calling thread; ``index`` counts results as they come.

    Returns:
        The ``Report``, results in the order of ``checks``.

    Raises:
        ValueError: ``jobs`` below 1.
    """
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    profile = profile or Profile()
    todo = list(CHECKS if checks is None else checks)
    token = os.urandom(4).hex()
    started = time.monotonic()
    results: dict[str, CheckResult] = {}
    total = len(todo)

    def done(result: CheckResult) -> None:
        results[result.check_id] = result
        if on_result is not None:
            on_result(len(results), total, result)

    # Retained messages are broker-wide state: checks that create them run alone,
    # so a broker that mis-delivers them is caught by the check that made them.
    parallel = [c for c in todo if not (c.serial or "retain" in c.needs)] if jobs > 1 else []
    if parallel:
        with ThreadPoolExecutor(jobs, thread_name_prefix="mqtt-check") as pool:
            futures = [pool.submit(run_check, c, target, profile, token, connector)
                       for c in parallel]
            for future in as_completed(futures):
                done(future.result())
    for check in todo:
        if check.id in results:
            continue
        if on_start is not None:
            on_start(len(results) + 1, total, check)
        done(run_check(check, target, profile, token, connector))
    ordered = [results[c.id] for c in todo]
    return Report(target.describe(), profile.name, ordered, time.monotonic() - started)
