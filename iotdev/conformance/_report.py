"""Reports: the terminal table, JSON, JUnit XML, and profiles of optional choices.

A *profile file* is the JSON ``{"broker": name, "target": ..., "choices":
{check id: choice}, "outcomes": {check id: outcome}}``; ``compare_profiles``
puts several side by side (one column per broker) so two brokers' choices
where the spec allows several can be read at a glance.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._model import CheckResult
from ._runner import Report
from ._statements import SECTIONS

__all__ = [
    "compare_profiles",
    "coverage_table",
    "format_result_line",
    "report_json",
    "report_junit",
    "report_profile",
    "report_table",
]

_MARK = {"passed": "PASS", "failed": "FAIL", "optional": "OPT ", "skipped": "SKIP"}


def format_result_line(index: int, total: int, result: CheckResult) -> str:
    """One progress line: ``[ 3/110] PASS connect.takeover (0.12 s)``."""
    width = len(str(total))
    extra = ""
    if result.outcome == "failed":
        extra = f"  [{result.statement}] {result.message}"
    elif result.outcome == "optional":
        extra = f"  choice: {result.choice}"
    elif result.outcome == "skipped":
        design = f"by design ({result.by_design}): " if result.by_design else ""
        extra = f"  {design}{result.message}"
    return (f"[{index:>{width}}/{total}] {_MARK[result.outcome]} {result.check_id} "
            f"({result.duration:.2f} s){extra}")


def coverage_table(report: Report) -> str:
    """Statements exercised / passed / failed / untestable, by section."""
    lines = [f"{'section':<36} {'total':>5} {'exercised':>9} {'passed':>6} {'failed':>6} "
             f"{'untestable':>10}"]
    totals = dict.fromkeys(("total", "exercised", "passed", "failed", "untestable"), 0)
    for key, counts in report.coverage_by_section().items():
        name = f"{key} {SECTIONS[key]}"
        lines.append(f"{name:<36} {counts['total']:>5} {counts['exercised']:>9} "
                     f"{counts['passed']:>6} {counts['failed']:>6} {counts['untestable']:>10}")
        for k in totals:
            totals[k] += counts[k]
    lines.append(f"{'all server statements':<36} {totals['total']:>5} {totals['exercised']:>9} "
                 f"{totals['passed']:>6} {totals['failed']:>6} {totals['untestable']:>10}")
    return "\n".join(lines)


def report_table(report: Report, *, exchanges: bool = True, all_checks: bool = False) -> str:
    """The end-of-run text: (with ``all_checks``) one row per check, then the
    failures with their bytes, the choices, the skips and the coverage."""
    out = [f"MQTT 3.1.1 conformance of {report.target} (profile {report.profile}), "
           f"{len(report.results)} checks in {report.duration:.1f} s"]
    if all_checks:
        width = max(len(r.check_id) for r in report.results) if report.results else 5
        out.append(f"\n{'check':<{width}}  result  statements")
        for r in report.results:
            shown = f"{r.choice}" if r.outcome == "optional" else (
                f"[{r.statement}]" if r.outcome == "failed" else " ".join(r.statements))
            out.append(f"{r.check_id:<{width}}  {_MARK[r.outcome]}    {shown}")
        out.append("")
    counts = {k: len(report.by_outcome(k)) for k in _MARK}
    out.append("  ".join(f"{k}: {v}" for k, v in counts.items()))
    for result in report.failed:
        out.append(f"\nFAILED {result.check_id}: {result.title}")
        out.append(f"  breaks [{result.statement}]: {result.message}")
        if exchanges:
            out.extend("    " + e.describe() for e in result.exchanges[-12:])
    choices = report.by_outcome("optional")
    if choices:
        out.append("\nOptional behaviour observed:")
        out.extend(f"  {r.check_id:<40} {r.choice}" for r in choices)
    skipped = report.by_outcome("skipped")
    if skipped:
        out.append("\nSkipped:")
        for r in skipped:
            why = f"by design ({r.by_design}): " if r.by_design else ""
            out.append(f"  {r.check_id:<40} {why}{r.message}")
    broken = [c for c in report.coverage() if c.status == "failed"]
    if broken:
        out.append("\nStatements broken:")
        out.extend(f"  [{c.statement}] {c.summary}" for c in broken)
    out.append("\nCoverage of the server statements (Appendix B):")
    out.append(coverage_table(report))
    return "\n".join(out)


def report_json(report: Report) -> dict[str, Any]:
    """One record per check plus the coverage summary (``--json``)."""
    return {
        "target": report.target,
        "profile": report.profile,
        "duration": round(report.duration, 3),
        "summary": {k: len(report.by_outcome(k)) for k in _MARK},
        "checks": [r.to_json() for r in report.results],
        "coverage": {
            "by_section": report.coverage_by_section(),
            "statements": [
                {"id": c.statement, "section": c.section, "summary": c.summary,
                 "status": c.status, "checks": c.checks, "reason": c.reason or None}
                for c in report.coverage()
            ],
        },
    }


def report_junit(report: Report) -> str:
    """JUnit XML: one ``testcase`` per check (failed: ``failure`` with the bytes;
    skipped: ``skipped``; optional: passed with the choice in ``system-out``)."""
    suite = ET.Element("testsuite", {
        "name": f"mqtt-3.1.1-conformance {report.target}",
        "tests": str(len(report.results)),
        "failures": str(len(report.failed)),
        "skipped": str(len(report.by_outcome("skipped"))),
        "time": f"{report.duration:.3f}",
    })
    for r in report.results:
        case = ET.SubElement(suite, "testcase", {
            "classname": "mqtt." + r.check_id.split(".")[0], "name": r.check_id,
            "time": f"{r.duration:.3f}"})
        if r.outcome == "failed":
            failure = ET.SubElement(case, "failure", {
                "message": f"[{r.statement}] {r.message}", "type": r.statement})
            failure.text = "\n".join(e.describe() for e in r.exchanges)
        elif r.outcome == "skipped":
            ET.SubElement(case, "skipped", {"message": r.message})
        elif r.outcome == "optional":
            ET.SubElement(case, "system-out").text = f"optional behaviour: {r.choice}"
    return ET.tostring(suite, encoding="unicode", xml_declaration=True)


def report_profile(report: Report, broker: str = "") -> dict[str, Any]:
    """The profile file: the optional choices and every outcome."""
    return {"broker": broker or report.target, "target": report.target,
            "choices": report.choices(), "outcomes": report.outcomes()}


def compare_profiles(paths: Sequence[str | Path]) -> str:
    """Profiles side by side: one row per check that differs or made a choice."""
    profiles = [json.loads(Path(p).read_text()) for p in paths]
    names = [str(p.get("broker", Path(path).stem)) for p, path in zip(profiles, paths,
                                                                      strict=True)]
    ids: list[str] = []
    for p in profiles:
        ids.extend(i for i in p.get("outcomes", {}) if i not in ids)
    width = max([len(i) for i in ids] + [5])
    col = max([len(n) for n in names] + [12])
    lines = [f"{'check':<{width}}  " + "  ".join(f"{n:<{col}}" for n in names)]
    for i in ids:
        cells = []
        for p in profiles:
            outcome = p.get("outcomes", {}).get(i, "-")
            choice = p.get("choices", {}).get(i)
            cells.append(choice if choice else outcome)
        if len(set(cells)) > 1 or any(p.get("choices", {}).get(i) for p in profiles):
            lines.append(f"{i:<{width}}  " + "  ".join(f"{c:<{col}}" for c in cells))
    return "\n".join(lines)
