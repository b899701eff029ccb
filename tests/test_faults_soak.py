"""Two minutes of ``tests/soak.py`` (mixed traffic, a sync and an asyncio
client, periodic faults of every kind, emulator restarts), reporting memory,
threads and file descriptors every 10 s.  The one-hour run is ``make soak``
(``python -m tests.soak --minutes 60``)."""

from __future__ import annotations

import os

from tests.soak import run_soak

SOAK_SECONDS = float(os.environ.get("IOTDEV_SOAK_SECONDS", "120"))


def test_soak_two_minutes_of_mixed_traffic_and_periodic_faults() -> None:
    seed = os.environ.get("IOTDEV_FAULT_SEED")
    result = run_soak(SOAK_SECONDS, seed=int(seed) if seed else None, report_every=10.0,
                      out=lambda line: print(line, flush=True))
    sync, aio = result.figures["soak-sync"], result.figures["soak-aio"]
    assert not result.failures, "\n".join(result.failures)
    # The run did test something: traffic flowed, faults fired, clients reconnected.
    assert sync["sent"] > 1000 and aio["sent"] > 1000
    assert sum(result.figures["faults"].values()) >= 10
    assert sync["reconnects"] >= 3 and aio["reconnects"] >= 3
