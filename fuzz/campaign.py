"""Running the atheris engine: one child process per target, figures from its stderr.

atheris (libFuzzer) ends the process it runs in, so ``python -m fuzz`` starts
``python -m fuzz --engine atheris --target NAME`` once per target, one after
the other.  ``run_child`` does that: libFuzzer's status lines (``#N NEW cov: C
ft: F corp: K/Sb ... exec/s: E``) are read from the child's stderr and kept
out of the terminal (``--verbose`` shows them), the child's own figures
(executions, outcome classes, new inputs) come back as JSON, and an input that
libFuzzer itself flagged (a timeout or out-of-memory, which end the process
outside Python) is saved as a crash file.

``cov`` is libFuzzer's count of covered edges of the instrumented code and
``ft`` its count of features (edges with hit-count buckets, comparisons);
both only grow during a run.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .engine import _display, _write_crash
from .registry import Target
from .store import MergeReport

__all__ = ["ChildResult", "markdown_table", "run_child"]

ROOT = Path(__file__).resolve().parent.parent
_STATUS = re.compile(r"^#(\d+)\s+\S+\s+cov: (\d+) ft: (\d+) corp: (\d+)/(\d+\w*)")
_ARTIFACT = re.compile(r"Test unit written to (\S+)")
_NOISE = ("INFO:", "WARNING: Failed to find function", "#", "MS:", "Done ", "Dictionary:", "\n")


@dataclass(slots=True)
class ChildResult:
    """One target's atheris run as the parent saw it."""

    target: str
    status: int
    seconds: float = 0.0
    execs: int = 0
    outcomes: int = 0
    seeds: int = 0
    new: int = 0
    cov: int | None = None
    ft: int | None = None
    corpus: int | None = None
    corpus_size: str | None = None
    crash: str | None = None
    merged: MergeReport | None = None

    @property
    def ran_enough(self) -> bool:
        """The child reported its figures, and ran its seeds plus the floor of
        mutated inputs (``engine.MIN_MUTATIONS``)."""
        from .engine import MIN_MUTATIONS

        return self.execs >= self.seeds + MIN_MUTATIONS

    @property
    def rate(self) -> float:
        return self.execs / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        verdict = "BREACH" if self.crash else f"FAILED (exit status {self.status})" \
            if self.status else "ok" if self.ran_enough else \
            f"FAILED (ran only {self.execs} inputs)"
        figures = "cov -, ft - (libFuzzer still loading the corpus)" if self.cov is None \
            else f"cov {self.cov}, ft {self.ft}"
        text = (f"{self.target}: {verdict}, {self.execs} execs in {self.seconds:.1f} s "
                f"({self.rate:.0f}/s), {figures}, "
                f"{self.outcomes} outcome classes, corpus {self.corpus or '-'} "
                f"({self.seeds} seeds, {self.new} new) [atheris]")
        if self.crash:
            text += f"; crash: {self.crash}"
        return text


def run_child(
    target: Target,
    seconds: float,
    seed: int,
    *,
    max_len: int = 4096,
    ignore: Sequence[str] = (),
    verbose: bool = False,
    keep_corpus: Path | None = None,
) -> ChildResult:
    """Fuzz ``target`` with atheris in a child process for ``seconds``.

    Args:
        keep_corpus: a directory to receive the inputs libFuzzer added.

    Returns:
        The figures; ``status`` is the child's exit status (0: no breach).
    """
    with tempfile.TemporaryDirectory(prefix="fuzz-stats-") as tmp:
        stats_path = Path(tmp) / "stats.json"
        cmd = [
            sys.executable, "-m", "fuzz", "--engine", "atheris", "--target", target.name,
            "--seconds", f"{seconds:.2f}", "--seed", str(seed), "--max-len", str(max_len),
            "--stats-json", str(stats_path),
        ]
        if keep_corpus is not None:
            cmd += ["--keep-corpus", str(keep_corpus)]
        for tag in ignore:
            cmd += ["--ignore", tag]
        result = ChildResult(target.name, 0)
        tail: deque[str] = deque(maxlen=60)
        started = time.monotonic()
        proc = subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True,
                                errors="replace")
        # A child stuck outside libFuzzer's own -timeout is killed well after its budget.
        watchdog = threading.Timer(seconds + 120.0, proc.kill)
        watchdog.start()
        try:
            assert proc.stderr is not None
            for line in proc.stderr:
                tail.append(line)
                match = _STATUS.match(line)
                if match:
                    result.cov, result.ft = int(match[2]), int(match[3])
                    result.corpus, result.corpus_size = int(match[4]), match[5]
                if verbose or not line.startswith(_NOISE):
                    sys.stderr.write(line)
            result.status = proc.wait()
        finally:
            watchdog.cancel()
        result.seconds = time.monotonic() - started
        if stats_path.exists():
            stats = json.loads(stats_path.read_text(encoding="utf-8"))
            result.seconds = stats["seconds"]
            result.execs, result.outcomes = stats["execs"], stats["outcomes"]
            result.seeds, result.new, result.crash = stats["seeds"], stats["new"], stats["breach"]
        if result.status and result.crash is None:
            result.crash = _libfuzzer_artifact(target, tail)
            sys.stderr.write("".join(tail))
    return result


def _libfuzzer_artifact(target: Target, tail: Sequence[str]) -> str | None:
    """The input libFuzzer wrote for a timeout or out-of-memory, as a crash file."""
    for line in reversed(tail):
        match = _ARTIFACT.search(line)
        if match:
            try:
                data = Path(match[1]).read_bytes()
            except OSError:
                return None
            return _display(_write_crash(target.name, data))
    return None


def markdown_table(results: Sequence[ChildResult], seconds: float) -> str:
    """The campaign's figures as a Markdown table (as in README.md)."""
    head = (f"| target ({seconds:g} s each) | execs | exec/s | cov | ft | outcome classes "
            "| corpus (libFuzzer) | kept in `fuzz/corpus/` | crashes |")
    rows = [head, "|" + "---|" * 9]
    for r in results:
        kept = "-" if r.merged is None else f"{r.merged.kept} files, {r.merged.bytes} B"
        rows.append(
            f"| `{r.target}` | {r.execs:,} | {r.rate:,.0f} | {r.cov} | {r.ft} | {r.outcomes} "
            f"| {r.corpus} | {kept} | {1 if r.crash or r.status else 0} |"
        )
    return "\n".join(rows)
