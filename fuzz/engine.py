"""The fuzz engines, crash files and reproduction.

* ``run_stdlib``: a mutation fuzzer on ``random.Random``.  The corpus starts as
  the seed inputs; a mutant that produces an outcome label not seen before
  joins it, so the search spreads over packet types and error rules.
* ``run_atheris``: coverage-guided libFuzzer through atheris, when installed;
  ``iotdev_mqtt`` is instrumented as it is imported (so the caller must not
  have imported it yet).  It runs one target per process.

Either way the first invariant breach ends the run: the input is written as hex
to ``fuzz/crashes/<target>-<sha1>.hex`` (and a shrunk copy, when shrinking
finds a shorter input failing the same way), the input and the traceback are
printed, and the exit status is 1.  ``reproduce`` replays a crash file.

Nothing here imports ``iotdev_mqtt`` at module level.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import random
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .registry import Target, TargetFn

__all__ = [
    "CRASH_DIR",
    "Breach",
    "Stats",
    "atheris_available",
    "ignoring",
    "minimize",
    "read_crash",
    "reproduce",
    "run_atheris",
    "run_stdlib",
]

CRASH_DIR = Path(__file__).with_name("crashes")
MAX_CORPUS = 8192


@dataclass(slots=True)
class Breach:
    """The first invariant breach of a run."""

    data: bytes
    exc: BaseException
    path: Path
    small: bytes | None = None
    small_path: Path | None = None


@dataclass(slots=True)
class Stats:
    """What a run of one target did."""

    target: str
    engine: str
    seed: int
    execs: int = 0
    seconds: float = 0.0
    outcomes: Counter[str] = field(default_factory=Counter)
    seeds: int = 0
    corpus: int = 0
    breach: Breach | None = None

    def summary(self) -> str:
        """One line: executions, executions/s, distinct outcome classes, verdict."""
        rate = self.execs / self.seconds if self.seconds > 0 else 0.0
        verdict = "BREACH" if self.breach else "ok"
        return (
            f"{self.target}: {verdict}, {self.execs} execs in {self.seconds:.1f} s "
            f"({rate:.0f}/s), {len(self.outcomes)} outcome classes, corpus {self.corpus} "
            f"({self.seeds} seeds) [{self.engine}, seed {self.seed}]"
        )


def atheris_available() -> bool:
    """Whether ``import atheris`` would work."""
    return importlib.util.find_spec("atheris") is not None


# --------------------------------------------------------------------------- breaches


def signature(exc: BaseException) -> tuple[str, str]:
    """What makes two failures "the same": exception class and ``[tag]`` (or message)."""
    text = str(exc)
    if text.startswith("[") and "]" in text:
        text = text[: text.index("]") + 1]
    return type(exc).__name__, text


def _fails(fn: TargetFn, data: bytes) -> BaseException | None:
    try:
        fn(data)
    except Exception as exc:
        return exc
    return None


def minimize(fn: TargetFn, data: bytes, want: tuple[str, str], budget: float = 3.0) -> bytes:
    """A shorter input that fails ``fn`` with the same signature (greedy chunk removal)."""
    deadline = time.monotonic() + budget
    best = data
    chunk = max(1, len(best) // 2)
    while time.monotonic() < deadline:
        progressed = False
        i = 0
        while i < len(best) and time.monotonic() < deadline:
            candidate = best[:i] + best[i + chunk :]
            exc = _fails(fn, candidate)
            if exc is not None and signature(exc) == want:
                best = candidate
                progressed = True
            else:
                i += chunk
        if not progressed:
            if chunk == 1:
                break
            chunk = max(1, chunk // 2)
    return best


def _write_crash(name: str, data: bytes) -> Path:
    CRASH_DIR.mkdir(parents=True, exist_ok=True)
    path = CRASH_DIR / f"{name}-{hashlib.sha1(data).hexdigest()}.hex"
    path.write_text(data.hex() + "\n", encoding="ascii")
    return path


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def record_breach(target: Target, data: bytes, exc: BaseException) -> Breach:
    """Write the crash file(s) and print the breach; return what was written."""
    breach = Breach(data, exc, _write_crash(target.name, data))
    want = signature(exc)
    small = minimize(target.fn, data, want)
    if len(small) < len(data):
        breach.small = small
        breach.small_path = _write_crash(target.name, small)
    out = sys.stdout
    print(f"\nINVARIANT BREACH in target {target.name!r}: {type(exc).__name__}", file=out)
    print(f"input ({len(data)} bytes): {data.hex()}", file=out)
    print(f"written to {_display(breach.path)}", file=out)
    if breach.small is not None and breach.small_path is not None:
        print(f"shrunk ({len(breach.small)} bytes): {breach.small.hex()}", file=out)
        print(f"written to {_display(breach.small_path)}", file=out)
    print(f"reproduce: python -m fuzz --reproduce {_display(breach.small_path or breach.path)}",
          file=out)
    print("".join(traceback.format_exception(exc)), file=out)
    out.flush()
    return breach


def read_crash(path: Path) -> bytes:
    """The input of a crash file: hex, whitespace and ``#`` comment lines ignored."""
    lines = path.read_text(encoding="ascii").splitlines()
    return bytes.fromhex("".join(line for line in lines if not line.lstrip().startswith("#")))


def target_of_crash(path: Path, targets: dict[str, Target]) -> Target:
    """The target a crash file belongs to, from its ``<target>-<sha1>.hex`` name.

    Raises:
        KeyError: no registered target prefixes the name.
    """
    stem = path.name
    matches = [t for name, t in targets.items() if stem.startswith(name + "-")]
    if not matches:
        raise KeyError(f"{path.name}: no target named by the file; pass --target")
    return max(matches, key=lambda t: len(t.name))


def reproduce(target: Target, data: bytes) -> int:
    """Run ``target`` once on ``data``; print the outcome. Returns the exit status."""
    print(f"{target.name}: {len(data)} bytes: {data.hex()}")
    try:
        label = target.fn(data)
    except Exception as exc:
        print("INVARIANT BREACH:")
        traceback.print_exception(exc, file=sys.stdout)
        return 1
    print(f"no breach; outcome: {label}")
    return 0


# --------------------------------------------------------------------------- stdlib


def ignoring(fn: TargetFn, tags: Sequence[str]) -> TargetFn:
    """``fn`` with breaches tagged ``[tag]`` for a tag of ``tags`` turned into outcomes.

    For known, reported bugs: the run goes on looking for others.  The label is
    ``"ignored [tag]"``.
    """
    if not tags:
        return fn
    prefixes = tuple(f"[{tag}]" for tag in tags)

    def wrapped(data: bytes) -> str:
        try:
            return fn(data)
        except AssertionError as exc:
            text = str(exc)
            if text.startswith(prefixes):
                return "ignored " + text[: text.index("]") + 1]
            raise

    return wrapped


def run_stdlib(
    target: Target,
    seconds: float,
    seed: int,
    *,
    max_len: int = 4096,
    verbose: bool = False,
    ignore: Sequence[str] = (),
) -> Stats:
    """Fuzz ``target`` for ``seconds`` with the stdlib mutator (stops at the first breach)."""
    from .corpus import seed_corpus
    from .mutator import Mutator

    start = time.monotonic()
    deadline = start + seconds
    rng = random.Random(seed)
    stats = Stats(target.name, "stdlib", seed)
    seeds = seed_corpus(random.Random(seed))
    if target.seeds is not None:
        seeds += [s for s in target.seeds() if s not in seeds]
    stats.seeds = len(seeds)
    corpus: list[bytes] = []
    found: list[bytes] = []  # inputs that showed a new outcome
    fn = ignoring(target.fn, ignore)
    outcomes = stats.outcomes

    def finish() -> Stats:
        stats.seconds = time.monotonic() - start
        stats.corpus = len(corpus)
        return stats

    for data in seeds:
        if time.monotonic() >= deadline:
            return finish()
        stats.execs += 1
        try:
            label = fn(data)
        except Exception as exc:
            stats.breach = record_breach(target, data, exc)
            return finish()
        outcomes[label] += 1
        corpus.append(data)
    mutator = Mutator(rng, max_len)
    mutate = mutator.mutate
    choice = rng.choice
    random_ = rng.random
    monotonic = time.monotonic
    while monotonic() < deadline:
        parent = choice(found) if found and random_() < 0.5 else choice(corpus)
        data = mutate(parent, corpus)
        stats.execs += 1
        try:
            label = fn(data)
        except Exception as exc:
            stats.breach = record_breach(target, data, exc)
            return finish()
        if label not in outcomes:
            if verbose:
                print(f"  {target.name}: new outcome after {stats.execs} execs: {label}")
            if len(corpus) >= MAX_CORPUS:
                corpus[rng.randrange(stats.seeds, MAX_CORPUS)] = data
            else:
                corpus.append(data)
            found.append(data)
        outcomes[label] += 1
    return finish()


# --------------------------------------------------------------------------- atheris


def instrument_codec() -> Any:
    """Import atheris, then ``iotdev_mqtt`` under its instrumentation; return atheris."""
    atheris: Any = importlib.import_module("atheris")
    if "iotdev_mqtt" in sys.modules:
        raise RuntimeError("iotdev_mqtt was imported before atheris could instrument it")
    with atheris.instrument_imports(include=["iotdev_mqtt"]):
        importlib.import_module("iotdev_mqtt")
    return atheris


def run_atheris(
    target: Target,
    seconds: float,
    seed: int,
    *,
    max_len: int = 4096,
    ignore: Sequence[str] = (),
    atheris: Any = None,
    report: Callable[[Stats], None] = lambda s: print(s.summary()),
) -> None:
    """Fuzz ``target`` with atheris for ``seconds``, then end the process.

    Never returns: prints the summary (``report``) and exits 0 at the deadline,
    or records the breach and exits 1.  ``atheris`` is the module returned by
    ``instrument_codec()``, called first when ``None``.
    """
    if atheris is None:
        atheris = instrument_codec()
    from .corpus import seed_corpus

    start = time.monotonic()
    deadline = start + seconds
    stats = Stats(target.name, "atheris", seed)
    seeds = seed_corpus(random.Random(seed))
    if target.seeds is not None:
        seeds += [s for s in target.seeds() if s not in seeds]
    stats.seeds = len(seeds)
    fn = ignoring(target.fn, ignore)
    workdir = Path(tempfile.mkdtemp(prefix=f"fuzz-{target.name}-"))
    corpus_dir = workdir / "corpus"
    corpus_dir.mkdir()
    for data in seeds:
        (corpus_dir / hashlib.sha1(data).hexdigest()).write_bytes(data)
    outcomes = stats.outcomes

    def end(status: int) -> None:
        stats.seconds = time.monotonic() - start
        stats.corpus = len(os.listdir(corpus_dir))
        report(stats)
        sys.stdout.flush()
        sys.stderr.flush()
        shutil.rmtree(workdir, ignore_errors=True)
        os._exit(status)

    def test_one_input(data: bytes) -> None:
        # -max_len would switch off libFuzzer's growing length limit: cut here instead.
        data = data[:max_len]
        stats.execs += 1
        try:
            label = fn(data)
        except Exception as exc:
            stats.breach = record_breach(target, data, exc)
            end(1)
        outcomes[label] += 1
        if time.monotonic() >= deadline:
            end(0)

    argv = [
        sys.argv[0],
        f"-seed={seed % (1 << 31) or 1}",
        f"-max_total_time={int(seconds) + 10}",
        "-timeout=20",
        "-print_final_stats=0",
        f"-artifact_prefix={workdir}/",
        str(corpus_dir),
    ]
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()
    end(0)
