"""Inputs that once broke a fuzz target's invariants, replayed through the target.

Each vector is the (shrunk) crash input of ``python -m fuzz`` with the fix it
led to; the target raises ``AssertionError`` (message tagged with the broken
invariant) if the bug comes back.  The checked-in corpus of every target
(``fuzz/corpus/<target>/``) and its seeds must pass as well, so that a change
that breaks an invariant on a known input fails here, not only in a campaign.
"""

from __future__ import annotations

import pytest

from fuzz import store
from fuzz.engine import target_seeds
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
