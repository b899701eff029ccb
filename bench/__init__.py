"""``python -m bench``: how iotdev compares with paho-mqtt and azure-iot-device.

Layout (one module per figure; the machinery is shared):

``bench/harness.py``
    Figures, contestants, the registry, alternating rounds, statistics, the
    terminal report, ``bench-results.json`` and ``bench-results.md``.
``bench/codec.py`` -- figure ``codec``
    Encode + decode of a 200-byte QoS 1 telemetry PUBLISH: ``iotdev_mqtt``
    against paho-mqtt 1.6.1's own packet code.
``bench/engine_pair.py`` -- figure ``engine-pair`` (written in another step)
    Not part of this module set yet.  Put it in ``bench/engine_pair.py``: build a
    ``harness.Figure(name="engine-pair", ...)`` and pass it to
    ``harness.register``.  Every module of this package is imported by
    ``harness.load_figures``, so nothing else needs editing; ``FIGURE_ORDER``
    below already lists it second.

Later figures (publish over TLS and WebSocket against mosquitto, C2D latency,
import time and RSS, fleet scale) follow the same pattern; a figure whose broker
or peer package is missing raises ``harness.Skip`` from its ``setup``.
"""

from __future__ import annotations

# Display order of the figures; registered figures not listed here come after.
FIGURE_ORDER: tuple[str, ...] = ("codec", "engine-pair")

# Figures that are planned but may not exist yet: ``--only NAME`` on one of
# them explains where it will live instead of saying "unknown figure".
PLANNED_FIGURES: dict[str, str] = {
    "engine-pair": "it belongs in bench/engine_pair.py, written in another step",
}
