"""Inputs that once broke a fuzz target's invariants, replayed through the target.

Each vector is the (shrunk) crash input of ``python -m fuzz`` with the fix it
led to; the target raises ``AssertionError`` (message tagged with the broken
invariant) if the bug comes back.  The checked-in corpus of every target
(``fuzz/corpus/<target>/``) and its seeds must pass as well, so that a change
that breaks an invariant on a known input fails here, not only in a campaign.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from fuzz import store
from fuzz.corpus import load_vectors
from fuzz.engine import CRASH_DIR, MIN_MUTATIONS, read_crash, target_of_crash, target_seeds
from fuzz.registry import Target, load_targets

TARGETS: dict[str, Target] = load_targets()

# (target, input as hex, what was wrong and where it was fixed)
REGRESSIONS: list[tuple[str, str, str]] = [
    (
        "http-response",
        # GET twice on one connection; the server answers the first request
        # ("HTTP/1.1 200\nContent-Length:2\n\n}H") and sends "T" before EOF.
        "04485454502f312e31203230300a436f6e74656e742d4c656e6774683a320a0a7d4854",
        "iotdev/transport/_http.py HTTPConnection._read_response: bytes the server sent "
        "after a keep-alive response and before the next request were ignored when an EOF "
        "followed, so whether the request was resent on a new connection depended on how "
        "the reads split the bytes",
    ),
]


@pytest.mark.parametrize(("name", "hexdata", "fix"), REGRESSIONS,
                         ids=[f"{name}-{i}" for i, (name, _, _) in enumerate(REGRESSIONS)])
def test_fuzz_regression(name: str, hexdata: str, fix: str) -> None:
    label = TARGETS[name].fn(bytes.fromhex(hexdata))
    assert isinstance(label, str) and label


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_checked_in_corpus_and_seeds_pass(name: str) -> None:
    target = TARGETS[name]
    inputs = store.load(target) + ([] if target.shared_seeds else target_seeds(target, 0))
    assert inputs, f"fuzz/corpus/{name}/ is empty: run python -m fuzz --merge-corpus"
    for data in inputs:
        target.fn(data)


def test_checked_in_corpus_stays_small() -> None:
    for target in TARGETS.values():
        files = list(store.corpus_dir(target).iterdir())
        assert len(files) <= store.MAX_FILES
        assert sum(p.stat().st_size for p in files) <= store.MAX_BYTES


CRASHES = sorted(CRASH_DIR.glob("*.hex"))


def test_every_saved_crash_is_fixed() -> None:
    """Every crash file ``python -m fuzz`` ever wrote (kept in git) replays
    without breaking its target's invariants."""
    assert CRASH_DIR.is_dir(), "fuzz/crashes/ is kept in git (its README.md)"
    broken = []
    for path in CRASHES:
        target = target_of_crash(path, TARGETS)
        try:
            target.fn(read_crash(path))
        except Exception as exc:
            broken.append(f"{path.name}: {type(exc).__name__}: {exc}")
    assert not broken, "saved fuzz crashes still break their targets:\n" + "\n".join(broken)


@pytest.mark.parametrize("name", sorted(n for n, t in TARGETS.items() if t.shared_seeds))
def test_shared_vectors_through_every_target(name: str) -> None:
    """Every vector of the shared reference (fuzz/vectors.txt) keeps each MQTT
    target's invariants, and so does their concatenation (one stream)."""
    vectors = load_vectors()
    assert len(vectors) >= 50
    target = TARGETS[name]
    for ident, _direction, data in vectors:
        label = target.fn(data)
        assert isinstance(label, str) and label, ident
    target.fn(b"".join(data for _, _, data in vectors))


def test_fuzz_vectors_are_the_reference_vectors() -> None:
    """fuzz/vectors.txt is a current copy of the shared reference's vectors."""
    reference = json.loads((Path(__file__).parent / "data" / "mqtt-3.1.1-vectors.json")
                           .read_text(encoding="utf-8"))
    ours = {ident: data for ident, _, data in load_vectors()}
    for kind in ("valid", "semantic", "malformed"):
        for vector in reference[kind]:
            assert ours.get(vector["id"]) == bytes.fromhex(vector["hex"]), vector["id"]


def test_a_short_run_still_fuzzes_every_target() -> None:
    """``python -m fuzz`` with almost no time still runs every seed and the
    floor of mutated inputs of each target (it once stopped while loading
    seeds and reported "ok")."""
    result = subprocess.run([sys.executable, "-m", "fuzz", "--engine", "stdlib", "--seconds",
                             "0.01", "--target", "hub-topics", "--target", "sas-token"],
                            capture_output=True, text=True, timeout=300,
                            cwd=Path(__file__).parent.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    for name in ("hub-topics", "sas-token"):
        line = next(x for x in result.stdout.splitlines() if x.startswith(f"{name}: "))
        execs, seeds = (int(v) for v in re.search(r"(\d+) execs.*\((\d+) seeds\)", line).groups())
        assert execs >= seeds + MIN_MUTATIONS, line
