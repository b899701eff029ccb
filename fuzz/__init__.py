"""Fuzz harness for ``iotdev_mqtt``: any bytes give packets or ``RemoteProtocolError``.

Run from the repository root::

    python -m fuzz --seconds 20                 # every target, time split between them
    python -m fuzz --seconds 60 --target reader-server --seed 1
    python -m fuzz --reproduce fuzz/crashes/reader-client-<sha1>.hex
    python -m fuzz --seconds 60 --ignore buffer-bound   # go on past a known, reported bug
    python -m fuzz --list

Layout:

* ``registry.py``: the target registry (how to add a target is documented there).
* ``checks.py``: reusable invariant helpers (split invariance, error classes).
* ``wire.py``: framing written independently of the codec (oracle, mutator).
* ``targets.py``: the registered targets (``reader-client``, ``reader-server``).
* ``corpus.py``: seed inputs (``vectors.txt``, concatenations, random valid packets).
* ``vectors.txt``: the reference vectors as hex (a copy; see its header).
* ``mutator.py``: the stdlib mutator.
* ``engine.py``: the stdlib engine, the optional atheris engine, crash files.

This package does not import ``iotdev_mqtt`` itself: the atheris engine must
instrument it before its first import.
"""

from __future__ import annotations
