"""The checked-in corpus: ``fuzz/corpus/<target>/<sha1>``, one raw input a file.

Both engines start from it (``make fuzz`` included): the stdlib engine adds
the files to its seeds, atheris passes the directory to libFuzzer as a second,
read-only corpus.  A campaign (``python -m fuzz --campaign``) merges what
libFuzzer found back into it with ``merge``:

* candidates are the files already there plus the new inputs, deduplicated by
  content (the file name is the SHA-1 of the bytes, as libFuzzer names them);
* each candidate runs once through its target under ``sys.settrace``; its
  *features* are the line-to-line arcs it takes in the target's
  ``instrument`` modules, plus its outcome label.  An input that breaks an
  invariant is left out (it belongs in ``fuzz/crashes``);
* a greedy set cover keeps the inputs that add the most features not yet
  covered (ties: the shorter input), until nothing new is added or a cap is
  reached: ``MAX_FILES`` files, ``MAX_BYTES`` in all, ``MAX_FILE`` each.

So the directory stays small (at most 200 files and 1 MiB a target) and only
changes when a campaign found behaviour it did not cover.
"""

from __future__ import annotations

import hashlib
import heapq
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

from .registry import Target

__all__ = ["CORPUS_DIR", "MAX_BYTES", "MAX_FILE", "MAX_FILES", "MergeReport", "corpus_dir",
           "features", "load", "merge", "module_files"]

CORPUS_DIR = Path(__file__).with_name("corpus")
MAX_FILES = 200
MAX_BYTES = 1 << 20
MAX_FILE = 64 * 1024

Feature = tuple[str, int, int] | str


def corpus_dir(target: Target) -> Path:
    """Where the checked-in inputs of ``target`` live."""
    return CORPUS_DIR / target.name


def _name(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()


def load(target: Target) -> list[bytes]:
    """The checked-in inputs of ``target``, in file-name order (none: ``[]``)."""
    folder = corpus_dir(target)
    if not folder.is_dir():
        return []
    return [p.read_bytes() for p in sorted(folder.iterdir())
            if p.is_file() and not p.name.startswith(".")]


def module_files(names: Iterable[str]) -> set[str]:
    """Source files of the loaded modules named (a package: with its submodules)."""
    files = set()
    for name in names:
        for mod_name, module in list(sys.modules.items()):
            if mod_name == name or mod_name.startswith(name + "."):
                path = getattr(module, "__file__", None) if isinstance(module, ModuleType) \
                    else None
                if path:
                    files.add(path)
    return files


def features(target: Target, data: bytes, files: set[str]) -> frozenset[Feature] | None:
    """Arcs taken in ``files`` and the outcome label; ``None`` when ``data`` breaks
    an invariant."""
    arcs: set[Feature] = set()

    def tracer(frame: FrameType, event: str, arg: Any) -> Any:
        filename = frame.f_code.co_filename
        if filename not in files:
            return None
        last = -frame.f_lineno  # an arc from "entered here" to the first line

        def local(frame: FrameType, event: str, arg: Any) -> Any:
            nonlocal last
            if event == "line":
                line = frame.f_lineno
                arcs.add((filename, last, line))
                last = line
            return local

        return local

    old = sys.gettrace()
    sys.settrace(tracer)
    try:
        label = target.fn(data)
    except Exception:
        return None
    finally:
        sys.settrace(old)
    arcs.add("label " + label)
    return frozenset(arcs)


@dataclass(frozen=True, slots=True)
class MergeReport:
    """What ``merge`` did to one target's directory."""

    target: str
    candidates: int
    kept: int
    bytes: int
    features: int
    added: int
    removed: int
    breaking: int

    def summary(self) -> str:
        return (f"{self.target}: corpus {self.kept} files, {self.bytes} bytes, "
                f"{self.features} features ({self.added} added, {self.removed} removed; "
                f"{self.candidates} candidates, {self.breaking} breaking left out)")


def merge(
    target: Target,
    candidates: Iterable[bytes],
    *,
    max_files: int = MAX_FILES,
    max_bytes: int = MAX_BYTES,
    max_file: int = MAX_FILE,
) -> MergeReport:
    """Merge ``candidates`` into ``fuzz/corpus/<target>/`` (see the module docstring)."""
    folder = corpus_dir(target)
    before = {p.name: p for p in folder.iterdir() if p.is_file()} if folder.is_dir() else {}
    pool: dict[str, bytes] = {}
    for data in [*load(target), *candidates]:
        if len(data) <= max_file:
            pool.setdefault(_name(data), data)
    files = module_files(target.instrument)
    feats: dict[str, frozenset[Feature]] = {}
    breaking = 0
    for name, data in pool.items():
        found = features(target, data, files)
        if found is None:
            breaking += 1
        else:
            feats[name] = found
    heap = [(-len(f), len(pool[name]), name) for name, f in feats.items()]
    heapq.heapify(heap)
    covered: set[Feature] = set()
    chosen: list[str] = []
    total = 0
    while heap and len(chosen) < max_files:
        stale, size, name = heapq.heappop(heap)
        gain = len(feats[name] - covered)
        if gain == 0:
            continue
        if gain < -stale:  # lazy greedy: re-rank with the gain left
            heapq.heappush(heap, (-gain, size, name))
            continue
        if total + size > max_bytes:
            continue
        chosen.append(name)
        covered |= feats[name]
        total += size
    keep = set(chosen)
    folder.mkdir(parents=True, exist_ok=True)
    for name, path in before.items():
        if name not in keep:
            path.unlink()
    for name in chosen:
        if name not in before:
            (folder / name).write_bytes(pool[name])
    return MergeReport(target.name, len(pool), len(chosen), total, len(covered),
                       len(keep - before.keys()), len(before.keys() - keep), breaking)
