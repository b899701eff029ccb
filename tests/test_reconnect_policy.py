"""``ReconnectPolicy``: the first reconnection comes at once (within a short
random window), later ones back off exponentially with jitter, capped."""

from __future__ import annotations

import random

from iotdev.transport._options import ReconnectPolicy


def test_first_attempt_is_prompt_then_exponential_with_jitter() -> None:
    policy = ReconnectPolicy(interval=10.0, max_interval=120.0)
    rng = random.Random(1)
    firsts = [policy.delay(1, rng) for _ in range(500)]
    assert all(0.0 <= d <= 1.0 for d in firsts) and max(firsts) - min(firsts) > 0.5
    for attempt, nominal in ((2, 10.0), (3, 20.0), (4, 40.0), (5, 80.0), (6, 120.0),
                             (9, 120.0)):
        waits = [policy.delay(attempt, rng) for _ in range(200)]
        assert all(nominal / 2 <= d <= nominal for d in waits), (attempt, min(waits))


def test_without_jitter_and_with_a_short_interval() -> None:
    plain = ReconnectPolicy(interval=2.0, jitter=False)
    assert [plain.delay(n, random.Random()) for n in (1, 2, 3, 4)] == [0.0, 2.0, 4.0, 8.0]
    short = ReconnectPolicy(interval=0.2)
    assert all(short.delay(1, random.Random(n)) <= 0.05 for n in range(50))
