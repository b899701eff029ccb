"""Fuzz harness for ``iotdev_mqtt`` and ``iotdev``: any input gives a result or a
documented, typed error, nothing else.

Run from the repository root::

    python -m fuzz --seconds 20                 # every target, time split between them
    python -m fuzz --seconds 60 --target reader-server --seed 1
    python -m fuzz --campaign 600               # atheris, 600 s a target (make fuzz-campaign)
    python -m fuzz --reproduce fuzz/crashes/reader-client-<sha1>.hex
    python -m fuzz --seconds 60 --ignore buffer-bound   # go on past a known, reported bug
    python -m fuzz --list

Layout:

* ``registry.py``: the target registry (how to add a target is documented there).
* ``checks.py``: reusable invariant helpers (split invariance, error classes).
* ``wire.py``: framing written independently of the codec (oracle, mutator).
* ``targets.py``: ``reader-client``, ``reader-server`` (``PacketReader``).
* ``engine_targets.py``: ``client-connection``, ``server-connection`` (the engines).
* ``topic_targets.py``: ``mqtt-topics`` (validation and matching against an oracle).
* ``hub_targets.py``: ``property-bag``, ``hub-topics`` (``iotdev._hub_topics``).
* ``auth_targets.py``: ``connection-string``, ``sas-token`` (``iotdev._auth``).
* ``http_targets.py``: ``http-response`` (the HTTP flows of ``iotdev.transport._http``).
* ``corpus.py``: generated MQTT seeds (``vectors.txt``, concatenations, random packets).
* ``corpus/<target>/``: the checked-in corpus, minimized by coverage (``store.py``).
* ``vectors.txt``: the reference vectors as hex (a copy; see its header).
* ``mutator.py``: the stdlib mutator.
* ``engine.py``: the stdlib engine, the atheris engine, crash files.
* ``campaign.py``: atheris child processes, libFuzzer's figures, the campaign table.

Crash files go to ``fuzz/crashes/`` (not checked in); a fixed crash becomes a
vector in ``tests/test_fuzz_regressions.py``.  This package does not import
the code under test at module level: the atheris engine instruments the
modules a target names before it runs.
"""

from __future__ import annotations
