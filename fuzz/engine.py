"""The fuzz engines, crash files and reproduction.

* ``run_stdlib``: a mutation fuzzer on ``random.Random``.  The corpus starts as
  the seed inputs; a mutant that produces an outcome label not seen before
  joins it, so the search spreads over packet types and error rules.
* ``run_atheris``: coverage-guided libFuzzer through atheris, when installed.
  ``instrument_modules`` instruments the functions of the target's
  ``instrument`` modules in place (after import, before fuzzing).  It runs one
  target per process: libFuzzer ends the process.  ``campaign.py`` starts
  those processes and reads libFuzzer's figures from their stderr.

Both start from the target's seeds and its checked-in corpus
(``fuzz/corpus/<target>/``, see ``store.py``).

Either way the first invariant breach ends the run: the input is written as hex
to ``fuzz/crashes/<target>-<sha1>.hex`` (and a shrunk copy, when shrinking
finds a shorter input failing the same way), the input and the traceback are
printed, and the exit status is 1.  ``reproduce`` replays a crash file.

Nothing here imports the code under test at module level.
"""

from __future__ import annotations

import gc
import hashlib
import importlib
import importlib.util
import json
import os
import random
import shutil
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FunctionType
from typing import Any

from . import store
from .registry import Target, TargetFn

__all__ = [
    "CRASH_DIR",
    "Breach",
    "Stats",
    "atheris_available",
    "ignoring",
    "instrument_modules",
    "minimize",
    "read_crash",
    "reproduce",
    "run_atheris",
    "run_stdlib",
]

CRASH_DIR = Path(__file__).with_name("crashes")
MAX_CORPUS = 8192
MIN_MUTATIONS = 256
"""Mutated inputs every target runs past its seeds and corpus, whatever its time
budget: a short run (``make test`` gives each target about 2 s) still fuzzes
every target, instead of ending while it loads its seeds."""


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

    @property
    def ran_enough(self) -> bool:
        """Every seed and at least ``MIN_MUTATIONS`` mutated inputs ran."""
        return self.execs >= self.seeds + MIN_MUTATIONS

    def summary(self) -> str:
        """One line: executions, executions/s, distinct outcome classes, verdict."""
        rate = self.execs / self.seconds if self.seconds > 0 else 0.0
        verdict = "BREACH" if self.breach else "ok" if self.ran_enough else \
            f"FAILED (ran {self.execs} inputs, fewer than its {self.seeds} seeds + " \
            f"{MIN_MUTATIONS} mutations)"
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


def target_seeds(target: Target, seed: int) -> list[bytes]:
    """The generated seeds of ``target``: the shared MQTT corpus (unless
    ``shared_seeds=False``) and its own, deduplicated, in a stable order."""
    seeds: list[bytes] = []
    if target.shared_seeds:
        from .corpus import seed_corpus

        seeds = seed_corpus(random.Random(seed))
    if target.seeds is not None:
        seeds += list(target.seeds())
    return list(dict.fromkeys(seeds))


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
    from .mutator import Mutator

    start = time.monotonic()
    deadline = start + seconds
    rng = random.Random(seed)
    stats = Stats(target.name, "stdlib", seed)
    seeds = target_seeds(target, seed) + store.load(target)
    seeds = list(dict.fromkeys(seeds))
    stats.seeds = len(seeds)
    corpus: list[bytes] = []
    found: list[bytes] = []  # inputs that showed a new outcome
    fn = ignoring(target.fn, ignore)
    outcomes = stats.outcomes

    def finish() -> Stats:
        stats.seconds = time.monotonic() - start
        stats.corpus = len(corpus)
        return stats

    for data in seeds:  # every one, whatever the time: they are the known inputs
        stats.execs += 1
        try:
            label = fn(data)
        except Exception as exc:
            stats.breach = record_breach(target, data, exc)
            return finish()
        outcomes[label] += 1
        corpus.append(data)
    mutator = Mutator(rng, max_len, target.tokens)
    mutate = mutator.mutate
    choice = rng.choice
    random_ = rng.random
    monotonic = time.monotonic
    floor = stats.execs + MIN_MUTATIONS
    while stats.execs < floor or monotonic() < deadline:
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


def instrument_modules(atheris: Any, names: Sequence[str]) -> int:
    """Instrument, in place, every function of the modules ``names`` (a package:
    with its loaded submodules); returns how many.

    ``atheris.instrument_func`` rewrites a function's ``__code__``, nested code
    objects included, so references taken at import time see the instrumented
    code and closures made from now on are instrumented too.  Closures made
    *at import time* (decoder tables built by factories) are function objects
    of their own: they are found with ``gc.get_objects()``.  This costs a
    fraction of ``instrument_imports`` on whole packages (``iotdev`` imports
    its clients, transports and emulator) and keeps libFuzzer's coverage on the
    code the target is about.
    """
    for name in names:
        importlib.import_module(name)
    prefixes = tuple(f"{name}." for name in names)
    count = 0
    for obj in gc.get_objects():
        if isinstance(obj, FunctionType):
            module = obj.__module__
            if isinstance(module, str) and (module in names or module.startswith(prefixes)):
                atheris.instrument_func(obj)
                count += 1
    return count


def _dict_entry(token: bytes) -> str:
    """One libFuzzer dictionary line: the token quoted, other bytes as ``\\xNN``."""
    return '"' + "".join(
        chr(b) if 0x20 <= b < 0x7F and b not in (0x22, 0x5C) else f"\\x{b:02X}" for b in token
    ) + '"'


def run_atheris(
    target: Target,
    seconds: float,
    seed: int,
    *,
    max_len: int = 4096,
    ignore: Sequence[str] = (),
    keep_corpus: Path | None = None,
    stats_json: Path | None = None,
) -> None:
    """Fuzz ``target`` with atheris for ``seconds``, then end the process.

    Never returns: exits 0 at the deadline, or records the breach and exits 1,
    after printing the summary, or writing it as JSON to ``stats_json``
    (``execs``, ``seconds``, ``outcomes``, ``seeds``, ``new``, ``breach``).  The
    inputs libFuzzer added to its corpus are copied to ``keep_corpus`` (for
    ``store.merge``) when given.  Call it before anything else of the target
    runs: the target's ``instrument`` modules are instrumented here.
    """
    atheris: Any = importlib.import_module("atheris")
    instrument_modules(atheris, target.instrument)
    start = time.monotonic()
    deadline = start + seconds
    stats = Stats(target.name, "atheris", seed)
    seeds = target_seeds(target, seed)
    stats.seeds = len(seeds) + len(store.load(target))
    fn = ignoring(target.fn, ignore)
    workdir = Path(tempfile.mkdtemp(prefix=f"fuzz-{target.name}-"))
    corpus_dir = workdir / "corpus"
    corpus_dir.mkdir()
    seeded = set()
    for data in seeds:
        seeded.add(hashlib.sha1(data).hexdigest())
        (corpus_dir / hashlib.sha1(data).hexdigest()).write_bytes(data)
    outcomes = stats.outcomes
    floor = stats.seeds + MIN_MUTATIONS  # libFuzzer runs the corpus first, then mutates

    def end(status: int) -> None:
        stats.seconds = time.monotonic() - start
        new = [p for p in corpus_dir.iterdir() if p.name not in seeded]
        stats.corpus = len(new)
        if keep_corpus is not None:
            keep_corpus.mkdir(parents=True, exist_ok=True)
            for path in new:
                shutil.copyfile(path, keep_corpus / path.name)
        if stats_json is not None:
            stats_json.write_text(json.dumps({
                "execs": stats.execs, "seconds": stats.seconds, "outcomes": len(outcomes),
                "seeds": stats.seeds, "new": len(new),
                "breach": None if stats.breach is None else str(
                    stats.breach.small_path or stats.breach.path),
            }), encoding="utf-8")
        else:
            print(stats.summary())
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
        if time.monotonic() >= deadline and stats.execs >= floor:
            end(0)

    argv = [
        sys.argv[0],
        f"-seed={seed % (1 << 31) or 1}",
        f"-max_total_time={int(seconds) + 60}",  # the floor may need a little longer
        "-timeout=20",
        "-print_final_stats=0",
        f"-artifact_prefix={workdir}/",
    ]
    if target.tokens:
        dict_path = workdir / "tokens.dict"
        dict_path.write_text("\n".join(_dict_entry(t) for t in target.tokens) + "\n",
                             encoding="ascii")
        argv.append(f"-dict={dict_path}")
    argv.append(str(corpus_dir))
    checked_in = store.corpus_dir(target)
    if checked_in.is_dir():
        argv.append(str(checked_in))  # read only: libFuzzer writes to the first directory
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()
    end(0)
