"""``python -m fuzz``: run the fuzz targets for a bounded time, or replay crash files.

Examples (from the repository root)::

    python -m fuzz --seconds 20                    # what `make test` runs
    python -m fuzz --seconds 600 --seed 7 --target reader-server
    python -m fuzz --engine stdlib --verbose       # force the stdlib engine, show new outcomes
    python -m fuzz --campaign 600                  # atheris, 600 s a target, corpus merged
    python -m fuzz --merge-corpus                  # merge the seeds into fuzz/corpus/
    python -m fuzz --reproduce fuzz/crashes/*.hex  # exit 1 if any still breaks
    python -m fuzz --list

``--seconds`` is the total, split between the targets; with atheris each
target runs in a child process (see ``campaign.py``).  ``--campaign N`` gives
every target N seconds of atheris, goes on after a breach, merges the inputs
libFuzzer found into ``fuzz/corpus/<target>/`` (``store.py``) and prints the
figures as a Markdown table.

Every target runs all its seeds and corpus and at least ``MIN_MUTATIONS``
mutated inputs (``engine.py``), however short ``--seconds`` is; a target that
ran less (a child that died, a broken seed loader) fails the run.

Exit status: 0 when no invariant broke and every target ran its floor, 1 on
the first breach (after writing ``fuzz/crashes/<target>-<sha1>.hex``, which is
kept in git and replayed by ``tests/test_fuzz_regressions.py``; a campaign:
after all targets) or a target that ran too little, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

from . import engine
from .registry import Target, load_targets

ROOT = Path(__file__).resolve().parent.parent


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m fuzz",
        description="Fuzz the iotdev_mqtt codec: any bytes give packets or RemoteProtocolError.",
    )
    p.add_argument("--seconds", type=float, default=20.0,
                   help="total time, split evenly between the targets (default 20)")
    p.add_argument("--seed", type=int, default=None,
                   help="seed of the run (default: random, printed so the run can be repeated)")
    p.add_argument("--target", action="append", metavar="NAME",
                   help="fuzz only this target (repeatable; default: all)")
    p.add_argument("--engine", choices=("auto", "stdlib", "atheris"), default="auto",
                   help="atheris when importable, else stdlib (default auto)")
    p.add_argument("--max-len", type=int, default=4096, help="longest input (default 4096)")
    p.add_argument("--reproduce", nargs="+", type=Path, metavar="PATH",
                   help="replay crash files (the target comes from the file name or --target)")
    p.add_argument("--ignore", action="append", default=[], metavar="TAG",
                   help="count breaches tagged [TAG] as outcomes instead of stopping "
                        "(for known, reported bugs; repeatable)")
    p.add_argument("--campaign", type=float, metavar="SECONDS",
                   help="atheris for SECONDS a target, one after another; merge the new "
                        "inputs into fuzz/corpus/ and print a table of the figures")
    p.add_argument("--merge-corpus", action="store_true",
                   help="merge the targets' seeds into fuzz/corpus/ (minimized) and exit")
    p.add_argument("--keep-corpus", type=Path, help=argparse.SUPPRESS)  # atheris child
    p.add_argument("--stats-json", type=Path, help=argparse.SUPPRESS)  # atheris child
    p.add_argument("--list", action="store_true", help="list the targets and exit")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="print each new outcome class, and the outcome table at the end")
    return p


def _reproduce(paths: list[Path], names: list[str] | None) -> int:
    targets = load_targets()
    status = 0
    for path in paths:
        try:
            data = engine.read_crash(path)
            if names:
                if len(names) != 1:
                    print("--reproduce takes at most one --target", file=sys.stderr)
                    return 2
                target = targets[names[0]]
            else:
                target = engine.target_of_crash(path, targets)
        except (OSError, ValueError, KeyError) as exc:
            reason = exc.args[0] if isinstance(exc, KeyError) else exc
            print(f"{path}: {reason}", file=sys.stderr)
            return 2
        print(f"== {path}")
        status = max(status, engine.reproduce(target, data))
    return status


def _atheris_children(names: list[str], args: argparse.Namespace, seed: int, start: float,
                      targets: dict[str, Target]) -> int:
    """One child process per target, the time left split between those to come."""
    from .campaign import run_child

    for index, name in enumerate(names):
        left = args.seconds - (time.monotonic() - start)
        # A child needs about a second to start: leave that out of its budget.
        budget = max(0.5, left / (len(names) - index) - 1.0)
        result = run_child(targets[name], budget, seed, max_len=args.max_len,
                           ignore=args.ignore, verbose=args.verbose)
        print(result.summary(), flush=True)
        if result.status or not result.ran_enough:
            return 1
    return 0


def _campaign(names: list[str], args: argparse.Namespace, seed: int,
              targets: dict[str, Target]) -> int:
    """Every target for ``args.campaign`` seconds; new inputs merged into the corpus."""
    from . import store
    from .campaign import markdown_table, run_child

    results = []
    for name in names:
        target = targets[name]
        with tempfile.TemporaryDirectory(prefix=f"fuzz-new-{name}-") as tmp:
            result = run_child(target, args.campaign, seed, max_len=args.max_len,
                               ignore=args.ignore, verbose=args.verbose, keep_corpus=Path(tmp))
            print(result.summary(), flush=True)
            found = [p.read_bytes() for p in Path(tmp).iterdir()]
            # The seeds compete too (seed 0: the same generated ones every time).
            result.merged = store.merge(target, engine.target_seeds(target, 0) + found)
            print("  " + result.merged.summary(), flush=True)
        results.append(result)
    print()
    print(markdown_table(results, args.campaign))
    return 1 if any(r.status for r in results) else 0


def _merge_seeds(names: list[str], targets: dict[str, Target]) -> int:
    from . import store

    for name in names:
        seeds = engine.target_seeds(targets[name], 0)
        print(store.merge(targets[name], seeds).summary(), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    start = time.monotonic()
    args = _parser().parse_args(argv)
    if args.reproduce:
        return _reproduce(args.reproduce, args.target)
    if args.seconds <= 0 or args.max_len < 1:
        print("--seconds and --max-len must be positive", file=sys.stderr)
        return 2
    seed = args.seed if args.seed is not None else int.from_bytes(os.urandom(4), "big")
    use_atheris = args.engine == "atheris" or (
        args.engine == "auto" and engine.atheris_available()
    )
    if use_atheris and not engine.atheris_available():
        print("atheris is not installed (pip install atheris)", file=sys.stderr)
        return 2
    in_child = args.campaign is None and not args.merge_corpus and not args.list
    if use_atheris and args.target and len(args.target) == 1 and in_child:
        targets = load_targets()
        if args.target[0] not in targets:
            print(f"unknown target {args.target[0]!r}; known: {', '.join(targets)}",
                  file=sys.stderr)
            return 2
        left = args.seconds - (time.monotonic() - start)
        engine.run_atheris(targets[args.target[0]], max(0.5, left), seed,
                           max_len=args.max_len, ignore=args.ignore,
                           keep_corpus=args.keep_corpus, stats_json=args.stats_json)
        return 1  # not reached: run_atheris ends the process
    targets = load_targets()
    if args.list:
        for target in targets.values():
            print(f"{target.name:20} {target.description}")
        return 0
    names = args.target or list(targets)
    unknown = [n for n in names if n not in targets]
    if unknown:
        print(f"unknown target(s) {', '.join(unknown)}; known: {', '.join(targets)}",
              file=sys.stderr)
        return 2
    if args.merge_corpus:
        return _merge_seeds(names, targets)
    if args.campaign is not None:
        if args.campaign <= 0 or not engine.atheris_available():
            print("--campaign needs a positive time and atheris (pip install atheris)",
                  file=sys.stderr)
            return 2
        print(f"fuzz campaign: {len(names)} target(s), {args.campaign:g} s each, engine "
              f"atheris, seed {seed}", flush=True)
        return _campaign(names, args, seed, targets)
    print(f"fuzz: {len(names)} target(s), {args.seconds:g} s, "
          f"engine {'atheris' if use_atheris else 'stdlib'}, seed {seed}", flush=True)
    if use_atheris:
        return _atheris_children(names, args, seed, start, targets)
    for index, name in enumerate(names):
        left = args.seconds - (time.monotonic() - start)
        budget = max(0.1, left / (len(names) - index))
        stats = engine.run_stdlib(targets[name], budget, seed, max_len=args.max_len,
                                  verbose=args.verbose, ignore=args.ignore)
        print(stats.summary(), flush=True)
        if args.verbose:
            for label, count in sorted(stats.outcomes.items(), key=lambda kv: -kv[1]):
                print(f"  {count:8} {label}")
        if stats.breach is not None or not stats.ran_enough:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
