"""``iotdev-mqtt-check HOST[:PORT]``: run the conformance checks against a broker.

Exit status: 0 when no check failed, 1 when one did, 2 for a usage error or a
broker that cannot be reached at all.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from ._context import Target
from ._model import CHECKS, Check, CheckResult
from ._report import (
    compare_profiles,
    format_result_line,
    report_json,
    report_junit,
    report_profile,
    report_table,
)
from ._runner import run_checks, select_checks

__all__ = ["console", "main", "parse_target"]


def parse_target(text: str, default_port: int) -> tuple[str, int]:
    """``"host"``, ``"host:port"`` or ``"[v6]:port"`` -> ``(host, port)``.

    Raises:
        ValueError: an unusable port.
    """
    host, port = text, default_port
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest.startswith(":"):
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, p = text.partition(":")
        port = int(p)
    if not 0 < port < 65536:
        raise ValueError(f"port {port} out of range")
    return host, port


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="iotdev-mqtt-check",
        description="Check an MQTT 3.1.1 broker against the normative statements of the spec.")
    p.add_argument("target", nargs="?", help="HOST[:PORT] of the broker (port 1883, or 8883 "
                   "with --tls)")
    p.add_argument("--tls", action="store_true", help="connect with TLS")
    p.add_argument("--ca", metavar="FILE", help="CA certificate(s) (PEM) for the broker")
    p.add_argument("--insecure", action="store_true", help="do not verify the certificate")
    p.add_argument("--server-name", metavar="NAME", help="TLS name to verify, if not HOST")
    p.add_argument("--ws", metavar="PATH", help="MQTT over WebSocket at PATH (e.g. /mqtt)")
    p.add_argument("--username")
    p.add_argument("--password")
    p.add_argument("--client-id-prefix", default="iotdev-check")
    p.add_argument("--select", action="append", default=[], metavar="PATTERN",
                   help="run checks whose id matches (glob or prefix, e.g. 'malformed'); "
                   "repeatable")
    p.add_argument("--statement", action="append", default=[], metavar="ID",
                   help="run checks naming this statement (e.g. MQTT-3.1.0-1); repeatable")
    p.add_argument("--timeout", type=float, default=3.0,
                   help="seconds to wait for an answer the broker owes (default 3)")
    p.add_argument("-j", "--jobs", type=int, default=4,
                   help="checks run at once (default 4; 1 for one at a time)")
    p.add_argument("--json", metavar="FILE", help="write the JSON report")
    p.add_argument("--junit", metavar="FILE", help="write JUnit XML")
    p.add_argument("--profile-out", metavar="FILE",
                   help="write the broker's optional choices (a profile file)")
    p.add_argument("--broker-name", default="", help="name for the profile file")
    p.add_argument("--compare", nargs="+", metavar="PROFILE",
                   help="print profile files side by side and exit")
    p.add_argument("--list", action="store_true", help="list the checks and exit")
    p.add_argument("-q", "--quiet", action="store_true",
                   help="no progress lines (a table of every check at the end instead)")
    return p


def _list(checks: list[Check]) -> str:
    return "\n".join(f"{c.id:<44} {' '.join(c.statements)}\n    {c.title}" for c in checks)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.compare:
        print(compare_profiles(args.compare))
        return 0
    try:
        checks = select_checks(args.select, args.statement)
    except ValueError as exc:
        print(f"iotdev-mqtt-check: {exc}", file=sys.stderr)
        return 2
    if args.list:
        print(_list(checks))
        print(f"\n{len(checks)} of {len(CHECKS)} checks")
        return 0
    if not args.target:
        print("iotdev-mqtt-check: HOST[:PORT] is required", file=sys.stderr)
        return 2
    try:
        host, port = parse_target(args.target, 8883 if args.tls else 1883)
    except ValueError as exc:
        print(f"iotdev-mqtt-check: bad target {args.target!r}: {exc}", file=sys.stderr)
        return 2
    target = Target(host, port, tls=args.tls or bool(args.ca), ca=args.ca,
                    insecure=args.insecure, server_hostname=args.server_name,
                    ws_path=args.ws, username=args.username, password=args.password,
                    client_id_prefix=args.client_id_prefix, answer_timeout=args.timeout)

    def progress(i: int, total: int, result: CheckResult) -> None:
        if not args.quiet:
            print(format_result_line(i, total, result), file=sys.stderr, flush=True)

    try:
        report = run_checks(target, checks=checks, jobs=args.jobs, on_result=progress)
    except ValueError as exc:
        print(f"iotdev-mqtt-check: {exc}", file=sys.stderr)
        return 2
    unreachable = [r for r in report.results if r.message.startswith("error: cannot reach")]
    print(report_table(report, all_checks=args.quiet))
    if args.json:
        Path(args.json).write_text(json.dumps(report_json(report), indent=2))
    if args.junit:
        Path(args.junit).write_text(report_junit(report))
    if args.profile_out:
        Path(args.profile_out).write_text(
            json.dumps(report_profile(report, args.broker_name), indent=2))
    if unreachable and len(unreachable) == len(report.results):
        print(f"iotdev-mqtt-check: {unreachable[0].message}", file=sys.stderr)
        return 2
    return 1 if report.failed else 0


def console() -> None:
    """The ``iotdev-mqtt-check`` entry point."""
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    console()
