"""The shared benchmark machinery: figures, the registry, alternating rounds, reports.

A **figure** is one comparison: a name, a unit and a set of **contestants**.
A figure module builds a :class:`Figure` and passes it to :func:`register`; the
figure's ``setup`` runs only when the figure is selected, so a figure that needs
a broker, a package or a long preparation costs nothing when it is not run.

``setup(session)`` prepares whatever the contestants share (clients, sockets,
brokers: register their clean-up on ``session.stack``), checks that every
contestant does the same work (it should assert once, before any timing), and
returns the contestants.  It raises :class:`Skip` when the figure cannot run on
this machine (a broker or package is missing); any other exception marks the
figure as failed and makes the command exit non-zero.

A **contestant** is a callable ``run(work) -> result`` plus a name and an
``ours`` flag (exactly one contestant per figure may be ours; the others are its
peers).  ``work`` is the figure's fixed amount of work (``Figure.work``, or
``Figure.quick_work`` under ``--quick``).  What ``run`` returns depends on the
figure's ``kind``:

``"rate"``
    the number of operations done; the harness times the call with the
    figure's clock (``time.perf_counter``, or ``time.process_time`` for a figure
    declaring ``clock="cpu"``) and the sample is operations per second.  A contestant
    that must keep set-up out of the clock times itself and returns
    ``Timed(ops, seconds)`` instead.
``"value"``
    a measured value in the figure's unit (a latency, an import time, a
    resident set size); the harness does not time the call.  ``higher_is_better``
    says which way is good.

Every sample must be a positive finite number (ratios divide by them).

The harness warms each contestant up once (one untimed run of ``quick_work``),
then runs ``rounds`` rounds; each round runs every contestant once, in
registration order (A B A B ...), so slow drift of the machine (clock, thermal
state, other load) affects all contestants alike.  A garbage collection runs
before every sample so that one contestant's garbage is not collected on another
one's clock.

For each contestant it reports the median, minimum and maximum sample; for ours
it reports, against each peer, the **advantage** computed pair by pair within
each round (``ours / peer`` when higher is better, ``peer / ours`` when lower is
better; above 1 means ours is better) and then the median, minimum and maximum
of those per-round advantages.  Results go to the terminal,
``bench-results.json`` and ``bench-results.md`` in the current directory (both
overwritten).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import importlib
import importlib.metadata
import json
import math
import os
import pkgutil
import platform
import statistics
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "Contestant",
    "Figure",
    "FigureResult",
    "Session",
    "Skip",
    "Timed",
    "figures",
    "load_figures",
    "main",
    "register",
    "run_figure",
]

Kind = Literal["rate", "value"]
Clock = Literal["wall", "cpu"]

# "wall": time.perf_counter, for anything that waits (sockets, brokers, other
# processes).  "cpu": time.process_time, the CPU time of this process, for
# figures that only compute in this one thread: time spent descheduled while
# other programs use the CPU is left out, which makes them steadier on a busy
# machine.
_CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.process_time}

JSON_NAME = "bench-results.json"
MARKDOWN_NAME = "bench-results.md"
DEFAULT_ROUNDS = 7
QUICK_ROUNDS = 3
SCHEMA_VERSION = 1

# Distributions whose versions are recorded with every result file.
REPORTED_DISTRIBUTIONS = ("iotdev", "paho-mqtt", "azure-iot-device")

# Modules of the bench package that hold machinery, not figures.
_NOT_FIGURE_MODULES = frozenset({"harness", "__main__"})


# --------------------------------------------------------------------------- model


@dataclass(frozen=True, slots=True)
class Timed:
    """A self-timed result of a ``"rate"`` contestant: ``ops`` done in ``seconds``."""

    ops: float
    seconds: float


RunResult = float | Timed
"""What ``Contestant.run`` returns (an ``int`` is a ``float`` here)."""


@dataclass(frozen=True, slots=True)
class Contestant:
    """One implementation taking part in a figure."""

    name: str
    run: Callable[[int], RunResult]
    ours: bool = False


class Skip(Exception):
    """Raised by a figure's ``setup`` when the figure cannot run here."""


@dataclass(slots=True)
class Session:
    """What a figure's ``setup`` gets: the run settings and a clean-up stack."""

    quick: bool
    rounds: int
    work: int
    stack: ExitStack
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        """Attach a remark to the figure's results (printed and written out)."""
        self.notes.append(text)


@dataclass(frozen=True, slots=True)
class Figure:
    """A registered comparison.

    Attributes:
        name: the command-line name (``--only NAME``), e.g. ``"codec"``.
        title: one line saying what is measured.
        unit: the unit of a sample, e.g. ``"ops/s"`` or ``"ms"``.
        setup: prepares and returns the contestants (see the module docstring).
        work: the fixed amount of work passed to every ``run`` call.
        quick_work: the same under ``--quick`` (also the warm-up amount).
        kind: ``"rate"`` (harness-timed operations per second) or ``"value"``.
        higher_is_better: which direction of the sample is good.
        clock: how the harness times a ``"rate"`` run: ``"wall"``
            (``time.perf_counter``, the default) or ``"cpu"``
            (``time.process_time``; only for figures that compute in one
            thread of this process and never wait).
        description: what exactly each side does, for the reports.
    """

    name: str
    title: str
    unit: str
    setup: Callable[[Session], Sequence[Contestant]]
    work: int
    quick_work: int
    kind: Kind = "rate"
    higher_is_better: bool = True
    clock: Clock = "wall"
    description: str = ""


_REGISTRY: dict[str, Figure] = {}


def register(figure: Figure) -> Figure:
    """Add ``figure`` to the registry (a figure module calls this at import)."""
    if figure.name in _REGISTRY and _REGISTRY[figure.name] is not figure:
        raise ValueError(f"figure {figure.name!r} is registered twice")
    if figure.kind not in ("rate", "value"):
        raise ValueError(f"figure {figure.name!r}: unknown kind {figure.kind!r}")
    if figure.clock not in _CLOCKS:
        raise ValueError(f"figure {figure.name!r}: unknown clock {figure.clock!r}")
    if figure.work < 1 or figure.quick_work < 1:
        raise ValueError(f"figure {figure.name!r}: work and quick_work must be >= 1")
    _REGISTRY[figure.name] = figure
    return figure


def load_figures(order: Sequence[str] = ()) -> tuple[list[Figure], dict[str, str]]:
    """Import every figure module of the ``bench`` package.

    Every module in the package except the machinery (``harness``,
    ``__main__``, names starting with ``_``) is imported, so a new figure is one
    new module.  Figures named in ``order`` come first, in that order; the rest
    follow in registration order.

    Returns:
        The figures, and the modules that failed to import (name: error), so
        that one broken figure module does not stop the others from running.
    """
    package = importlib.import_module(__package__ or "bench")
    broken: dict[str, str] = {}
    for info in pkgutil.iter_modules(package.__path__):
        if info.name.startswith("_") or info.name in _NOT_FIGURE_MODULES:
            continue
        module = f"{package.__name__}.{info.name}"
        try:
            importlib.import_module(module)
        except Exception as exc:
            broken[module] = f"{type(exc).__name__}: {exc}"
    return figures(order), broken


def figures(order: Sequence[str] = ()) -> list[Figure]:
    """The registered figures, those named in ``order`` first."""
    rank = {name: i for i, name in enumerate(order)}
    registered = list(_REGISTRY.values())
    return sorted(registered, key=lambda f: (rank.get(f.name, len(rank)), registered.index(f)))


# --------------------------------------------------------------------------- statistics


@dataclass(frozen=True, slots=True)
class Summary:
    """Median, minimum and maximum of a list of samples."""

    median: float
    min: float
    max: float

    @classmethod
    def of(cls, samples: Sequence[float]) -> Summary:
        return cls(statistics.median(samples), min(samples), max(samples))

    def as_dict(self) -> dict[str, float]:
        return {"median": self.median, "min": self.min, "max": self.max}


@dataclass(slots=True)
class ContestantResult:
    name: str
    ours: bool
    samples: list[float] = field(default_factory=list)

    @property
    def summary(self) -> Summary:
        return Summary.of(self.samples)


@dataclass(slots=True)
class RatioResult:
    """Ours against one peer, pair by pair within each round."""

    ours: str
    peer: str
    definition: str
    per_round: list[float]

    @property
    def summary(self) -> Summary:
        return Summary.of(self.per_round)


@dataclass(slots=True)
class FigureResult:
    figure: Figure
    rounds: int
    work: int
    status: Literal["ok", "skipped", "error"] = "ok"
    reason: str = ""
    notes: list[str] = field(default_factory=list)
    contestants: list[ContestantResult] = field(default_factory=list)
    ratios: list[RatioResult] = field(default_factory=list)
    seconds: float = 0.0


# --------------------------------------------------------------------------- running


def _sample(figure: Figure, contestant: Contestant, work: int) -> float:
    clock = _CLOCKS[figure.clock]
    gc.collect()
    start = clock()
    result = contestant.run(work)
    elapsed = clock() - start
    where = f"{figure.name}/{contestant.name}"
    if figure.kind == "value":
        if isinstance(result, Timed):
            raise TypeError(f"{where}: a 'value' figure returns a number, not Timed")
        value = float(result)
    else:
        if isinstance(result, Timed):
            ops, elapsed = result.ops, result.seconds
        else:
            ops = result
        if ops <= 0 or elapsed <= 0:
            raise ValueError(f"{where}: did {ops} operations in {elapsed} s")
        value = ops / elapsed
    # Ratios divide by samples, so every sample must be a positive number.
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{where}: sample {value!r} is not a positive finite number")
    return value


def _advantage(figure: Figure, ours: float, peer: float) -> float:
    if figure.higher_is_better:
        return ours / peer
    return peer / ours


def _check_contestants(figure: Figure, contestants: Sequence[Contestant]) -> None:
    names = [c.name for c in contestants]
    if not contestants:
        raise ValueError(f"figure {figure.name!r}: setup returned no contestants")
    if len(set(names)) != len(names):
        raise ValueError(f"figure {figure.name!r}: contestant names repeat: {names}")
    if sum(c.ours for c in contestants) > 1:
        raise ValueError(f"figure {figure.name!r}: more than one contestant is ours")


def run_figure(
    figure: Figure,
    *,
    rounds: int,
    quick: bool,
    progress: Callable[[str], None] = lambda _text: None,
) -> FigureResult:
    """Set up ``figure``, warm up, run ``rounds`` alternating rounds, summarise.

    Never raises for a failing figure (``Skip`` or any other exception from its
    setup, runs or clean-up): the result says ``"skipped"`` or ``"error"``.
    """
    work = figure.quick_work if quick else figure.work
    result = FigureResult(figure, rounds, work)
    notes: list[str] = []
    started = time.perf_counter()
    try:
        with ExitStack() as stack:
            session = Session(quick=quick, rounds=rounds, work=work, stack=stack, notes=notes)
            result.contestants = _run_rounds(figure, session, progress)
    except Skip as exc:
        result.status, result.reason = "skipped", str(exc) or "skipped"
    except Exception as exc:
        result.status, result.reason = "error", f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    else:
        result.ratios = _ratios(figure, result.contestants)
    result.notes = notes
    result.seconds = time.perf_counter() - started
    return result


def _run_rounds(
    figure: Figure, session: Session, progress: Callable[[str], None]
) -> list[ContestantResult]:
    contestants = list(figure.setup(session))
    _check_contestants(figure, contestants)
    for contestant in contestants:  # warm-up, untimed
        contestant.run(figure.quick_work)
    results = [ContestantResult(c.name, c.ours) for c in contestants]
    for round_no in range(1, session.rounds + 1):
        progress(f"{figure.name}: round {round_no}/{session.rounds}")
        for contestant, result in zip(contestants, results, strict=True):
            result.samples.append(_sample(figure, contestant, session.work))
    return results


def _ratios(figure: Figure, results: Sequence[ContestantResult]) -> list[RatioResult]:
    ours = next((r for r in results if r.ours), None)
    if ours is None:
        return []
    definition = "ours / peer" if figure.higher_is_better else "peer / ours"
    return [
        RatioResult(
            ours.name,
            peer.name,
            definition,
            [_advantage(figure, a, b) for a, b in zip(ours.samples, peer.samples, strict=True)],
        )
        for peer in results
        if peer is not ours
    ]


# --------------------------------------------------------------------------- reports


def _fmt(value: float) -> str:
    """A sample for people: thousands separators for big numbers, 3-4 digits else."""
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 100:
        return f"{value:.1f}"
    return f"{value:.3g}" if abs(value) < 1 else f"{value:.2f}"


def _fmt_ratio(value: float) -> str:
    return f"{value:.2f}x"


def _display_name(result: ContestantResult) -> str:
    return f"{result.name} (ours)" if result.ours else result.name


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for dist in REPORTED_DISTRIBUTIONS:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


def _environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_count": os.cpu_count(),
        "distributions": _versions(),
    }


def print_result(result: FigureResult, out: Callable[[str], None] = print) -> None:
    figure = result.figure
    out("")
    out(f"== {figure.name}: {figure.title}")
    if result.status != "ok":
        out(f"   {result.status.upper()}: {result.reason}")
        for note in result.notes:
            out(f"   note: {note}")
        return
    better = "higher" if figure.higher_is_better else "lower"
    out(
        f"   {result.rounds} rounds, work {result.work:,} per run, unit {figure.unit} "
        f"({better} is better), {figure.clock} clock, {result.seconds:.1f} s"
    )
    width = max(len(_display_name(c)) for c in result.contestants)
    out(f"   {'contestant':<{width}}  {'median':>12}  {'min':>12}  {'max':>12}")
    for c in result.contestants:
        s = c.summary
        out(
            f"   {_display_name(c):<{width}}  {_fmt(s.median):>12}  {_fmt(s.min):>12}  "
            f"{_fmt(s.max):>12}"
        )
    for r in result.ratios:
        s = r.summary
        out(
            f"   {r.ours} vs {r.peer} ({r.definition}, per round): median "
            f"{_fmt_ratio(s.median)}  min {_fmt_ratio(s.min)}  max {_fmt_ratio(s.max)}"
        )
    for note in result.notes:
        out(f"   note: {note}")


def results_json(
    results: Sequence[FigureResult], *, rounds: int, quick: bool, argv: Sequence[str]
) -> dict[str, Any]:
    figures_out: dict[str, Any] = {}
    for r in results:
        f = r.figure
        figures_out[f.name] = {
            "title": f.title,
            "description": f.description,
            "unit": f.unit,
            "kind": f.kind,
            "higher_is_better": f.higher_is_better,
            "clock": f.clock,
            "status": r.status,
            "reason": r.reason,
            "notes": r.notes,
            "rounds": r.rounds,
            "work": r.work,
            "seconds": round(r.seconds, 3),
            "contestants": {
                c.name: {"ours": c.ours, "samples": c.samples, **c.summary.as_dict()}
                for c in r.contestants
            },
            "ratios": {
                x.peer: {
                    "ours": x.ours,
                    "definition": x.definition,
                    "per_round": x.per_round,
                    **x.summary.as_dict(),
                }
                for x in r.ratios
            },
        }
    return {
        "schema": SCHEMA_VERSION,
        "generated": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "command": ["python", "-m", "bench", *argv],
        "settings": {"rounds": rounds, "quick": quick},
        "environment": _environment(),
        "figures": figures_out,
    }


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|")


def results_markdown(results: Sequence[FigureResult], data: dict[str, Any]) -> str:
    env = data["environment"]
    dists = ", ".join(f"{k} {v}" for k, v in env["distributions"].items() if v)
    lines = [
        "# Benchmark results",
        "",
        f"Generated {data['generated']} by `{' '.join(data['command'])}`.  ",
        f"{env['implementation']} {env['python']} on {env['platform']} "
        f"({env['cpu_count']} CPUs); {dists}.",
        "",
        "Contestants run in alternation (A B A B ...), one sample each per round.  The ratio "
        "of ours to each peer is computed within each round, then summarised; above 1 means "
        "ours is better.",
        "",
    ]
    summary = [
        (r, x) for r in results if r.status == "ok" for x in r.ratios
    ]
    if summary:
        lines += [
            "| figure | ours | peer | ratio (median) | min | max |",
            "|---|---|---|---:|---:|---:|",
        ]
        for r, x in summary:
            s = x.summary
            lines.append(
                f"| {r.figure.name} | {x.ours} | {x.peer} | {_fmt_ratio(s.median)} | "
                f"{_fmt_ratio(s.min)} | {_fmt_ratio(s.max)} |"
            )
        lines.append("")
    for r in results:
        f = r.figure
        lines += [f"## {f.name}: {_md_escape(f.title)}", ""]
        if r.status != "ok":
            lines += [f"**{r.status}**: {_md_escape(r.reason)}", ""]
        else:
            better = "higher" if f.higher_is_better else "lower"
            lines += [
                f"{r.rounds} rounds, work {r.work:,} per run; unit {f.unit}, {better} is better; "
                f"{f.clock} clock.",
                "",
                f"| contestant | median {f.unit} | min | max |",
                "|---|---:|---:|---:|",
            ]
            for c in r.contestants:
                s = c.summary
                lines.append(
                    f"| {_md_escape(_display_name(c))} | {_fmt(s.median)} | {_fmt(s.min)} | "
                    f"{_fmt(s.max)} |"
                )
            lines.append("")
            if r.ratios:
                lines += ["| ratio | per-round median | min | max |", "|---|---:|---:|---:|"]
                for x in r.ratios:
                    s = x.summary
                    lines.append(
                        f"| {x.ours} vs {x.peer} ({x.definition}) | {_fmt_ratio(s.median)} | "
                        f"{_fmt_ratio(s.min)} | {_fmt_ratio(s.max)} |"
                    )
                lines.append("")
        for note in r.notes:
            lines.append(f"- {_md_escape(note)}")
        if r.notes:
            lines.append("")
        if f.description:
            lines += ["<details><summary>What is measured</summary>", "", f.description.strip(),
                      "", "</details>", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


# --------------------------------------------------------------------------- command line


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def build_parser(known: Sequence[str]) -> argparse.ArgumentParser:
    names = ", ".join(known) or "(none)"
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Benchmark iotdev against its peers; writes bench-results.json and "
        f"bench-results.md in the current directory.  Figures: {names}.",
    )
    parser.add_argument(
        "--only", nargs="+", metavar="NAME", action="extend",
        help="run only these figures (repeatable)",
    )
    parser.add_argument(
        "--rounds", type=_positive, metavar="N",
        help=f"alternating rounds per figure (default {DEFAULT_ROUNDS}, "
        f"{QUICK_ROUNDS} with --quick)",
    )
    parser.add_argument(
        "--quick", action="store_true",
        help="fewer rounds and shorter runs: a smoke test of the machinery, not a measurement",
    )
    return parser


def main(
    argv: Sequence[str] | None = None,
    *,
    order: Sequence[str] = (),
    planned: dict[str, str] | None = None,
) -> int:
    """Run the selected figures, print them and write the result files.

    Args:
        argv: the command-line arguments (default ``sys.argv[1:]``).
        order: figure names to show first, in this order.
        planned: figure names known to be coming, with where they will live;
            ``--only`` naming one gets a clear message instead of "unknown".

    Returns:
        0 when every selected figure ran or was skipped, 1 when one failed (or,
        without ``--only``, a figure module failed to import), 2 for a usage
        error.
    """
    args_list = list(sys.argv[1:] if argv is None else argv)
    planned = planned or {}
    available, broken = load_figures(order)
    known = [f.name for f in available]
    parser = build_parser(known)
    args = parser.parse_args(args_list)
    for module, error in broken.items():
        print(f"warning: figure module {module} failed to import: {error}", file=sys.stderr)
    selected = available
    if args.only:
        by_name = {f.name: f for f in available}
        for name in args.only:
            if name in by_name:
                continue
            if name in planned:
                parser.error(f"figure {name!r} is not written yet ({planned[name]})")
            hint = f"; modules that failed to import: {', '.join(broken)}" if broken else ""
            parser.error(f"unknown figure {name!r} (known: {', '.join(known)}){hint}")
        wanted = set(args.only)
        selected = [f for f in available if f.name in wanted]
    rounds = args.rounds or (QUICK_ROUNDS if args.quick else DEFAULT_ROUNDS)

    def progress(text: str) -> None:
        print(f"   ... {text}", file=sys.stderr, flush=True)

    results = []
    for figure in selected:
        result = run_figure(figure, rounds=rounds, quick=args.quick, progress=progress)
        print_result(result)
        results.append(result)
    sys.stdout.flush()

    data = results_json(results, rounds=rounds, quick=args.quick, argv=args_list)
    data["import_errors"] = broken
    Path(JSON_NAME).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    Path(MARKDOWN_NAME).write_text(results_markdown(results, data), encoding="utf-8")
    print(f"\nwrote {JSON_NAME} and {MARKDOWN_NAME} in {Path.cwd()}")
    if args.quick:
        print("(--quick: a smoke test of the machinery; the figures are not measurements)")
    failed = any(r.status == "error" for r in results)
    # A broken figure module fails a full run; with --only it may not be involved.
    return 1 if failed or (broken and not args.only) else 0
