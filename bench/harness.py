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
    says which way is good.  A run may return ``Value(sample, extra={...})``
    instead: ``extra`` carries more metrics of the same run (declared in
    ``Figure.metrics``, e.g. a p99 next to a median, threads next to RSS),
    summarised and compared like the sample.

Every sample must be a positive finite number (ratios divide by them); an
extra metric may also be 0 (it then gets no ratio for that round).

A figure may have several contestants of ours (say, the sync and the asyncio
client): each is compared with the peers named in its ``versus`` (every peer
when empty).  ``Contestant.work_scale`` gives one contestant more or less work
than ``work`` (a slow peer, or a process start to amortise); rates stay
comparable because they are per second.

``Figure.targets`` states what the figure should show (``Target``: an
advantage over a peer of at least so much, or a bound on one of our own
medians); the reports say which are met and which are missed.

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
import re
import statistics
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "Contestant",
    "Figure",
    "FigureResult",
    "Metric",
    "Session",
    "Skip",
    "Target",
    "Timed",
    "Value",
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
CHART_NAME = "bench-results.png"
DEFAULT_ROUNDS = 7
QUICK_ROUNDS = 3
SCHEMA_VERSION = 2
README_BEGIN = "<!-- bench:begin (written by `make bench`; edit bench/harness.py instead) -->"
README_END = "<!-- bench:end -->"

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


@dataclass(frozen=True, slots=True)
class Value:
    """A ``"value"`` run's sample with more metrics of the same run (``extra``,
    keyed by ``Metric.name``)."""

    value: float
    extra: Mapping[str, float] = field(default_factory=dict)


RunResult = float | Timed | Value
"""What ``Contestant.run`` returns (an ``int`` is a ``float`` here)."""


@dataclass(frozen=True, slots=True)
class Contestant:
    """One implementation taking part in a figure.

    Attributes:
        name: shown in the reports; unique within the figure.
        run: ``run(work) -> result`` (see the module docstring).
        ours: an iotdev contestant (compared with peers) or a peer.
        versus: for ours, the peers it is compared with (empty: every peer).
        work_scale: this contestant's work is ``work * work_scale`` (at least 1).
    """

    name: str
    run: Callable[[int], RunResult]
    ours: bool = False
    versus: tuple[str, ...] = ()
    work_scale: float = 1.0


@dataclass(frozen=True, slots=True)
class Metric:
    """A metric a ``"value"`` figure reports besides its sample (``Value.extra``)."""

    name: str
    unit: str
    higher_is_better: bool = False
    title: str = ""
    compare: bool = True  # compute advantages of ours over the peers for it


@dataclass(frozen=True, slots=True)
class Target:
    """What a figure should show.

    With ``peer``: the per-round advantage of ``ours`` over ``peer`` (its
    median; above 1 means ours is better) must be ``>= at_least``.  Without:
    the median of ``ours`` (the sample, or ``metric``) must be ``>= at_least``
    and/or ``<= at_most``.
    """

    label: str
    ours: str
    peer: str | None = None
    metric: str | None = None
    at_least: float | None = None
    at_most: float | None = None


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
        rounds: this figure's rounds when ``--rounds`` is not given (capped by
            ``--quick``'s); for figures too long for the default.
        warmup: run every contestant once, untimed, before the rounds.
        metrics: more metrics its runs return (``Value.extra``).
        targets: what it should show (see ``Target``).
        chart: the panel of the PNG chart it goes to (``"throughput"``,
            ``"latency"``), or ``""`` for none.
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
    rounds: int | None = None
    warmup: bool = True
    metrics: tuple[Metric, ...] = ()
    targets: tuple[Target, ...] = ()
    chart: str = ""


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
    work: int = 0
    samples: list[float] = field(default_factory=list)
    extra: dict[str, list[float]] = field(default_factory=dict)

    @property
    def summary(self) -> Summary:
        return Summary.of(self.samples)

    def metric(self, name: str | None) -> list[float]:
        """The samples of the figure's sample (``None``) or of an extra metric."""
        return self.samples if name is None else self.extra.get(name, [])


@dataclass(slots=True)
class RatioResult:
    """Ours against one peer, pair by pair within each round (for the figure's
    sample, ``metric`` None, or for one of its extra metrics)."""

    ours: str
    peer: str
    definition: str
    per_round: list[float]
    metric: str | None = None

    @property
    def summary(self) -> Summary:
        return Summary.of(self.per_round)


@dataclass(slots=True)
class TargetResult:
    target: Target
    value: float | None  # the advantage median, or our median; None: not measured
    met: bool | None  # None: not measured (skipped, failed, contestant missing)

    @property
    def verdict(self) -> str:
        return {True: "met", False: "MISSED", None: "not measured"}[self.met]


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
    targets: list[TargetResult] = field(default_factory=list)
    seconds: float = 0.0
    load: tuple[float, float] = (0.0, 0.0)  # 1-minute load average before and after

    def contestant(self, name: str) -> ContestantResult | None:
        return next((c for c in self.contestants if c.name == name), None)

    def ratio(self, ours: str, peer: str, metric: str | None = None) -> RatioResult | None:
        return next((r for r in self.ratios if r.ours == ours and r.peer == peer
                     and r.metric == metric), None)


# --------------------------------------------------------------------------- running


def _check_positive(value: float, where: str, *, zero_ok: bool = False) -> float:
    if not (math.isfinite(value) and (value > 0 or (zero_ok and value == 0))):
        raise ValueError(f"{where}: sample {value!r} is not a positive finite number")
    return value


def _sample(figure: Figure, contestant: Contestant, work: int) -> tuple[float, dict[str, float]]:
    clock = _CLOCKS[figure.clock]
    gc.collect()
    start = clock()
    result = contestant.run(work)
    elapsed = clock() - start
    where = f"{figure.name}/{contestant.name}"
    extra: dict[str, float] = {}
    if figure.kind == "value":
        if isinstance(result, Timed):
            raise TypeError(f"{where}: a 'value' figure returns a number, not Timed")
        if isinstance(result, Value):
            value = float(result.value)
            known = {m.name for m in figure.metrics}
            for name, metric_value in result.extra.items():
                if name not in known:
                    raise ValueError(f"{where}: extra metric {name!r} is not declared")
                extra[name] = _check_positive(float(metric_value), f"{where}/{name}",
                                              zero_ok=True)
        else:
            value = float(result)
    else:
        if isinstance(result, Value):
            raise TypeError(f"{where}: a 'rate' figure returns ops or Timed, not Value")
        if isinstance(result, Timed):
            ops, elapsed = result.ops, result.seconds
        else:
            ops = result
        if ops <= 0 or elapsed <= 0:
            raise ValueError(f"{where}: did {ops} operations in {elapsed} s")
        value = ops / elapsed
    # Ratios divide by samples, so every sample must be a positive number.
    return _check_positive(value, where), extra


def _advantage(higher_is_better: bool, ours: float, peer: float) -> float:
    if higher_is_better:
        return ours / peer
    return peer / ours


def _check_contestants(figure: Figure, contestants: Sequence[Contestant]) -> None:
    names = [c.name for c in contestants]
    if not contestants:
        raise ValueError(f"figure {figure.name!r}: setup returned no contestants")
    if len(set(names)) != len(names):
        raise ValueError(f"figure {figure.name!r}: contestant names repeat: {names}")
    peers = {c.name for c in contestants if not c.ours}
    for c in contestants:
        unknown = set(c.versus) - peers
        if unknown:
            raise ValueError(f"figure {figure.name!r}: {c.name} is compared with unknown "
                             f"peers {sorted(unknown)}")
        if c.versus and not c.ours:
            raise ValueError(f"figure {figure.name!r}: only ours has 'versus' ({c.name})")
        if c.work_scale <= 0:
            raise ValueError(f"figure {figure.name!r}: {c.name} has work_scale <= 0")


def _scaled(work: int, contestant: Contestant) -> int:
    return max(1, round(work * contestant.work_scale))


def figure_rounds(figure: Figure, *, explicit: int | None, quick: bool) -> int:
    """The rounds a figure runs: ``--rounds`` if given, else its own or the default."""
    if explicit is not None:
        return explicit
    default = QUICK_ROUNDS if quick else DEFAULT_ROUNDS
    return min(figure.rounds, default) if figure.rounds is not None else default


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
    load_before = _load()
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
        result.ratios = _ratios(figure, result.contestants, _VERSUS.pop(figure.name, {}))
    result.targets = _evaluate_targets(result)
    result.notes = notes
    result.seconds = time.perf_counter() - started
    result.load = (load_before, _load())
    return result


def _load() -> float:
    """The 1-minute load average (what else the machine was doing), or 0."""
    try:
        return os.getloadavg()[0]
    except OSError:
        return 0.0


# The "versus" lists of the last setup of each figure (kept out of
# ContestantResult, which is about what was measured).
_VERSUS: dict[str, dict[str, tuple[str, ...]]] = {}


def _run_rounds(
    figure: Figure, session: Session, progress: Callable[[str], None]
) -> list[ContestantResult]:
    contestants = list(figure.setup(session))
    _check_contestants(figure, contestants)
    _VERSUS[figure.name] = {c.name: c.versus for c in contestants if c.ours}
    if figure.warmup:
        for contestant in contestants:  # warm-up, untimed
            progress(f"{figure.name}: warm-up {contestant.name}")
            contestant.run(_scaled(figure.quick_work, contestant))
    results = [ContestantResult(c.name, c.ours, _scaled(session.work, c)) for c in contestants]
    for round_no in range(1, session.rounds + 1):
        progress(f"{figure.name}: round {round_no}/{session.rounds}")
        for contestant, result in zip(contestants, results, strict=True):
            value, extra = _sample(figure, contestant, result.work)
            result.samples.append(value)
            for name, metric_value in extra.items():
                result.extra.setdefault(name, []).append(metric_value)
    return results


def _ratios(figure: Figure, results: Sequence[ContestantResult],
            versus: Mapping[str, tuple[str, ...]]) -> list[RatioResult]:
    peers = [r for r in results if not r.ours]
    out: list[RatioResult] = []
    metrics: list[tuple[str | None, bool]] = [(None, figure.higher_is_better)]
    metrics += [(m.name, m.higher_is_better) for m in figure.metrics if m.compare]
    for ours in (r for r in results if r.ours):
        wanted = versus.get(ours.name, ())
        for peer in peers:
            if wanted and peer.name not in wanted:
                continue
            for metric, higher in metrics:
                a, b = ours.metric(metric), peer.metric(metric)
                if len(a) != len(b) or not a:
                    continue
                per_round = [_advantage(higher, x, y) for x, y in zip(a, b, strict=True)
                             if x > 0 and y > 0]
                if not per_round:
                    continue
                definition = "ours / peer" if higher else "peer / ours"
                out.append(RatioResult(ours.name, peer.name, definition, per_round, metric))
    return out


def _evaluate_targets(result: FigureResult) -> list[TargetResult]:
    out = []
    for target in result.figure.targets:
        value: float | None = None
        if result.status == "ok":
            if target.peer is not None:
                ratio = result.ratio(target.ours, target.peer, target.metric)
                value = ratio.summary.median if ratio is not None else None
            else:
                ours = result.contestant(target.ours)
                samples = ours.metric(target.metric) if ours is not None else []
                value = statistics.median(samples) if samples else None
        met: bool | None = None
        if value is not None:
            met = ((target.at_least is None or value >= target.at_least)
                   and (target.at_most is None or value <= target.at_most))
        out.append(TargetResult(target, value, met))
    return out



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


def _metric_unit(figure: Figure, metric: str | None) -> str:
    if metric is None:
        return figure.unit
    return next((m.unit for m in figure.metrics if m.name == metric), "")


def _metric_label(figure: Figure, metric: str | None) -> str:
    if metric is None:
        return figure.name
    found = next((m for m in figure.metrics if m.name == metric), None)
    return f"{figure.name} ({found.title or found.name if found else metric})"


def _versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for dist in REPORTED_DISTRIBUTIONS:
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    return versions


def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _mosquitto_version() -> str | None:
    for program in ("mosquitto", "/usr/sbin/mosquitto"):
        try:
            done = subprocess.run([program, "-h"], capture_output=True, timeout=5, check=False)
        except (OSError, subprocess.SubprocessError):
            continue
        found = re.search(rb"mosquitto version (\S+)", done.stdout + done.stderr)
        if found:
            return found.group(1).decode()
    return None


def _environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "openssl": _openssl_version(),
        "mosquitto": _mosquitto_version(),
        "distributions": _versions(),
    }


def _openssl_version() -> str | None:
    try:
        import ssl
    except ImportError:
        return None
    return ssl.OPENSSL_VERSION


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
        f"({better} is better), {figure.clock} clock, {result.seconds:.1f} s, "
        f"load average {result.load[0]:.1f} -> {result.load[1]:.1f}"
    )
    metrics: list[tuple[str | None, str]] = [(None, figure.unit)]
    metrics += [(m.name, m.unit) for m in figure.metrics]
    width = max(len(_display_name(c)) for c in result.contestants)
    for metric, unit in metrics:
        if not any(c.metric(metric) for c in result.contestants):
            continue
        label = "" if metric is None else f"{metric} ({unit})"
        out(f"   {label or 'contestant':<{width}}  {'median':>12}  {'min':>12}  {'max':>12}")
        for c in result.contestants:
            samples = c.metric(metric)
            if not samples:
                continue
            s = Summary.of(samples)
            out(f"   {_display_name(c):<{width}}  {_fmt(s.median):>12}  {_fmt(s.min):>12}  "
                f"{_fmt(s.max):>12}")
    for r in result.ratios:
        s = r.summary
        what = "" if r.metric is None else f" [{r.metric}]"
        out(
            f"   {r.ours} vs {r.peer}{what} ({r.definition}, per round): median "
            f"{_fmt_ratio(s.median)}  min {_fmt_ratio(s.min)}  max {_fmt_ratio(s.max)}"
        )
    for t in result.targets:
        shown = "-" if t.value is None else _fmt(t.value)
        out(f"   target {t.target.label}: {t.verdict} ({shown})")
    for note in result.notes:
        out(f"   note: {note}")


def results_json(
    results: Sequence[FigureResult], *, rounds: int | None, quick: bool, argv: Sequence[str]
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
            "chart": f.chart,
            "metrics": {m.name: {"unit": m.unit, "higher_is_better": m.higher_is_better,
                                 "title": m.title} for m in f.metrics},
            "status": r.status,
            "reason": r.reason,
            "notes": r.notes,
            "rounds": r.rounds,
            "work": r.work,
            "seconds": round(r.seconds, 3),
            "load_average": list(r.load),
            "contestants": {
                c.name: {
                    "ours": c.ours,
                    "work": c.work,
                    "samples": c.samples,
                    **c.summary.as_dict(),
                    "extra": {name: {"samples": values, **Summary.of(values).as_dict()}
                              for name, values in c.extra.items() if values},
                }
                for c in r.contestants
            },
            "ratios": [
                {
                    "ours": x.ours,
                    "peer": x.peer,
                    "metric": x.metric,
                    "definition": x.definition,
                    "per_round": x.per_round,
                    **x.summary.as_dict(),
                }
                for x in r.ratios
            ],
            "targets": [
                {"label": t.target.label, "ours": t.target.ours, "peer": t.target.peer,
                 "metric": t.target.metric, "at_least": t.target.at_least,
                 "at_most": t.target.at_most, "value": t.value, "met": t.met}
                for t in r.targets
            ],
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


def _machine_line(data: dict[str, Any]) -> str:
    env = data["environment"]
    dists = ", ".join(f"{k} {v}" for k, v in env["distributions"].items() if v)
    extras = [x for x in (env.get("openssl"), env.get("mosquitto") and
                          f"mosquitto {env['mosquitto']}") if x]
    return (f"{env.get('cpu_model') or env['machine']}, {env['cpu_count']} cores; "
            f"{env['implementation']} {env['python']} on {env['platform']}; {dists}"
            + (f"; {', '.join(extras)}" if extras else "") + ".")


def summary_rows(results: Sequence[FigureResult]) -> list[list[str]]:
    """One row per (figure, metric, ours, peer): what the summary tables show."""
    rows: list[list[str]] = []
    for r in results:
        f = r.figure
        if r.status != "ok":
            rows.append([f.name, "", f"**{r.status}**: {r.reason[:120]}", "", "", "", ""])
            continue
        compared = set()
        for x in r.ratios:
            ours, peer = r.contestant(x.ours), r.contestant(x.peer)
            if ours is None or peer is None:
                continue
            compared.add(x.ours)
            s = x.summary
            unit = _metric_unit(f, x.metric)
            rows.append([
                _metric_label(f, x.metric), unit, x.ours,
                _fmt(statistics.median(ours.metric(x.metric))), x.peer,
                _fmt(statistics.median(peer.metric(x.metric))),
                f"**{_fmt_ratio(s.median)}** ({_fmt_ratio(s.min)}-{_fmt_ratio(s.max)})",
            ])
        for c in r.contestants:
            if c.ours and c.name not in compared:
                for metric in [None, *(m.name for m in f.metrics)]:
                    samples = c.metric(metric)
                    if samples:
                        rows.append([_metric_label(f, metric), _metric_unit(f, metric), c.name,
                                     _fmt(statistics.median(samples)), "-", "-", "-"])
    return rows


def _summary_table(results: Sequence[FigureResult]) -> list[str]:
    rows = summary_rows(results)
    if not rows:
        return []
    lines = ["| figure | unit | ours | ours (median) | peer | peer (median) "
             "| advantage, median (min-max) |",
             "|---|---|---|---:|---|---:|---:|"]
    lines += ["| " + " | ".join(_md_escape(cell) for cell in row) + " |" for row in rows]
    return [*lines, ""]


def _targets_table(results: Sequence[FigureResult]) -> list[str]:
    targets = [(r, t) for r in results for t in r.targets]
    if not targets:
        return []
    lines = ["| target | figure | measured | verdict |", "|---|---|---:|---|"]
    for r, t in targets:
        measured = "-" if t.value is None else (
            _fmt_ratio(t.value) if t.target.peer is not None
            else f"{_fmt(t.value)} {_metric_unit(r.figure, t.target.metric)}")
        verdict = {True: "met", False: "**missed**", None: "not measured"}[t.met]
        lines.append(f"| {_md_escape(t.target.label)} | {r.figure.name} | {measured} | "
                     f"{verdict} |")
    return [*lines, ""]


def results_markdown(results: Sequence[FigureResult], data: dict[str, Any]) -> str:
    lines = [
        "# Benchmark results",
        "",
        f"Generated {data['generated']} by `{' '.join(data['command'])}`.  ",
        f"Machine: {_machine_line(data)}",
        "",
        "Contestants run in alternation (A B A B ...), one sample each per round.  The "
        "advantage of ours over each peer is computed within each round (ours / peer when "
        "higher is better, peer / ours when lower is better), then summarised: above 1 means "
        "ours is better.",
        "",
        *_summary_table(results),
        *_targets_table(results),
    ]
    for r in results:
        f = r.figure
        lines += [f"## {f.name}: {_md_escape(f.title)}", ""]
        if r.status != "ok":
            lines += [f"**{r.status}**: {_md_escape(r.reason)}", ""]
        else:
            better = "higher" if f.higher_is_better else "lower"
            lines += [
                f"{r.rounds} rounds, work {r.work:,} per run; unit {f.unit}, {better} is better; "
                f"{f.clock} clock; {r.seconds:.1f} s; 1-minute load average "
                f"{r.load[0]:.1f} before, {r.load[1]:.1f} after.",
                "",
            ]
            columns: list[tuple[str | None, str]] = [(None, f.unit)]
            columns += [(m.name, f"{m.name} ({m.unit})") for m in f.metrics
                        if any(c.metric(m.name) for c in r.contestants)]
            lines += ["| contestant | work | " + " | ".join(
                          f"{_md_escape(what)}: median (min-max)" for _, what in columns) + " |",
                      "|---|---:|" + "---:|" * len(columns)]
            for c in r.contestants:
                cells = []
                for metric, _ in columns:
                    samples = c.metric(metric)
                    if samples:
                        m = Summary.of(samples)
                        cells.append(f"{_fmt(m.median)} ({_fmt(m.min)}-{_fmt(m.max)})")
                    else:
                        cells.append("-")
                lines.append(f"| {_md_escape(_display_name(c))} | {c.work:,} | "
                             + " | ".join(cells) + " |")
            lines.append("")
            if r.ratios:
                lines += ["| advantage | per-round median | min | max |",
                          "|---|---:|---:|---:|"]
                for x in r.ratios:
                    s = x.summary
                    what = "" if x.metric is None else f" [{x.metric}]"
                    lines.append(
                        f"| {x.ours} vs {x.peer}{what} ({x.definition}) | "
                        f"{_fmt_ratio(s.median)} | {_fmt_ratio(s.min)} | {_fmt_ratio(s.max)} |"
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


def readme_block(results: Sequence[FigureResult], data: dict[str, Any],
                 chart: str | None, seconds: float) -> str:
    """The README's benchmark block: date, machine, chart, summary and targets."""
    date = data["generated"][:10]
    loads = [x for r in results for x in r.load]
    busy = (f"  The 1-minute load average went from {min(loads):.1f} to {max(loads):.1f} "
            "during the run (2 means both cores busy before the benchmark's own work): "
            "the figures are noisy, the per-round advantages less so."
            if loads else "")
    lines = [
        README_BEGIN,
        "",
        f"Results of `make bench` ({seconds / 60:.1f} min) on {date}: "
        f"{_machine_line(data)}{busy}  `make bench` also writes `bench-results.md` (what "
        f"each figure measures, every figure's samples and notes) and `bench-results.json` "
        f"(the raw samples); the repository carries the latest of all three.",
        "",
    ]
    if chart:
        lines += [f"![throughput and latency against the peers]({chart})", ""]
    lines += [*_summary_table(results), *_targets_table(results), README_END]
    return "\n".join(lines)


def update_readme(path: Path, block: str) -> bool:
    """Replace the text between the benchmark markers of ``path`` (re-read just
    before writing: other sections may be edited concurrently).  False when the
    markers are missing."""
    text = path.read_text(encoding="utf-8")
    start, end = text.find(README_BEGIN), text.find(README_END)
    if start < 0 or end < start:
        return False
    new = text[:start] + block + text[end + len(README_END):]
    if new != text:
        path.write_text(new, encoding="utf-8")
    return True


def _draw_chart(results: Sequence[FigureResult], data: dict[str, Any]) -> str | None:
    try:
        from bench._chart import draw
    except ImportError as exc:
        print(f"warning: no chart ({exc}); `pip install -e '.[bench]'` installs matplotlib",
              file=sys.stderr)
        return None
    try:
        env = data["environment"]
        subtitle = (f"{data['generated'][:10]}: {env.get('cpu_model') or env['machine']}, "
                    f"{env['cpu_count']} cores, {env['implementation']} {env['python']}")
        drawn = draw(results, Path(CHART_NAME), subtitle=subtitle)
    except ImportError as exc:
        print(f"warning: no chart ({exc}); `pip install -e '.[bench]'` installs matplotlib",
              file=sys.stderr)
        return None
    return CHART_NAME if drawn else None



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
        description="Benchmark iotdev against its peers; writes bench-results.json, "
        f"bench-results.md and bench-results.png in the current directory.  Figures: {names}.",
    )
    parser.add_argument(
        "--only", nargs="+", metavar="NAME", action="extend",
        help="run only these figures (repeatable)",
    )
    parser.add_argument(
        "--rounds", type=_positive, metavar="N",
        help=f"alternating rounds per figure (default {DEFAULT_ROUNDS}, or the figure's "
        f"own when smaller; {QUICK_ROUNDS} with --quick)",
    )
    parser.add_argument(
        "--quick", action="store_true",
        help="fewer rounds and shorter runs: a smoke test of the machinery, not a measurement",
    )
    parser.add_argument(
        "--readme", type=Path, metavar="PATH",
        help="after a complete run (no --only, no --quick, every figure ok), replace the "
        "benchmark block of this README (between its bench:begin/bench:end markers)",
    )
    parser.add_argument(
        "--no-chart", action="store_true", help="do not draw bench-results.png",
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
        error.  Missed targets do not change the exit status (they are
        findings, reported).
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

    def progress(text: str) -> None:
        print(f"   ... {text}", file=sys.stderr, flush=True)

    started = time.perf_counter()
    results = []
    for figure in selected:
        rounds = figure_rounds(figure, explicit=args.rounds, quick=args.quick)
        result = run_figure(figure, rounds=rounds, quick=args.quick, progress=progress)
        print_result(result)
        sys.stdout.flush()
        results.append(result)
    seconds = time.perf_counter() - started

    data = results_json(results, rounds=args.rounds, quick=args.quick, argv=args_list)
    data["import_errors"] = broken
    data["seconds"] = round(seconds, 1)
    Path(JSON_NAME).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    Path(MARKDOWN_NAME).write_text(results_markdown(results, data), encoding="utf-8")
    chart = None if args.no_chart else _draw_chart(results, data)
    written = f"{JSON_NAME}, {MARKDOWN_NAME}" + (f" and {chart}" if chart else "")
    print(f"\nwrote {written} in {Path.cwd()} ({seconds:.0f} s of figures)")
    missed = [t for r in results for t in r.targets if t.met is False]
    if missed:
        print("targets missed: " + "; ".join(t.target.label for t in missed))
    failed = any(r.status == "error" for r in results)
    if args.readme is not None:
        complete = not args.only and not args.quick and not broken and all(
            r.status == "ok" for r in results)
        if not complete:
            print(f"{args.readme} not updated: only a complete run (no --only, no --quick, "
                  "every figure ok) goes into it")
        elif update_readme(args.readme, readme_block(results, data, chart, seconds)):
            print(f"updated the benchmark block of {args.readme}")
        else:
            print(f"warning: {args.readme} has no benchmark markers ({README_BEGIN} ... "
                  f"{README_END}); not updated", file=sys.stderr)
    if args.quick:
        print("(--quick: a smoke test of the machinery; the figures are not measurements)")
    # A broken figure module fails a full run; with --only it may not be involved.
    return 1 if failed or (broken and not args.only) else 0
