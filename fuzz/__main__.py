"""``python -m fuzz``: run the fuzz targets for a bounded time, or replay crash files.

Examples (from the repository root)::

    python -m fuzz --seconds 20                    # what `make test` runs
    python -m fuzz --seconds 600 --seed 7 --target reader-server
    python -m fuzz --engine stdlib --verbose       # force the stdlib engine, show new outcomes
    python -m fuzz --reproduce fuzz/crashes/*.hex  # exit 1 if any still breaks
    python -m fuzz --list

Exit status: 0 when no invariant broke, 1 on the first breach (after writing
``fuzz/crashes/<target>-<sha1>.hex``), 2 on a usage error.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from . import engine
from .registry import load_targets

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


def _atheris_children(names: list[str], args: argparse.Namespace, seed: int, start: float) -> int:
    """One process per target: atheris ends the process when it is done."""
    for index, name in enumerate(names):
        left = args.seconds - (time.monotonic() - start)
        budget = max(0.5, left / (len(names) - index))
        cmd = [
            sys.executable, "-m", "fuzz", "--engine", "atheris", "--target", name,
            "--seconds", f"{budget:.2f}", "--seed", str(seed), "--max-len", str(args.max_len),
        ]
        if args.verbose:
            cmd.append("--verbose")
        for tag in args.ignore:
            cmd += ["--ignore", tag]
        status = subprocess.run(cmd, cwd=ROOT, check=False).returncode
        if status:
            return 1
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
    if use_atheris and args.target and len(args.target) == 1 and not args.list:
        # Instrument the codec before anything imports it, then fuzz in-process.
        atheris = engine.instrument_codec()
        targets = load_targets()
        if args.target[0] not in targets:
            print(f"unknown target {args.target[0]!r}; known: {', '.join(targets)}",
                  file=sys.stderr)
            return 2
        left = args.seconds - (time.monotonic() - start)
        engine.run_atheris(targets[args.target[0]], max(0.5, left), seed,
                           max_len=args.max_len, ignore=args.ignore, atheris=atheris)
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
    print(f"fuzz: {len(names)} target(s), {args.seconds:g} s, "
          f"engine {'atheris' if use_atheris else 'stdlib'}, seed {seed}", flush=True)
    if use_atheris:
        return _atheris_children(names, args, seed, start)
    for index, name in enumerate(names):
        left = args.seconds - (time.monotonic() - start)
        budget = max(0.1, left / (len(names) - index))
        stats = engine.run_stdlib(targets[name], budget, seed, max_len=args.max_len,
                                  verbose=args.verbose, ignore=args.ignore)
        print(stats.summary(), flush=True)
        if args.verbose:
            for label, count in sorted(stats.outcomes.items(), key=lambda kv: -kv[1]):
                print(f"  {count:8} {label}")
        if stats.breach is not None:
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
